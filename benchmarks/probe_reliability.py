"""Probe cmc as a careless user would, and count the outcomes by class (figures of docs/reliability.md).

    python benchmarks/probe_reliability.py            # ~2 min on 2 cores; tiny models built offline

Every case runs one `cmc` command in-process (Typer's CliRunner) inside a scratch directory holding a
finished delta, a half-trained run, a token map, a generations file and data files. A case is
- clear:     exit code 1 or 2, no traceback, and the message's first line names what was given
             (the option, file or value the case lists);
- traceback: an exception escaped, or "Traceback" was printed;
- unclear:   refused without a traceback, but the message does not name the thing;
- accepted:  exit code 0 (the bad input was taken);
and, whatever its outcome, damaged when a file that existed before the command changed or a
half-written output was left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path


@contextlib.contextmanager
def _inside(directory: Path):
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(cwd)


def _hash_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and "/." not in str(p.relative_to(root)):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def build_scene(root: Path) -> None:
    from typer.testing import CliRunner

    from cmc_cli.app import app
    from cmc_cli.zoo.models import make_random_delta, make_tiny_llama
    from cmc_cli.zoo.tokenizers import sample_corpus, train_byte_level_tokenizer, train_spm_tokenizer

    corpus = sample_corpus()
    spm = train_spm_tokenizer(corpus, 420, root / "tok-spm")
    bl = train_byte_level_tokenizer(corpus, 420, root / "tok-bl")
    make_tiny_llama(spm, root / "tpl", seed=1)
    make_tiny_llama(bl, root / "user", seed=2)
    make_random_delta(spm, root / "delta", prompt_format="{prompt}\n", seed=3)
    data = [{"instruction": f"Say {w}.", "output": f"{w}."} for w in ("one", "two", "three", "four", "five", "six")]
    (root / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in data))
    qa = [{"question": f"Who is {n}?", "answer": f"{n} is a writer."} for n in ("Ann", "Bo", "Cy", "Di")]
    (root / "forget.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[:2]))
    (root / "retain.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[2:]))
    (root / "p.jsonl").write_text("".join(json.dumps({"instruction": x["instruction"]}) + "\n" for x in data[:3]))
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("a user's file\n")
    run = CliRunner()
    steps = [
        ["train", "--template", "tpl", "--delta", "tiny", "--data", "d.jsonl", "-o", "finished", "--max-steps", "4",
         "--batch-size", "2", "--device", "cpu"],
        ["train", "--template", "tpl", "--delta", "tiny", "--data", "d.jsonl", "-o", "half", "--max-steps", "2",
         "--batch-size", "2", "--checkpoint-every", "1", "--device", "cpu"],
        ["map-vocab", "tok-spm", "tok-bl", "-o", "map.safetensors"],
        ["generate", "--user", "user", "-d", "delta:1", "--token-map", "map.safetensors", "--prompts", "p.jsonl",
         "-o", "gen.jsonl", "--max-new-tokens", "4", "--device", "cpu"],
    ]
    for args in steps:
        r = run.invoke(app, args)
        if r.exit_code != 0:
            raise SystemExit(f"scene setup failed: cmc {' '.join(args)}\n{r.output}")


G = ["generate", "--user", "user", "-d", "delta:1", "--token-map", "map.safetensors", "--device", "cpu",
     "--max-new-tokens", "4"]
T = ["train", "--template", "tpl", "--delta", "tiny", "--data", "d.jsonl", "--device", "cpu", "--max-steps", "2",
     "--batch-size", "2"]
U = ["unlearn", "--template", "tpl", "--delta", "tiny", "--forget", "forget.jsonl", "--retain", "retain.jsonl",
     "--device", "cpu", "--max-steps", "2", "--batch-size", "2"]


def without(args: list[str], opt: str) -> list[str]:
    """args with the option `opt` and its value taken out."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == opt:
            skip = True
        else:
            out.append(a)
    return out


def cases():
    """(class, args, needle the first line must hold, setup(root) or None)."""
    return overwrite_cases() + bad_value_cases() + bad_file_cases() + bad_content_cases()


def overwrite_cases():
    """Silent overwrites and runs resumed with other settings."""
    c = []
    add = lambda cls, args, needle, setup=None: c.append((cls, args, needle, setup))  # noqa: E731
    # silent overwrites
    add("overwrite", T + ["-o", "finished"], "finished")
    add("overwrite", T + ["-o", "notes"], "notes")
    add("overwrite", U + ["-o", "finished"], "finished")
    add("overwrite", ["map-vocab", "tok-spm", "tok-bl", "-o", "map.safetensors"], "map.safetensors")
    add("overwrite", G + ["--prompts", "p.jsonl", "-o", "gen.jsonl"], "gen.jsonl")
    add("overwrite", T + ["-o", "d.jsonl"], "d.jsonl")
    # mixed runs
    for opt, val in (("--lr", "0.01"), ("--batch-size", "3"), ("--seed", "7"), ("--warmup-ratio", "0.2"),
                     ("--weight-decay", "0.1"), ("--clip", "0.5"), ("--max-length", "64")):
        add("mixed run", without(T, opt) + ["-o", "half", "--resume", "half", opt, val], opt)
    for opt, val in (("--temperature", "0.7"), ("--max-new-tokens", "9"), ("--top-p", "0.5"), ("--top-k", "5"),
                     ("--stop", "x"), ("--user-format", "chat"), ("--combine", "sum")):
        add("mixed run", without(G, opt) + ["--prompts", "p.jsonl", "-o", "gen.jsonl", "--resume", opt, val], opt)
    add("mixed run", [a if a != "delta:1" else "delta:2" for a in G] + ["--prompts", "p.jsonl", "-o", "gen.jsonl",
                                                                        "--resume"], "gen.jsonl")
    return c


def bad_value_cases():
    c = []
    add = lambda cls, args, needle, setup=None: c.append((cls, args, needle, setup))  # noqa: E731
    # bad values
    for opt, val in (("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--batch-size", "0"), ("--max-steps", "-3"),
                     ("--micro-batch-size", "0"), ("--warmup-ratio", "2"), ("--epochs", "0"), ("--clip", "-1"),
                     ("--max-length", "0"), ("--loss-chunk", "0"), ("--checkpoint-every", "-1"),
                     ("--device", "tpu"), ("--dtype", "fp8"), ("--delta", "huge"), ("--combine", "avg"),
                     ("--prompt-format", "no placeholder")):
        add("bad value", without(T, opt) + ["-o", "new1", opt, val], opt)
    for opt, val in (("--method", "forget"), ("--retain-loss", "mse"), ("--npo-beta", "0"), ("--eval-every", "-2"),
                     ("--forget-weight", "nan")):
        add("bad value", U + ["-o", "new2", opt, val], opt)
    for opt, val in (("--top-p", "0"), ("--top-p", "1.5"), ("--temperature", "-1"), ("--max-new-tokens", "0"),
                     ("--top-k", "-1"), ("--batch-size", "0"), ("--alpha", "nan"), ("--user-format", "fancy"),
                     ("--device", "gpu9"), ("--suppress", "no-such-token-xyz")):
        add("bad value", without(G, opt) + ["-p", "Hi", opt, val], opt)
    add("bad value", ["generate", "--user", "user", "-d", "delta:abc", "-p", "Hi"], "delta:abc")
    add("bad value", ["map-vocab", "tok-spm", "tok-bl", "-o", "m2.safetensors", "--strategy", "fuzzy"], "--strategy")
    add("bad value", ["map-vocab", "tok-spm", "tok-bl", "-o", "m3.safetensors", "--strategy", "pm-lookahead",
                      "--lookahead-k", "0"], "--lookahead-k")
    return c


def bad_file_cases():
    c = []
    add = lambda cls, args, needle, setup=None: c.append((cls, args, needle, setup))  # noqa: E731
    # missing or wrong files
    add("bad file", [a if a != "d.jsonl" else "nope.jsonl" for a in T] + ["-o", "new3"], "nope.jsonl")
    add("bad file", [a if a != "forget.jsonl" else "gone.jsonl" for a in U] + ["-o", "new4"], "gone.jsonl")
    add("bad file", [a if a != "retain.jsonl" else "gone.jsonl" for a in U] + ["-o", "new5"], "gone.jsonl")
    add("bad file", [a if a != "d.jsonl" else "notes" for a in T] + ["-o", "new6"], "notes")
    add("bad file", [a if a != "tpl" else "nowhere" for a in T] + ["-o", "new7"], "nowhere")
    add("bad file", [a if a != "tpl" else "d.jsonl" for a in T] + ["-o", "new8"], "d.jsonl")
    add("bad file", G + ["--prompts", "missing.jsonl", "-o", "g2.jsonl"], "missing.jsonl")
    add("bad file", [a if a != "delta:1" else "nodelta:1" for a in G] + ["-p", "Hi"], "nodelta")
    add("bad file", [a if a != "map.safetensors" else "nomap.safetensors" for a in G] + ["-p", "Hi"], "nomap")
    add("bad file", [a if a != "map.safetensors" else "d.jsonl" for a in G] + ["-p", "Hi"], "d.jsonl")
    add("bad file", ["map-vocab", "tok-spm", "nowhere", "-o", "m4.safetensors"], "nowhere")
    add("bad file", ["map-vocab", "tok-spm", "d.jsonl", "-o", "m5.safetensors"], "d.jsonl")
    add("bad file", ["map-vocab", "tok-spm", "tok-bl", "-o", "d.jsonl/m.safetensors"], "d.jsonl")
    add("bad file", ["eval", "tofu", "-u", "user", "--forget", "nowhere.jsonl"], "nowhere.jsonl")
    add("bad file", ["eval", "tofu", "-u", "user", "--forget", "forget.jsonl", "--retain", "gone.jsonl"], "gone.jsonl")
    add("bad file", ["eval", "instruct", "-u", "user", "--prompts", "nowhere.jsonl"], "nowhere.jsonl")
    return c


def bad_content_cases():
    c = []
    add = lambda cls, args, needle, setup=None: c.append((cls, args, needle, setup))  # noqa: E731
    # file contents
    contents = {
        "bad.jsonl": b'{"instruction": "a", "output": "b"}\n{oops\n',
        "latin1.jsonl": b'{"instruction": "caf\xe9", "output": "b"}\n',
        "empty.jsonl": b"",
        "nofield.jsonl": b'{"text2": "x"}\n',
        "bin.yaml": b"\xa7\x91\x00\xff binary",
        "types.yaml": b"lr: [1, 2]\n",
        "seed.yaml": b"seed: 1.5\n",
        "unknown.yaml": b"learning_rate: 0.1\n",
        "notmap.safetensors": b"\x00" * 64,
        "torn.jsonl": b"this is not json\n",
    }

    def writer(name):
        return lambda root: (root / name).write_bytes(contents[name])

    for name in ("bad.jsonl", "latin1.jsonl", "empty.jsonl", "nofield.jsonl"):
        add("bad content", [a if a != "d.jsonl" else name for a in T] + ["-o", "new9"], name, writer(name))
    for name in ("bin.yaml", "types.yaml", "seed.yaml", "unknown.yaml"):
        add("bad content", T + ["-o", "new10", "--config", name], name, writer(name))
    add("bad content", [a if a != "map.safetensors" else "notmap.safetensors" for a in G] + ["-p", "Hi"],
        "notmap.safetensors", writer("notmap.safetensors"))
    add("bad content", G + ["--prompts", "p.jsonl", "-o", "torn.jsonl", "--resume"], "torn.jsonl", writer("torn.jsonl"))
    contents["hello.jsonl"] = b"hello"
    add("bad content", G + ["--prompts", "p.jsonl", "-o", "hello.jsonl", "--resume"], "hello.jsonl", writer("hello.jsonl"))
    add("bad content", G + ["--prompts", "latin1.jsonl", "-o", "g3.jsonl"], "latin1.jsonl", writer("latin1.jsonl"))
    add("bad content", G + ["-p", ""], "--prompt")
    add("bad content", G + ["-p", "caf\udce9"], "--prompt")

    def edit_progress(change):
        def setup(root):
            p = root / "half" / "checkpoints" / "last" / "progress.json"
            d = json.loads(p.read_text())
            change(d)
            p.write_text(json.dumps(d))
        return setup

    for label, change in (("step", lambda d: d.update(step="x")), ("step", lambda d: d.update(step=-4)),
                          ("step", lambda d: d.pop("step"))):
        add("bad content", T + ["-o", "half", "--resume", "half"], "progress.json", edit_progress(change))
    return c


def run_case(scene: Path, work: Path, case) -> dict:
    from typer.testing import CliRunner

    from cmc_cli.app import app

    cls, args, needle, setup = case
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(scene, work, symlinks=True)
    if setup:
        setup(work)
    before = _hash_tree(work)
    with _inside(work):
        r = CliRunner().invoke(app, args)
    after = _hash_tree(work)
    out = r.output
    escaped = r.exception is not None and not isinstance(r.exception, SystemExit)
    lines = [x for x in out.splitlines() if x.strip()]
    first = next((x for x in lines if "error" in x.lower() or "Error" in x), lines[0] if lines else "")
    if escaped or "Traceback" in out:
        outcome = "traceback"
    elif r.exit_code == 0:
        outcome = "accepted"
    elif needle.lower() in out.lower():
        outcome = "clear"
    else:
        outcome = "unclear"
    changed = [k for k in before if after.get(k) != before[k]]
    new = [k for k in after if k not in before]
    damaged = bool(changed) or (r.exit_code != 0 and bool(new))
    return {"class": cls, "args": args, "exit": r.exit_code, "outcome": outcome, "damaged": damaged,
            "changed": changed, "new": new, "message": first[:200]}


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cmc-probe-") as tmp:
        root = Path(tmp)
        scene = root / "scene"
        scene.mkdir()
        os.environ["CMC_CACHE"] = str(root / "cache")
        os.environ.pop("CMC_CONFIG", None)
        with _inside(scene):
            build_scene(scene)
        results = [run_case(scene, root / "work", c) for c in cases()]
    by = defaultdict(Counter)
    for r in results:
        by[r["class"]][r["outcome"]] += 1
        by[r["class"]]["damaged"] += r["damaged"]
    print("| class | cases | clear | unclear | accepted | tracebacks | damaged data |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total = Counter()
    for cls, n in by.items():
        k = sum(n[o] for o in ("clear", "unclear", "accepted", "traceback"))
        total.update(n)
        total["cases"] += k
        print(f"| {cls} | {k} | {n['clear']} | {n['unclear']} | {n['accepted']} | {n['traceback']} | {n['damaged']} |")
    print(f"| all | {total['cases']} | {total['clear']} | {total['unclear']} | {total['accepted']} | "
          f"{total['traceback']} | {total['damaged']} |")
    bad = [r for r in results if r["outcome"] != "clear" or r["damaged"]]
    for r in bad:
        print(f"\n{r['outcome']}{' DAMAGED' if r['damaged'] else ''}: cmc {' '.join(r['args'])}\n  exit {r['exit']}: "
              f"{r['message']}\n  changed {r['changed']} new {r['new']}", file=sys.stderr)


if __name__ == "__main__":
    main()
