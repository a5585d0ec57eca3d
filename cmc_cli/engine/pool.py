"""One delta over a serving engine's changing batch: requests join, leave and move between steps.

The decoder's DeltaRunner holds a fixed batch from its first step. A server (serve/state.py) adds a
request when it is scheduled, drops it when it finishes, is cancelled or preempted, and steps whatever
subset of its requests runs now. A DeltaPool keeps each request's delta state as the decoder does —
the delta's ids of `bos + format(prompt) + generated text` equal to a fresh tokenization
(textsync.DeltaText), or the user's own ids for a delta with the user's vocabulary — in one
streams.ResyncLM whose rows are added and dropped with the requests, and runs one batched delta
forward over the requests of a step.
"""

from __future__ import annotations

import torch

from cmc_cli.engine.runner import DeltaRunner
from cmc_cli.engine.models import Delta
from cmc_cli.engine.streams import ResyncLM
from cmc_cli.engine.textsync import DeltaText


class _Row:
    __slots__ = ("text", "ids", "n_user")

    def __init__(self, text: DeltaText | None, ids: list[int] | None):
        self.text = text  # cross-vocabulary: the delta's tokenization of its text
        self.ids = ids  # same vocabulary: the delta's ids (its prompt, then the user's ids)
        self.n_user = 0  # user ids already appended (same vocabulary)


class DeltaPool:
    """A delta's state for a changing set of requests, each known by a key (any hashable)."""

    def __init__(self, delta: Delta, same_vocab: bool):
        self.delta = delta
        self.same_vocab = same_vocab
        self.lm = ResyncLM(delta.lm.model, 0, delta.lm.pad_id)
        self.keys: list = []  # the stream row of each key, in the stream's order
        self.rows: dict = {}  # key -> _Row
        self._runner = DeltaRunner(delta, same_vocab)  # its prompt check and look-ahead, over this pool's stream
        self._runner.lm = self.lm
        self.limit = self._runner.limit
        self._unallocated = 0  # keys added since the stream last grew: their rows are added together
        self._step_rows: dict[int, int] = {}  # batch row -> stream row, of the last step

    def _allocate(self) -> None:
        if self._unallocated:
            self.lm.add_rows(self._unallocated)  # one copy of the cache for all the requests that joined
            self._unallocated = 0

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key, prompt: str) -> None:
        """A new request whose deltas read `prompt` (in the delta's prompt format); nothing runs until its step."""
        if key in self.rows:
            raise KeyError(f"request {key!r} is already in the pool")
        lm = self.delta.lm
        head = self.delta.heads([prompt])[0]
        if self.same_vocab:
            row = _Row(None, lm.bos + list(lm.tokenizer(head, add_special_tokens=False)["input_ids"]))
        else:
            row = _Row(DeltaText(lm.tokenizer, head, lm.bos), None)
        self._runner._check_prompts([row.ids if row.ids is not None else row.text.ids], [prompt])
        self.rows[key] = row
        self.keys.append(key)
        self._unallocated += 1

    def remove(self, keys) -> None:
        """Drop these requests and their cache rows."""
        gone = {k for k in keys if k in self.rows}
        if not gone:
            return
        self._allocate()
        for k in gone:
            del self.rows[k]
        keep = [i for i, k in enumerate(self.keys) if k not in gone]
        self.keys = [self.keys[i] for i in keep]
        self.lm.keep_rows(keep)

    def step(self, keys: list, texts: list[str], user_ids: list[list[int]], batch_rows: list[int]) -> torch.Tensor:
        """The delta's logits (len(keys), V_delta) after each request's text so far: texts[i] is request
        keys[i]'s generated text, user_ids[i] its generated user ids (what a same-vocabulary delta reads),
        batch_rows[i] its row in the step's batch (for the look-ahead)."""
        self._allocate()
        at = {k: i for i, k in enumerate(self.keys)}
        lm_rows = [at[k] for k in keys]
        keep = self.lm.lengths()
        new: list[list[int]] = [[] for _ in self.keys]
        for k, r, text, uids in zip(keys, lm_rows, texts, user_ids):
            row = self.rows[k]
            if row.ids is not None:
                row.ids.extend(uids[row.n_user:])
                row.n_user = len(uids)
                ids, lcp = row.ids, keep[r]
            else:
                lcp = row.text.update(text)
                ids = row.text.ids
            lcp = min(lcp, keep[r], len(ids) - 1)  # at least the last token is fed, for its logits
            keep[r] = lcp
            new[r] = ids[lcp:]
        out = self.lm.feed(keep, new)
        self._step_rows = dict(zip(batch_rows, lm_rows))
        return out.index_select(0, torch.tensor(lm_rows, device=out.device))

    def over_limit(self, keys: list) -> list[bool]:
        self._allocate()
        n = self.lm.lengths()
        at = {k: i for i, k in enumerate(self.keys)}
        return [bool(self.limit) and n[at[k]] >= self.limit for k in keys]

    def lookahead(self, user_logits: torch.Tensor, active: list[bool]) -> tuple | None:
        """The look-ahead of the last step (DeltaRunner.lookahead) over the batch rows it stepped."""
        if not self._step_rows:
            return None
        mine = [a and b in self._step_rows for b, a in enumerate(active)]
        return self._runner.lookahead(user_logits, mine, self._step_rows)
