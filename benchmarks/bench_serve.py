"""Benchmark serving: vLLM alone against vLLM + a cross-vocabulary cmc delta, beside `cmc generate`, from one run.

    python benchmarks/bench_serve.py                   # CPU (needs `cmc fetch tokenizers` and the serve extra)
    python benchmarks/bench_serve.py --shape 7b        # GPU: a 7B-shaped bf16 user, a 110M delta
    python benchmarks/bench_serve.py --user $CMC_CACHE/models/qwen-coder-1.5b --delta DELTA_DIR --batches 1,8 --mem-fraction 0.5
                                                       # real models: a fetched user, a trained delta

Random-weight Llama-architecture models with real tokenizers, written to --workdir once: the user with
Llama-2's vocabulary, the delta with GPT-2's (another segmentation: its text is re-tokenized every step).
The CPU shapes put the delta at under 10% of the user's compute per token (its printed share counts the
multiply-adds of the transformer blocks and the output layer).

Each variant runs in its own process (one vLLM engine each): after a full-size warm-up, for each
concurrency N, N requests of --new tokens each (EOS ignored, greedy) are given to the engine at once
(vllm.LLM.generate, which schedules them as a server schedules concurrent requests), --repeats times; the
median wall time gives tokens/s. Variants:
  vllm        vLLM alone
  vllm+cmc    vLLM with cmc's processor, every request using the delta
  cmc         `cmc generate`'s decoder at batch N (transformers), with the delta
  user        `cmc generate`'s decoder at batch N, the user alone
  vllm+noop   (on request) vLLM with cmc's processor loaded and no request using a delta: what the
              processor's interface costs by itself
  paired      (on request) one vLLM engine with cmc's processor, runs without (paired:noop) and with the
              delta (paired:cmc) alternating: the delta's own cost, free of the drift between processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "cpu": dict(user=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                          num_key_value_heads=16), delta="15m"),
    "7b": dict(user=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32), delta="110m"),
}
PROMPTS = ["Write a short story about a lighthouse keeper who predicts storms.", "Explain how a harbour works.",
           "List three fish.", "Why is the sea salty?", "Describe the customs house.", "What is rope made of?",
           "Tell me about nets.", "Hello!"]
FMT = "<|user|>\n{prompt}\n<|assistant|>\n"


def text_config(cfg: dict) -> dict:
    """A model's config.json, or its text model's where the language model is nested (Gemma-3's text_config)."""
    return {**cfg, **cfg.get("text_config", {})}


def macs_per_token(cfg: dict) -> int:
    """Multiply-adds per generated token of a Llama: attention and MLP projections, and the output layer."""
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v


def build(workdir: Path, shape: str) -> tuple[Path, Path]:
    """The user model and the delta directory (random weights, real tokenizers), written once."""
    from cmc_cli.assets import cache_dir

    user_dir, delta_dir = workdir / f"user-{shape}", workdir / f"delta-{shape}"
    if user_dir.is_dir() and delta_dir.is_dir():
        return user_dir, delta_dir
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cmc_cli.adapters.base import HFAdapter
    from cmc_cli.engine.delta import delta_card, new_delta
    from cmc_cli.fileio import atomic_write_json

    toks = cache_dir() / "tokenizers"
    if not (toks / "llama2").is_dir() or not (toks / "gpt2").is_dir():
        raise SystemExit("run `cmc fetch tokenizers` first (Llama-2 and GPT-2 tokenizers)")
    ut, dt = AutoTokenizer.from_pretrained(str(toks / "llama2")), AutoTokenizer.from_pretrained(str(toks / "gpt2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(ut), max_position_embeddings=2048, tie_word_embeddings=False,
                      bos_token_id=ut.bos_token_id, eos_token_id=ut.eos_token_id, **SHAPES[shape]["user"])
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(user_dir)
    ut.save_pretrained(user_dir)
    delta = new_delta(SHAPES[shape]["delta"], len(dt), 2048, seed=1, bos_id=dt.bos_token_id, eos_id=dt.eos_token_id)
    torch.nn.init.normal_(delta.get_output_embeddings().weight, std=0.02)
    delta.save_pretrained(delta_dir)
    dt.save_pretrained(delta_dir)
    vocab = HFAdapter().token_surfaces(dt, "gpt2")
    card = delta_card(task="instruct", prompt_format=FMT,
                      template={"ref": "random", "adapter": "llama", "fingerprint": vocab.fingerprint, "vocab_size": len(dt)})
    atomic_write_json(delta_dir / "cmc.json", card)
    return user_dir, delta_dir


def _engine(user: Path, delta: Path | None, dtype: str, mem: float):
    from vllm import LLM

    kw = {}
    if delta is not None:
        from cmc_cli.serve import PROCESSOR, configure

        configure(str(user), deltas=[f"d={delta}"], dtype=dtype)
        kw["logits_processors"] = [PROCESSOR]
    import torch

    cpu = not torch.cuda.is_available()
    return LLM(model=str(user), dtype=dtype, enforce_eager=cpu, max_model_len=1024, seed=0,
               gpu_memory_utilization=mem if cpu else 0.85, **kw)


def _timed(llm, prompts: list[str], sp, new: int) -> float:
    t = time.perf_counter()
    res = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t
    assert all(len(r.outputs[0].token_ids) == new for r in res)
    return dt


def _params(new: int, deltas: list[str] | None):
    from vllm import SamplingParams

    extra = {"cmc_deltas": deltas} if deltas is not None else None
    return SamplingParams(temperature=0, max_tokens=new, ignore_eos=True, extra_args=extra)


def run_vllm(user: Path, delta: Path | None, batches: list[int], new: int, repeats: int, dtype: str,
             mem: float = 0.3, noop: bool = False) -> dict:
    llm = _engine(user, delta, dtype, mem)
    sp = _params(new, None if delta is None else [] if noop else ["d"])
    out = {}
    for B in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
        _timed(llm, prompts, sp, new)  # warm-up at full size
        out[B] = B * new / statistics.median([_timed(llm, prompts, sp, new) for _ in range(repeats)])
    return out


def run_paired(user: Path, delta: Path, batches: list[int], new: int, repeats: int, dtype: str, mem: float = 0.3) -> dict:
    """One engine with cmc's processor; runs without and with the delta alternate, so the machine's drift
    (±10% between processes here) falls on both alike."""
    llm = _engine(user, delta, dtype, mem)
    sps = {"paired:noop": _params(new, []), "paired:cmc": _params(new, ["d"])}
    out = {name: {} for name in sps}
    for B in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
        times = {name: [] for name in sps}
        for sp in sps.values():
            _timed(llm, prompts, sp, new)  # warm-up at full size
        for _ in range(repeats):
            for name, sp in sps.items():
                times[name].append(_timed(llm, prompts, sp, new))
        for name in sps:
            out[name][B] = B * new / statistics.median(times[name])
    return out


def run_cmc(user: Path, delta: Path | None, batches: list[int], new: int, repeats: int, dtype: str) -> dict:
    import torch

    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.devices import DTYPES
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.engine.sampling import GenerationConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    u = load_lm(str(user), dtype=DTYPES[dtype], device=device)
    deltas = [load_delta(delta, u, 1.0, device=device, dtype=DTYPES[dtype])] if delta is not None else []
    dec = Decoder(u, deltas, user_format="raw")
    dec.eos_ids = set()
    cfg = GenerationConfig(max_new_tokens=new)
    out = {}
    for B in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
        dec.generate(prompts, cfg)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            dec.generate(prompts, cfg)
            times.append(time.perf_counter() - t)
        out[B] = B * new / statistics.median(times)
    return out


VARIANTS = {"vllm": (run_vllm, False), "vllm+cmc": (run_vllm, True), "cmc": (run_cmc, True), "user": (run_cmc, False),
            "vllm+noop": (run_vllm, True), "paired": (run_paired, True)}  # the last two on request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="cpu")
    ap.add_argument("--new", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--batches", default="1,8,32", help="concurrent requests")
    ap.add_argument("--repeats", type=int, default=3, help="median of N")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmc-bench-serve")
    ap.add_argument("--variants", default="vllm,vllm+cmc,cmc,user",
                    help="any of " + ",".join(VARIANTS) + " (vllm+noop: the processor's own cost)")
    ap.add_argument("--user", type=Path, help="a real user model directory (instead of the random --shape ones)")
    ap.add_argument("--delta", type=Path, help="a trained delta directory, with --user")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on a GPU, else float32")
    ap.add_argument("--mem-fraction", type=float, default=0.3,
                    help="vLLM on CPU: share of the machine's memory for the weights and KV cache (0.5 for a 1.5B fp32 user in 24 GiB)")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # one variant, in a child process: prints its JSON
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    import torch

    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if (args.user is None) != (args.delta is None):
        raise SystemExit("give --user and --delta together (or neither: random models of --shape)")
    user, delta = (args.user, args.delta) if args.user else build(args.workdir, args.shape)
    if args.only:
        fn, with_delta = VARIANTS[args.only]
        extra = {"mem": args.mem_fraction} if fn in (run_vllm, run_paired) else {}
        extra.update({"noop": args.only == "vllm+noop"} if fn is run_vllm else {})
        print("RESULT " + json.dumps(fn(user, delta if with_delta else None, batches, args.new, args.repeats, dtype, **extra)))
        return
    ucfg, dcfg = (text_config(json.loads((p / "config.json").read_text())) for p in (user, delta))
    share = macs_per_token(dcfg) / macs_per_token(ucfg)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    print(f"{dev}, {os.cpu_count()} cores, torch {torch.__version__}, dtype {dtype}")
    print(f"user {user.name} {macs_per_token(ucfg) / 1e6:.0f}M MACs/token ({ucfg['vocab_size']:,} ids), delta "
          f"{macs_per_token(dcfg) / 1e6:.1f}M ({dcfg['vocab_size']:,} ids): the delta is {share:.1%} of the user's compute "
          f"(limit of the ratio {1 - share:.2f}); {args.new} new tokens per request, median of {args.repeats}")
    rates = {}
    for name in args.variants.split(","):
        cmd = [sys.executable, __file__, "--only", name, "--shape", args.shape, "--new", str(args.new), "--batches",
               args.batches, "--repeats", str(args.repeats), "--workdir", str(args.workdir), "--dtype", dtype,
               "--mem-fraction", str(args.mem_fraction)]
        cmd += ["--user", str(user), "--delta", str(delta)] if args.user else []
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if res.returncode != 0 or line is None:
            raise SystemExit(f"{name} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        got = json.loads(line[7:])
        for n, r in (got.items() if name == "paired" else [(name, got)]):
            rates[n] = {int(k): v for k, v in r.items()}
        print(f"  {name}: done in {time.perf_counter() - t:.0f} s", flush=True)
    print(f"{'concurrent':>10} " + " ".join(f"{n:>11}" for n in rates) + "   vllm+cmc/vllm  cmc/user  paired cmc/noop")
    for B in batches:
        row = " ".join(f"{rates[n][B]:11.1f}" for n in rates)
        r1 = rates.get("vllm+cmc", {}).get(B, float("nan")) / rates.get("vllm", {}).get(B, float("nan"))
        r2 = rates.get("cmc", {}).get(B, float("nan")) / rates.get("user", {}).get(B, float("nan"))
        r3 = rates.get("paired:cmc", {}).get(B, float("nan")) / rates.get("paired:noop", {}).get(B, float("nan"))
        print(f"{B:>10} {row}   {r1:13.2f}  {r2:8.2f}  {r3:15.2f}")
    print("(tokens/s: generated tokens of all requests / wall time)")


if __name__ == "__main__":
    main()
