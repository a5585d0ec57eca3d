"""Benchmark the look-ahead (pm-lookahead maps) against the plain PM-MinED map, from one run.

    python benchmarks/bench_lookahead.py                 # CPU shapes (needs `cmc fetch tokenizers`)
    python benchmarks/bench_lookahead.py --shape 7b      # GPU: 7B-shaped bf16 user, 110M delta

Random-weight Llama-architecture models with real tokenizers, as in bench_decode.py: the user model
has Llama-2's vocabulary, the delta GPT-2's. Variants, each decoding `--new` tokens greedily for
batch 1 and 8 (EOS ignored): the PM-MinED map (no look-ahead), then pm-lookahead at k = 4, 16 and 64.
Prints tokens/s, the ratio to PM-MinED, and the delta tokens computed per generated token: those the
delta is fed (as without look-ahead) and the look-ahead's, which are computed and dropped.
"""

from __future__ import annotations

import argparse

import torch

from bench_decode import PROMPTS, SHAPES, bench_setup, median_time, lm, machine_line


def main() -> None:
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import Delta
    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.engine.lookahead import Lookahead
    from cmc_cli.tokenmaps.strategies import PREFIX
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="cpu")
    ap.add_argument("--new", type=int, default=32, help="tokens generated per row")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--ks", default="4,16,64")
    ap.add_argument("--repeats", type=int, default=3, help="median of N")
    args = ap.parse_args()
    device, dtype, toks = bench_setup()
    shape = SHAPES[args.shape]
    user = lm(toks / "llama2", shape, device, dtype, 0)
    delta = lm(toks / "gpt2", shape["delta"], device, dtype, 2)
    torch.nn.init.normal_(delta.model.get_output_embeddings().weight, std=0.02)
    pm = TokenMap.build(delta.vocab, user.vocab, strategy="pm-mined")
    fmt = "<|user|>\n{prompt}\n<|assistant|>\n"
    variants = {"pm-mined": Decoder(user, [Delta(delta, 1.0, fmt, pm.index_tensor())])}
    for k in [int(x) for x in args.ks.split(",")]:
        tm = TokenMap.build(delta.vocab, user.vocab, strategy="pm-lookahead", lookahead_k=k)
        d = Delta(delta, 1.0, fmt, tm.index_tensor(), token_map=tm, cap=tm.cap_tensor(),
                  lookahead=Lookahead(tm, delta.vocab, user.vocab, k))
        variants[f"lookahead k={k}"] = Decoder(user, [d])
    params = lambda m: sum(p.numel() for p in m.model.parameters()) / 1e6  # noqa: E731
    print(machine_line(device, dtype))
    print(f"user {params(user):.0f}M params (Llama-2 vocab {user.vocab.size}); delta {params(delta):.1f}M (GPT-2 vocab); "
          f"{int((pm.kind == PREFIX).sum()):,} user tokens prefix-mapped by PM-MinED")
    prompts = PROMPTS
    cfg = GenerationConfig(max_new_tokens=args.new)
    for B in [int(x) for x in args.batches.split(",")]:
        base = None
        for name, dec in variants.items():
            med = median_time(dec, (prompts * 2)[:B], cfg, args.repeats, device)
            rate = B * args.new / med
            base = base or rate
            gen = max(1, dec.stats["generated"])
            print(f"batch {B}  {name:<15} {rate:8.1f} tok/s  {med * 1000 / args.new:7.1f} ms/step  x{rate / base:.2f}"
                  f"   delta tokens per generated token: fed {dec.stats['delta_tokens'][0] / gen:.2f}, "
                  f"look-ahead {dec.stats['lookahead_tokens'][0] / gen:.2f}")


if __name__ == "__main__":
    main()
