"""The equations of Cross-model Control (DESIGN.md), in one place; everything else calls these.

Training (template frozen, delta trainable, same text):
    final = LogSoftmax(template_logits) + delta_logits          (mode "log-softmax-template")
Paper ablations: "sum" (no LogSoftmax), "log-softmax-both" (delta log-softmaxed too).
The combined distribution is softmax(final); losses take `final` as logits. softmax is invariant to a
per-position constant and LogSoftmax only subtracts one, so all three modes give the same distribution
(and the same CE and KL): the ablations are exact no-ops (tests/test_combine_decode.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COMBINE_MODES = ("log-softmax-template", "sum", "log-softmax-both")
IGNORE = -100


def combine(template_logits: torch.Tensor, delta_logits: torch.Tensor, mode: str = "log-softmax-template") -> torch.Tensor:
    """(..., V) template and delta logits -> (..., V) combined scores, in float32."""
    t = template_logits.float()
    d = delta_logits.float()
    if mode == "log-softmax-template":
        return F.log_softmax(t, dim=-1) + d
    if mode == "sum":
        return t + d
    if mode == "log-softmax-both":
        return F.log_softmax(t, dim=-1) + F.log_softmax(d, dim=-1)
    raise ValueError(f"unknown combine mode {mode!r}; one of {', '.join(COMBINE_MODES)}")


def token_nll(final: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of `targets` under softmax(final) and the number of counted tokens.

    final (N, V); targets (N,) with IGNORE where nothing is predicted.
    """
    nll = F.cross_entropy(final, targets, ignore_index=IGNORE, reduction="sum")
    return nll, (targets != IGNORE).sum()


def kl_to_reference(final: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed KL(p_reference || softmax(final)) over the positions where targets != IGNORE."""
    keep = targets != IGNORE
    logp_ref = F.log_softmax(reference_logits[keep].float(), dim=-1)
    logp = F.log_softmax(final[keep], dim=-1)
    return (logp_ref.exp() * (logp_ref - logp)).sum()


def map_delta_logits(delta_logits: torch.Tensor, index: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """TokenMap(delta_logits): (..., V_delta) -> (..., V_user), 0 where a user token is unmapped.

    index: int64 [V_user_map] from a TokenMap (-1 = unmapped). `width` pads to a user model whose
    logits are wider than its tokenizer (padded embeddings): the extra ids get 0.
    """
    width = index.shape[0] if width is None else width
    if width < index.shape[0]:
        raise ValueError(f"user logits ({width}) are narrower than the token map ({index.shape[0]})")
    if width > index.shape[0]:
        index = torch.cat([index, index.new_full((width - index.shape[0],), -1)])
    index = index.to(delta_logits.device)
    mapped = delta_logits.index_select(-1, index.clamp(min=0))
    return mapped.masked_fill(index < 0, 0.0)


def decode_scores(user_logits: torch.Tensor, deltas: list[tuple[float, torch.Tensor, torch.Tensor | None]],
                  mode: str = "log-softmax-template") -> torch.Tensor:
    """final_t = LogSoftmax(user_logits) + sum_k alpha_k * TokenMap_k(delta_logits_k), in float32.

    deltas: (alpha, delta_logits (..., V_delta), token-map index or None for the same vocabulary).
    mode (the delta's training combine mode): "sum" leaves the user logits raw (the paper's ablation),
    "log-softmax-both" log-softmaxes each delta's logits too.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; one of {', '.join(COMBINE_MODES)}")
    final = user_logits.float() if mode == "sum" else F.log_softmax(user_logits.float(), dim=-1)
    width = user_logits.shape[-1]
    for alpha, d_logits, index in deltas:
        d = d_logits.float()
        if mode == "log-softmax-both":
            d = F.log_softmax(d, dim=-1)
        if index is None:
            if d.shape[-1] != width:
                raise ValueError(f"same-vocabulary delta has {d.shape[-1]} logits, the user model {width}")
            final = final + alpha * d
        else:
            final = final + alpha * map_delta_logits(d, index, width)
    return final


def proxy_scores(expert_logits: torch.Tensor, anti_logits: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Proxy-tuning's shift, LogSoftmax(expert) - LogSoftmax(anti-expert), over the user's `width` ids
    (models with the user's vocabulary; ids past the narrower model's logits get 0)."""
    n = min(expert_logits.shape[-1], anti_logits.shape[-1])
    shift = F.log_softmax(expert_logits[..., :n].float(), dim=-1) - F.log_softmax(anti_logits[..., :n].float(), dim=-1)
    width = shift.shape[-1] if width is None else width
    if shift.shape[-1] >= width:
        return shift[..., :width]
    return F.pad(shift, (0, width - shift.shape[-1]))
