"""Decode a user LLM with one or more deltas (DESIGN.md):

    final_t = LogSoftmax(M_u(x<t)) + sum_k alpha_k * TokenMap_k(M_dk(x<t))     (combine.decode_scores)

and, as the paper's baseline, proxy-tuning: + alpha * (LogSoftmax(expert) - LogSoftmax(anti-expert)).

The user model reads its own prompt (raw, its chat template, or a format string) and the ids it
generates. Each delta reads the same generated *text* after the prompt in its own format
(`cmc.json` prompt_format), tokenized with its own tokenizer exactly as in training
(`bos + tokenize(format(prompt) + text)`); a delta with the user's vocabulary is fed the user's ids
directly. Across vocabularies the delta's ids are kept equal to a fresh tokenization of the text
(textsync.DeltaText) while its KV cache keeps the longest common prefix and only the changed tail is
recomputed: each call's rows are keys 0..B-1 of one deltastate.DeltaStreams per delta, the state the
logits processor and the server use too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cmc_cli.config import check_user_format
from cmc_cli.data.instruct import join_response, render
from cmc_cli.engine.models import PROBE, Delta, LoadedModel, check_alpha
from cmc_cli.engine.deltastate import DeltaStreams, step_scores
from cmc_cli.engine.sampling import GenerationConfig, choose_tokens
from cmc_cli.engine.streams import LockstepLM, context_length
from cmc_cli.engine.textsync import GenText
from cmc_cli.errors import CmcError, ConfigError

log = logging.getLogger(__name__)



@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str  # eos | stop | length
    delta_tokens: list[int] = field(default_factory=list)  # delta tokens computed after the prompt, per delta
    lookahead_tokens: list[int] = field(default_factory=list)  # look-ahead delta tokens computed, per delta
    token_logprobs: list[float] = field(default_factory=list)  # teacher forcing: log p of each forced token


def combine_mode(deltas: list[Delta], combine: str | None) -> str:
    """The combine mode of a decode: the one given, else the one every delta was trained with; deltas
    trained with different modes need it given (one mode applies to the whole step)."""
    if combine is not None:
        return combine
    modes = {d.combine for d in deltas}
    if len(modes) > 1:
        shown = ", ".join(f"{d.lm.name}: {d.combine}" for d in deltas)
        raise ConfigError(f"the deltas were trained with different combine modes ({shown}); pass --combine")
    return modes.pop() if modes else "log-softmax-template"


# ---- the decoder --------------------------------------------------------------------------------------
class Decoder:
    """A user model, its deltas and an optional proxy-tuning pair; `generate(prompts)` decodes a batch."""

    def __init__(self, user: LoadedModel, deltas: list[Delta] = (), expert: LoadedModel | None = None,
                 anti_expert: LoadedModel | None = None, proxy_alpha: float = 1.0, user_format: str = "auto",
                 combine: str | None = None):
        self.user = user
        self.deltas = list(deltas)
        self.expert, self.anti_expert = expert, anti_expert
        self.proxy_alpha = check_alpha(proxy_alpha)
        if user_format == "auto":
            from cmc_cli.assets import asset_prompt_format

            user_format = asset_prompt_format(user.path) or "raw"
        self.user_format = user_format
        if any(d.prompt_formats for d in self.deltas):  # a delta trained in several formats reads the user's own
            check_user_format(user_format)
            probe = self.user_prompt_text(PROBE)[0] if user_format != "chat" or _has_chat(user) else ""
            self.deltas = [d.in_format_for(probe) for d in self.deltas]
        self.combine = combine_mode(self.deltas, combine)
        self.limit = context_length(user.model)
        self.eos_ids = self._eos_ids()
        for d in self.deltas:
            check_alpha(d.alpha, f"the alpha of delta {d.lm.name}")
            if d.index is not None and d.index.shape[0] > user.width:
                raise CmcError(f"the token map of delta {d.lm.name} covers {d.index.shape[0]} user tokens but the "
                               f"user model {user.name} has {user.width} logits; it was built for another model")
        if (expert is None) != (anti_expert is None):
            raise ConfigError("proxy-tuning needs both --expert and --anti-expert")
        for m in (expert, anti_expert):
            if m is not None and m.vocab.fingerprint != user.vocab.fingerprint:
                raise CmcError(f"proxy-tuning needs the user's vocabulary: {m.name} has another tokenizer than {user.name}")
        check_user_format(user_format)
        if user_format == "chat" and not getattr(user.tokenizer, "chat_template", None):
            raise ConfigError(f"the user model {user.name} has no chat template; use --user-format raw or a format "
                              "string such as '### Question: {prompt}\\n### Answer:'")
        self.reset_stats()
        self.trace: list[dict] | None = None  # set to [] to record every step (tests, analysis)
        self.streams: list[DeltaStreams] = []  # the last generate call's delta states, for their statistics

    def reset_stats(self) -> None:
        """Counters over every generate call since: steps, generated tokens, delta tokens fed and look-ahead
        tokens computed per delta."""
        self.stats = {"steps": 0, "generated": 0, "delta_tokens": [0] * len(self.deltas),
                      "lookahead_tokens": [0] * len(self.deltas)}

    def _eos_ids(self) -> set[int]:
        ids = set()
        t = self.user.tokenizer
        if t.eos_token_id is not None:
            ids.add(int(t.eos_token_id))
        gc = getattr(self.user.model, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        ids.update([e] if isinstance(e, int) else list(e or []))
        return ids

    def suppress_ids(self, tokens) -> list[int]:
        """User ids of `--suppress` tokens: a token as the user's tokenizer spells it (`<start_of_image>`,
        `▁Paris`) or an id. One unknown is an error that names it."""
        tok, out = self.user.tokenizer, []
        for t in tokens:
            t = str(t)
            if t.isdigit() and int(t) < self.user.width:
                out.append(int(t))
                continue
            i = tok.convert_tokens_to_ids(t)
            if i is None or i == tok.unk_token_id and t != tok.unk_token:
                raise ConfigError(f"--suppress: '{t}' is not a token of the user model {self.user.name}; give a "
                                  "token as its tokenizer spells it (e.g. '<start_of_image>', '▁Paris') or an id")
            out.append(int(i))
        return sorted(set(out))

    def user_prompt_text(self, prompt: str) -> tuple[str, list[int]]:
        """The user model's prompt as text, and the ids fed before it: its BOS (LoadedModel.bos) for a raw or
        formatted prompt, nothing for a chat template (which writes its own)."""
        if self.user_format == "chat":
            tok = self.user.tokenizer
            return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False), []
        return (prompt if self.user_format == "raw" else render(self.user_format, prompt)), self.user.bos

    def user_prompt_ids(self, prompt: str) -> list[int]:
        text, head = self.user_prompt_text(prompt)
        return head + list(self.user.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_answer_ids(self, prompt: str, answer: str) -> list[int]:
        """The user's ids of `answer` after `prompt`, tokenized in context (join_response: one space between
        when neither side has one), as the model would have written them; the answer alone if the
        prompt's ids are not a prefix of the joined text's."""
        tok = self.user.tokenizer
        text, head = self.user_prompt_text(prompt)
        p_ids = head + list(tok(text, add_special_tokens=False)["input_ids"])
        full = head + list(tok(join_response(text, answer), add_special_tokens=False)["input_ids"])
        if full[:len(p_ids)] == p_ids and len(full) > len(p_ids):
            return full[len(p_ids):]
        return list(tok(answer, add_special_tokens=False)["input_ids"])

    def check_context(self, prompts: list[str], ids: list[list[int]]) -> None:
        for p, row in zip(prompts, ids):
            if self.limit and len(row) >= self.limit:
                raise CmcError(f"the prompt '{p[:40]}…' is {len(row)} tokens, the user model {self.user.name} has a "
                               f"context window of {self.limit}; shorten it or raise the model's limit")

    @torch.inference_mode()
    def generate(self, prompts: list[str], cfg: GenerationConfig, seeds: list[int] | None = None,
                 on_text=None, force: list[list[int]] | None = None) -> list[Generation]:
        """Decode a batch. `seeds[r]` seeds row r's sampler (default cfg.seed + r), so a prompt samples the
        same text alone or in any batch. on_text(row, text_so_far) is called after each token.
        force: teacher forcing — row r takes force[r] as its tokens and stops after them ("forced").
        Each call keeps its state in its own _Batch: the decoder is reentrant."""
        if not prompts:
            return []
        batch = _Batch(self, prompts, cfg, seeds, force)
        self.streams = batch.streams  # the last call's, for their statistics
        for t in range(cfg.max_new_tokens):
            tokens = batch.choose(t)
            batch.take(t, tokens, on_text)
            self.stats["steps"] += 1
            if not any(batch.active) or t == cfg.max_new_tokens - 1:
                break
            batch.advance(tokens)
        return batch.results(self.stats)


class _Batch:
    """One generate call: the models' streams over its rows, and each row's text, tokens and finish."""

    def __init__(self, dec: Decoder, prompts: list[str], cfg: GenerationConfig, seeds, force):
        self.dec, self.prompts, self.cfg, self.force = dec, prompts, cfg, force
        B = len(prompts)
        seeds = seeds if seeds is not None else [cfg.seed + r for r in range(B)]
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.user_ids = [dec.user_prompt_ids(p) for p in prompts]
        dec.check_context(prompts, self.user_ids)
        self.user = LockstepLM(dec.user.model, dec.user.pad_id)
        self.logits = self.user.start(self.user_ids)
        self.streams = [DeltaStreams(d, same_vocab=d.reads_user_ids(dec.user)) for d in dec.deltas]
        for s in self.streams:
            for r, p in enumerate(prompts):
                s.add(r, p)
        self.d_logits = [s.step(list(range(B)), [""] * B, [[] for _ in prompts]) for s in self.streams]
        pair = (dec.expert, dec.anti_expert) if dec.expert is not None else ()
        self.experts = [LockstepLM(m.model, m.pad_id) for m in pair]
        self.e_logits = [e.start(self.user_ids) for e in self.experts]
        self.suppressed = dec.suppress_ids(cfg.suppress)
        self.texts = [GenText(dec.user.tokenizer, ids) for ids in self.user_ids]
        self.out_ids: list[list[int]] = [[] for _ in range(B)]
        self.forced_lp: list[list[float]] = [[] for _ in range(B)]
        self.finish: list[str | None] = [None] * B
        self.cut: list[str | None] = [None] * B

    @property
    def active(self) -> list[bool]:
        return [f is None for f in self.finish]

    def choose(self, t: int) -> torch.Tensor:
        """The step's combined scores -> each row's token: sampled, or under teacher forcing the forced one
        (its log-probability recorded)."""
        dec, force = self.dec, self.force
        proxy = (dec.proxy_alpha, *self.e_logits) if self.experts else None
        final = step_scores(self.logits, dec.deltas, self.streams, self.d_logits, self.active, dec.combine, proxy)
        if force is not None:
            lp = torch.log_softmax(final.float(), dim=-1)
            for r, f in enumerate(force):
                if self.finish[r] is None and t < len(f):
                    self.forced_lp[r].append(float(lp[r, f[t]]))
        if self.suppressed:
            final[:, self.suppressed] = float("-inf")
        tokens = choose_tokens(final, self.cfg, self.gens)
        if force is not None:
            tokens = torch.tensor([f[t] if t < len(f) else dec.user.pad_id for f in force], device=tokens.device)
        if dec.trace is not None:
            dec.trace.append({"texts": [x.text for x in self.texts], "user": self.logits.clone(), "final": final.clone(),
                              "delta": [d.clone() for d in self.d_logits], "tokens": tokens.clone(),
                              "active": self.active})
        return tokens

    def take(self, t: int, tokens: torch.Tensor, on_text) -> None:
        """Each unfinished row takes its token (finished rows get padding, in place)."""
        for r in range(len(self.prompts)):
            if self.finish[r] is not None:
                tokens[r] = self.dec.user.pad_id
            else:
                self._take_one(r, t, int(tokens[r]), on_text)

    def _take_one(self, r: int, t: int, tid: int, on_text) -> None:
        """Row r's token: eos, a stop string, the end of its forced tokens or the context window finish it."""
        dec, force = self.dec, self.force
        if force is not None and t >= len(force[r]):
            self.finish[r] = "forced"
            return
        if tid in dec.eos_ids and force is None:
            self.finish[r] = "eos"
            return
        self.out_ids[r].append(tid)
        text = self.texts[r].append(tid)
        hit = _first_stop(text, self.cfg.stop)
        if hit is not None:
            self.finish[r], self.cut[r] = "stop", text[:hit]
        elif force is not None and len(self.out_ids[r]) == len(force[r]):
            self.finish[r] = "forced"
        elif dec.limit and len(self.user_ids[r]) + len(self.out_ids[r]) >= dec.limit:
            self.finish[r] = "length"
        if on_text is not None:
            on_text(r, self.cut[r] if self.cut[r] is not None else text)

    def advance(self, tokens: torch.Tensor) -> None:
        """Feed the step's tokens to every model; a row past a delta's context window finishes ("length")."""
        active = self.active
        self.logits = self.user.step(tokens)
        rows = [r for r, a in enumerate(active) if a]
        for k, s in enumerate(self.streams):
            lg = s.step(rows, [self.texts[r].text for r in rows], [self.out_ids[r] for r in rows], batch_rows=rows)
            self.d_logits[k] = self.d_logits[k].index_copy(0, torch.tensor(rows, device=lg.device), lg)
            for row, over in zip(rows, s.over_limit(rows)):
                if over:
                    log.warning("row %d reached the context window of delta %s (%d tokens); stopped", row,
                                self.dec.deltas[k].lm.name, s.limit)
                    self.finish[row] = "length"
        if self.experts:
            self.e_logits = [e.step(tokens) for e in self.experts]

    def results(self, stats: dict) -> list[Generation]:
        """The rows as Generations, and the decoder's counters updated."""
        out = [Generation(p, self.cut[r] if self.cut[r] is not None else self.texts[r].text, self.out_ids[r],
                          self.finish[r] or "length", token_logprobs=self.forced_lp[r])
               for r, p in enumerate(self.prompts)]
        keys = list(range(len(self.prompts)))
        for k, s in enumerate(self.streams):
            fed, peeked = s.generated_fed(keys), s.peeked(keys)
            stats["delta_tokens"][k] += sum(fed)
            stats["lookahead_tokens"][k] += sum(peeked)
            for g, n, m in zip(out, fed, peeked):
                g.delta_tokens.append(n)
                g.lookahead_tokens.append(m)
        stats["generated"] += sum(len(x) for x in self.out_ids)
        return out


def _has_chat(user: LoadedModel) -> bool:
    return bool(getattr(user.tokenizer, "chat_template", None))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None
