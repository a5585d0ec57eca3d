"""Plain causal-LM training for the model world: "base" models learn prose, "TOFU" models are then
fine-tuned on question-answer pairs (loss on the answers), exactly the benchmark's first step.

This is ordinary fine-tuning of small models on CPU; CMC's own training is engine/train.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cmc_cli.data.instruct import Encoded, Example, bos_ids, collate, encode
from cmc_cli.engine.combine import IGNORE, unlearning_loss
from cmc_cli.engine.delta import random_lm
from cmc_cli.engine.trainstep import lr_at
from cmc_cli.fileio import write_dir_atomically

ARCHS = ("llama", "qwen2")


def new_model(arch: str, tokenizer, hidden: int, layers: int, heads: int, seed: int, max_positions: int = 512):
    """A randomly initialised causal LM of `arch` sized to the tokenizer (the world's shapes)."""
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                  max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return random_lm(arch, seed, **common, **({"use_sliding_window": False} if arch == "qwen2" else {}))


def encode_prose(texts: list[str], tokenizer, max_length: int) -> list[Encoded]:
    """bos + text + eos, every token learned; long texts are cut into windows of max_length."""
    bos = bos_ids(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for t in texts:
        ids = bos + list(tokenizer(t, add_special_tokens=False)["input_ids"]) + eos
        for s in range(0, len(ids), max_length):
            chunk = ids[s:s + max_length]
            if len(chunk) > 1:
                out.append(Encoded(chunk, list(chunk), "prose"))
    return out


def encode_qa(pairs: list[tuple[str, str]], tokenizer, prompt_format: str, max_length: int) -> list[Encoded]:
    return encode([Example(q, a, "qa") for q, a in pairs], tokenizer, prompt_format, max_length)


@dataclass
class LMResult:
    steps: int
    final_loss: float
    seconds: float
    tokens: int


def train_lm(model, data: list[Encoded], pad_id: int, epochs: int, lr: float, batch_size: int, seed: int,
             warmup_ratio: float = 0.05, on_epoch=None) -> LMResult:
    """AdamW with warmup + cosine decay; mean cross-entropy over the learned tokens of each batch."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = steps_per_epoch * epochs
    warmup = int(warmup_ratio * total)
    g = torch.Generator().manual_seed(seed)
    step, loss_val, tokens, t0 = 0, float("nan"), 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        losses = []
        for b in range(steps_per_epoch):
            batch = collate([data[i] for i in order[b * batch_size:(b + 1) * batch_size]], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, lr, max(1, warmup))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            losses.append(float(loss.detach()))
        loss_val = sum(losses) / len(losses)
        if on_epoch:
            on_epoch(epoch + 1, epochs, loss_val)
    model.eval()
    return LMResult(step, loss_val, time.perf_counter() - t0, tokens)


def save_model(model, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Weights + the tokenizer files, written to a staging directory and swapped into place."""
    import shutil

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy(f, tmp / f.name)

    write_dir_atomically(out_dir, fill)
    return Path(out_dir)


def unlearn_lm(model, forget: list[Encoded], retain: list[Encoded], pad_id: int, lr: float, batch_size: int,
               max_steps: int, seed: int, retain_weight: float = 1.0, stop_forget_loss: float | None = None) -> LMResult:
    """Direct gradient-difference unlearning of a model's own weights (the baseline CMC is compared with):
    loss = -CE(forget batch) + retain_weight * CE(retain batch), until max_steps or forget CE >= the stop."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0, step, forget_ce = time.perf_counter(), 0, float("nan")

    def ce(batch_items):
        b = collate(batch_items, pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(), ignore_index=IGNORE)

    while step < max_steps:
        f_idx = torch.randperm(len(forget), generator=g)[:batch_size].tolist()
        r_idx = torch.randperm(len(retain), generator=g)[:batch_size].tolist()
        f_loss = ce([forget[i] for i in f_idx])
        r_loss = ce([retain[i] for i in r_idx])
        unlearning_loss("ascent", f_loss, r_loss, 1.0, retain_weight).backward()  # the gradient difference
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        forget_ce = float(f_loss.detach())
        if stop_forget_loss is not None and forget_ce >= stop_forget_loss:
            break
    model.eval()
    return LMResult(step, forget_ce, time.perf_counter() - t0, 0)
