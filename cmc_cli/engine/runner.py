"""One delta fed a batch's text step by step (DeltaRunner), and the step's combined scores (step_scores):
what Decoder.generate, the logits processor and the serving pool share. A delta with the user's vocabulary
reads the user's ids; across vocabularies its ids are kept equal to a fresh tokenization of the text
(textsync.DeltaText) while its KV cache keeps the longest common prefix (streams.ResyncLM)."""

from __future__ import annotations

import torch

from cmc_cli.engine.combine import decode_scores, lookahead_extra
from cmc_cli.engine.models import Delta
from cmc_cli.engine.streams import LockstepLM, ResyncLM, context_length
from cmc_cli.engine.textsync import DeltaText
from cmc_cli.errors import CmcError


class DeltaRunner:
    """Feeds one delta the batch's text and returns its logits (B, V_delta) after each step."""

    def __init__(self, delta: Delta, same_vocab: bool):
        self.delta = delta
        self.same_vocab = same_vocab
        self.lm: LockstepLM | ResyncLM | None = None
        self.texts: list[DeltaText] = []
        self.limit = context_length(delta.lm.model)
        self.prompt_fed: list[int] = []

    def start(self, prompts: list[str]) -> torch.Tensor:
        lm = self.delta.lm
        tok = lm.tokenizer
        if self.same_vocab:
            ids = [lm.bos + list(tok(h, add_special_tokens=False)["input_ids"]) for h in self.delta.heads(prompts)]
            self._check_prompts(ids, prompts)
            self.lm = LockstepLM(lm.model, lm.pad_id)
            out = self.lm.start(ids)
        else:
            self.texts = [DeltaText(tok, h, lm.bos) for h in self.delta.heads(prompts)]
            self._check_prompts([t.ids for t in self.texts], prompts)
            self.lm = ResyncLM(lm.model, len(prompts), lm.pad_id)
            out = self.lm.feed([0] * len(prompts), [list(t.ids) for t in self.texts])
        self.prompt_fed = list(self.lm.fed)
        return out

    def _check_prompts(self, ids: list[list[int]], prompts: list[str]) -> None:
        for i, p in zip(ids, prompts):
            if self.limit and len(i) >= self.limit:
                raise CmcError(f"the prompt '{p[:40]}…' is {len(i)} tokens in the format of delta "
                               f"{self.delta.lm.name}, which has a context window of {self.limit}; shorten it")

    def step(self, tokens: torch.Tensor, texts: list[str], active: list[bool]) -> torch.Tensor:
        """tokens (B,) the user ids just chosen; texts: each row's generated text so far."""
        if self.same_vocab:
            return self.lm.step(tokens)
        keep, new = [], []
        for r, t in enumerate(self.texts):
            if not active[r]:
                keep.append(len(t.ids))
                new.append([])
                continue
            lcp = t.update(texts[r])
            k = min(lcp, len(t.ids) - 1)  # at least the last token is fed, for its logits
            keep.append(k)
            new.append(t.ids[k:])
        out = self.lm.feed(keep, new)
        if out is None:
            raise RuntimeError("no active row")  # the decoder never steps a finished batch
        return out

    def lookahead(self, user_logits: torch.Tensor, active: list[bool], lm_rows: list[int] | None = None) -> tuple | None:
        """The look-ahead of this step (engine/lookahead.py): (rows, cols, extra) for combine.map_delta_logits,
        from one tree-masked delta forward over every candidate's continuation; None without candidates.
        lm_rows[b]: the stream row of batch row b (default: the same; engine/pool.py's rows differ)."""
        la = self.delta.lookahead
        if la is None or self.same_vocab:
            return None
        cands = la.candidates(user_logits, active)
        if not cands:
            return None
        at = (lambda r: r) if lm_rows is None else lm_rows.__getitem__
        outs = self.lm.peek([(at(r), p[:-1]) for r, _, p in cands])  # inputs d, r_1..r_{m-1}
        logits = torch.cat(outs)
        targets = torch.tensor([t for _, _, p in cands for t in p[1:]])
        owner = torch.tensor([c for c, (_, _, p) in enumerate(cands) for _ in p[1:]])
        extra = lookahead_extra(logits, targets, owner, len(cands))
        return (torch.tensor([r for r, _, _ in cands]), torch.tensor([u for _, u, _ in cands]), extra)

    def over_limit(self) -> list[bool]:
        return [bool(self.limit) and n >= self.limit for n in self.lm.lengths()]

    def peeked(self) -> list[int]:
        """Look-ahead delta tokens computed so far, per row (never kept in the cache)."""
        return list(getattr(self.lm, "peeked", [0] * len(self.lm.fed)))

    def generated_fed(self) -> list[int]:
        """Delta tokens computed after the prompt, per row (1 per generated token when nothing is recomputed)."""
        return [a - b for a, b in zip(self.lm.fed, self.prompt_fed)]


def step_scores(user_logits: torch.Tensor, deltas: list[Delta], runners: list, delta_logits: list,
                active: list[bool], mode: str, proxy: tuple | None = None, alphas: list | None = None) -> torch.Tensor:
    """The decode step's combined scores (B, V) from the user's and each delta's logits of this step, with
    each delta's look-ahead (and the proxy-tuning term): what the decoder, the scorer, the logits
    processor and the server (serve/state.py) all call; combine.decode_scores computes the equation.
    alphas: per delta, its strength for this step (a float, or (B, 1) per row: a server's requests choose
    their own); default each delta's alpha."""
    alphas = [None] * len(deltas) if alphas is None else alphas
    terms = [d.term(lg.to(user_logits.device), r.lookahead(user_logits, active), alpha=a)
             for d, r, lg, a in zip(deltas, runners, delta_logits, alphas)]
    return decode_scores(user_logits, terms, mode, proxy)
