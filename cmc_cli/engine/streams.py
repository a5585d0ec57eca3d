"""Batched, KV-cached forward passes of one causal LM over many rows of a decode.

`LockstepLM`  every row gains exactly one token per step after a left-padded prompt, the way
              `transformers` `generate` runs a model: the user model, proxy-tuning experts and a
              delta with the user's own vocabulary. Works with any architecture's cache.
`ResyncLM`    each row gains and loses tokens on its own (a cross-vocabulary delta whose
              re-tokenized text changed its last tokens): dropped tokens are masked out of the KV
              cache, new ones appended with explicit positions, and the cache is compacted when the
              holes pile up. Needs full-attention layers (no sliding window).
Both return, per row, the logits after the row's last token, in float32.
"""

from __future__ import annotations

import torch

from cmc_cli.engine.heads import head_logits
from cmc_cli.engine.leantrunk import LeanTrunk
from cmc_cli.errors import CmcError


def context_length(model) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def cache_kwarg(module) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` in transformers >= 5.2x (where
    `past_key_values` is deprecated, to be removed in 5.40), `past_key_values` before. The cache object is
    updated in place either way, so callers keep their own reference to it."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


class LockstepLM:
    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.cache_kw = cache_kwarg(model)
        self.cache = None
        self.mask = None
        self.pos = None
        self.tokens_fed = 0
        self.fed: list[int] = []  # tokens fed per row (prompt included)

    @torch.inference_mode()
    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, T - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = _new_cache(self.model)
        self.mask = mask
        self.pos = pos[:, -1:]
        self.fed = [len(p) for p in prompts]
        self.tokens_fed += sum(self.fed)
        return self._forward(ids, pos)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, V) after them."""
        B = tokens.shape[0]
        self.mask = torch.cat([self.mask, self.mask.new_ones((B, 1))], dim=1)
        self.pos = self.pos + 1
        self.fed = [n + 1 for n in self.fed]
        self.tokens_fed += B
        return self._forward(tokens.view(B, 1).to(self.device), self.pos)

    def lengths(self) -> list[int]:
        return list(self.fed)

    def _forward(self, ids, pos) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: self.cache})
        return out.logits[:, -1, :].float()


class ResyncLM:
    # compact once the cache is longer than (1 + ratio) x the longest row + slack
    compact_ratio, compact_slack = 1.0, 32

    def __init__(self, model, batch_size: int, pad_id: int = 0, head=None):
        self.model = model
        self.head = head  # hidden -> the logits feed returns (default the model's own output layer)
        self.lean = LeanTrunk.for_model(model)  # engine/leantrunk.py, where it applies
        self.trunk = self.lean or model.get_decoder()
        self.cache_kw = "cache" if self.lean else cache_kwarg(self.trunk)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.B = batch_size
        self.cache = self.lean.new_cache() if self.lean else _new_cache(model)
        self.mask = torch.zeros((batch_size, 0), dtype=torch.long, device=self.device)
        self.slots: list[list[int]] = [[] for _ in range(batch_size)]  # cache positions of each row's tokens
        self.tokens_fed = 0
        self.fed = [0] * batch_size  # tokens fed per row (prompt and recomputed tokens included)
        self.compactions = 0
        self.peeked = [0] * batch_size  # look-ahead tokens computed per row (peek), never kept

    def lengths(self) -> list[int]:
        return [len(s) for s in self.slots]

    def _layers(self):
        return [x for x in getattr(self.cache, "layers", []) if getattr(x, "keys", None) is not None
                and getattr(x, "keys").dim() == 4]

    @torch.inference_mode()
    def add_rows(self, n: int) -> list[int]:
        """Append n empty rows (a server's new requests); returns their indices."""
        first = self.B
        self.B += n
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.mask.shape[1]))])
        self.slots += [[] for _ in range(n)]
        self.fed += [0] * n
        self.peeked += [0] * n
        for layer in self._layers():
            for name in ("keys", "values"):
                t = getattr(layer, name)
                setattr(layer, name, torch.cat([t, t.new_zeros((n, *t.shape[1:]))]))
        return list(range(first, self.B))

    @torch.inference_mode()
    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (a server's finished or cancelled requests leave nothing behind)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.B = len(rows)
        self.mask = self.mask.index_select(0, idx)
        self.slots = [self.slots[r] for r in rows]
        self.fed = [self.fed[r] for r in rows]
        self.peeked = [self.peeked[r] for r in rows]
        for layer in self._layers():
            for name in ("keys", "values"):
                setattr(layer, name, getattr(layer, name).index_select(0, idx))

    @torch.inference_mode()
    def feed(self, keep: list[int], new: list[list[int]]) -> torch.Tensor | None:
        """Keep the first keep[r] tokens of row r, append new[r]; logits (B, V) after each row's last
        new token (zeros for rows given none). None when no row has a new token."""
        for r in range(self.B):
            drop = self.slots[r][keep[r]:]
            if drop:
                self.mask[r, torch.tensor(drop, device=self.device)] = 0
                del self.slots[r][keep[r]:]
        n = max(len(x) for x in new)
        if n == 0:
            return None
        T = self.mask.shape[1]
        ids = torch.full((self.B, n), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((self.B, n), dtype=torch.long)
        pos = torch.zeros((self.B, n), dtype=torch.long)
        last = torch.zeros(self.B, dtype=torch.long)
        for r, toks in enumerate(new):
            k = len(toks)
            if k:
                ids[r, :k] = torch.tensor(toks, dtype=torch.long)
                new_mask[r, :k] = 1
                last[r] = k - 1
            pos[r] = len(self.slots[r]) + torch.arange(n)
            self.slots[r].extend(range(T, T + k))
            self.tokens_fed += k
            self.fed[r] += k
        new_mask = new_mask.to(self.device)
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        live = {"live": new_mask.bool()} if self.lean else {}  # the lean trunk multiplies only the new tokens
        out = self.trunk(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos.to(self.device),
                         use_cache=True, **{self.cache_kw: self.cache}, **live)
        if T == 0:  # the first feed built the cache's layers: check them once
            self._check_full_attention()
        h = out.last_hidden_state[torch.arange(self.B, device=self.device), last.to(self.device)]
        logits = (self.head(h) if self.head is not None else head_logits(self.model, h)).float()
        empty = torch.tensor([not x for x in new], device=self.device)
        logits = logits.masked_fill(empty[:, None], 0.0)
        self._maybe_compact()
        return logits

    @torch.inference_mode()
    def peek(self, branches: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        """Logits (len(toks), V) after each token of each branch (row r, toks), as if toks were appended to
        row r; the state is left unchanged. One forward for all branches: they are appended to the cache with
        a tree mask (a branch attends to its row's live tokens and to its own earlier tokens, at positions
        following the row's), then cropped off."""
        per_row: list[list[tuple[int, list[int]]]] = [[] for _ in range(self.B)]
        for j, (r, toks) in enumerate(branches):
            if toks:
                per_row[r].append((j, toks))
        n = max((sum(len(t) for _, t in br) for br in per_row), default=0)
        out: list[torch.Tensor | None] = [None] * len(branches)
        if n == 0:
            return out
        T = self.mask.shape[1]
        dtype = next(self.model.parameters()).dtype
        ids = torch.full((self.B, n), self.pad_id, dtype=torch.long)
        pos = torch.zeros((self.B, n), dtype=torch.long)
        allow = torch.zeros((self.B, n, T + n), dtype=torch.bool)
        allow[:, :, :T] = self.mask.bool().cpu()[:, None, :]
        where = []
        for r, br in enumerate(per_row):
            at, base = 0, len(self.slots[r])
            for j, toks in br:
                k = len(toks)
                ids[r, at:at + k] = torch.tensor(toks, dtype=torch.long)
                pos[r, at:at + k] = base + torch.arange(k)
                allow[r, at:at + k, T + at:T + at + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
                where.append((j, r, at, k))
                self.peeked[r] += k
                at += k
            for q in range(at, n):
                allow[r, q, :] = False
                allow[r, q, T + q] = True  # padding attends to itself only
        bias = torch.zeros((self.B, 1, n, T + n), dtype=dtype).masked_fill(~allow[:, None], torch.finfo(dtype).min)
        res = self.trunk(input_ids=ids.to(self.device), attention_mask=bias.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, **{self.cache_kw: self.cache})
        self.cache.crop(-n)
        h = res.last_hidden_state
        rows = torch.tensor([r for _, r, at, k in where for _ in range(k)], device=self.device)
        cols = torch.tensor([at + i for _, r, at, k in where for i in range(k)], device=self.device)
        logits = head_logits(self.model, h[rows, cols]).float()
        start = 0
        for j, _, _, k in where:
            out[j] = logits[start:start + k]
            start += k
        return out

    def _check_full_attention(self) -> None:
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_sliding", False):
                raise CmcError("the delta model uses sliding-window attention; cross-vocabulary decoding re-uses its "
                               "KV cache out of order and needs a full-attention delta (e.g. a cmc preset)")

    def _maybe_compact(self) -> None:
        """Gather each row's live cache entries to the right end, left-padded, when holes exceed half."""
        T = self.mask.shape[1]
        L = max(self.lengths(), default=0)
        if T <= (1 + self.compact_ratio) * L + self.compact_slack:
            return
        idx = torch.zeros((self.B, L), dtype=torch.long)
        mask = torch.zeros((self.B, L), dtype=torch.long)
        for r, s in enumerate(self.slots):
            if s:
                idx[r, L - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[r, L - len(s):] = 1
            self.slots[r] = list(range(L - len(s), L))
        idx = idx.to(self.device)
        for layer in self._layers():
            for name in ("keys", "values"):
                t = getattr(layer, name)
                setattr(layer, name, t.gather(2, idx[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1])))
        self.mask = mask.to(self.device)
        self.compactions += 1
