"""Benchmark the per-strength part of `cmc calibrate` / Scorer.profile: from one chunk of user logits and one
mapped delta term, the targets' log-probabilities, KL(user alone || combined) and argmax hits at every alpha
of the calibration grid. Scorer._chunk_stats (each strength: one add, one logsumexp, one argmax) against the
direct computation it replaced (each strength: log_softmax of the sum, exp of the user's distribution, KL,
argmax); both on the same random logits, their results compared. Prints seconds per chunk and the ratio.

    python benchmarks/bench_calibrate.py [--vocab 262144] [--tokens 256] [--repeats 5]

Gemma-3's vocabulary (262,144) is the default: the real pair's user, where calibration spent most of its time.
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


def rewritten(u_logits, base, terms, targets, keys):
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
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(args.tokens, args.vocab, generator=g) * 3
    base = F.log_softmax(u, dim=-1)
    terms = [torch.randn(args.tokens, args.vocab, generator=g)]
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


if __name__ == "__main__":
    main()
