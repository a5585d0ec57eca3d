"""Precision on the real pair: what an `idk` delta changes besides what it was trained to change.

For each direction (SmolLM2-135M template -> Gemma-3-270M user, and back) and seed, two deltas are trained
with `cmc unlearn --method idk`'s defaults (real_idk.py's settings, the delta trained in the user's format):
`silent` (the silence term at its default weight) and `plain` (--silence 0). Each is applied to the user
through cmc's default map at alpha 1, 2 and the strength `cmc calibrate` chooses (its wall time recorded),
the silent one also at calibrated -/+ 1 (--around) and at its calibrated alpha through the shuffled control. Per row: greedy forget refusal,
retain and held-out key accuracy (benchmarks/real_facts.py), and on the Brown corpus (`cmc fetch text`;
never trained on) the NLL per token and KL to the user alone (`cmc eval general`'s computation).

    cmc fetch models && cmc fetch text
    python benchmarks/real_precision.py      # writes docs/results-real/precision.{md,json,png}
    python benchmarks/real_precision.py --reuse docs/results-real/precision.partial.json   # resumes a cut run

precision.png plots forget refusal against held-out accuracy over alpha, plain against silent. Rows are
deterministic given their delta and settings: --reuse takes those an earlier run's JSON already has.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_idk import _pooled, evaluate, fact_sets  # noqa: E402

from cmc_cli import assets  # noqa: E402
from cmc_cli import fetch as fetcher  # noqa: E402
from cmc_cli.config import TrainConfig  # noqa: E402
from cmc_cli.config.options import RETAIN_TERMS, UNLEARN_METHODS  # noqa: E402
from cmc_cli.engine.calibrate import calibrate, training_texts  # noqa: E402
from cmc_cli.engine.decode import Decoder  # noqa: E402
from cmc_cli.engine.models import load_delta, load_lm  # noqa: E402
from cmc_cli.engine.train import Trainer  # noqa: E402
from cmc_cli.eval.general import general_texts, score_row  # noqa: E402
from cmc_cli.eval.metrics import mean_ci, paired_bootstrap  # noqa: E402
from cmc_cli.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from cmc_cli.tokenmaps.tokenmap import TokenMap  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results-real")
    ap.add_argument("--work", default=None, help="deltas and data (default: $CMC_CACHE/real-idk)")
    ap.add_argument("--directions", default="smollm2:gemma3,gemma3:smollm2")
    run_args(ap, brown=100)
    ap.add_argument("--alphas", default="1,2", help="fixed strengths evaluated besides the calibrated one")
    ap.add_argument("--variants", default="silent,plain", help="silent (cmc's default) and/or plain (--silence 0)")
    ap.add_argument("--around", type=float, default=1.0,
                    help="also evaluate the silent delta at calibrated -/+ this (0: not; alpha <= 0 is the user alone)")
    ap.add_argument("--reuse", default="", help="earlier precision JSONs (a partial one resumes): rows and calibrations "
                    "of the same direction, seed and label are taken from them when their settings match")
    return ap.parse_args()


SHAPING = ("delta", "lr", "batch_size", "max_steps", "max_new_tokens", "brown", "retain_loss", "eval_batch")  # a row depends on


def reusable(files: str, args, facts: dict) -> dict:
    """{(direction, label, seed): row} and {(direction, delta, seed): calibration} from earlier runs' JSONs whose
    row-shaping settings and fact set are this run's (a row is deterministic given them and its delta)."""
    found: dict = {}
    for f in (x for x in files.split(",") if x):
        res = json.loads(Path(f).read_text(encoding="utf-8"))
        s = old_settings(res.get("settings", {}))
        if any(s.get(k) != getattr(args, k) for k in SHAPING) or res.get("facts", facts) != facts:
            print(f"not reusing {f}: its settings or facts differ from this run's", flush=True)
            continue
        for pair, d in res.get("directions", {}).items():
            for label, runs in d["rows"].items():
                for i, r in enumerate(runs):
                    found[(pair, label, r.get("seed", i))] = r
            for c in d.get("calibration", []):
                found[(pair, c["delta"], c["seed"])] = c
    return found


def run_args(ap: argparse.ArgumentParser, brown: int) -> None:
    """The options every real-model benchmark shares: seeds, the delta's training, answers, Brown sentences."""
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--delta", default="mini")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--brown", type=int, default=brown, help="Brown-corpus sentences scored per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, default=8, help="questions answered per batch (README's tour: 16, a "
                    "10-item set in one batch; the same greedy answers up to padding's float rounding)")
    ap.add_argument("--retain-loss", default=UNLEARN_METHODS["idk"][1], choices=RETAIN_TERMS,
                    help="the idk delta's retain term (default: cmc unlearn's; recorded, and part of each delta's name)")


def old_settings(s: dict) -> dict:
    """An earlier run's settings, with the retain term it trained with where it predates the option (nll,
    the default then) and the batch it answered in (8)."""
    return {"retain_loss": "nll", "eval_batch": 8} | s


def train(tk, uk, dirs, paths, fmt, work: Path, seed: int, silence: float | None, args) -> Path:
    name = "silent" if silence is None else "plain"
    out = work / f"{tk}-idk-for-{uk}-s{seed}-{name}-{args.retain_loss}"
    return train_idk(dirs[tk], out, fmt[uk], paths, seed, args, silence)


def train_idk(template_dir, out: Path, formats, paths, seed: int, args, silence: float | None = None) -> Path:
    """`cmc unlearn --method idk` with the benchmarks' settings (args: delta, lr, batch_size, max_steps) into
    `out`, unless a finished delta is there; formats: the user's prompt format, or a list (one delta for all)."""
    if not (out / "cmc.json").is_file():
        print(f"training {out.name} (silence {'default' if silence is None else silence}, formats {formats})", flush=True)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        Trainer(TrainConfig(task="unlearn", loss="idk", template=str(template_dir), forget=str(paths["forget"]),
                            retain=str(paths["retain"]), output=str(out), delta=args.delta, prompt_format=formats,
                            lr=args.lr, batch_size=args.batch_size, epochs=1000, max_steps=args.max_steps, seed=seed,
                            device="cpu", eval_every=args.max_steps, silence=silence,
                            retain_loss=args.retain_loss)).run()
    return out


def row(dec: Decoder, sets, brown, args) -> dict:
    """One model (with its deltas): greedy answers to the fact sets, NLL and KL on the Brown sentences."""
    res = {k: v.as_dict() | {"per_item": v.per_item} for k, v in evaluate(dec, sets, args).items()}
    nll, kl, n = score_row(dec, brown, 4, 16)
    res["brown"] = {"nll": sum(x * k for x, k in zip(nll, n)) / sum(n), "kl": sum(x * k for x, k in zip(kl, n)) / sum(n),
                    "per_text_nll": nll}
    return res


def direction(pair: str, ctx, args, res: dict, out: Path) -> dict:
    """Every row of one direction (template:user), seed by seed; the results so far are written after each seed
    to `out` (give it to --reuse to resume)."""
    tk, uk = pair.split(":")
    template, user = ctx.lms[tk], ctx.lms[uk]
    default_map = TokenMap.build(template.vocab, user.vocab)
    alone = taken(ctx, (pair, f"{uk} alone", 0))
    alone = alone or row(Decoder(user, [], user_format=ctx.fmt[uk]), ctx.sets, ctx.brown, args)
    d = res["directions"][pair] = {"template": tk, "user": uk, "rows": {f"{uk} alone": [alone]}, "calibration": []}
    for seed in range(args.seeds):
        for name, silence in [v for v in (("silent", None), ("plain", 0.0)) if v[0] in args.variants.split(",")]:
            d_dir = train(tk, uk, ctx.dirs, ctx.paths, ctx.fmt, ctx.work, seed, silence, args)
            cal = taken(ctx, (pair, name, seed)) or calibration(d_dir, template, user, default_map, ctx.fmt[uk])
            d["calibration"].append(cal | {"seed": seed, "delta": name})
            print(f"  {name} seed {seed}: calibrated alpha {cal['alpha']:g} ({cal['seconds']:.0f} s)", flush=True)
            same = {}  # (alpha, map) -> this delta's row: calibrated -/+ 1 or calibrated often equals a fixed alpha
            for label, a, tm in variants(name, cal["alpha"], default_map, default_map.shuffled(seed), args):
                r = taken(ctx, (pair, f"{uk} + {label}", seed)) or same.get((a, id(tm)))
                if r is None and a <= 0:  # no delta: the user alone (the flat-delta no-op, tests/test_noop.py)
                    r = dict(alone)
                if r is None:
                    print(f"  {uk} + {label} (alpha {a:g}), seed {seed}", flush=True)
                    dec = Decoder(user, [load_delta(d_dir, user, a, [tm])], user_format=ctx.fmt[uk])
                    r = row(dec, ctx.sets, ctx.brown, args)
                same[(a, id(tm))] = r
                d["rows"].setdefault(f"{uk} + {label}", []).append(r | {"alpha": a, "seed": seed})
        atomic_write_json(out, res | {"partial": True})
    return d


def taken(ctx, key):
    """The row or calibration an earlier run (--reuse) has under `key`, noted as reused; None if none."""
    found = ctx.done.get(key)
    if found is not None:
        ctx.used.add(str(key))
    return found


def neighbours(sets) -> list[bool]:
    """Per held-out fact: does its question name a forget question's subject (e.g. "What language is mainly
    spoken in France?" beside "What is the capital of France?")? Subjects: the capitalised words of the
    forget questions after their first word."""
    subjects = {w.strip("?.,") for it in sets["forget"] for w in it.question.split()[1:] if w[:1].isupper()}
    return [any(w.strip("?.,") in subjects for w in it.question.split()[1:]) for it in sets["heldout"]]


def neighbour_line(res: dict, runs: list) -> str:
    """Held-out accuracy of one row on the facts whose subject the forget set names, and on the others."""
    flags = res.get("neighbours")
    if not flags:
        return ""
    hits = [(f, h) for r in runs for f, h in zip(flags, r["heldout"]["per_item"]["key_hit"])]
    near, far = [h for f, h in hits if f], [h for f, h in hits if not f]
    return (f"held-out facts about a forget subject ({sum(flags)} of {len(flags)}): {sum(near) / max(1, len(near)):.2f}, "
            f"the others: {sum(far) / max(1, len(far)):.2f}")


def calibration(d_dir: Path, template, user, tmap, fmt: str) -> dict:
    t0 = time.perf_counter()
    cal, _ = calibrate(d_dir, user, template, training_texts(d_dir, 32, template, {}, None), [tmap], fmt)
    return {"alpha": cal.alpha, "seconds": time.perf_counter() - t0, "reason": cal.reason}


def variants(name: str, cal: float, tmap, control, args) -> list[tuple[str, float, object]]:
    """(label, alpha, map) of one delta's rows: the fixed alphas, the calibrated one, for the silent delta
    calibrated -/+ --around and the shuffled control at the calibrated alpha."""
    out = [(f"{name} a={a:g}", a, tmap) for a in (float(x) for x in args.alphas.split(",") if x)]
    out.append((f"{name} a=calibrated", cal, tmap))
    if name == "silent":
        if args.around:
            out += [(f"silent a=calibrated-{args.around:g}", max(0.0, cal - args.around), tmap),
                    (f"silent a=calibrated+{args.around:g}", cal + args.around, tmap)]
        out.append(("silent a=calibrated (shuffled map)", cal, control))
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work) if args.work else assets.cache_dir() / "real-idk"
    dirs = fetcher.fetch_models()
    # the models of the directions only: the facts are those every one of them answers (another fetched
    # model, e.g. the Qwen coders, would change the fact set)
    names = sorted({k for pair in args.directions.split(",") for k in pair.split(":")})
    lms = {k: load_lm(str(dirs[k])) for k in names}
    fmt = {k: assets.MODELS[k].prompt_format for k in lms}
    paths, sets = fact_sets(lms, fmt, work, args)
    facts = {k: len(v) for k, v in sets.items()}
    ctx = SimpleNamespace(lms=lms, fmt=fmt, dirs=dirs, paths=paths, sets=sets, work=work,
                          brown=general_texts(None, args.brown, 4)[0], done=reusable(args.reuse, args, facts),
                          used=set())
    results = {"settings": vars(args), "facts": facts, "directions": {}, "neighbours": neighbours(sets)}
    out = Path(args.out)
    for pair in args.directions.split(","):
        direction(pair, ctx, args, results, out / "precision.partial.json")
    results["seconds"] = time.perf_counter() - t0
    results["reused"] = sorted({str(k) for k in ctx.done} & ctx.used)
    atomic_write_json(out / "precision.json", results)
    atomic_write_text(out / "precision.md", markdown(results))
    plot(results, out / "precision.png")
    print(markdown(results))


def plot(res: dict, path: Path) -> None:
    """Forget refusal against held-out key accuracy, one point per (delta, alpha) mean over seeds, plain against
    silent, one panel per direction; the numbers beside the points are the alphas (cal: calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = res["directions"]
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.5 * len(dirs), 4.5), squeeze=False)
    for ax, (pair, d) in zip(axes[0], dirs.items()):
        alone = d["rows"][f"{d['user']} alone"][0]
        ax.scatter([alone["forget"]["refusal"]], [alone["heldout"]["key_accuracy"]], c="k", marker="s", label="alone")
        for name, colour in (("plain", "tab:red"), ("silent", "tab:blue")):
            pts = sorted((_mean(runs, lambda r: r["alpha"]), _mean(runs, lambda r: r["forget"]["refusal"]),
                          _mean(runs, lambda r: r["heldout"]["key_accuracy"]),
                          label.split(" a=")[1]) for label, runs in d["rows"].items()
                         if label.startswith(f"{d['user']} + {name} a=") and "shuffled" not in label)
            if not pts:
                continue
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", c=colour, label=f"{name} (alpha order)")
            cal = [p for p in pts if p[3] == "calibrated"]
            ax.scatter([p[1] for p in cal], [p[2] for p in cal], c=colour, marker="*", s=160, zorder=3,
                       label=f"{name} calibrated")
            for a, x, y, lab in pts:
                ax.annotate(lab.replace("calibrated", "cal") if "cal" in lab else f"{a:g}", (x, y), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"idk delta beside {d['template']} -> {d['user']}", xlabel="forget refusal",
               ylabel="held-out key accuracy", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05))
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _mean(runs, get) -> float:
    return statistics.fmean(get(r) for r in runs)


def _cell(runs, get) -> str:
    vals = [v for v in (get(r) for r in runs) if v is not None]
    if not vals:
        return "–"
    m, h = mean_ci(vals)
    return f"{m:.2f}" if h != h else f"{m:.2f} ± {h:.2f}"


def markdown(res: dict) -> str:
    n = res["settings"]["seeds"]
    lines = ["Facts both models answer correctly: " + ", ".join(f"{k} {v}" for k, v in res["facts"].items())
             + f"; {n} seeds; greedy, {res['settings']['max_new_tokens']} new tokens; each model asked in its own "
             f"format, the delta trained in the user's; cmc's default map; Brown corpus: {res['settings']['brown']} "
             "sentences, scored after their first 4 words. Cells: mean ± 95% CI over seeds; Δ: paired per-item "
             "difference pooled over seeds [95% bootstrap CI].", ""]
    for pair, d in res["directions"].items():
        rows, uk = d["rows"], d["user"]
        alone = rows[f"{uk} alone"]
        lines += [f"### idk delta beside {d['template']} → user {uk}", "",
                  "| model | alpha | forget refusal | retain key acc. | held-out key acc. | Δ held-out vs alone | "
                  "Brown NLL/token | Brown Δ NLL vs alone | Brown KL/token | Δ refusal vs shuffled |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ctrl = rows.get(f"{uk} + silent a=calibrated (shuffled map)")
        for label, runs in rows.items():
            dh = db = dc = ""
            if runs is not alone:
                m, lo, hi = paired_bootstrap(_pooled(runs, "heldout", "key_hit", n), _pooled(alone, "heldout", "key_hit", n))
                dh = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                a_b = [v for r in (alone * n) for v in r["brown"]["per_text_nll"]]
                r_b = [v for r in runs for v in r["brown"]["per_text_nll"]]
                m, lo, hi = paired_bootstrap(r_b, a_b)
                db = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                if ctrl is not None and label == f"{uk} + silent a=calibrated":
                    m, lo, hi = paired_bootstrap(_pooled(runs, "forget", "refusal", n), _pooled(ctrl, "forget", "refusal", n))
                    dc = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            lines.append(f"| {label} | {_cell(runs, lambda r: r.get('alpha'))} | "
                         f"{_cell(runs, lambda r: r['forget']['refusal'])} | {_cell(runs, lambda r: r['retain']['key_accuracy'])} | "
                         f"{_cell(runs, lambda r: r['heldout']['key_accuracy'])} | {dh} | "
                         f"{_cell(runs, lambda r: r['brown']['nll'])} | {db} | {_cell(runs, lambda r: r['brown']['kl'])} | {dc} |")
        cal = d["calibration"]
        for label in (f"{uk} + silent a=calibrated", f"{uk} + plain a=calibrated"):
            if rows.get(label) and neighbour_line(res, rows[label]):
                lines += ["", f"{label}, pooled over seeds: {neighbour_line(res, rows[label])}."]
        lines += ["", "Calibrated alphas: " + ", ".join(f"{c['delta']} seed {c['seed']}: {c['alpha']:g} "
                                                        f"({c['seconds']:.0f} s)" for c in cal), ""]
    if "seconds" in res:
        reused = f" ({len(res['reused'])} rows and calibrations taken from earlier runs: --reuse)" if res.get("reused") else ""
        lines.append(f"Wall time: {res['seconds']:.0f} s{reused}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
