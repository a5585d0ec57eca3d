"""Benchmark the per-strength part of `cmc calibrate` / Scorer.profile: from one chunk of user logits and one
mapped delta term, the targets' log-probabilities, KL(user alone || combined) and argmax hits at every alpha
of the calibration grid. Scorer._chunk_stats (each strength: one add, one logsumexp, one argmax) against the
direct computation it replaced (each strength: log_softmax of the sum, exp of the user's distribution, KL,
argmax); both on the same random logits, their results compared. Prints seconds per chunk and the ratio.
With --moved SHARE the delta term is 0 outside that share of the ids (a map that leaves user ids unmapped:
exact-ext from SmolLM2 moves 21% of Gemma-3's ids), and _chunk_stats reducing only the moved columns
(score.grid_normalisers) is timed against the same with every column reduced per strength.

    python benchmarks/bench_calibrate.py [--vocab 262144] [--tokens 256] [--repeats 5] [--moved 0.21]
    python benchmarks/bench_calibrate.py --delta DELTA --user USER [--template T] [--dtype bf16]

Gemma-3's vocabulary (262,144) is the default: the real pair's user, where calibration spent most of its time.
The second form times whole calibrations of a real delta (a copy of it, in-process, models loaded): the first,
which measures the template's side and keeps it beside the delta (engine/calkeep.py), then the next user's,
which reads it and never loads the template.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from cmc_cli.engine.calibrate import GRID
from cmc_cli.engine.score import Scorer


def direct(u_logits, base, terms, targets, keys):
    alone = F.log_softmax(u_logits.float(), dim=-1)
    out = {}
    for a in keys:
        final = F.log_softmax(base + sum(a * t for t in terms), dim=-1)
        out[a] = (final.gather(-1, targets[:, None])[:, 0], (alone.exp() * (alone - final)).sum(-1),
                  (final.argmax(-1) == targets).float())
    return out


def rewritten(u_logits, base, terms, targets, keys, sparse=None):
    import cmc_cli.engine.score as S

    if sparse is not None:
        S.SPARSE_SHARE = sparse
    sc = Scorer.__new__(Scorer)
    sc.dec = SimpleNamespace(deltas=[SimpleNamespace(alpha=1.0)] * len(terms), expert=None, combine="log-softmax-template")
    acc = {k: ([], [], []) for k in keys}
    sc._chunk_stats(u_logits, base, terms, targets, keys, acc)
    return {k: tuple(x[0] for x in v) for k, v in acc.items()}


def timed(fn, args, repeats):
    fn(*args)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--moved", type=float, default=1.0, help="share of ids the delta term moves")
    ap.add_argument("--delta", help="time whole calibrations of this delta (with --user)")
    ap.add_argument("--user")
    ap.add_argument("--template", help="(default: the one the delta's cmc.json names)")
    ap.add_argument("--dtype", default="fp32", help="fp32 | bf16: both models' (cmc calibrate --dtype)")
    args = ap.parse_args()
    if args.delta:
        return whole(args.delta, args.user, args.template, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(args.tokens, args.vocab, generator=g) * 3
    base = F.log_softmax(u, dim=-1)
    terms = [torch.randn(args.tokens, args.vocab, generator=g)]
    if args.moved < 1.0:
        keep = torch.randperm(args.vocab, generator=g)[:int(args.moved * args.vocab)]
        terms[0] = torch.zeros_like(terms[0]).index_copy_(1, keep, terms[0][:, keep])
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    keys = [0.0, *GRID]
    a, b = direct(u, base, terms, targets, keys), rewritten(u, base, terms, targets, keys)
    ref = direct(u.double(), base.double(), [t.double() for t in terms], targets, keys)  # float64: the truth
    err_a, err_b = ([max(float((x.double() - y).abs().max()) for k in keys for x, y in zip(r[k][:2], ref[k][:2]))]
                    for r in (a, b))
    same_hits = all(torch.equal(a[k][2], b[k][2]) for k in keys)
    t_direct = timed(direct, (u, base, terms, targets, keys), args.repeats)
    t_new = timed(rewritten, (u, base, terms, targets, keys), args.repeats)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads; {args.tokens} tokens x {args.vocab} ids, "
          f"{len(keys)} strengths; median of {args.repeats} after a warm-up")
    print(f"direct (log_softmax per strength): {t_direct:.2f} s per chunk")
    print(f"Scorer._chunk_stats:               {t_new:.2f} s per chunk  ({t_direct / t_new:.2f}x faster)")
    print(f"largest error in log p and KL against float64: direct {err_a[0]:.1e}, rewritten {err_b[0]:.1e}; "
          f"argmax hits equal: {same_hits}")
    if args.moved < 1.0:
        t_dense = timed(rewritten, (u, base, terms, targets, keys, 0.0), args.repeats)
        t_sparse = timed(rewritten, (u, base, terms, targets, keys, 1.0), args.repeats)
        c = rewritten(u, base, terms, targets, keys, 1.0)
        err_c = max(float((x.double() - y).abs().max()) for k in keys for x, y in zip(c[k][:2], ref[k][:2]))
        same = all(torch.equal(c[k][2], b[k][2]) for k in keys)
        print(f"the delta moves {args.moved:.0%} of the ids: every column per strength {t_dense:.2f} s, the moved "
              f"columns only {t_sparse:.2f} s ({t_dense / t_sparse:.2f}x); error {err_c:.1e}, argmax hits equal: {same}")


def whole(delta: str, user_ref: str, template_ref: str | None, dtype) -> None:
    """Two calibrations of a copy of `delta` for `user_ref`: the template's side measured, then kept."""
    import shutil
    import tempfile
    from pathlib import Path

    from cmc_cli.engine.calibrate import calibrate, training_texts
    from cmc_cli.engine.calkeep import KEPT_TEMPLATE, LazyTemplate
    from cmc_cli.engine.models import load_lm, read_delta_meta

    work = Path(tempfile.mkdtemp()) / "delta"
    shutil.copytree(delta, work, ignore=shutil.ignore_patterns("checkpoints", KEPT_TEMPLATE, "calibration.json"))
    t0 = time.perf_counter()
    user = load_lm(user_ref, dtype=dtype)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, {dtype}; {delta} on {user_ref}; user loaded in "
          f"{time.perf_counter() - t0:.1f} s")
    ref = template_ref or read_delta_meta(work)["template"]["ref"]
    for what in ("first (template side measured and kept)", "next (template side read)"):
        lazy = LazyTemplate(str(ref), dtype)
        t0 = time.perf_counter()
        cal, _ = calibrate(work, user, lazy, training_texts(work, 32, lazy, {}, None))
        print(f"{what}: {time.perf_counter() - t0:.1f} s, alpha {cal.alpha:g}, template loaded: {lazy.model is not None}")
    shutil.rmtree(work.parent)


if __name__ == "__main__":
    main()
