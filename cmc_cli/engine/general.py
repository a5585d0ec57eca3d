"""The default general text of the silence term: text the template itself samples (no download, no choice
of corpus; docs/training.md). Sampled once per run from the template's BOS (or its EOS when it has none),
temperature 1, from the run's seed: the same text on a resumed run and on every rank (under torchrun
every rank samples in lockstep, as the sharded template needs, and rank 0's tokens are broadcast)."""

from __future__ import annotations

import hashlib

import torch

from cmc_cli.data.general import windows
from cmc_cli.data.instruct import Encoded, bos_ids


@torch.no_grad()
def sample_ids(model, tokenizer, n: int, length: int, seed: int, device) -> torch.Tensor:
    """(n, length) token ids the model samples after its start token, from `seed`, EOS suppressed."""
    start = bos_ids(tokenizer) or [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    ids = torch.tensor([start] * n, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start[0]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=length, min_new_tokens=length, pad_token_id=pad)
    return out[:, len(start):]


def template_samples(lm, n: int, length: int, seed: int, device, dist) -> tuple[list[Encoded], str]:
    """The general set from the template's own samples, and the sha256 of their ids (recorded like a data
    file's: a resume that would sample other text is refused)."""
    ids = sample_ids(lm.model, lm.tokenizer, n, length, seed, device)
    if dist.on:
        import torch.distributed as tdist

        ids = ids.contiguous()
        tdist.broadcast(ids, src=0)
    rows = ids.cpu().tolist()
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()
    bos = bos_ids(lm.tokenizer)
    out = [e for r, row in enumerate(rows) for e in windows(row, bos, length + len(bos), f"template sample {r + 1}")]
    return out, digest
