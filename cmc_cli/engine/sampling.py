"""Choosing the next token from a decode step's scores: greedy, or top-k / top-p sampling per row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmc_cli.config import check_sampling


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()  # user tokens never generated: as the tokenizer spells them, or ids

    def __post_init__(self):
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.suppress)


def choose_tokens(scores: torch.Tensor, cfg: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """(B, V) scores -> (B,) ids: argmax at temperature 0, else top-k / top-p sampling per row."""
    if cfg.temperature <= 0:
        return scores.argmax(dim=-1)
    s = scores.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < s.shape[-1]:
        kth = torch.topk(s, cfg.top_k, dim=-1).values[:, -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_s, order = torch.sort(s, dim=-1, descending=True)
        probs = torch.softmax(sorted_s, dim=-1)
        cut = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_s = sorted_s.masked_fill(cut, float("-inf"))
        s = torch.full_like(s, float("-inf")).scatter(-1, order, sorted_s)
    probs = torch.softmax(s, dim=-1).cpu()
    return torch.stack([torch.multinomial(probs[r], 1, generator=generators[r])[0] for r in range(s.shape[0])]).to(scores.device)
