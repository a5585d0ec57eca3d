"""CMC inside `transformers` pipelines: a `LogitsProcessor` for `model.generate(...)`.

    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.engine.processor import CMCLogitsProcessor
    user = load_lm("mistral-7b")
    delta = load_delta("deltas/instruct", user, alpha=1.0)
    proc = CMCLogitsProcessor([delta], user, prompts)          # the prompts as plain text
    ids = tokenizer(prompts, return_tensors="pt", padding=True)  # padding_side="left"
    out = user.model.generate(**ids, logits_processor=[proc], do_sample=False, max_new_tokens=64)

The processor returns the combined scores of deltastate.step_scores over one deltastate.DeltaStreams per
delta, keyed by the batch's rows (the same deltas, maps, look-ahead and delta state as `cmc generate`), so greedy output equals cmc's own decoder. One processor serves one
`generate` call (its batch); beam search is not supported.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from cmc_cli.engine.decode import combine_mode
from cmc_cli.engine.deltastate import DeltaStreams, step_scores
from cmc_cli.engine.models import Delta, LoadedModel
from cmc_cli.engine.textsync import GenText
from cmc_cli.errors import CmcError


class CMCLogitsProcessor(LogitsProcessor):
    def __init__(self, deltas: list[Delta], user: LoadedModel, prompts: list[str], combine: str | None = None):
        self.deltas = list(deltas)
        self.user = user
        self.prompts = list(prompts)
        self.combine = combine_mode(self.deltas, combine)
        self.streams: list[DeltaStreams] = []
        self.texts: list[GenText] = []
        self.prompt_len = None
        self.d_logits = None

    def _start(self, input_ids: torch.LongTensor) -> None:
        if input_ids.shape[0] != len(self.prompts):
            raise CmcError(f"CMCLogitsProcessor was given {len(self.prompts)} prompts but generate runs "
                           f"{input_ids.shape[0]} rows (beam search and num_return_sequences > 1 are not supported)")
        self.prompt_len = input_ids.shape[1]
        pad = self.user.tokenizer.pad_token_id
        self.texts = []
        for row in input_ids.tolist():
            start = 0
            while pad is not None and start < len(row) - 1 and row[start] == pad:
                start += 1  # left padding
            self.texts.append(GenText(self.user.tokenizer, row[start:]))
        self.streams = [DeltaStreams(d, same_vocab=d.reads_user_ids(self.user)) for d in self.deltas]
        for s in self.streams:
            for r, p in enumerate(self.prompts):
                s.add(r, p)
        self.d_logits = self._step([""] * len(self.prompts), [[] for _ in self.prompts])

    @torch.inference_mode()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        active = [True] * len(self.prompts)  # generate keeps finished rows in the batch
        if self.prompt_len is None:
            self._start(input_ids)
        else:
            if input_ids.shape[1] != self.prompt_len + self.texts[0].n_generated + 1:
                raise CmcError("CMCLogitsProcessor serves one generate call; make a new one for each call")
            gen = [t.append(int(tok)) for t, tok in zip(self.texts, input_ids[:, -1].tolist())]
            self.d_logits = self._step(gen, input_ids[:, self.prompt_len:].tolist())
        return step_scores(scores, self.deltas, self.streams, self.d_logits, active, self.combine).to(scores.dtype)

    def _step(self, gen: list[str], gen_ids: list[list[int]]) -> list[torch.Tensor]:
        """Every delta's logits after each row's generated text and ids (all rows: generate keeps finished ones)."""
        rows = list(range(len(self.prompts)))
        return [s.step(rows, gen, gen_ids) for s in self.streams]
