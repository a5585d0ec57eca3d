"""Benchmark decoding: the user model alone against CMC and proxy-tuning, from one run.

    python benchmarks/bench_decode.py                    # CPU shapes (needs `cmc fetch tokenizers`)
    python benchmarks/bench_decode.py --shape 7b         # GPU: 7B-shaped bf16 user, 110M deltas

Each variant is warmed up with a full-size run, then timed --repeats times; the median is reported.

Random-weight Llama-architecture models with real tokenizers: the user model and a same-vocabulary
delta use Llama-2's tokenizer; the cross-vocabulary delta uses GPT-2's (byte-level BPE, another
segmentation). Variants, each decoding `--new` tokens greedily for batch 1 and 8 (EOS ignored):
  (a) user        the user model alone
  (b) cmc-same    + a delta with the user's vocabulary (fed the user's ids)
  (c) cmc-cross   + a delta with another vocabulary (text re-tokenized, KV prefix reused); its output layer
                  gathered to the ids the map uses and the vocabulary mean (engine/heads.GatheredHead)
  (c') cmc-cross-full  the same through the delta's full output layer
  (c'') cmc-cross-hf    the same through `transformers`' trunk instead of engine/leantrunk.py
  (d) proxy       proxy-tuning: + expert - anti-expert, both shaped like the user (the paper's setting:
                  tuned and untuned copies of a template-sized model)
Prints tokens/s and the ratios (b)/(a), (c)/(a), (c)/(d), and for (c) how many delta tokens are
computed per generated token (ideal 1): on the random models' output, and teacher-forced on English
prose, where re-tokenization behaves as it does on real text. After one warm-up run of each variant, the
variants' runs alternate, --repeats rounds, and each gets the median of its runs: this machine drifts by
±10% within minutes, and alternating puts the drift on every variant alike.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

SHAPES = {
    # user model; deltas use engine/delta.py presets
    "cpu": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12, delta="15m"),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, delta="110m"),
}

PROSE = ("The harbour town woke slowly. Fishermen carried their nets past the old customs house, where a clerk "
         "counted crates of salted cod and argued about the price of rope. Nobody expected the storm that evening; "
         "the barometer had been broken for years, and the lighthouse keeper preferred his own predictions, which "
         "were usually wrong but always delivered with great confidence.")


def lm(tok_dir, shape, device, dtype, seed):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cmc_cli.adapters.base import HFAdapter
    from cmc_cli.engine.models import LoadedModel
    from cmc_cli.engine.delta import PRESETS

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    dims = PRESETS[shape] if isinstance(shape, str) else {k: v for k, v in shape.items() if k != "delta"}
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **dims)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval().requires_grad_(False)
    return LoadedModel(f"{tok_dir.name}-{seed}", model, tok, HFAdapter().token_surfaces(tok, tok_dir.name))


PROMPTS = ["Write a short story about a lighthouse keeper who predicts storms.",
           "Explain how a harbour works.", "List three fish.", "Why is the sea salty?",
           "Describe the customs house.", "What is rope made of?", "Tell me about nets.", "Hello!"]


def machine_line(device, dtype) -> str:
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    return f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {dtype}"


def bench_setup():
    """(device, dtype, tokenizer cache dir): the GPU in bf16 when there is one, else the CPU in fp32."""
    from cmc_cli.assets import cache_dir

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    toks = cache_dir() / "tokenizers"
    if not (toks / "llama2").is_dir() or not (toks / "gpt2").is_dir():
        raise SystemExit("run `cmc fetch tokenizers` first (Llama-2 and GPT-2 tokenizers)")
    return device, dtype, toks


def timed(dec, batch: list[str], cfg, device) -> float:
    """Wall time of decoding `batch`, every row at full length (EOS ignored); dec.stats holds its counters."""
    dec.eos_ids = set()
    dec.reset_stats()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    dec.generate(batch, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def one_batch(B: int, variants: dict, prompts: list[str], args, device) -> None:
    """Every variant at batch B, then the ratios: after a full-size warm-up of each, the variants' runs
    alternate (one of each, args.repeats times), so the machine's drift falls on all alike; medians."""
    import statistics

    from cmc_cli.engine import heads, leantrunk
    from cmc_cli.engine.sampling import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=args.new)
    batch = (prompts * 2)[:B]
    times = {name: [] for name in variants}
    for r in range(args.repeats + 1):
        for name, dec in variants.items():
            heads.GATHER = name != "cmc-cross-full"
            leantrunk.LEAN = name != "cmc-cross-hf"
            t = timed(dec, batch, cfg, device)
            if r:  # the first round warms up
                times[name].append(t)
    heads.GATHER, leantrunk.LEAN = True, True
    rates = {}
    for name, dec in variants.items():
        med = statistics.median(times[name])
        rates[name] = B * args.new / med
        extra = ""
        if name == "cmc-cross" and dec.streams[0].gathered is not None:
            extra = f"   (gathered head: {dec.streams[0].gathered.used.numel()} ids + the mean)"
        if name == "cmc-cross-full":
            s, keys = dec.streams[0], list(range(B))
            fed = sum(s.generated_fed(keys))
            needed = sum(len(s.text(k).ids) - s.rows[k].prompt_fed for k in keys)  # the delta's tokens of the generated text
            per = fed / max(1, dec.stats["generated"] - B)
            extra = (f"   delta tokens computed per generated token {per:.2f}, per delta token of the text "
                     f"{fed / max(1, needed):.2f} (random models' output)")
        print(f"batch {B}  {name:<10} {rates[name]:9.1f} tok/s  {med * 1000 / args.new:8.1f} ms/step{extra}")
    print(f"batch {B}  ratios: (b)/(a) {rates['cmc-same'] / rates['user']:.2f}   (c)/(a) {rates['cmc-cross'] / rates['user']:.2f}"
          f"   (c)/(d) {rates['cmc-cross'] / rates['proxy']:.2f}   (c)/(c') gathered/full head "
          f"{rates['cmc-cross'] / rates['cmc-cross-full']:.2f}   (c)/(c'') lean/transformers trunk "
          f"{rates['cmc-cross'] / rates['cmc-cross-hf']:.2f}")


def teacher_forced_prose(user, delta, prompt: str) -> None:
    """Re-tokenization as on real text: the delta follows PROSE, fed as the user's tokens one at a time."""
    from cmc_cli.engine.deltastate import DeltaStreams
    from cmc_cli.engine.textsync import GenText

    s = DeltaStreams(delta, same_vocab=False)
    s.add(0, prompt)
    s.step([0], [""], [[]])
    ids = user.tokenizer(PROSE, add_special_tokens=False)["input_ids"]
    gt = GenText(user.tokenizer, user.tokenizer(prompt)["input_ids"])
    for tid in ids:
        s.step([0], [gt.append(tid)], [[]])
    st = s.text(0).stats
    needed = len(s.text(0).ids) - s.rows[0].prompt_fed
    print(f"teacher-forced prose ({len(ids)} Llama-2 tokens, {needed} GPT-2 tokens): delta tokens computed per generated "
          f"token {s.generated_fed([0])[0] / len(ids):.2f}, per delta token of the text {s.generated_fed([0])[0] / needed:.2f}; "
          f"tail re-encodes {st.tail_encodes}, full re-encodes {st.full_encodes}")


def main() -> None:
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import Delta
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="cpu")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per row")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3, help="median of N")
    args = ap.parse_args()
    device, dtype, toks = bench_setup()
    shape = SHAPES[args.shape]
    user = lm(toks / "llama2", shape, device, dtype, 0)
    d_same = lm(toks / "llama2", shape["delta"], device, dtype, 1)
    d_cross = lm(toks / "gpt2", shape["delta"], device, dtype, 2)
    expert = lm(toks / "llama2", shape, device, dtype, 3)
    anti = lm(toks / "llama2", shape, device, dtype, 4)
    for m in (d_same, d_cross):
        torch.nn.init.normal_(m.model.get_output_embeddings().weight, std=0.02)
    t0 = time.perf_counter()
    tm = TokenMap.build(d_cross.vocab, user.vocab)
    map_s = time.perf_counter() - t0
    fmt = "<|user|>\n{prompt}\n<|assistant|>\n"
    variants = {
        "user": Decoder(user),
        "cmc-same": Decoder(user, [Delta(d_same, 1.0, fmt, None)]),
        "cmc-cross": Decoder(user, [Delta(d_cross, 1.0, fmt, tm.index_tensor())]),
        "cmc-cross-full": Decoder(user, [Delta(d_cross, 1.0, fmt, tm.index_tensor())]),
        "cmc-cross-hf": Decoder(user, [Delta(d_cross, 1.0, fmt, tm.index_tensor())]),  # transformers' trunk
        "proxy": Decoder(user, expert=expert, anti_expert=anti),
    }
    params = lambda m: sum(p.numel() for p in m.model.parameters()) / 1e6  # noqa: E731
    print(machine_line(device, dtype))
    print(f"user {params(user):.0f}M params (vocab {user.vocab.size}); deltas {params(d_same):.1f}M (Llama-2 vocab) and "
          f"{params(d_cross):.1f}M (GPT-2 vocab); token map GPT-2 -> Llama-2 built in {map_s:.2f} s, using "
          f"{int(tm.index_tensor().clamp(min=0).unique().numel())} of GPT-2's {d_cross.vocab.size} ids")
    for B in [int(x) for x in args.batches.split(",")]:
        one_batch(B, variants, PROMPTS, args, device)
    teacher_forced_prose(user, Delta(d_cross, 1.0, fmt, tm.index_tensor()), PROMPTS[0])


if __name__ == "__main__":
    main()
