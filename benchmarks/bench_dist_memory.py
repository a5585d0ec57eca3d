"""Template memory per rank under torchrun: the bytes of template parameters each rank holds after FSDP2
sharding (engine/distributed.shard_template), for N = 1 and 2 CPU processes (gloo), and each rank's peak
resident memory.

    python benchmarks/bench_dist_memory.py            # a 270M-parameter random Llama template, fp32

Each N runs `torchrun --standalone --nproc-per-node N` on this file; every rank loads the template, for
N > 1 either whole then sharded, or read shard by shard from its safetensors files (what `cmc train` does
under torchrun: engine/distributed.load_template_sharded), runs one template forward and the output head
on a batch, and prints its figures. "held" counts the parameters' local storage (a DTensor's local
shard); "peak RSS" the process's high-water mark (ru_maxrss), which counts the pages of the safetensors
files transformers and the shard reader map, so on a template this small it is dominated by them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16)


def build(workdir: Path) -> Path:
    out = workdir / "template-270m"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cmc_cli.assets import cache_dir

    tok_dir = cache_dir() / "tokenizers" / "llama2"
    if not tok_dir.is_dir():
        raise SystemExit("run `cmc fetch tokenizers` first (the Llama-2 tokenizer)")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rank_main(path: Path, mode: str) -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from cmc_cli.engine import distributed
    from cmc_cli.engine.heads import head_logits
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.trainstep import template_hidden

    d = distributed.from_env()
    dev = torch.device("cpu")
    distributed.init(d, dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports and the process group, before loading
    if d.on and mode == "read":
        model = distributed.load_template_sharded(path, torch.float32, dev)
    else:
        model = load_lm(str(path)).model
        if d.on:
            distributed.shard_template(model, dev)
    full = sum(p.numel() * p.element_size() for p in model.parameters())  # a DTensor's numel is the global one
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(10, 30000, (4, 128))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    h = template_hidden(model, batch, sharded=d.on)
    with torch.no_grad():
        head_logits(model, h[:, -8:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = json.dumps({"rank": d.rank, "world": d.world, "full": full, "held": held, "peak": peak, "base": base})
    sys.stdout.write(f"RESULT {row}\n")  # one write: the ranks share the pipe
    sys.stdout.flush()
    distributed.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmc-bench-dist")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--rank-main", choices=["whole", "read"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = build(args.workdir)
    if args.rank_main:
        rank_main(path, args.rank_main)
        return
    import platform

    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo, fp32")
    print(f"{'N':>2} {'load':>24} {'rank':>4} {'template':>10} {'held':>10} {'held/template':>13} {'peak RSS':>10} {'before load':>11}")
    runs = [(n, mode) for n in [int(x) for x in args.ranks.split(",")] for mode in (["whole"] if n == 1 else ["whole", "read"])]
    for n, mode in runs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
               "--rank-main", mode, "--workdir", str(args.workdir)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode != 0 or len(rows) != n:
            raise SystemExit(f"N={n} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        for row in sorted(rows, key=lambda x: x["rank"]):
            gb = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
            how = "whole" if n == 1 else "whole, then sharded" if mode == "whole" else "read shard by shard"
            print(f"{n:>2} {how:>24} {row['rank']:>4} {gb(row['full']):>10} {gb(row['held']):>10} {row['held'] / row['full']:>13.3f} "
                  f"{gb(row['peak']):>10} {gb(row['base']):>11}")


if __name__ == "__main__":
    main()
