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
