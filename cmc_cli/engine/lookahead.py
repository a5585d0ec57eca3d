"""The look-ahead of a token map with prefix rule "lookahead" (`cmc map-vocab --strategy pm-lookahead`).

PM-MinED maps a user token u with no exact match to its longest delta prefix d (ĠIron -> ▁I), so the
delta's value for d lands on u: a refusal delta's boost on ▁I made `other` say " Iron't know."
(docs/tokenmaps.md). The look-ahead scores such a u by what the delta thinks of its whole string:

    value(u) = z_0[d] + sum_j (z_j[r_j] - baseline(z_j))       (combine.map_delta_logits, lookahead_extra)

where rest = u - d is written in delta pieces r_1..r_m and z_j is the delta's logits after the
context, d and r_1..r_{j-1}. It is computed for the prefix-mapped tokens among the user's top-k at each
step, in one extra delta forward over all of them (streams.ResyncLM.peek, tree-masked continuations on
the KV cache); the other prefix-mapped tokens get only the delta's suppressions (the "suppress" rule), so
no token outside the k examined can win on a boost it was never checked for. Exact and extension
matches keep the map's value.

rest is written in delta pieces by longest match over the delta's surfaces, with its byte pieces for a
character no surface covers: PM-MinED's own rule applied to what is left after d.
"""

from __future__ import annotations

import torch

from cmc_cli.tokenmaps.strategies import PREFIX, exact_table
from cmc_cli.vocab import Vocab, surface_to_bytes


class Lookahead:
    """The candidates and delta pieces of one token map's look-ahead; built once per loaded delta."""

    def __init__(self, token_map, delta: Vocab, user: Vocab, k: int):
        if k < 1:
            raise ValueError(f"look-ahead k must be >= 1, got {k}")
        self.k = int(k)
        self.index = token_map.index
        self.prefix = torch.from_numpy(token_map.kind == PREFIX)
        self.delta, self.user = delta, user
        table = exact_table(delta)
        self.surface_ids = {s: i for s, i in table.items() if i not in delta.raw_text_ids}
        self.longest = max((len(s) for s in self.surface_ids), default=0)
        self.byte_ids = {v: i for i, v in sorted(delta.byte_values.items(), reverse=True)}
        self._pieces: dict[int, list[int] | None] = {}

    def pieces(self, u: int) -> list[int] | None:
        """[d, r_1, ..., r_m] for a prefix-mapped user id u; None when rest cannot be written in delta pieces."""
        if u in self._pieces:
            return self._pieces[u]
        d = int(self.index[u])
        su, sd = self.user.surfaces[u], self.delta.surfaces[d]
        out = None
        if su is not None and sd is not None and su.startswith(sd) and len(su) > len(sd):
            rest = self.write(su[len(sd):])
            out = [d] + rest if rest else None
        self._pieces[u] = out
        return out

    def write(self, text: str) -> list[int] | None:
        """text in delta pieces: longest surface match, byte pieces for a character no surface starts with."""
        out, i = [], 0
        while i < len(text):
            for n in range(min(self.longest, len(text) - i), 0, -1):
                j = self.surface_ids.get(text[i:i + n])
                if j is not None:
                    out.append(j)
                    i += n
                    break
            else:
                bs = [self.byte_ids.get(b) for b in surface_to_bytes(text[i])]
                if not bs or None in bs:
                    return None
                out.extend(bs)
                i += 1
        return out

    def candidates(self, user_logits: torch.Tensor, active: list[bool]) -> list[tuple[int, int, list[int]]]:
        """(row, user id, pieces) of the prefix-mapped tokens among each active row's top-k user logits."""
        V = min(user_logits.shape[-1], self.prefix.shape[0])
        top = user_logits[:, :V].topk(min(self.k, V), dim=-1).indices.cpu()
        out = []
        for r in range(top.shape[0]):
            if not active[r]:
                continue
            for u in top[r].tolist():
                if self.prefix[u]:
                    p = self.pieces(u)
                    if p is not None:
                        out.append((r, u, p))
        return out
