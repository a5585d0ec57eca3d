"""Decode a user LLM with one or more deltas (DESIGN.md):

    final_t = LogSoftmax(M_u(x<t)) + sum_k alpha_k * TokenMap_k(M_dk(x<t))     (combine.decode_scores)

and, as the paper's baseline, proxy-tuning: + alpha * (LogSoftmax(expert) - LogSoftmax(anti-expert)).

The user model reads its own prompt (raw, its chat template, or a format string) and the ids it
generates. Each delta reads the same generated *text* after the prompt in its own format
(`cmc.json` prompt_format), tokenized with its own tokenizer exactly as in training
(`bos + tokenize(format(prompt) + text)`); a delta with the user's vocabulary is fed the user's ids
directly. Across vocabularies the delta's ids are kept equal to a fresh tokenization of the text
(textsync.DeltaText) while its KV cache keeps the longest common prefix and only the changed tail is
recomputed (streams.ResyncLM).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cmc_cli.config import check_user_format
from cmc_cli.data.instruct import join_response, render
from cmc_cli.engine.combine import decode_scores, lookahead_extra
from cmc_cli.engine.models import Delta, LoadedModel, check_alpha
from cmc_cli.engine.sampling import GenerationConfig, choose_tokens
from cmc_cli.engine.streams import LockstepLM, ResyncLM, context_length
from cmc_cli.engine.textsync import DeltaText, GenText
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


# ---- one delta over a batch ------------------------------------------------------------------------
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
        self.runners: list[DeltaRunner] = []  # the last batch's, for their statistics

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

    def _runners(self) -> list[DeltaRunner]:
        return [DeltaRunner(d, same_vocab=d.reads_user_ids(self.user)) for d in self.deltas]

    def _scores(self, user_logits, delta_logits, expert_logits, active) -> torch.Tensor:
        proxy = (self.proxy_alpha, *expert_logits) if expert_logits is not None else None
        return step_scores(user_logits, self.deltas, self.runners, delta_logits, active, self.combine, proxy)

    @torch.inference_mode()
    def generate(self, prompts: list[str], cfg: GenerationConfig, seeds: list[int] | None = None,
                 on_text=None, force: list[list[int]] | None = None) -> list[Generation]:
        """Decode a batch. `seeds[r]` seeds row r's sampler (default cfg.seed + r), so a prompt samples the
        same text alone or in any batch. on_text(row, text_so_far) is called after each token.
        force: teacher forcing — row r takes force[r] as its tokens and stops after them ("forced")."""
        B = len(prompts)
        if B == 0:
            return []
        seeds = seeds if seeds is not None else [cfg.seed + r for r in range(B)]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        user_ids = [self.user_prompt_ids(p) for p in prompts]
        for ids, p in zip(user_ids, prompts):
            if self.limit and len(ids) >= self.limit:
                raise CmcError(f"the prompt '{p[:40]}…' is {len(ids)} tokens, the user model {self.user.name} has a "
                               f"context window of {self.limit}; shorten it or raise the model's limit")
        user = LockstepLM(self.user.model, self.user.pad_id)
        logits = user.start(user_ids)
        runners = self.runners = self._runners()
        d_logits = [r.start(prompts) for r in runners]
        experts = None
        if self.expert is not None:
            experts = [LockstepLM(m.model, m.pad_id) for m in (self.expert, self.anti_expert)]
            e_logits = [e.start(user_ids) for e in experts]
        suppressed = self.suppress_ids(cfg.suppress)
        texts = [GenText(self.user.tokenizer, ids) for ids in user_ids]
        out_ids: list[list[int]] = [[] for _ in range(B)]
        forced_lp: list[list[float]] = [[] for _ in range(B)]
        finish: list[str | None] = [None] * B
        cut: list[str | None] = [None] * B
        for t in range(cfg.max_new_tokens):
            final = self._scores(logits, d_logits, e_logits if experts else None, [f is None for f in finish])
            if force is not None:
                lp = torch.log_softmax(final.float(), dim=-1)
                for r in range(B):
                    if finish[r] is None and t < len(force[r]):
                        forced_lp[r].append(float(lp[r, force[r][t]]))
            if suppressed:
                final[:, suppressed] = float("-inf")
            tokens = choose_tokens(final, cfg, gens)
            if force is not None:
                tokens = torch.tensor([f[t] if t < len(f) else self.user.pad_id for f in force], device=tokens.device)
            if self.trace is not None:
                self.trace.append({"texts": [x.text for x in texts], "user": logits.clone(), "final": final.clone(),
                                   "delta": [d.clone() for d in d_logits], "tokens": tokens.clone(),
                                   "active": [f is None for f in finish]})
            for r in range(B):
                if finish[r] is not None:
                    tokens[r] = self.user.pad_id
                    continue
                tid = int(tokens[r])
                if force is not None and t >= len(force[r]):
                    finish[r] = "forced"
                    continue
                if tid in self.eos_ids and force is None:
                    finish[r] = "eos"
                    continue
                out_ids[r].append(tid)
                text = texts[r].append(tid)
                hit = _first_stop(text, cfg.stop)
                if hit is not None:
                    finish[r], cut[r] = "stop", text[:hit]
                elif force is not None and len(out_ids[r]) == len(force[r]):
                    finish[r] = "forced"
                elif self.limit and len(user_ids[r]) + len(out_ids[r]) >= self.limit:
                    finish[r] = "length"
                if on_text is not None:
                    on_text(r, cut[r] if cut[r] is not None else text)
            self.stats["steps"] += 1
            active = [f is None for f in finish]
            if not any(active) or t == cfg.max_new_tokens - 1:
                break
            logits = user.step(tokens)
            gen_texts = [x.text for x in texts]
            d_logits = [r.step(tokens, gen_texts, active) for r in runners]
            for k, r in enumerate(runners):
                for row, over in enumerate(r.over_limit()):
                    if over and finish[row] is None:
                        log.warning("row %d reached the context window of delta %s (%d tokens); stopped", row,
                                    self.deltas[k].lm.name, r.limit)
                        finish[row] = "length"
            if experts:
                e_logits = [e.step(tokens) for e in experts]
        results = []
        for r in range(B):
            text = cut[r] if cut[r] is not None else texts[r].text
            results.append(Generation(prompts[r], text, out_ids[r], finish[r] or "length", token_logprobs=forced_lp[r]))
        for k, r in enumerate(runners):
            fed = r.generated_fed()
            self.stats["delta_tokens"][k] += sum(fed)
            peeked = r.peeked()
            self.stats["lookahead_tokens"][k] += sum(peeked)
            for g, n, m in zip(results, fed, peeked):
                g.delta_tokens.append(n)
                g.lookahead_tokens.append(m)
        self.stats["generated"] += sum(len(x) for x in out_ids)
        return results


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None
