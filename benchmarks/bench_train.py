"""Benchmark a CMC training step against its parts, and the chunked loss against a naive one.

    python benchmarks/bench_train.py [--vocab 32000 --hidden 256 --layers 4 --batch 8 --seq 256]

Each variant runs in its own subprocess so its peak memory (max RSS on CPU, max allocated on GPU)
is its own. Variants:
  cmc      the engine's step: template hidden states in inference mode, delta forward/backward,
           combined loss in chunks straight from hidden states, optimizer step
  parts    template forward in inference mode (logits included) + delta forward/backward on its own
           CE loss + optimizer step: what CMC cannot avoid; the target is cmc / parts <= 1.15
  naive    the template's fp32 logits kept with gradient tracking, full combined logits, one CE
Prints tokens/s, ms/step and peak memory per variant, and the ratios, from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def build(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from cmc_cli.engine.delta import new_delta

    torch.manual_seed(0)
    tcfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4 if args.inter == 0 else args.inter,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       max_position_embeddings=args.seq, tie_word_embeddings=False)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        template = LlamaForCausalLM(tcfg).to(dtype).eval().requires_grad_(False)
    delta = new_delta(args.delta, args.vocab, args.seq, seed=0).to(device)
    torch.nn.init.normal_(delta.get_output_embeddings().weight, std=0.02)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    mask = torch.ones_like(ids)
    targets = torch.cat([ids[:, 1:], torch.full((args.batch, 1), -100, device=device)], dim=1)
    return template, delta, {"input_ids": ids, "attention_mask": mask, "targets": targets}


def step_fn(variant, template, delta, batch, opt, chunk):
    from cmc_cli.engine.heads import final_hidden
    from cmc_cli.engine.trainstep import chunked_nll, delta_step, template_hidden

    autocast = torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16,
                              enabled=batch["input_ids"].device.type == "cuda")
    n = int((batch["targets"] != -100).sum())
    if variant == "cmc":
        h_t = template_hidden(template, batch)
        with autocast:
            h_d = final_hidden(delta, batch["input_ids"], batch["attention_mask"])
        total, _ = chunked_nll(template, delta, h_t, h_d, batch["targets"], "log-softmax-template", chunk)
        (total / n).backward()
    elif variant == "parts":
        with torch.inference_mode():
            template(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        with autocast:
            logits = delta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-100).backward()
    elif variant == "naive":
        t_logits = template(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().requires_grad_(True)
        with autocast:
            d_logits = delta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        final = F.log_softmax(t_logits, -1) + d_logits.float()
        F.cross_entropy(final.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100).backward()
    delta_step(delta, opt, 1.0, 1e-4)


def run_variant(args) -> dict:
    from cmc_cli.engine.devices import pick_device

    device = pick_device(args.device)
    template, delta, batch = build(args, device)
    opt = torch.optim.AdamW(delta.parameters(), lr=1e-4)
    for _ in range(args.warmup):
        step_fn(args.variant, template, delta, batch, opt, args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step_fn(args.variant, template, delta, batch, opt, args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = (time.perf_counter() - t) / args.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": args.variant, "s_per_step": secs, "tokens_per_s": args.batch * args.seq / secs, "peak_bytes": peak,
            "device": str(device), "template_params": sum(p.numel() for p in template.parameters()),
            "delta_params": sum(p.numel() for p in delta.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--delta", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variant", default=None)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for v in ("parts", "cmc", "naive"):
        cmd = [sys.executable, __file__, "--variant", v] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[v] = json.loads(out)
    r0 = results["cmc"]
    print(f"machine: {platform.machine()} {r0['device']}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"template {r0['template_params'] / 1e6:.1f}M params (vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers), "
          f"delta {r0['delta_params'] / 1e6:.2f}M ({args.delta}), batch {args.batch} x {args.seq} tokens")
    for v, r in results.items():
        print(f"{v:>6}: {r['s_per_step'] * 1e3:8.1f} ms/step  {r['tokens_per_s']:10,.0f} tokens/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB")
    print(f"cmc / parts time ratio: {results['cmc']['s_per_step'] / results['parts']['s_per_step']:.3f} (target <= 1.15)")
    print(f"naive / cmc peak memory: {results['naive']['peak_bytes'] / results['cmc']['peak_bytes']:.2f}x; "
          f"naive / cmc time: {results['naive']['s_per_step'] / results['cmc']['s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
