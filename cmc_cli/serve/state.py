"""cmc's decode step inside a serving engine's batch, without the engine: what serve/vllm_processor.py drives.

A serving engine keeps a persistent batch: between steps requests are added at a row (with their
prompt ids and a live reference to their output ids), removed, and moved to another row. ServeState
follows those changes, keeps each request's generated text (textsync.GenText, one per request) and
each delta's state for the requests that use it (engine/deltastate.DeltaStreams, keyed by request), and
turns a step's user logits into cmc's scores with deltastate.step_scores — the same function the decoder, the scorer and
`CMCLogitsProcessor` call — with each request's own deltas and strengths (alpha per row; a delta no
row of the step uses does not run).

A request whose prompt or text no longer fits a delta's context window is ended (only its EOS is
left possible), as `cmc generate` ends such a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cmc_cli.config.serve import ServeConfig
from cmc_cli.engine.decode import combine_mode
from cmc_cli.engine.models import Delta, LoadedModel
from cmc_cli.engine.deltastate import DeltaStreams, step_scores
from cmc_cli.engine.textsync import GenText
from cmc_cli.errors import CmcError

log = logging.getLogger(__name__)


@dataclass
class Request:
    key: int
    alphas: dict[str, float]  # the deltas it uses (alpha != 0)
    prompt_ids: list[int]
    out: list[int]  # the engine's live list of its output ids
    gen: GenText
    ended: str | None = None  # why cmc ended it (a delta's context window)
    ids: list[int] = field(default_factory=list)  # output ids read so far


class ServeState:
    def __init__(self, user: LoadedModel, deltas: dict[str, Delta], config: ServeConfig):
        self.user = user
        self.deltas = deltas
        self.config = config
        self.mode = self._checked(user, deltas, config)
        self.streams = {name: DeltaStreams(d, d.reads_user_ids(user)) for name, d in deltas.items()}
        self.rows: dict[int, Request] = {}  # batch row -> request
        self._next_key = 0
        eos = user.tokenizer.eos_token_id
        self.eos = int(eos) if eos is not None else None

    @staticmethod
    def _checked(user: LoadedModel, deltas: dict[str, Delta], config: ServeConfig) -> str:
        """The combine mode of these deltas on this user, after checking that each one's map fits it."""
        for name, d in deltas.items():
            if d.index is not None and d.index.shape[0] > user.width:
                raise CmcError(f"the token map of delta {name} covers {d.index.shape[0]} user tokens but the user model "
                               f"{user.name} has {user.width} logits; it was built for another model")
        return combine_mode(list(deltas.values()), config.combine)

    @staticmethod
    def _deltas(config: ServeConfig, n_logits: int, device, weights: bool) -> tuple[LoadedModel, dict[str, Delta]]:
        """The user's tokenizer and every delta with its token map; strengths left to calibration become numbers
        in `config` (per-request :auto too)."""
        from cmc_cli.engine.devices import pick_dtype
        from cmc_cli.engine.models import load_delta, load_vocab_only

        device = torch.device(device)
        dtype = pick_dtype(config.dtype, device)
        user = load_vocab_only(config.user, n_logits)
        deltas = {d.name: load_delta(d.path, user, d.alpha, config.token_maps, device=str(device), dtype=dtype,
                                     weights=weights) for d in config.deltas}
        for served in config.deltas:
            d = deltas[served.name]
            served.alpha = d.alpha
            if d.alpha_source == "calibrated":
                config.calibrated[served.name] = d.alpha
        return user, deltas

    @classmethod
    def load(cls, config: ServeConfig, n_logits: int, device="cpu") -> "ServeState":
        """Load the user's tokenizer and every delta with its token map (once per engine process)."""
        return cls(*cls._deltas(config, n_logits, device, weights=True), config)

    @classmethod
    def check(cls, config: ServeConfig, n_logits: int) -> None:
        """What load checks and resolves, without reading the deltas' weights (the CLI, before the engine starts)."""
        cls._checked(*cls._deltas(config, n_logits, "cpu", weights=False), config)

    # ---- the batch's changes ---------------------------------------------------------------------------
    def update(self, removed=(), added=(), moved=()) -> None:
        """Apply one batch update, in the engine's order: removed rows, added (row, extra_args,
        prompt_ids, live output ids), moved (i, j, swap)."""
        gone = [self.rows.pop(b, None) for b in removed]
        for b, extra_args, prompt_ids, out in added:
            gone.append(self.rows.pop(b, None))  # an added request may take an occupied row
            self.rows[b] = self._new(extra_args, list(prompt_ids or []), out)
        for i, j, swap in moved:
            a, c = self.rows.pop(i, None), self.rows.pop(j, None)
            if swap:
                if c is not None:
                    self.rows[i] = c
            else:
                gone.append(c)  # a one-way move replaces what was at j
            if a is not None:
                self.rows[j] = a
        self._drop([r for r in gone if r is not None])

    def _new(self, extra_args, prompt_ids: list[int], out: list[int]) -> Request:
        alphas, prompt = self.config.selection(extra_args)
        alphas = {n: a for n, a in alphas.items() if a != 0}
        req = Request(self._next_key, alphas, prompt_ids, out, GenText(self.user.tokenizer, prompt_ids))
        self._next_key += 1
        if alphas:
            text = prompt if prompt is not None else self.prompt_text(prompt_ids)
            for name in alphas:
                try:
                    self.streams[name].add(req.key, text)
                except CmcError as e:
                    req.ended = str(e)
                    log.warning("request %d ended: %s", req.key, e)
                    break
        return req

    def _drop(self, reqs: list[Request]) -> None:
        """Drop these requests from every delta state, one cache copy per delta."""
        for name, st in self.streams.items():
            st.remove([r.key for r in reqs if name in r.alphas])

    def prompt_text(self, prompt_ids: list[int]) -> str:
        """The prompt as text, for the deltas: the user's ids decoded without its specials (its BOS)."""
        return self.user.tokenizer.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def live_state(self) -> dict[str, int]:
        """Requests held and rows in each delta's cache: what a cancelled request must leave behind (nothing)."""
        return {"requests": len(self.rows), **{n: len(p) for n, p in self.streams.items()}}

    # ---- the step ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The step's scores (B, V) for the engine's logits (B, V) of rows 0..B-1."""
        B = logits.shape[0]
        reqs = [self.rows.get(b) for b in range(B)]
        if any(r is None for r in reqs):
            missing = next(b for b, r in enumerate(reqs) if r is None)
            raise RuntimeError(f"cmc serve: batch row {missing} has no request (a batch update was missed)")
        for r in reqs:
            self._sync(r)
        used = [n for n in self.streams if any(n in r.alphas and not r.ended for r in reqs)]
        ended = [b for b, r in enumerate(reqs) if r.ended]
        if used:
            deltas, streams, d_logits, alphas = [], [], [], []
            for name in used:
                rows = [b for b, r in enumerate(reqs) if name in r.alphas and not r.ended]
                st = self.streams[name]
                lg = st.step([reqs[b].key for b in rows], [reqs[b].gen.text for b in rows],
                               [reqs[b].ids for b in rows], rows)
                full = lg.new_zeros((B, lg.shape[-1]))
                full[rows] = lg
                a = torch.zeros((B, 1), dtype=torch.float32)
                a[rows, 0] = torch.tensor([reqs[b].alphas[name] for b in rows], dtype=torch.float32)
                deltas.append(self.deltas[name])
                streams.append(st)
                d_logits.append(full)
                alphas.append(a.to(logits.device))
                for b, over in zip(rows, st.over_limit([reqs[b].key for b in rows])):
                    if over:
                        reqs[b].ended = f"it reached the context window of delta {name} ({st.limit} tokens)"
                        log.warning("request %d ended: %s", reqs[b].key, reqs[b].ended)
                        ended.append(b)
            out = step_scores(logits, deltas, streams, d_logits, [True] * B, self.mode, alphas=alphas)
        else:
            out = logits.float()
        if ended:
            out = self._end(out, sorted(set(ended)))
        return out

    def _sync(self, req: Request) -> None:
        """Read the request's new output ids (up to a placeholder the engine has not filled yet)."""
        new = req.out[len(req.ids):]
        for t in new:
            if t < 0:
                break
            req.ids.append(int(t))
            req.gen.append(int(t))

    def _end(self, scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if self.eos is None:
            return scores
        scores = scores.clone()
        scores[rows] = float("-inf")
        scores[rows, self.eos] = 0.0
        return scores
