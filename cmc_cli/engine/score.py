"""Log-probabilities of answers under a user model + deltas (+ proxy-tuning), batched and O(length).

The probability of an answer is computed in the user model's tokenization, and each delta sees
exactly what it would see while decoding that answer (decode.py): after t answer tokens, the delta
reads `bos + tokenize(format(prompt) + text_t)` where text_t is the user's incremental
detokenization of those t tokens. So the scores equal the decoder's step distributions under
teacher forcing (tested).

Cost: one pass of each model over each text. A cross-vocabulary delta runs once over its
tokenization of the whole answer; where a user-token boundary falls inside a delta token (text_t's
tokenization is not a prefix of the full one), a short continuation — the few delta tokens after
the longest common prefix — is computed in the *same* forward pass, appended to the row with a
tree-shaped attention mask (it attends to the shared prefix and to itself) and its own positions.
The research code re-encodes and re-runs the whole prefix at every position: O(length²), batch 1.

A delta with a look-ahead map (engine/lookahead.py) is scored by the decoder under teacher forcing
instead: its step's candidates come from that step's user logits, and deltastate.step_scores is the one
place that computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cmc_cli.engine.combine import decode_scores, delta_term
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.deltastate import delta_prompt
from cmc_cli.engine.models import Delta
from cmc_cli.engine.heads import GatheredHead, final_hidden, head_logits
from cmc_cli.engine.textsync import GenText, common_prefix_len


@dataclass
class Scored:
    """Per-token log-probabilities of one answer (user tokenization)."""

    token_logprobs: list[float]
    answer_ids: list[int] = field(default_factory=list)
    delta_extra_tokens: list[int] = field(default_factory=list)  # continuation (look-ahead) tokens computed, per delta
    kl: list[float] = field(default_factory=list)  # per token: KL(user alone || combined) at that position (profile)
    top1: list[float] = field(default_factory=list)  # per token: 1 where it is the combined model's argmax (profile)

    @property
    def n(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_nll(self) -> float:
        return -sum(self.token_logprobs) / max(1, self.n)


def _hidden_at(model, seqs: list[list[int]], positions: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-padded pass over `seqs`; final hidden states at `positions[b]` for each row, concatenated."""
    device = next(model.parameters()).device
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    h = final_hidden(model, ids.to(device), mask.to(device))
    rows = torch.cat([torch.full((len(p),), b, dtype=torch.long) for b, p in enumerate(positions)])
    cols = torch.cat([torch.tensor(p, dtype=torch.long) for p in positions])
    return h[rows.to(device), cols.to(device)]


def _tree_hidden(model, rows: list[tuple[list[int], list[tuple[int, list[int]]]]], want: list[list[tuple[str, int]]],
                 pad_id: int) -> torch.Tensor:
    """One pass over rows of (full ids, continuations [(prefix length, ids)]). A continuation attends to
    the first `prefix length` full ids and to itself, at positions prefix length + i. want[b] lists
    ("full", position) or ("cont", j): hidden after that full position / after continuation j's last id."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    lengths = [len(full) + sum(len(c) for _, c in conts) for full, conts in rows]
    T = max(lengths)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    allow = torch.zeros((B, T, T), dtype=torch.bool)
    last_of: list[list[int]] = []
    for b, (full, conts) in enumerate(rows):
        L = len(full)
        ids[b, :L] = torch.tensor(full, dtype=torch.long)
        pos[b, :L] = torch.arange(L)
        allow[b, :L, :L] = torch.tril(torch.ones(L, L, dtype=torch.bool))
        at, lasts = L, []
        for prefix, toks in conts:
            k = len(toks)
            ids[b, at:at + k] = torch.tensor(toks, dtype=torch.long)
            pos[b, at:at + k] = prefix + torch.arange(k)
            allow[b, at:at + k, :prefix] = True
            allow[b, at:at + k, at:at + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
            at += k
            lasts.append(at - 1)
        last_of.append(lasts)
        for q in range(lengths[b], T):
            allow[b, q, q] = True  # padding attends to itself only (no fully masked rows)
    bias = torch.zeros((B, 1, T, T), dtype=dtype).masked_fill(~allow[:, None], torch.finfo(dtype).min)
    trunk = model.get_decoder()
    h = trunk(input_ids=ids.to(device), attention_mask=bias.to(device), position_ids=pos.to(device)).last_hidden_state
    r_idx, c_idx = [], []
    for b, items in enumerate(want):
        for kind, x in items:
            r_idx.append(b)
            c_idx.append(x if kind == "full" else last_of[b][x])
    return h[torch.tensor(r_idx, device=device), torch.tensor(c_idx, device=device)]


class Scorer:
    """Scores answers for the user model, deltas and proxy-tuning pair of a Decoder."""

    def __init__(self, decoder: Decoder, chunk: int = 256):
        self.dec = decoder
        self.chunk = chunk
        self.gathered = [GatheredHead.for_delta(d) for d in decoder.deltas]  # as decoding reads them (heads.py)

    @torch.inference_mode()
    def score(self, prompts: list[str], answers: list[str]) -> list[Scored]:
        """Per-token log-probabilities of each answer after its prompt (one batch; the caller batches)."""
        return self.profile(prompts, answers, None, details=False)[None]

    @torch.inference_mode()
    def profile(self, prompts: list[str], answers: list[str], alphas: list[float] | None, details: bool = True) -> dict:
        """score() at several strengths from one forward pass of each model: {alpha: [Scored]} with every delta
        at that alpha (None: at their own; the key None), each Scored with per-token KL(user alone || combined)
        in `kl` (what the deltas change at each position, whatever the answer) and argmax hits in `top1`
        (`details`: score() skips both)."""
        dec, user = self.dec, self.dec.user
        keys = [None] if alphas is None else list(alphas)
        p_ids = [dec.user_prompt_ids(p) for p in prompts]
        a_ids = [dec.user_answer_ids(p, a) if a else [] for p, a in zip(prompts, answers)]
        keep = [b for b, a in enumerate(a_ids) if a]
        out = {k: [Scored([], a) for a in a_ids] for k in keys}
        if not keep:
            return out
        p_ids, a_ids, prompts_k = [p_ids[b] for b in keep], [a_ids[b] for b in keep], [prompts[b] for b in keep]
        if any(d.lookahead is not None and not d.reads_user_ids(user) for d in dec.deltas):
            if alphas is not None:
                raise ValueError("a look-ahead token map is scored by decoding: one strength per Decoder")
            for b, sc in zip(keep, self._score_by_decoding(prompts_k, a_ids)):
                out[None][b] = sc
            return out
        flat, extras = self._flat_logps(prompts_k, p_ids, a_ids, keys, details)
        for key in keys:
            at = 0
            for k, b in enumerate(keep):
                n = len(a_ids[k])
                lp, kl, top = flat[key]
                out[key][b] = Scored(lp[at:at + n], a_ids[k], [x[k] for x in extras], kl[at:at + n], top[at:at + n])
                at += n
        return out

    def _flat_logps(self, prompts, p_ids, a_ids, keys, full: bool) -> tuple[dict, list]:
        """{key: (log-probabilities, KL(user || combined), argmax hits)} over every answer token in order, per
        strength key (the last two only when `full`: score() needs neither)."""
        dec, user = self.dec, self.dec.user
        seqs = [p + a for p, a in zip(p_ids, a_ids)]
        positions = [list(range(len(p) - 1, len(p) - 1 + len(a))) for p, a in zip(p_ids, a_ids)]
        h_user = _hidden_at(user.model, seqs, positions, user.pad_id)
        h_deltas, extras = [], []
        for d in dec.deltas:
            h, extra = self._delta_hidden(d, prompts, p_ids, a_ids)
            h_deltas.append(h)
            extras.append(extra)
        h_proxy = None
        if dec.expert is not None:
            h_proxy = [_hidden_at(m.model, seqs, positions, m.pad_id) for m in (dec.expert, dec.anti_expert)]
        targets = torch.tensor([t for a in a_ids for t in a], device=h_user.device)
        acc = {k: ([], [], []) for k in keys}
        for s in range(0, targets.shape[0], self.chunk):
            e = min(targets.shape[0], s + self.chunk)
            proxy = None
            if h_proxy is not None:
                proxy = (dec.proxy_alpha, *(head_logits(m.model, h[s:e]) for m, h in zip((dec.expert, dec.anti_expert), h_proxy)))
            u_logits = head_logits(user.model, h_user[s:e])
            # decode_scores with each delta's mapped term computed once for every strength
            base = decode_scores(u_logits, [], dec.combine, proxy)
            terms = [self._term(d, g, h[s:e], u_logits.shape[-1]) for d, h, g in zip(dec.deltas, h_deltas, self.gathered)]
            self._chunk_stats(u_logits if full else None, base, terms, targets[s:e], keys, acc)
        return {k: tuple(torch.cat(x).tolist() if x else [] for x in v) for k, v in acc.items()}, extras

    @staticmethod
    def _term(d: Delta, gathered, h: torch.Tensor, width: int) -> torch.Tensor:
        """One delta's mapped, centred term at these positions, read as decoding reads it (Delta.term picks
        the index and cap; the look-ahead's values come from the decoder, _score_by_decoding)."""
        logits = gathered(h) if gathered is not None else head_logits(d.lm.model, h)
        _, logits, index, *rest = d.term(logits, gathered=gathered)
        return delta_term(logits, index, width, *rest)

    def _chunk_stats(self, u_logits, base, terms, targets, keys, acc) -> None:
        """One chunk's per-strength log-probabilities of the targets, KL(user alone || combined) and argmax hits
        (the last two when u_logits is given), into acc. For final = z - logsumexp(z), z = base + sum a*t:
        log p(target) = z[target] - lse, sum_v p_alone*final = sum p_alone*base + sum a*(p_alone . t) - lse and
        argmax final = argmax z, so each strength costs one sum, one logsumexp and one argmax over the columns a
        delta moves (grid_normalisers; the dot products with the user's distribution are taken once)."""
        tgt = targets[:, None]
        base_t, terms_t = base.gather(-1, tgt)[:, 0], [t.gather(-1, tgt)[:, 0] for t in terms]
        if u_logits is not None:
            plain = self.dec.expert is None and self.dec.combine != "sum"  # then base is the user's log-softmax
            alone = base if plain else F.log_softmax(u_logits.float(), dim=-1)
            p = alone.exp()
            p_alone = (p * alone).sum(-1)
            p_base, p_terms = p_alone if plain else (p * base).sum(-1), [(p * t).sum(-1) for t in terms]
        strengths = [[d.alpha if key is None else key for d in self.dec.deltas] for key in keys]
        for key, alphas_k, (lse, top) in zip(keys, strengths, grid_normalisers(base, terms, strengths)):
            acc[key][0].append(base_t + sum(a * t for a, t in zip(alphas_k, terms_t)) - lse)
            if u_logits is not None:
                kl = p_alone - (p_base + sum(a * t for a, t in zip(alphas_k, p_terms)) - lse)
                if self.dec.expert is None and not any(alphas_k):  # the user alone: exactly nothing changed
                    kl = torch.zeros_like(kl)
                acc[key][1].append(kl.clamp(min=0.0))  # >= 0; float32 rounding of the logsumexp: ~1e-5 relative
                acc[key][2].append((top == targets).float())

    def _score_by_decoding(self, prompts: list[str], a_ids: list[list[int]]) -> list[Scored]:
        """With a look-ahead map, each step's candidates depend on that step's user logits, so the answers are
        scored by the decoder itself under teacher forcing: the same step_scores, one step per token."""
        from cmc_cli.engine.sampling import GenerationConfig

        gens = self.dec.generate(prompts, GenerationConfig(max_new_tokens=max(len(a) for a in a_ids)), force=a_ids)
        return [Scored(g.token_logprobs, a, list(g.lookahead_tokens)) for g, a in zip(gens, a_ids)]

    def _delta_hidden(self, d: Delta, prompts: list[str], p_ids: list[list[int]], a_ids: list[list[int]]):
        """Delta hidden states before each answer token, in (row, position) order; continuation tokens per row."""
        lm = d.lm
        if d.reads_user_ids(self.dec.user):  # fed the user's ids, as in decoding
            h_ids = [delta_prompt(d, p, same_vocab=True) for p in prompts]
            seqs = [h + a for h, a in zip(h_ids, a_ids)]
            positions = [list(range(len(h) - 1, len(h) - 1 + len(a))) for h, a in zip(h_ids, a_ids)]
            return _hidden_at(lm.model, seqs, positions, lm.pad_id), [0] * len(prompts)
        rows, want, extras = [], [], []
        for prompt, p, a in zip(prompts, p_ids, a_ids):
            g = GenText(self.dec.user.tokenizer, p)
            dt = delta_prompt(d, prompt, same_vocab=False)  # the DeltaText decoding keeps
            seqs_t = [dt.ids]  # the delta's ids before answer token t+1, t = 0..n-1
            step_lcp = []  # common prefix of consecutive id lists
            for tid in a[:-1]:
                step_lcp.append(dt.update(g.append(tid)))
                seqs_t.append(dt.ids)
            full = seqs_t[-1]
            # ids_t and `full` share at least the smallest consecutive common prefix from t on: start there
            bound = [0] * len(seqs_t)
            low = len(full)
            for t in range(len(seqs_t) - 1, -1, -1):
                bound[t] = low
                if t > 0:
                    low = min(low, step_lcp[t - 1])
            conts, items = [], []
            for t, ids_t in enumerate(seqs_t):
                m = common_prefix_len(ids_t, full, start=min(bound[t], len(ids_t)))
                if m == len(ids_t):
                    items.append(("full", m - 1))
                else:
                    items.append(("cont", len(conts)))
                    conts.append((m, ids_t[m:]))
            rows.append((full, conts))
            want.append(items)
            extras.append(sum(len(c) for _, c in conts))
        return _tree_hidden(lm.model, rows, want, lm.pad_id), extras


SPARSE_SHARE = 0.5  # columns some delta moves, at most this share of the vocabulary: the others are reduced once


def grid_normalisers(base: torch.Tensor, terms: list[torch.Tensor], strengths: list[list[float]],
                     sparse: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per strength list (one alpha per term): (logsumexp z, argmax z) per row, z = base + sum_i a_i * terms_i.
    A column where every term is 0 in this chunk (a user id no delta id maps to: delta_term gives it exactly 0)
    has z = base at every strength, so its part of the logsumexp and its maximum are taken once and each
    strength reduces only the moved columns: lse = logaddexp(lse_rest, lse_moved), the argmax the larger side's,
    on a tie the smaller id (torch's argmax: the first). Through exact-ext 21% of Gemma-3's ids and 28% of
    Qwen2.5's are moved by a SmolLM2 delta: a calibration's 17 strengths cost ~1/4 of the dense reductions."""
    live = torch.zeros(base.shape[-1], dtype=torch.bool, device=base.device)
    for t in terms:
        live |= (t != 0).any(0)
    n_live = int(live.sum())
    if not terms or n_live == 0 or n_live > (SPARSE_SHARE if sparse is None else sparse) * base.shape[-1]:
        return [_reduce(base, terms, alphas)[:2] for alphas in strengths]
    cols, rest = live.nonzero()[:, 0], (~live).nonzero()[:, 0]
    b_rest = base[:, rest]
    lse_rest, arg_rest = torch.logsumexp(b_rest, -1), b_rest.argmax(-1)
    max_rest, arg_rest = b_rest.gather(-1, arg_rest[:, None])[:, 0], rest[arg_rest]
    b_live, t_live = base[:, cols], [t[:, cols] for t in terms]
    out = []
    for alphas in strengths:
        lse, arg, top = _reduce(b_live, t_live, alphas)
        arg = cols[arg]
        best = torch.where(top > max_rest, arg, torch.where(top < max_rest, arg_rest, torch.minimum(arg, arg_rest)))
        out.append((torch.logaddexp(lse_rest, lse), best))
    return out


def _reduce(base: torch.Tensor, terms: list[torch.Tensor], alphas) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logsumexp z, argmax z, max z) per row of z = base + sum a*t."""
    z = base
    for a, t in zip(alphas, terms):
        z = torch.add(z, t, alpha=a)
    arg = z.argmax(-1)
    return torch.logsumexp(z, dim=-1), arg, z.gather(-1, arg[:, None])[:, 0]
