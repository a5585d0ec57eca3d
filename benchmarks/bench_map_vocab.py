"""Benchmark `pm-mined` token mapping on real vocabularies, against the naive per-token full scan.

    python benchmarks/bench_map_vocab.py            # fetches the real tokenizers if missing

Prints, from one run on one CPU core: build time (best of 3) and peak Python memory of the fast
index for Llama-2 (delta) -> Mistral (user, 32k) and Llama-2 -> Qwen2 (user, 152k); the naive scan
(the research code's method: the whole delta vocabulary per user token) timed on a 1,000-token
sample and extrapolated; and a check that both give identical maps on that sample.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

from cmc_cli import assets
from cmc_cli import fetch as fetcher
from cmc_cli.plugins import get_adapter
from cmc_cli.refs import ModelRef
from cmc_cli.tokenmaps import TokenMap
from cmc_cli.tokenmaps.strategies import DeltaIndex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracles import naive_pm_mined  # noqa: E402  (the tests' reference)


def load(key):
    d = fetcher.fetch_tokenizers([key])[key]
    adapter = get_adapter(assets.TOKENIZERS[key].adapter)
    return adapter.load_vocab(ModelRef(text=key, path=d, adapter=adapter.name, origin="assets"))


def best_of(n, fn):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, one core")
    llama, mistral, qwen2 = load("llama2"), load("mistral"), load("qwen2")
    rows = []
    for user in (mistral, qwen2):
        secs, tm = best_of(3, lambda: TokenMap.build(llama, user))
        tracemalloc.start()
        TokenMap.build(llama, user)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append((user, secs, peak, tm))
        print(f"pm-mined llama2 ({llama.size}) -> {user.name} ({user.size}): {secs:.3f} s, "
              f"peak Python memory {peak / 2**20:.1f} MiB, counts {tm.counts()}")

    fast_tm = rows[0][3]
    sample = sorted(random.Random(0).sample(
        [i for i in range(mistral.size) if mistral.surfaces[i] is not None and i not in mistral.byte_values], 1000))
    t = time.perf_counter()
    naive = [naive_pm_mined(llama, mistral.surfaces[i]) for i in sample]
    naive_secs = time.perf_counter() - t
    index = DeltaIndex(llama)
    fast = [index.pm_mined(mistral.surfaces[i]) for i in sample]
    same = naive == fast and all(fast_tm.index[i] == j for i, (j, _) in zip(sample, fast))
    per_token = naive_secs / len(sample)
    extrapolated = per_token * mistral.size
    print(f"naive full scan: {naive_secs:.2f} s for {len(sample)} tokens = {per_token * 1e3:.2f} ms/token, "
          f"extrapolated to {mistral.size} tokens: {extrapolated:.1f} s")
    print(f"speed-up of pm-mined over the naive scan (llama2 -> mistral): {extrapolated / rows[0][1]:.0f}x")
    print(f"identical maps on the 1,000-token sample: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
