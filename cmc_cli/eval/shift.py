"""Logit-shift similarity, the paper's premise (its Section 2 and Appendix D): fine-tuning moves two
different models' next-token distributions in similar ways.

For a pair (base, tuned) of one model family, the shift at a position is
    shift = LogSoftmax(tuned(x<t)) - LogSoftmax(base(x<t))                  (over its vocabulary)
Two families are compared on the same texts at the positions where both tokenizations start a token
at the same character (both predict "the next token from here"). Model B's vocabulary is aligned to
model A's through a token map (B as user, A as delta: each B token reads the A token it maps to;
unmapped ones are left out), then, on the union of both shifts' top-k tokens (by |shift|):
  cosine     cosine similarity of the two shift vectors
  spearman   rank correlation of the two shift vectors
  sinkhorn   debiased Sinkhorn divergence between softmax(shift_A) and softmax(shift_B) on those
             tokens, with ground cost 1 - cosine similarity of B's input embeddings of the tokens
             (moving mass between related tokens is cheap), entropic blur eps = 0.5 on costs in [0, 2];
             0 for identical shifts
Each figure is also computed for a control: B's shift against A's shift at a *random other* position
(same texts), so "similar" can be read against chance. The paper does not publish its exact Sinkhorn
set-up; this one is ours, stated here and in docs/evaluation.md.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cmc_cli.data.records import DataError, read_records
from cmc_cli.engine.combine import proxy_scores
from cmc_cli.engine.models import LoadedModel
from cmc_cli.errors import CmcError

log = logging.getLogger(__name__)


# ---- the distances ---------------------------------------------------------------------------------
def sinkhorn_ot(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.5, iters: int = 1000,
                tol: float = 1e-5) -> torch.Tensor:
    """Entropic OT values <a,f> + <b,g> by log-domain Sinkhorn iterations; a: (..., n), b: (..., m),
    cost (n, m); leading dimensions are independent problems solved together."""
    loga = torch.log(a.clamp(min=1e-30))
    logb = torch.log(b.clamp(min=1e-30))
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    # epsilon scaling: start blurry (fast), sharpen to eps, warm-starting each stage (as geomloss does)
    e = max(float(cost.max()), eps)
    stages = []
    while e > eps:
        stages.append(e)
        e *= 0.5
    stages.append(eps)
    for k, e in enumerate(stages):
        final = k == len(stages) - 1
        for it in range(iters if final else 3):
            # symmetric (averaged) updates converge fast, also for the self terms OT(a, a)
            ft = -e * torch.logsumexp((g[..., None, :] - cost) / e + logb[..., None, :], dim=-1)
            gt = -e * torch.logsumexp((f[..., :, None] - cost) / e + loga[..., :, None], dim=-2)
            f, g = 0.5 * (f + ft), 0.5 * (g + gt)
            if final and it % 10 == 9:
                # L1 error of the plan's row marginals (the columns are close after the update)
                logp = (f[..., :, None] + g[..., None, :] - cost) / e + loga[..., :, None] + logb[..., None, :]
                if float((logp.exp().sum(-1) - a).abs().sum(-1).max()) < tol:
                    break
    return (a * f).sum(-1) + (b * g).sum(-1)


def sinkhorn_divergence(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.5) -> torch.Tensor | float:
    """S(a, b) = OT(a, b) - OT(a, a)/2 - OT(b, b)/2 on a shared support (0 when a == b).
    a, b: (n,) or (P, n) with cost (n, n) or (P, n, n) for P problems at once."""
    a, b, cost = a.double(), b.double(), cost.double()
    batched = a.dim() == 2
    if not batched:
        a, b, cost = a[None], b[None], cost[None]
    ot = sinkhorn_ot(torch.stack([a, a, b]), torch.stack([b, a, b]), cost[None], eps)  # (3, P)
    div = ot[0] - 0.5 * ot[1] - 0.5 * ot[2]
    return div if batched else float(div[0])


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(x.double().numpy(), y.double().numpy()).statistic
    return float(r) if r == r else 0.0  # constant input: no correlation


def compare_shift_batch(sa: torch.Tensor, sb: torch.Tensor, emb: torch.Tensor, top_k: int = 50) -> dict[str, list[float]]:
    """sa, sb: (P, n) aligned shifts at P positions; emb: (n, H) embeddings of those n tokens.
    Per position, on the union of both shifts' top-k tokens: cosine, Spearman, Sinkhorn divergence
    (all positions' Sinkhorn problems solved together; unused slots carry no mass)."""
    P, n = sa.shape
    k = min(top_k, n)
    width = 2 * k
    idx = torch.zeros((P, width), dtype=torch.long)
    valid = torch.zeros((P, width), dtype=torch.bool)
    out = {"cosine": [], "spearman": [], "sinkhorn": []}
    for p in range(P):
        u = torch.unique(torch.cat([sa[p].abs().topk(k).indices, sb[p].abs().topk(k).indices]))
        idx[p, :len(u)] = u
        idx[p, len(u):] = u[0]
        valid[p, :len(u)] = True
        x, y = sa[p, u].double(), sb[p, u].double()
        out["cosine"].append(float(F.cosine_similarity(x, y, dim=0)))
        out["spearman"].append(spearman(x, y))
    e = F.normalize(emb.double(), dim=-1)[idx]  # (P, width, H)
    cost = (1 - e @ e.transpose(1, 2)).clamp(min=0)
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    pa = torch.softmax(torch.where(valid, sa.double().gather(1, idx), neg), dim=-1)
    pb = torch.softmax(torch.where(valid, sb.double().gather(1, idx), neg), dim=-1)
    out["sinkhorn"] = sinkhorn_divergence(pa, pb, cost).tolist()
    return out


def compare_shifts(sa: torch.Tensor, sb: torch.Tensor, emb: torch.Tensor, top_k: int = 50) -> dict[str, float]:
    """One position: see compare_shift_batch."""
    return {k: v[0] for k, v in compare_shift_batch(sa[None], sb[None], emb, top_k).items()}


# ---- shifts on texts --------------------------------------------------------------------------------
@dataclass
class Family:
    """A (base, tuned) pair with one tokenizer."""

    name: str
    base: LoadedModel
    tuned: LoadedModel

    def __post_init__(self):
        if self.base.vocab.fingerprint != self.tuned.vocab.fingerprint:
            raise CmcError(f"{self.base.name} and {self.tuned.name} have different tokenizers; a shift needs one vocabulary")


def load_texts(path: str | Path) -> list[str]:
    """`text` records, or Alpaca (instruction + output) / TOFU (question + answer) records joined."""
    out = []
    for line, rec in read_records(path):
        if isinstance(rec.get("text"), str):
            out.append(rec["text"])
        elif isinstance(rec.get("instruction"), str) and isinstance(rec.get("output"), str):
            out.append(rec["instruction"] + "\n" + rec["output"])
        elif isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str):
            out.append(rec["question"] + " " + rec["answer"])
        else:
            raise DataError(f"{path}:{line}: a text record needs 'text', 'instruction'+'output' or 'question'+'answer'")
    return out


@torch.inference_mode()
def _shifts(fam: Family, text: str) -> tuple[torch.Tensor, list[int]]:
    """(T, V) shifts predicting each token of `text`, and the character where each of those tokens starts."""
    tok = fam.base.tokenizer
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = fam.base.bos + list(enc["input_ids"])
    x = torch.tensor([ids], device=next(fam.base.model.parameters()).device)
    shift_all = proxy_scores(fam.tuned.model(input_ids=x).logits[0], fam.base.model(input_ids=x).logits[0])
    n_bos, K = len(fam.base.bos), len(enc["input_ids"])
    first = 0 if n_bos else 1  # without a BOS nothing predicts the first token
    # position p predicts ids[p + 1]: text token k is predicted at n_bos - 1 + k
    shift = shift_all[n_bos - 1 + first:n_bos - 1 + K]
    starts = [s for s, _ in enc["offset_mapping"]][first:]
    return shift, starts


@dataclass
class ShiftResult:
    a: str
    b: str
    positions: int
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std
    control: dict[str, tuple[float, float]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # for the heat map

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "positions": self.positions,
                "metrics": {k: {"mean": m, "std": s} for k, (m, s) in self.metrics.items()},
                "shuffled_control": {k: {"mean": m, "std": s} for k, (m, s) in self.control.items()}}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def compare_families(fa: Family, fb: Family, texts: list[str], index: torch.Tensor | None, top_k: int = 50,
                     seed: int = 0, examples: int = 6) -> ShiftResult:
    """index: B id -> A id (a TokenMap's index; None when both share a vocabulary)."""
    emb_b = fb.base.model.get_input_embeddings().weight.detach().float().cpu()
    pairs = []  # (shift_a aligned to B's mapped ids, shift_b on them)
    for text in texts:
        sa, starts_a = _shifts(fa, text)
        sb, starts_b = _shifts(fb, text)
        where_a: dict[int, int] = {}
        for i, c in enumerate(starts_a):
            where_a.setdefault(c, i)  # the first token starting there (byte pieces share a start)
        seen = set()
        for j, c in enumerate(starts_b):
            i = where_a.get(c)
            if i is not None and c not in seen:
                seen.add(c)
                pairs.append((sa[i].cpu(), sb[j].cpu()))
    if not pairs:
        raise CmcError("the two tokenizations never start a token at the same character; give longer texts")
    vb = min(pairs[0][1].shape[0], emb_b.shape[0])
    if index is None:
        keep = torch.arange(min(vb, pairs[0][0].shape[0]))
        a_ids = keep
    else:
        idx = index[:vb]
        keep = torch.nonzero(idx >= 0).flatten()
        a_ids = idx[keep]
    rng = random.Random(seed)
    A = torch.stack([sa[a_ids] for sa, _ in pairs])  # (P, n) A's shifts on B's mapped tokens
    B = torch.stack([sb[keep] for _, sb in pairs])
    others = [rng.randrange(len(pairs)) for _ in pairs]  # control: A's shift at a random other position
    emb = emb_b[keep]
    res = compare_shift_batch(A, B, emb, top_k)
    ctl = compare_shift_batch(A[others], B, emb, top_k)
    ex = []
    for n in range(min(examples, len(pairs))):
        top = A[n].topk(min(20, A.shape[1])).indices
        ex.append({"a": A[n, top].tolist(), "b": B[n, top].tolist(),
                   "tokens": [fb.base.vocab.pieces[int(keep[t])] for t in top]})
    out = ShiftResult(fa.name, fb.name, len(pairs), {k: _mean_std(v) for k, v in res.items()},
                      {k: _mean_std(v) for k, v in ctl.items()}, ex)
    return out


def heatmap_png(result: ShiftResult, path: Path) -> Path:
    """Like the paper's Figure 2: per example position, model A's top shifted tokens (sorted) and model B's
    shift on the same tokens, as two rows of a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, labels = [], []
    for i, e in enumerate(result.examples):
        rows += [e["a"], e["b"]]
        labels += [f"pos {i + 1}: {result.a}", f"pos {i + 1}: {result.b}"]
    width = max(len(r) for r in rows)
    data = torch.full((len(rows), width), float("nan"))
    for i, r in enumerate(rows):
        data[i, :len(r)] = torch.tensor(r)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * width, 0.9 + 0.35 * len(rows)))
    lim = float(torch.nan_to_num(data.abs(), nan=0.0).max()) or 1.0
    im = ax.imshow(data.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xticks(range(width), [str(k + 1) for k in range(width)], fontsize=7)
    ax.set_xlabel(f"top tokens of {result.a}'s shift, sorted (same tokens in the row below)")
    fig.colorbar(im, ax=ax, label="log-prob shift (tuned − base)")
    ax.set_title(f"Logit shifts: {result.a} vs {result.b}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_shift_eval(bases: list[str], tuned: list[str], texts_path: str, token_maps=(), top_k: int = 50,
                   limit: int | None = None, out: str | None = None, device: str = "auto", on_phase=None) -> list[ShiftResult]:
    """Every pair of (base, tuned) families compared on the texts; results.json, report.md and a heat map
    per comparison in `out`."""
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.devices import pick_device
    from cmc_cli.eval.report import slug
    from cmc_cli.fileio import atomic_write_json, atomic_write_text
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    phase = on_phase or (lambda msg: log.info("%s", msg))
    if len(bases) != len(tuned) or len(bases) < 2:
        raise CmcError("give a --tuned for every --base, and at least two (base, tuned) pairs to compare")
    texts = load_texts(texts_path)[:limit] if limit else load_texts(texts_path)
    dev = str(pick_device(device))
    fams = []
    for b, t in zip(bases, tuned):
        phase(f"loading {b} and {t}")
        base, tun = load_lm(b, device=dev), load_lm(t, device=dev)
        fams.append(Family(base.name, base, tun))
    maps = [TokenMap.load(p) for p in token_maps]
    results = []
    for i in range(len(fams)):
        for j in range(i + 1, len(fams)):
            fa, fb = fams[i], fams[j]
            index = None
            if fa.base.vocab.fingerprint != fb.base.vocab.fingerprint:
                fit = [m for m in maps if m.meta["delta"]["fingerprint"] == fa.base.vocab.fingerprint
                       and m.meta["user"]["fingerprint"] == fb.base.vocab.fingerprint]
                index = (fit[0] if fit else TokenMap.build(fa.base.vocab, fb.base.vocab)).index_tensor()
            phase(f"comparing {fa.name} with {fb.name}")
            results.append(compare_families(fa, fb, texts, index, top_k=top_k))
    if out:
        o = Path(out)
        for r in results:
            heatmap_png(r, o / f"shift_{slug(r.a)}__{slug(r.b)}.png")
        atomic_write_json(o / "results.json", {"format": "cmc-eval-shift/1", "texts": str(texts_path), "top_k": top_k,
                                               "comparisons": [r.as_dict() for r in results]})
        atomic_write_text(o / "report.md", shift_markdown(results, texts_path, top_k))
    return results


def shift_markdown(results: list[ShiftResult], texts_path, top_k: int) -> str:
    from cmc_cli.eval.report import md_table

    lines = ["# Logit-shift similarity", "",
             f"Texts: `{texts_path}`; metrics on the union of both shifts' top-{top_k} tokens per shared position, "
             "mean ± std over positions; the control pairs each position with a random other one.", ""]
    header = ["A → B", "positions", "cosine", "spearman", "sinkhorn", "control cosine", "control spearman",
              "control sinkhorn"]
    cells = [[f"{r.a} → {r.b}", str(r.positions)]
             + [f"{r.metrics[k][0]:.3f} ± {r.metrics[k][1]:.3f}" for k in ("cosine", "spearman", "sinkhorn")]
             + [f"{r.control[k][0]:.3f}" for k in ("cosine", "spearman", "sinkhorn")] for r in results]
    return "\n".join(lines + md_table(header, cells)) + "\n"
