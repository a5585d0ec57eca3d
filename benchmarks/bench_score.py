"""Benchmark answer scoring (engine/score.py): items/s, and time against answer length.

    python benchmarks/bench_score.py            # CPU shapes (needs `cmc fetch tokenizers`)

Random-weight Llama-architecture models with real tokenizers: the user model on Llama-2's vocabulary,
a cross-vocabulary delta on GPT-2's. Prints, from one run:
  - TOFU-style scoring items/s (short question + ~40-token answer, batch 8) for the user alone and
    with the delta;
  - seconds per answer of 64 ... 1024 user tokens, for the scorer (one pass + short continuations)
    and for the research code's method (re-tokenize the prefix and rerun the delta without a cache at
    every position: O(length^2)), up to --naive-max tokens; and their ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from bench_decode import PROSE, lm  # same model builder and text

SHAPE = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8)


def naive_delta_pass(delta, user_tok, prompt_ids, answer_ids, head):
    """The research code's way: at every position re-encode the whole prefix and run the delta from scratch."""
    from cmc_cli.engine.textsync import GenText

    g = GenText(user_tok, prompt_ids)
    text = ""
    tok = delta.lm.tokenizer
    out = []
    for t in range(len(answer_ids)):
        ids = delta.lm.bos + tok(head + text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out.append(delta.lm.model(input_ids=torch.tensor([ids])).logits[0, -1])
        text = g.append(answer_ids[t])
    return out


def main() -> None:
    from cmc_cli.assets import cache_dir
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import Delta
    from cmc_cli.engine.score import Scorer
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="64,128,256,512,1024")
    ap.add_argument("--naive-max", type=int, default=256)
    ap.add_argument("--items", type=int, default=32)
    args = ap.parse_args()
    toks = cache_dir() / "tokenizers"
    if not (toks / "llama2").is_dir() or not (toks / "gpt2").is_dir():
        raise SystemExit("run `cmc fetch tokenizers` first (Llama-2 and GPT-2 tokenizers)")
    device, dtype = torch.device("cpu"), torch.float32
    user = lm(toks / "llama2", SHAPE, device, dtype, 0)
    d = lm(toks / "gpt2", "15m", device, dtype, 2)
    torch.nn.init.normal_(d.model.get_output_embeddings().weight, std=0.02)
    fmt = "Question: {prompt}\nAnswer:"
    delta = Delta(d, 1.0, fmt, TokenMap.build(d.vocab, user.vocab).index_tensor())
    alone, cmc = Scorer(Decoder(user)), Scorer(Decoder(user, [delta]))
    print(f"cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"user {sum(p.numel() for p in user.model.parameters()) / 1e6:.0f}M (Llama-2 vocab), delta "
          f"{sum(p.numel() for p in d.model.parameters()) / 1e6:.1f}M (GPT-2 vocab)")
    words = PROSE.split()
    qs = [f"What happened in the harbour town on day {i}?" for i in range(args.items)]
    answers = [" ".join(words[i % 20: i % 20 + 30]) for i in range(args.items)]
    for name, sc in (("user alone", alone), ("user + cross-vocab delta", cmc)):
        sc.score(qs[:2], answers[:2])
        t = time.perf_counter()
        for s in range(0, args.items, 8):
            sc.score(qs[s:s + 8], answers[s:s + 8])
        dt = time.perf_counter() - t
        print(f"TOFU-style items ({args.items}, batch 8): {name:<26} {args.items / dt:7.1f} items/s")
    long_ids = user.tokenizer((PROSE + " ") * 40, add_special_tokens=False)["input_ids"]
    print("answer length (user tokens) | scorer s | continuation tokens | naive s | naive / scorer")
    prev = None
    for L in [int(x) for x in args.lengths.split(",")]:
        answer = user.tokenizer.decode(long_ids[:L])
        a_ids = user.tokenizer(answer, add_special_tokens=False)["input_ids"]
        t = time.perf_counter()
        res = cmc.score(["Tell me a long story."], [answer])[0]
        s_time = time.perf_counter() - t
        naive = "—"
        ratio = "—"
        if L <= args.naive_max:
            t = time.perf_counter()
            naive_delta_pass(delta, user.tokenizer, cmc.dec.user_prompt_ids("Tell me a long story."), a_ids,
                             fmt.replace("{prompt}", "Tell me a long story."))
            n_time = time.perf_counter() - t
            naive, ratio = f"{n_time:8.2f}", f"{n_time / s_time:6.1f}x"
        growth = f"  (x{s_time / prev:.2f} for x2 length)" if prev else ""
        prev = s_time
        print(f"{len(a_ids):27d} | {s_time:8.3f} | {res.delta_extra_tokens[0]:19d} | {naive:>7} | {ratio}{growth}")


if __name__ == "__main__":
    main()
