"""The seams of a causal LM that the engine cuts at: trunk -> final hidden states -> output head.

Computing logits from hidden states in chunks keeps batch x length x vocabulary tensors from ever
existing in full.
"""

from __future__ import annotations

import torch


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T, H) final hidden states (after the last norm), without computing logits."""
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else None
    if trunk is None or trunk is model:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1]
    return trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """(..., H) hidden states -> (..., V) logits, with the model's final soft-capping if it has one."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


GATHER = True  # gather where it applies (benchmarks and tests switch it off to compare with the full head)
GATHER_SHARE = 0.5  # gather only when the map uses at most this share of the delta's ids


class GatheredHead:
    """A delta's output layer restricted to the delta ids its token map uses, plus one column for the mean over
    its whole vocabulary — exactly what decoding reads: combine.centre_delta subtracts the mean of all
    V_delta logits, which is h . mean(W) for a linear head, and map_delta_logits reads only the mapped ids.
    It applies to a plain map (no cap, no look-ahead: they read the median and full logits) and a head
    without bias or soft-capping; `for_delta` says so by returning None otherwise.

    index: the token map's user id -> column of the gathered logits (-1: unmapped)."""

    def __init__(self, weight: torch.Tensor, index: torch.Tensor):
        used, inverse = torch.unique(index[index >= 0], return_inverse=True)
        self.used = used  # delta ids, ascending
        w = weight.detach().float()
        self.weight = torch.cat([w.index_select(0, used.to(w.device)), w.mean(dim=0, keepdim=True)])
        # the same transposed, (H, mapped + 1), for one or two rows (below)
        self.weight_t = self.weight.T.contiguous() if self.weight.device.type == "cpu" else None
        self.index = torch.full_like(index, -1)
        self.index[index >= 0] = inverse
        self.full_width = int(weight.shape[0])

    @classmethod
    def for_delta(cls, delta) -> "GatheredHead | None":
        """The delta's gathered head, or None where it does not apply; built once per loaded Delta (every
        generate call, stream and Scorer of it reads the same one)."""
        if not GATHER:
            return None
        if "_gathered" not in vars(delta):
            vars(delta)["_gathered"] = cls._build(delta)
        return vars(delta)["_gathered"]

    @classmethod
    def _build(cls, delta) -> "GatheredHead | None":
        model = delta.lm.model
        if delta.index is None or delta.cap is not None or delta.lookahead is not None or model is None:
            return None
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None or getattr(model.config, "final_logit_softcapping", None):
            return None
        g = cls(head.weight, delta.index)
        # the map uses most of the delta's ids: the full head costs about the same
        return g if g.used.numel() <= GATHER_SHARE * g.full_width else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., len(used) + 1) float32: the used ids' logits, then the mean of all V_delta."""
        # A decode step's few rows: on CPU MKL's fastest order depends on their number (docs/decoding.md):
        # hidden @ weight_t for one or two (3x faster than hidden @ weight^T at 1), weight @ hidden^T up to 64
        # (up to 2x faster at 8); a scorer's long chunks keep the plain order (and a contiguous result).
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        if self.weight_t is not None and flat.shape[0] <= 2 and flat.device.type == "cpu":
            out = flat @ self.weight_t
        elif flat.shape[0] <= 64:
            out = (self.weight.to(hidden.device) @ flat.T).T
        else:
            out = flat @ self.weight.to(hidden.device).T
        return out.reshape(*hidden.shape[:-1], -1)

    def of_full(self, logits: torch.Tensor) -> torch.Tensor:
        """The same columns taken from full logits (..., V_delta): what __call__ must equal."""
        z = logits.float()
        return torch.cat([z.index_select(-1, self.used.to(z.device)), z.mean(dim=-1, keepdim=True)], dim=-1)
