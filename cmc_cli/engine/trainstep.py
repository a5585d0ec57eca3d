"""The seams of a training step, where scaling cuts it (engine/train.py runs them):

  template_hidden()        template forward in inference mode -> final hidden states (B, T, H)
  chunked_terms()          the combined loss (NLL or KL, + the silence term) over chunks of target positions, from hidden
                           states through each model's output head; the delta head's backward runs
                           chunk by chunk inside the forward (fused, as Liger's linear cross-entropy),
                           so at most one chunk of (positions x vocabulary) logits exists at a time
                           and nothing is recomputed
  delta_step()             clip, optimizer step, learning-rate schedule

The per-token equations themselves are combine.py's.
"""

from __future__ import annotations

import math

import torch

from cmc_cli.engine.combine import (IGNORE, combine, kl_to_reference, silence_penalty, token_logratio, token_nll,
                                    weighted_nll)
from cmc_cli.engine.heads import final_hidden, head_logits

def template_hidden(template, batch: dict, sharded: bool = False) -> torch.Tensor:
    """(B, T, H) final hidden states of the frozen template, computed in inference mode (under no_grad when
    it is sharded with FSDP2, whose gathered parameters must not be inference tensors)."""
    with torch.no_grad() if sharded else torch.inference_mode():
        h = final_hidden(template, batch["input_ids"], batch["attention_mask"])
    return h.clone()  # a normal tensor, usable by autograd as a constant


def _select(h_t: torch.Tensor, h_d: torch.Tensor, targets: torch.Tensor):
    keep = targets != IGNORE  # (B, T)
    return h_t[keep], h_d[keep], targets[keep]  # (N, H_t), (N, H_d), (N,)


class _FusedHeadLoss(torch.autograd.Function):
    """Sum of per-chunk losses through the delta's output head, with the head's backward done chunk by
    chunk during the forward pass: each chunk's (n, V) logits are computed once and freed at once, and
    nothing is recomputed. Backward only scales the stored gradients by the incoming gradient."""

    @staticmethod
    def forward(ctx, chunk_loss, n_chunks, h_d, *params):
        grad_h = torch.zeros_like(h_d)
        grad_p = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=h_d.device)
        for c in range(n_chunks):
            with torch.enable_grad():
                hd = h_d.detach().requires_grad_(True)
                loss = chunk_loss(hd, c)
                grads = torch.autograd.grad(loss, [hd, *params], allow_unused=True)
            grad_h += grads[0]
            for acc, g in zip(grad_p, grads[1:]):
                if g is not None:
                    acc += g
            total += loss.detach()
        ctx.save_for_backward(grad_h, *grad_p)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, *grad_p = ctx.saved_tensors
        return (None, None, grad_h * grad_out, *[g * grad_out for g in grad_p])


def _chunked(template, delta, h_t, h_d, targets, chunk: int, loss_of, weights=None) -> tuple[torch.Tensor, int]:
    """Sum over chunks of target positions of loss_of(template_logits, delta_logits, targets[, weights]).
    weights: (B, T) per-position weights handed to loss_of (None: loss_of takes three arguments)."""
    keep = targets != IGNORE
    w = weights[keep] if weights is not None else None
    h_t, h_d, y = _select(h_t if h_t is not None else h_d, h_d, targets)
    n = int(y.shape[0])
    head = delta.get_output_embeddings()
    params = [p for p in head.parameters() if p.requires_grad]
    bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]

    def chunk_loss(hd_all, c):
        s, e = bounds[c]
        with torch.no_grad():
            t_logits = head_logits(template, h_t[s:e]) if template is not None else None  # (n, V)
        hd = hd_all[s:e].to(head.weight.dtype)
        if w is not None:
            return loss_of(t_logits, head_logits(delta, hd), y[s:e], w[s:e])
        return loss_of(t_logits, head_logits(delta, hd), y[s:e])

    if not bounds:
        return h_d.sum() * 0.0, 0
    if not (h_d.requires_grad and torch.is_grad_enabled()):
        with torch.no_grad():
            return sum(chunk_loss(h_d, c) for c in range(len(bounds))), n
    return _FusedHeadLoss.apply(chunk_loss, len(bounds), h_d, *params), n


def chunked_nll(template, delta, h_t, h_d, targets, mode: str, chunk: int) -> tuple[torch.Tensor, int]:
    """Summed NLL of the targets under softmax(combine(template, delta)), and the token count."""
    return _chunked(template, delta, h_t, h_d, targets, chunk,
                    lambda t, d, y: token_nll(combine(t, d, mode), y)[0])


def chunked_terms(template, delta, h_t, h_d, targets, kind: str, weight: float, silence: float, mode: str,
                  chunk: int) -> tuple[torch.Tensor, dict[str, float]]:
    """weight * (summed NLL or KL(template || combined) of the targets) + silence * (summed silence_penalty
    of the delta's logits there), in one pass over the chunks; kind "silence": the silence term alone (no
    template forward: h_t and template may be None). Returns the total and its two parts' sums, unweighted."""
    parts = {"main": 0.0, "silence": 0.0}

    def loss_of(t, d, y):
        loss = d.new_zeros((), dtype=torch.float32)
        if kind in ("nll", "kl"):
            final = combine(t, d, mode)
            main = kl_to_reference(final, t, y) if kind == "kl" else token_nll(final, y)[0]
            parts["main"] += float(main.detach())
            loss = loss + weight * main
        if silence or kind == "silence":
            sil = silence_penalty(d)
            parts["silence"] += float(sil.detach())
            loss = loss + silence * sil
        return loss

    total, _ = _chunked(template if kind != "silence" else None, delta, h_t, h_d, targets, chunk, loss_of)
    return total, parts


def chunked_weighted_nll(template, delta, h_t, h_d, targets, weights, mode: str, chunk: int) -> tuple[torch.Tensor, int]:
    """sum_i weights_i * NLL_i under softmax(combine(template, delta)); weights (B, T)."""
    return _chunked(template, delta, h_t, h_d, targets, chunk,
                    lambda t, d, y, w: weighted_nll(combine(t, d, mode), y, w), weights=weights)


@torch.no_grad()
def sequence_logratio(template, delta, h_t, h_d, targets, mode: str, chunk: int) -> torch.Tensor:
    """(B,) sum over each row's targets of log p_combined(y) - log p_template(y) (NPO's r_s), no gradient."""
    keep = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[keep]
    h_t_s, h_d_s, y = _select(h_t, h_d, targets)
    vals = []
    for s in range(0, y.shape[0], chunk):
        t = head_logits(template, h_t_s[s:s + chunk])
        vals.append(token_logratio(combine(t, head_logits(delta, h_d_s[s:s + chunk]), mode), t, y[s:s + chunk]))
    out = torch.zeros(targets.shape[0], device=targets.device)
    return out.index_add(0, rows, torch.cat(vals)) if vals else out


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def delta_step(delta, optimizer, clip: float, lr: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = lr
    norm = torch.nn.utils.clip_grad_norm_(delta.parameters(), clip) if clip > 0 else torch.tensor(0.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
