"""The equations of Cross-model Control (DESIGN.md), in one place; everything else calls these.

Training (template frozen, delta trainable, same text):
    final = LogSoftmax(template_logits) + delta_logits          (mode "log-softmax-template")
Paper ablations: "sum" (no LogSoftmax), "log-softmax-both" (delta log-softmaxed too).
The combined distribution is softmax(final); losses take `final` as logits. In training (one vocabulary)
softmax is invariant to a per-position constant and LogSoftmax only subtracts one, so all three modes
give the same distribution, CE and KL.

Decoding another vocabulary breaks that invariance: a token map leaves some user tokens unmapped (they
get 0), so the delta's per-position level, which training never fixes, would move probability between
mapped and unmapped tokens. decode_scores therefore centres each delta's logits per position
(centre_delta: minus their mean over the delta's vocabulary) before mapping: a delta whose logits are
any per-position constant adds exactly nothing to every user token, through every map, and since
log-softmaxing the delta only subtracts a per-position constant, the three modes give the same decode
distribution across vocabularies too (tests/test_combine_decode.py, tests/test_centring.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmc_cli.config import COMBINE_MODES
from cmc_cli.data.instruct import IGNORE


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




FORGET_SIGNS = {"ascent": -1.0, "refusal": 1.0, "npo": 1.0}  # forget term (config.UNLEARN_METHODS) -> its sign


def unlearning_loss(term: str, forget_loss, retain_loss=None, forget_weight: float = 1.0, retain_weight: float = 1.0):
    """The unlearning objective: sign(term) * forget_weight * forget + retain_weight * retain. With "ascent" and
    an NLL retain term it is the paper's gradient difference, -CE(forget) + CE(retain); "refusal" (idk) and
    "npo" minimise their forget term. Works on tensors (to backpropagate) and on floats (to report)."""
    loss = FORGET_SIGNS[term] * forget_weight * forget_loss
    return loss if retain_loss is None else loss + retain_weight * retain_loss


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


def centre_delta(delta_logits: torch.Tensor) -> torch.Tensor:
    """(..., V_delta) -> (..., V_delta) float32: the delta's logits minus their mean over its vocabulary, per
    position. The mean is the neutral value: a flat delta (any per-position constant) becomes exactly 0, so an
    unmapped user token (0) and a token whose delta value is the position's typical one get the same
    nothing; it is a linear function of the delta's last hidden state (h . mean of the head rows), so a
    head restricted to the mapped rows can still compute it exactly; and it is the centre the silence
    term (silence_penalty) trains the delta to stay at off-target. A handful of boosted tokens moves it by
    their boost / |V_delta| (49k ids: ~1e-4 per unit)."""
    d = delta_logits.float()
    return d - d.mean(dim=-1, keepdim=True)


def centre_gathered(gathered_logits: torch.Tensor) -> torch.Tensor:
    """centre_delta for a GatheredHead's logits (..., U + 1), whose last column is the mean over the delta's
    whole vocabulary: the U mapped ids minus it, (..., U) float32 — the same values centre_delta gives them."""
    g = gathered_logits.float()
    return g[..., :-1] - g[..., -1:]


SILENCE_VOCAB = 49_152  # ids the silence term sums at full weight; a larger vocabulary's sum is scaled to this many


def silence_penalty(delta_logits: torch.Tensor) -> torch.Tensor:
    """Summed over positions: sum_v (z_v - mean_v z)^2, the squared norm of the centred delta logits
    (= |V_delta| x their variance), times min(1, SILENCE_VOCAB / |V_delta|). Zero exactly when the delta is
    flat at a position, which is when it changes no user model through any map (centre_delta). Up to
    SILENCE_VOCAB ids the sum (not a mean) makes one token moved by s cost s^2; beyond, the spread training
    leaves on every untouched row grows the sum with |V| and, unscaled, a Gemma-vocabulary (262,144 ids)
    delta at the default weight never learned its objective (docs/training.md has the figures), so the sum
    is scaled to SILENCE_VOCAB ids' worth. (N, V_delta) -> ()."""
    scale = min(1.0, SILENCE_VOCAB / delta_logits.shape[-1])
    return centre_delta(delta_logits).pow(2).sum() * scale


def neutral_baseline(delta_logits: torch.Tensor) -> torch.Tensor:
    """(..., V_delta) -> (..., 1): the value of a token the delta does not care about at this position, the
    median of its logits. The delta's head starts at zero, so every logit starts at the same value and
    training moves the few tokens it is about; the median is where the untouched bulk sits, so a token
    at it gets a shift of 0, as an unmapped token does (docs/tokenmaps.md)."""
    return delta_logits.float().median(dim=-1, keepdim=True).values


def continuation_baseline(delta_logits: torch.Tensor) -> torch.Tensor:
    """(..., V_delta) -> (..., 1): the baseline of a look-ahead continuation piece, log sum_v softmax(z)_v e^{z_v}
    = logsumexp(2z) - logsumexp(z): the log-normaliser of the delta's shift under the delta's own expectation
    of what comes next. The exact log-ratio of a combined model's string to the template's subtracts
    log E_template[e^z] at each step; the template is not there at decode time, and the neutral median (the
    natural reading of "0 for what the delta does not care about") left the leak whole: after ▁I a refusal
    delta leaves "ron" at the median, so ĠIron kept ▁I's boost (docs/tokenmaps.md). With this baseline a
    delta that is flat at a position gives every piece 0, and a piece the delta passes over while it pushes
    another (▁don after ▁I) loses what the pushed one gains."""
    z = delta_logits.float()
    return torch.logsumexp(2 * z, dim=-1, keepdim=True) - torch.logsumexp(z, dim=-1, keepdim=True)


def lookahead_extra(logits: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """The look-ahead's continuation shifts, summed per candidate: (n,) with
        extra_c = sum_j (z_j[r_j] - continuation_baseline(z_j))   over the continuation pieces r_1..r_m of c,
    where z_j is the delta's logits after the context, c's first piece d and r_1..r_{j-1}.
    logits (N, V_delta), targets (N,) the piece each row predicts, owner (N,) its candidate in 0..n-1."""
    z = logits.float()
    shift = z.gather(-1, targets[:, None].to(z.device))[:, 0] - continuation_baseline(z)[:, 0]
    return torch.zeros(n, dtype=shift.dtype, device=shift.device).index_add_(0, owner.to(shift.device), shift)


def map_delta_logits(delta_logits: torch.Tensor, index: torch.Tensor, width: int | None = None,
                     cap: torch.Tensor | None = None, lookahead: tuple | None = None) -> torch.Tensor:
    """TokenMap(delta_logits): (..., V_delta) -> (..., V_user), 0 where a user token is unmapped.

    index: int64 [V_user_map] from a TokenMap (-1 = unmapped). `width` pads to a user model whose
    logits are wider than its tokenizer (padded embeddings): the extra ids get 0.
    cap: bool [V_user_map], the user tokens that receive only the delta's suppressions (a map with
    prefix rule "suppress": the prefix-mapped ones): their value is min(mapped, the position's median
    delta logit), so a boost of a short delta token (▁I) never reaches a longer user token (ĠIron).
    lookahead: (rows, cols, extra) from the look-ahead (prefix rule "lookahead", engine/lookahead.py): the
    user token cols[i] of row rows[i] (a prefix-mapped candidate u = d + rest) gets the delta's value for
    the whole string, mapped (d's logit) + extra[i] (lookahead_extra), uncapped; needs delta_logits (B, V).
    """
    width = index.shape[0] if width is None else width
    if width < index.shape[0]:
        raise ValueError(f"user logits ({width}) are narrower than the token map ({index.shape[0]})")
    if width > index.shape[0]:
        pad = width - index.shape[0]
        index = torch.cat([index, index.new_full((pad,), -1)])
        cap = torch.cat([cap, cap.new_zeros((pad,))]) if cap is not None else None
    index = index.to(delta_logits.device)
    raw = delta_logits.index_select(-1, index.clamp(min=0))
    mapped = raw
    if cap is not None:
        typical = neutral_baseline(delta_logits).to(raw.dtype)  # (..., 1)
        mapped = torch.where(cap.to(raw.device), torch.minimum(raw, typical), raw)
    if lookahead is not None:
        rows, cols, extra = (t.to(raw.device) for t in lookahead)
        mapped = mapped.clone()
        mapped[rows, cols] = raw[rows, cols] + extra.to(raw.dtype)
    return mapped.masked_fill(index < 0, 0.0)


def decode_scores(user_logits: torch.Tensor, deltas: list[tuple[float, torch.Tensor, torch.Tensor | None]],
                  mode: str = "log-softmax-template", proxy: tuple | None = None) -> torch.Tensor:
    """final_t = LogSoftmax(user_logits) + sum_k alpha_k * TokenMap_k(delta_logits_k)
                 [+ alpha_p * (LogSoftmax(expert) - LogSoftmax(anti-expert))], in float32.

    deltas: (alpha, delta_logits (..., V_delta), token-map index or None for the same vocabulary[, cap
    [, lookahead]]) with cap and lookahead as in map_delta_logits (Delta.term builds these); alpha is a
    float or a (B, 1) tensor, one strength per row (a server's requests choose their own).
    Each delta's logits are centred first (centre_delta), so a flat delta adds exactly 0 to every user token.
    mode (the delta's training combine mode): "sum" leaves the user logits raw (the paper's ablation: a
    per-position constant off LogSoftmax); "log-softmax-both" would log-softmax each delta's logits, which
    only subtracts a per-position constant that the centring removes: across vocabularies too, the three
    modes give the same distribution.
    proxy: (alpha_p, expert_logits, anti_expert_logits) for the proxy-tuning baseline, or None.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; one of {', '.join(COMBINE_MODES)}")
    final = user_logits.float() if mode == "sum" else F.log_softmax(user_logits.float(), dim=-1)
    width = user_logits.shape[-1]
    for alpha, d_logits, index, *rest in deltas:
        final = final + alpha * delta_term(d_logits, index, width, *rest)
    if proxy is not None:
        p_alpha, expert_logits, anti_logits = proxy
        final = final + p_alpha * proxy_scores(expert_logits, anti_logits, width=width)
    return final


def delta_term(d_logits: torch.Tensor, index: torch.Tensor | None, width: int, cap=None, lookahead=None,
               gathered: bool = False) -> torch.Tensor:
    """One delta's TokenMap(centred logits) on the user's `width` ids, before its alpha: decode_scores adds
    alpha times this (Scorer.profile reuses it for many alphas). gathered: d_logits are a GatheredHead's
    (engine/heads.py: the mapped ids' logits, then the mean over the delta's whole vocabulary, last) and
    index points into them."""
    # log-softmax-both's LogSoftmax is a per-position constant: centred away
    d = centre_gathered(d_logits) if gathered else centre_delta(d_logits)
    if index is None:
        if d.shape[-1] != width:
            raise ValueError(f"same-vocabulary delta has {d.shape[-1]} logits, the user model {width}")
        return d
    return map_delta_logits(d, index, width, cap, lookahead)


def proxy_scores(expert_logits: torch.Tensor, anti_logits: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Proxy-tuning's shift, LogSoftmax(expert) - LogSoftmax(anti-expert), over the user's `width` ids
    (models with the user's vocabulary; ids past the narrower model's logits get 0)."""
    n = min(expert_logits.shape[-1], anti_logits.shape[-1])
    shift = F.log_softmax(expert_logits[..., :n].float(), dim=-1) - F.log_softmax(anti_logits[..., :n].float(), dim=-1)
    width = shift.shape[-1] if width is None else width
    if shift.shape[-1] >= width:
        return shift[..., :width]
    return F.pad(shift, (0, width - shift.shape[-1]))
