"""Template memory per rank under torchrun: the bytes of template parameters each rank holds after FSDP2
sharding (engine/distributed.shard_template), for N = 1 and 2 CPU processes (gloo), and each rank's peak
resident memory.

    python benchmarks/bench_dist_memory.py            # a 270M-parameter random Llama template, fp32

Each N runs `torchrun --standalone --nproc-per-node N` on this file; every rank loads the template (as
`cmc train` does: engine/models.load_lm), shards it when N > 1, runs one template forward and the output
head on a batch, and prints its figures. "held" counts the parameters' local storage (a DTensor's local
shard); "peak RSS" is the process's high-water mark (ru_maxrss), which includes the whole template
loaded before it is sharded.
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


def rank_main(path: Path) -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from cmc_cli.engine import distributed
    from cmc_cli.engine.heads import head_logits
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.trainstep import template_hidden

    d = distributed.from_env()
    dev = torch.device("cpu")
    distributed.init(d, dev)
    lm = load_lm(str(path))
    full = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    if d.on:
        distributed.shard_template(lm.model, dev)
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in lm.model.parameters())
    ids = torch.randint(10, 30000, (4, 128))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    h = template_hidden(lm.model, batch, sharded=d.on)
    with torch.no_grad():
        head_logits(lm.model, h[:, -8:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"rank": d.rank, "world": d.world, "full": full, "held": held, "peak": peak}), flush=True)
    distributed.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmc-bench-dist")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = build(args.workdir)
    if args.rank_main:
        rank_main(path)
        return
    import platform

    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo, fp32")
    print(f"{'N':>2} {'rank':>4} {'template':>10} {'held':>10} {'held/template':>13} {'peak RSS':>10}")
    for n in [int(x) for x in args.ranks.split(",")]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
               "--rank-main", "--workdir", str(args.workdir)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode != 0 or len(rows) != n:
            raise SystemExit(f"N={n} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        for row in sorted(rows, key=lambda x: x["rank"]):
            gb = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
            print(f"{n:>2} {row['rank']:>4} {gb(row['full']):>10} {gb(row['held']):>10} {row['held'] / row['full']:>13.3f} "
                  f"{gb(row['peak']):>10}")


if __name__ == "__main__":
    main()
