"""A lean KV-cached forward of a Llama- or Qwen2-architecture trunk, for ResyncLM (a cross-vocabulary delta).

A delta's decode step is small matrices: at the serving shapes (a 15M delta, 8 requests) `transformers`'
per-module calls, mask building and a KV cache that is copied whole at every step (torch.cat) cost more than
the multiply-adds. LeanTrunk computes the same function with the model's own weights:

- q, k, v in one matrix product and gate, up in another (the weights concatenated once, and again if the
  model's weights change in place, e.g. by an optimizer step);
- the model's own rotary-embedding module, and `transformers`' RMSNorm (float32, cast back, scaled) as one fused op;
- a KV cache (LeanCache) whose layers keep room to grow, so a step writes only its new entries.

It applies to LlamaModel and Qwen2Model trunks with full attention, SiLU MLPs and no sliding window (cmc's
presets are Llama); `for_model` returns None otherwise and ResyncLM runs `transformers`' trunk. Its hidden
states equal `transformers`' at float precision (tests/test_leantrunk.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

LEAN = True  # use it where it applies (benchmarks and tests switch it off to compare with `transformers`' trunk)
_TRUNKS = ("LlamaModel", "Qwen2Model")


class KVBuffer:
    """One layer's keys and values, (B, kv heads, T, head dim), in buffers with room for more positions.
    Setting `keys` or `values` (ResyncLM adding, keeping or compacting rows) replaces that buffer."""

    def __init__(self):
        self._k = self._v = None
        self._nk = self._nv = 0

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, :self._nk]

    @keys.setter
    def keys(self, t: torch.Tensor) -> None:
        self._k, self._nk = t, t.shape[2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, :self._nv]

    @values.setter
    def values(self, t: torch.Tensor) -> None:
        self._v, self._nv = t, t.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add n positions (B, kv heads, n, head dim); returns all keys and values so far."""
        if self._nk != self._nv:
            raise RuntimeError(f"KV cache layer holds {self._nk} keys but {self._nv} values")
        n = self._nk + k.shape[2]
        if self._k is None or self._k.shape[0] != k.shape[0] or n > min(self._k.shape[2], self._v.shape[2]):
            room = max(n, 2 * self._nk, 64)
            self._k, self._v = self._grown(self.keys, k, room), self._grown(self.values, v, room)
        self._k[:, :, self._nk:n] = k
        self._v[:, :, self._nv:n] = v
        self._nk = self._nv = n
        return self.keys, self.values

    @staticmethod
    def _grown(old: torch.Tensor | None, new: torch.Tensor, room: int) -> torch.Tensor:
        buf = new.new_empty((new.shape[0], new.shape[1], room, new.shape[3]))
        if old is not None and old.shape[2]:
            buf[:, :, :old.shape[2]] = old
        return buf

    def crop(self, n: int) -> None:
        """Keep the first n positions (n < 0: drop the last -n)."""
        self._nk = self._nv = max(0, self._nk + n if n < 0 else min(n, self._nk))


class LeanCache:
    """The KV cache of a LeanTrunk: what ResyncLM reads and rewrites (`layers`' keys and values, `crop`)."""

    def __init__(self, n_layers: int):
        self.layers = [KVBuffer() for _ in range(n_layers)]

    def crop(self, n: int) -> None:
        for layer in self.layers:
            layer.crop(n)


class LeanTrunk:
    def __init__(self, model):
        self.trunk = model.get_decoder()
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.eps = cfg.rms_norm_eps
        self._weights = list(self.trunk.parameters())
        self._versions = None
        self._fuse()

    @classmethod
    def for_model(cls, model) -> "LeanTrunk | None":
        """The lean forward of this model's trunk, or None where it does not apply."""
        if not LEAN or not hasattr(model, "get_decoder"):
            return None
        trunk, cfg = model.get_decoder(), model.config
        if type(trunk).__name__ not in _TRUNKS or getattr(cfg, "hidden_act", None) != "silu":
            return None
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return None
        if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "pretraining_tp", 1) != 1:
            return None
        return cls(model)

    def new_cache(self) -> LeanCache:
        return LeanCache(len(self.trunk.layers))

    @torch.no_grad()
    def _fuse(self) -> None:
        """Each layer's weights transposed, (in, out) — x @ w is faster than F.linear for a few rows here — with
        q, k, v and gate, up concatenated; again whenever the model's weights change in place."""
        def cat(*mods, attr="weight"):
            parts = [getattr(m, attr) for m in mods]
            if any(p is None for p in parts):
                return None
            return torch.cat([p.detach() for p in parts]).T.contiguous() if attr == "weight" else torch.cat(parts).detach()

        self.layers = []
        for layer in self.trunk.layers:
            at, mlp = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight.detach(),
                                cat(at.q_proj, at.k_proj, at.v_proj), cat(at.q_proj, at.k_proj, at.v_proj, attr="bias"),
                                cat(at.o_proj), cat(at.o_proj, attr="bias"), layer.post_attention_layernorm.weight.detach(),
                                cat(mlp.gate_proj, mlp.up_proj), cat(mlp.gate_proj, mlp.up_proj, attr="bias"),
                                cat(mlp.down_proj), cat(mlp.down_proj, attr="bias")))
        self._versions = [p._version for p in self._weights]

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return x @ w if b is None else torch.addmm(b, x, w)

    def _norm(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`transformers`' Llama RMSNorm (normalised in float32, cast back, then scaled), in one fused op."""
        return weight * F.rms_norm(h.float(), (h.shape[-1],), eps=self.eps).to(h.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @staticmethod
    def _allowed(mask: torch.Tensor, n: int) -> torch.Tensor:
        """What each of n new queries attends to: a 4-D mask as given (ResyncLM.peek's tree), or from a 2-D
        (B, T + n) mask the live positions before them, causally among them, and always itself (a padding
        query then attends to something; its output is never read and its key never attended)."""
        if mask.dim() == 4:
            return mask
        allowed = mask.bool()[:, None, None, :].expand(-1, 1, n, -1)
        if n == 1:
            return allowed.clone().index_fill_(-1, torch.tensor([mask.shape[1] - 1], device=mask.device), True)
        T = mask.shape[1] - n
        tri = torch.ones((n, n), dtype=torch.bool, device=mask.device).tril()
        return torch.cat([allowed[..., :T], allowed[..., T:] & tri | torch.eye(n, dtype=torch.bool, device=mask.device)],
                         dim=-1)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: LeanCache, use_cache: bool = True, live: torch.Tensor | None = None) -> SimpleNamespace:
        """(B, n) new ids at position_ids after what `cache` holds; attention_mask (B, T + n) or a 4-D additive
        or boolean mask; live (B, n): the new ids that are tokens, not padding (default all), the only ones the
        matrix products see. Returns .last_hidden_state (B, n, H) after the final norm (zeros at padding);
        `cache` gains the n positions of every row."""
        if [p._version for p in self._weights] != self._versions:
            self._fuse()
        B, n = input_ids.shape
        at = None if live is None or bool(live.all()) else live.reshape(-1).nonzero().squeeze(1)

        def flat(t):  # (B, n, ...) -> (live tokens, ...)
            t = t.reshape(B * n, *t.shape[2:])
            return t if at is None else t[at]

        h = self.trunk.embed_tokens(flat(input_ids))
        cos, sin = self.trunk.rotary_emb(h, position_ids=position_ids)
        cos, sin = flat(cos)[:, None], flat(sin)[:, None]
        allowed = self._allowed(attention_mask, n)
        for layer, kv in zip(self.layers, cache.layers):
            h = self._layer(h, layer, kv, cos, sin, allowed, (B, n), at)
        h = self.trunk.norm(h)
        if at is not None:
            h = h.new_zeros((B * n, h.shape[-1])).index_copy_(0, at, h)
        return SimpleNamespace(last_hidden_state=h.view(B, n, -1))

    @staticmethod
    def _padded(x: torch.Tensor, shape: tuple[int, int], at: torch.Tensor | None) -> torch.Tensor:
        """(N, heads, d) of the live tokens -> (B, heads, n, d), zeros at padding."""
        B, n = shape
        if at is not None:
            x = x.new_zeros((B * n, *x.shape[1:])).index_copy_(0, at, x)
        return x.view(B, n, *x.shape[1:]).transpose(1, 2)

    def _layer(self, h, layer, kv: KVBuffer, cos, sin, allowed, shape, at) -> torch.Tensor:
        """One decoder layer on the live tokens' hidden states h (N, H)."""
        ln1, wqkv, bqkv, wo, bo, ln2, wgu, bgu, wd, bd = layer
        d, k_end = self.head_dim, (self.heads + self.kv_heads) * self.head_dim
        qkv = self._linear(self._norm(h, ln1), wqkv, bqkv)
        qk = self._rotate(qkv[:, :k_end].view(-1, self.heads + self.kv_heads, d), cos, sin)  # q and k at once
        q, k = qk[:, :self.heads], qk[:, self.heads:]
        keys, values = kv.append(self._padded(k, shape, at), self._padded(qkv[:, k_end:].view(-1, self.kv_heads, d), shape, at))
        a = F.scaled_dot_product_attention(self._padded(q, shape, at), keys, values, attn_mask=allowed,
                                           scale=self.scaling, enable_gqa=self.kv_heads != self.heads)
        a = a.transpose(1, 2).reshape(shape[0] * shape[1], -1)
        h = h + self._linear(a if at is None else a[at], wo, bo)
        gate, up = self._linear(self._norm(h, ln2), wgu, bgu).chunk(2, dim=-1)
        return h + self._linear(F.silu(gate) * up, wd, bd)
