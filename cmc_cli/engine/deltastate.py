"""The one per-request state of a delta (DeltaStreams), and the decode step's combined scores (step_scores).

Every caller that feeds a delta its text goes through here: the Decoder (`cmc generate`, `cmc eval`; one
key per row of its batch), `CMCLogitsProcessor` (one key per row of a `transformers` `generate` batch) and
the server (serve/state.py; one key per request of vLLM's changing batch). The Scorer takes its prompt
ids from `delta_prompt` too. A request's delta text is `bos + format(prompt) + generated text`:

- a delta with the user's vocabulary reads the user's own generated ids after its prompt;
- across vocabularies its ids are kept equal to a fresh tokenization of that text (textsync.DeltaText).

All rows of one delta live in one streams.ResyncLM: rows join (`add`), leave (`remove`) and run in any
subset and order (`step`), with one batched forward per step; a row's KV cache keeps the longest common
prefix of its old and new ids, and the look-ahead (engine/lookahead.py) peeks through the same rows.
"""

from __future__ import annotations

import torch

from cmc_cli.engine.combine import decode_scores, lookahead_extra
from cmc_cli.engine.heads import GatheredHead
from cmc_cli.engine.models import Delta
from cmc_cli.engine.streams import ResyncLM, context_length
from cmc_cli.engine.textsync import DeltaText
from cmc_cli.errors import CmcError


def delta_prompt(delta: Delta, prompt: str, same_vocab: bool) -> list[int] | DeltaText:
    """The delta's start of one request: its ids of `bos + format(prompt)` (same vocabulary) or the
    DeltaText that keeps them in step with the generated text (across vocabularies)."""
    lm = delta.lm
    head = delta.heads([prompt])[0]
    if same_vocab:
        return lm.bos + list(lm.tokenizer(head, add_special_tokens=False)["input_ids"])
    return DeltaText(lm.tokenizer, head, lm.bos)


class _Row:
    __slots__ = ("text", "ids", "n_user", "prompt_fed")

    def __init__(self, start: list[int] | DeltaText):
        self.text = start if isinstance(start, DeltaText) else None  # across vocabularies
        self.ids = None if self.text is not None else start  # same vocabulary: prompt ids, then the user's
        self.n_user = 0  # user ids already appended (same vocabulary)
        self.prompt_fed: int | None = None  # delta tokens fed when the row's prompt was

    def delta_ids(self) -> list[int]:
        return self.ids if self.ids is not None else self.text.ids


class DeltaStreams:
    """One delta's state for a changing set of rows, each known by a key (any hashable)."""

    def __init__(self, delta: Delta, same_vocab: bool):
        self.delta = delta
        self.same_vocab = same_vocab
        # the mapped ids' logits and the mean only, where that is all decoding reads (engine/heads.py)
        self.gathered = GatheredHead.for_delta(delta)
        self.lm = ResyncLM(delta.lm.model, 0, delta.lm.pad_id, head=self.gathered)
        self.limit = context_length(delta.lm.model)
        self.keys: list = []  # the stream row of each key, in the stream's order
        self.rows: dict = {}  # key -> _Row
        self._unallocated = 0  # keys added since the stream last grew: their rows are added together
        self._step_rows: dict[int, int] = {}  # batch row -> stream row, of the last step

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key, prompt: str) -> None:
        """A new row whose delta reads `prompt` (in the delta's prompt format); nothing runs until its step."""
        if key in self.rows:
            raise KeyError(f"request {key!r} already has a delta state")
        row = _Row(delta_prompt(self.delta, prompt, self.same_vocab))
        n = len(row.delta_ids())
        if self.limit and n >= self.limit:
            raise CmcError(f"the prompt '{prompt[:40]}…' is {n} tokens in the format of delta "
                           f"{self.delta.lm.name}, which has a context window of {self.limit}; shorten it")
        self.rows[key] = row
        self.keys.append(key)
        self._unallocated += 1

    def remove(self, keys) -> None:
        """Drop these rows and their cache rows."""
        gone = {k for k in keys if k in self.rows}
        if not gone:
            return
        self._allocate()
        for k in gone:
            del self.rows[k]
        keep = [i for i, k in enumerate(self.keys) if k not in gone]
        self.keys = [self.keys[i] for i in keep]
        self.lm.keep_rows(keep)

    def step(self, keys: list, texts: list[str], user_ids: list[list[int]], batch_rows: list[int] | None = None
             ) -> torch.Tensor:
        """The delta's logits (len(keys), V_delta) after each row's text so far — where self.gathered, that
        GatheredHead's (len(keys), mapped ids + 1) — in one forward: texts[i] is
        row keys[i]'s generated text, user_ids[i] its generated user ids (what a same-vocabulary delta
        reads); a row's first step feeds its prompt. batch_rows[i]: its row in the step's batch, for the
        look-ahead (default 0..len(keys)-1)."""
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
                lcp = keep[r]
            else:
                lcp = row.text.update(text)
            lcp = min(lcp, keep[r], len(row.delta_ids()) - 1)  # at least the last token is fed, for its logits
            keep[r] = lcp
            new[r] = row.delta_ids()[lcp:]
        out = self.lm.feed(keep, new)
        if out is None:
            raise RuntimeError("no row to step")  # callers never step an empty batch
        for k, r in zip(keys, lm_rows):
            if self.rows[k].prompt_fed is None:
                self.rows[k].prompt_fed = self.lm.fed[r]
        self._step_rows = dict(zip(range(len(keys)) if batch_rows is None else batch_rows, lm_rows))
        return out.index_select(0, torch.tensor(lm_rows, device=out.device))

    def _allocate(self) -> None:
        if self._unallocated:
            self.lm.add_rows(self._unallocated)  # one copy of the cache for all the rows that joined
            self._unallocated = 0

    def _stream_rows(self, keys: list) -> list[int]:
        self._allocate()
        at = {k: i for i, k in enumerate(self.keys)}
        return [at[k] for k in keys]

    def over_limit(self, keys: list) -> list[bool]:
        """Whether each row has reached the delta's context window."""
        n = self.lm.lengths()
        return [bool(self.limit) and n[r] >= self.limit for r in self._stream_rows(keys)]

    def generated_fed(self, keys: list) -> list[int]:
        """Delta tokens computed after each row's prompt (1 per generated token when nothing is recomputed)."""
        return [self.lm.fed[r] - (self.rows[k].prompt_fed or 0) for k, r in zip(keys, self._stream_rows(keys))]

    def peeked(self, keys: list) -> list[int]:
        """Look-ahead delta tokens computed so far, per row (never kept in the cache)."""
        return [self.lm.peeked[r] for r in self._stream_rows(keys)]

    def text(self, key) -> DeltaText | None:
        """A cross-vocabulary row's delta text (its ids and re-tokenization statistics)."""
        return self.rows[key].text

    def lookahead(self, user_logits: torch.Tensor, active: list[bool]) -> tuple | None:
        """The look-ahead of the last step (engine/lookahead.py) over its batch rows: (rows, cols, extra) for
        combine.map_delta_logits, from one tree-masked delta forward over every candidate's continuation;
        None without candidates."""
        la = self.delta.lookahead
        if la is None or self.same_vocab or not self._step_rows:
            return None
        mine = [a and b in self._step_rows for b, a in enumerate(active)]
        cands = la.candidates(user_logits, mine)
        if not cands:
            return None
        outs = self.lm.peek([(self._step_rows[r], p[:-1]) for r, _, p in cands])  # inputs d, r_1..r_{m-1}
        logits = torch.cat(outs)
        targets = torch.tensor([t for _, _, p in cands for t in p[1:]])
        owner = torch.tensor([c for c, (_, _, p) in enumerate(cands) for _ in p[1:]])
        extra = lookahead_extra(logits, targets, owner, len(cands))
        return (torch.tensor([r for r, _, _ in cands]), torch.tensor([u for _, u, _ in cands]), extra)


def step_scores(user_logits: torch.Tensor, deltas: list[Delta], streams: list[DeltaStreams], delta_logits: list,
                active: list[bool], mode: str, proxy: tuple | None = None, alphas: list | None = None) -> torch.Tensor:
    """The decode step's combined scores (B, V) from the user's and each delta's logits of this step, with
    each delta's look-ahead (and the proxy-tuning term): what the decoder, the scorer, the logits
    processor and the server (serve/state.py) all call; combine.decode_scores computes the equation.
    alphas: per delta, its strength for this step (a float, or (B, 1) per row: a server's requests choose
    their own); default each delta's alpha."""
    alphas = [None] * len(deltas) if alphas is None else alphas
    terms = [d.term(lg.to(user_logits.device), s.lookahead(user_logits, active), alpha=a, gathered=s.gathered)
             for d, s, lg, a in zip(deltas, streams, delta_logits, alphas)]
    return decode_scores(user_logits, terms, mode, proxy)
