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


def weighted_nll(final: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights_i * NLL_i of `targets` under softmax(final) over positions where targets != IGNORE.

    final (N, V); targets (N,); weights (N,) (ignored positions contribute nothing whatever their weight).
    """
    nll = F.cross_entropy(final, targets, ignore_index=IGNORE, reduction="none")
    return (nll * weights.to(nll.dtype)).sum()


def token_logratio(final: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) log p_final(y) - log p_reference(y) per target position (0 where targets == IGNORE)."""
    keep = targets != IGNORE
    y = targets.clamp(min=0)[:, None]
    lp = F.log_softmax(final.float(), dim=-1).gather(-1, y)[:, 0]
    lr = F.log_softmax(reference_logits.float(), dim=-1).gather(-1, y)[:, 0]
    return (lp - lr).masked_fill(~keep, 0.0)


# ---- unlearning objectives (cmc unlearn --method) ------------------------------------------------------
# method -> (forget term, default retain term). Forget terms: "ascent" = -CE(forget answers) (the paper's
# gradient difference), "refusal" = CE(forget questions -> refusal answers) (TOFU's idk), "npo" = negative
# preference optimisation against the frozen template. Retain terms: "nll" = CE(retain), "kl" =
# KL(template || combined) on retain, None = no retain term.
UNLEARN_METHODS = {
    "grad-diff": ("ascent", "nll"),
    "grad-ascent": ("ascent", None),
    "kl": ("ascent", "kl"),
    "idk": ("refusal", "nll"),
    "npo": ("npo", "nll"),
}
RETAIN_TERMS = ("nll", "kl", "none")


def npo_loss(logratio: torch.Tensor, beta: float, n: int | None = None) -> torch.Tensor:
    """NPO (Zhang et al. 2024): (2 / beta) * mean_s softplus(beta * r_s) = -(2/beta) mean log sigmoid(-beta r_s),
    r_s = log p_combined(answer_s) - log p_template(answer_s) summed over the answer's tokens (the frozen
    template is the reference). (S,) -> (). `n` divides instead of S (a step split in micro-batches)."""
    n = logratio.shape[0] if n is None else n
    return (2.0 / beta) * F.softplus(beta * logratio.float()).sum() / n


def npo_sequence_weights(logratio: torch.Tensor, beta: float, n: int | None = None) -> torch.Tensor:
    """d npo_loss / d r_s = (2 / n) * sigmoid(beta * r_s), per sequence. Since d r_s = -d NLL_s, the NPO
    gradient is that of  -sum_s w_s * NLL_s  with these weights held constant: an NLL-shaped surrogate the
    chunked loss can sum position by position (tests/test_unlearn_methods.py checks it against autograd)."""
    n = logratio.shape[0] if n is None else n
    return (2.0 / n) * torch.sigmoid(beta * logratio.detach().float())


def kl_to_reference(final: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed KL(p_reference || softmax(final)) over the positions where targets != IGNORE."""
    keep = targets != IGNORE
    logp_ref = F.log_softmax(reference_logits[keep].float(), dim=-1)
    logp = F.log_softmax(final[keep], dim=-1)
    return (logp_ref.exp() * (logp_ref - logp)).sum()


def map_delta_logits(delta_logits: torch.Tensor, index: torch.Tensor, width: int | None = None,
                     cap: torch.Tensor | None = None) -> torch.Tensor:
    """TokenMap(delta_logits): (..., V_delta) -> (..., V_user), 0 where a user token is unmapped.

    index: int64 [V_user_map] from a TokenMap (-1 = unmapped). `width` pads to a user model whose
    logits are wider than its tokenizer (padded embeddings): the extra ids get 0.
    cap: bool [V_user_map], the user tokens that receive only the delta's suppressions (a map with
    prefix rule "suppress": the prefix-mapped ones): their value is min(mapped, the position's median
    delta logit), so a boost of a short delta token (▁I) never reaches a longer user token (ĠIron).
    """
    width = index.shape[0] if width is None else width
    if width < index.shape[0]:
        raise ValueError(f"user logits ({width}) are narrower than the token map ({index.shape[0]})")
    if width > index.shape[0]:
        pad = width - index.shape[0]
        index = torch.cat([index, index.new_full((pad,), -1)])
        cap = torch.cat([cap, cap.new_zeros((pad,))]) if cap is not None else None
    index = index.to(delta_logits.device)
    mapped = delta_logits.index_select(-1, index.clamp(min=0))
    if cap is not None:
        typical = delta_logits.float().median(dim=-1, keepdim=True).values.to(mapped.dtype)  # (..., 1)
        mapped = torch.where(cap.to(mapped.device), torch.minimum(mapped, typical), mapped)
    return mapped.masked_fill(index < 0, 0.0)


def decode_scores(user_logits: torch.Tensor, deltas: list[tuple[float, torch.Tensor, torch.Tensor | None]],
                  mode: str = "log-softmax-template") -> torch.Tensor:
    """final_t = LogSoftmax(user_logits) + sum_k alpha_k * TokenMap_k(delta_logits_k), in float32.

    deltas: (alpha, delta_logits (..., V_delta), token-map index or None for the same vocabulary[, cap])
    with cap as in map_delta_logits (Delta.term builds these).
    mode (the delta's training combine mode): "sum" leaves the user logits raw (the paper's ablation),
    "log-softmax-both" log-softmaxes each delta's logits too.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; one of {', '.join(COMBINE_MODES)}")
    final = user_logits.float() if mode == "sum" else F.log_softmax(user_logits.float(), dim=-1)
    width = user_logits.shape[-1]
    for alpha, d_logits, index, *rest in deltas:
        d = d_logits.float()
        if mode == "log-softmax-both":
            d = F.log_softmax(d, dim=-1)
        if index is None:
            if d.shape[-1] != width:
                raise ValueError(f"same-vocabulary delta has {d.shape[-1]} logits, the user model {width}")
            final = final + alpha * d
        else:
            final = final + alpha * map_delta_logits(d, index, width, rest[0] if rest else None)
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
