"""Parity of `cmc serve` with `cmc generate` on real or world models: greedy answers over HTTP, token for token.

    python benchmarks/serve_parity.py --user other-base --delta idk=DELTA_DIR          # the model world
    python benchmarks/serve_parity.py --user gemma3 --delta idk=~/.cache/cmc/real-idk/smollm2-idk-for-gemma3-s0 \
        --prompts ~/.cache/cmc/real-idk/data/forget.jsonl

Starts `cmc serve USER --delta ...`, sends every prompt (raw, as `cmc generate --user-format raw` reads
it) at once — --concurrency requests in flight — each with its own choice of deltas and strengths, and
compares each answer's token ids with cmc's own decoder on that prompt alone. Prints one line per
choice and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_PROMPTS = ["Question: Who wrote the book about the harbour?\nAnswer:", "Question: Where was the author born?\nAnswer:",
                   "Question: What is the capital of France?\nAnswer:", "Tell me about the lighthouse keeper.",
                   "Question: What did the author study?\nAnswer:", "Question: Which prize did the author win?\nAnswer:",
                   "Hello! How are you?", "Question: Name the author's first novel.\nAnswer:"]


def read_prompts(path: str | None, limit: int) -> list[str]:
    if path is None:
        return DEFAULT_PROMPTS[:limit]
    from cmc_cli.data.records import read_records

    rows = read_records(Path(path).expanduser())
    out = []
    for _, r in rows:
        q = r.get("question") or r.get("prompt") or r.get("instruction")
        if q:
            out.append(f"Question: {q}\nAnswer:")
    return out[:limit]


def parse_served(specs: list[str]) -> dict[str, tuple[str, float]]:
    """--delta NAME=PATH[:ALPHA] values -> {name: (path, alpha)}."""
    served = {}
    for text in specs:
        name, _, rest = text.partition("=")
        path, _, a = rest.rpartition(":") if ":" in rest else (rest, "", "")
        served[name] = (str(Path(path).expanduser()), float(a) if a else 1.0)
    return served


def reference(user_path: str, served: dict, jobs: list, new: int) -> tuple[list, int, int, float, int | None]:
    """cmc's own decoder on every job: (token ids per job, answers the deltas changed, jobs with deltas, seconds,
    the user's EOS id); the models are freed before the server starts."""
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.engine.sampling import GenerationConfig

    user = load_lm(user_path)
    eos = user.tokenizer.eos_token_id
    t = time.perf_counter()
    want = []
    for p, x in jobs:
        alphas = {}
        for item in x["cmc_deltas"]:
            n, _, a = item.partition(":")
            alphas[n] = float(a) if a else served[n][1]
        deltas = [load_delta(served[n][0], user, alpha=a) for n, a in alphas.items()]
        want.append(Decoder(user, deltas, user_format="raw").generate([p], GenerationConfig(max_new_tokens=new))[0].token_ids)
    plain = Decoder(user, [], user_format="raw")
    with_d = [(p, w) for (p, x), w in zip(jobs, want) if x["cmc_deltas"]]
    moved = sum(w != plain.generate([p], GenerationConfig(max_new_tokens=new))[0].token_ids for p, w in with_d)
    ref_s = time.perf_counter() - t
    del user, deltas, plain  # the server needs the memory
    gc.collect()
    return want, moved, len(with_d), ref_s, eos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", required=True)
    ap.add_argument("--delta", action="append", default=[], help="NAME=PATH[:ALPHA], repeatable")
    ap.add_argument("--prompts", help="JSONL with question/prompt/instruction fields (default: a built-in set)")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--vllm-args", default="--gpu-memory-utilization 0.1 --max-model-len 1024 --seed 0")
    args = ap.parse_args()

    from cmc_cli.serve.launch import ServerProcess

    served = parse_served(args.delta)
    names = list(served)
    choices = [{"cmc_deltas": []}] + [{"cmc_deltas": [n]} for n in names] + [{"cmc_deltas": [f"{n}:0.5"]} for n in names]
    if len(names) > 1:
        choices.append({"cmc_deltas": [f"{names[0]}:0.7", f"{names[1]}:1.3"]})
    prompts = read_prompts(args.prompts, args.limit)
    jobs = [(p, choices[i % len(choices)]) for i, p in enumerate(prompts)]
    want, moved, n_with, ref_s, eos = reference(args.user, served, jobs, args.new)

    log = Path(tempfile.mkdtemp()) / "serve.log"
    serve_args = [args.user] + sum((["-d", f"{n}={pa}:{a}"] for n, (pa, a) in served.items()), [])
    t = time.perf_counter()
    with ServerProcess(serve_args, log, args.vllm_args.split()) as s:
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            got = list(pool.map(lambda j: s.complete(j[0], args.new, j[1]), jobs))
        serve_s = time.perf_counter() - t
    got = [g[:g.index(eos)] if eos in g else g for g in got]
    print(f"user {args.user}; deltas {', '.join(f'{n}={p}:{a}' for n, (p, a) in served.items())}")
    print(f"{len(jobs)} prompts, {args.new} new tokens, {args.concurrency} in flight; server up in {start_s:.0f} s, "
          f"answers in {serve_s:.1f} s (reference decoder {ref_s:.1f} s)")
    by_choice: dict[str, list[bool]] = {}
    for (p, x), g, w in zip(jobs, got, want):
        by_choice.setdefault(json.dumps(x["cmc_deltas"]), []).append(g == w)
        if g != w:
            print(f"  DIFFERS {x['cmc_deltas']} {p[:50]!r}: serve {g[:12]}... generate {w[:12]}...")
    for k, v in by_choice.items():
        print(f"  cmc_deltas {k}: {sum(v)}/{len(v)} equal token for token")
    print(f"  answers the deltas changed (against the user alone): {moved}/{n_with}")
    sys.exit(0 if all(all(v) for v in by_choice.values()) else 1)


if __name__ == "__main__":
    main()
