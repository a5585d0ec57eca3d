"""TOFU unlearning metrics (Maini et al., 2024), as the benchmark's code defines them.

Per set (forget, retain, real authors, world facts):
  RL  ROUGE-L *recall* of the greedy generation against the answer (rouge_score, Porter stemming)
  P   forget / retain: mean over items of exp(-mean per-token NLL of the answer);
      real authors / world facts: mean of P(true) / (P(true) + sum P(perturbed)), each P length-normalised
  TR  R = P_perturbed / P_base with P = exp(-mean per-token NLL); P_perturbed averages the perturbed
      answers' mean NLLs (TOFU: exp of the mean loss); P_base is the paraphrased answer on forget /
      retain and the answer on the other sets. Forget: mean(min(R, 1/R)); others: mean(max(0, 1 - R)).
  refusal   share of greedy answers that begin with a refusal phrasing (data/refusals.py, --refusals)
  key acc.  share of greedy answers that contain the item's `key` (the fact), on sets whose items have one
Across sets:
  forget quality  KS-test p-value between the forget-set truth ratios of the model and those of a
                  model trained without the forget set (the retain model), when one is given
  model utility   harmonic mean of RL, P and TR on every non-forget set present
Probabilities are those of the combined distribution when deltas are applied (engine/score.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.data.refusals import REFUSALS, is_refusal
from cmc_cli.data.tofu import SET_KINDS, TofuItem
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.score import Scorer
from cmc_cli.errors import CmcError
from cmc_cli.eval.metrics import harmonic_mean, rouge_l
from cmc_cli.fileio import append_jsonl, read_jsonl_for_resume

log = logging.getLogger(__name__)


# ---- the metrics, one function each -------------------------------------------------------------------
def rouge_l_recall(generation: str, reference: str) -> float:
    """ROUGE-L recall of `generation` against `reference`, with stemming (TOFU's `rouge_score` call)."""
    return rouge_l(generation, reference)[0]


def length_normalised_prob(mean_nll: float) -> float:
    return math.exp(-mean_nll)


def truth_ratio(base_nll: float, perturbed_nlls: list[float]) -> float:
    """R = P_perturbed / P_base = exp(mean_nll(base) - mean over perturbed of mean_nll)."""
    return math.exp(base_nll - sum(perturbed_nlls) / len(perturbed_nlls))


def truth_ratio_score(ratios: list[float], kind: str) -> float:
    if kind == "forget":
        return _mean([min(r, 1.0 / r) for r in ratios])
    return _mean([max(0.0, 1.0 - r) for r in ratios])


def choice_prob(true_nll: float, perturbed_nlls: list[float]) -> float:
    """P(true) / (P(true) + sum P(perturbed)), each length-normalised."""
    p = length_normalised_prob(true_nll)
    return p / (p + sum(length_normalised_prob(x) for x in perturbed_nlls))


def forget_quality(model_ratios: list[float], retain_model_ratios: list[float]) -> float:
    """Two-sample KS-test p-value (scipy's ks_2samp, as TOFU) of forget-set truth ratios."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(model_ratios, retain_model_ratios).pvalue)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ---- evaluating one model (+ deltas) ------------------------------------------------------------------
@dataclass
class SetResult:
    kind: str
    n: int
    rouge_l: float
    prob: float
    truth_ratio: float | None
    ratios: list[float] = field(default_factory=list)  # per-item R (forget quality)
    refusal: float | None = None  # refusal rate
    key_accuracy: float | None = None
    per_item: dict[str, list[float]] = field(default_factory=dict)  # metric -> per-item values (paired tests)

    def as_dict(self) -> dict:
        return {"n": self.n, "RL": self.rouge_l, "P": self.prob, "TR": self.truth_ratio, "refusal": self.refusal,
                "key_accuracy": self.key_accuracy}


def key_hit(generation: str, keys: tuple[str, ...]) -> bool:
    """The answer contains one of the keys (case-insensitive)."""
    g = generation.lower()
    return any(k.lower() in g for k in keys)


def item_record(kind: str, index: int, item: TofuItem, generation: str | None, nll: float, base_nll: float | None,
                pert_nlls: list[float], refusals=REFUSALS) -> dict:
    rec = {"set": kind, "index": index, "question": item.question, "answer_nll": nll,
           "base_nll": base_nll, "perturbed_nlls": pert_nlls}
    if generation is not None:
        rec["generation"] = generation
        rec["rouge_l"] = rouge_l_recall(generation, item.answer)
        rec["refusal"] = float(is_refusal(generation, refusals))
        if item.keys:
            rec["key_hit"] = float(key_hit(generation, item.keys))
    return rec


def aggregate(kind: str, records: list[dict]) -> SetResult:
    rl = _mean([r["rouge_l"] for r in records if "rouge_l" in r])
    with_pert = [r for r in records if r["perturbed_nlls"]]
    if kind in ("forget", "retain") or not with_pert:
        prob = _mean([length_normalised_prob(r["answer_nll"]) for r in records])
    else:
        prob = _mean([choice_prob(r["answer_nll"], r["perturbed_nlls"]) for r in with_pert])
    ratios = [truth_ratio(r["base_nll"], r["perturbed_nlls"]) for r in with_pert]
    tr = truth_ratio_score(ratios, kind) if ratios else None
    per_item = {m: [r[m] for r in records] for m in ("rouge_l", "refusal", "key_hit")
                if records and all(m in r for r in records)}
    per_item["prob"] = [length_normalised_prob(r["answer_nll"]) for r in records]
    refusal = _mean(per_item["refusal"]) if "refusal" in per_item else None
    key_acc = _mean(per_item["key_hit"]) if "key_hit" in per_item else None
    return SetResult(kind, len(records), rl, prob, tr, ratios, refusal, key_acc, per_item)


class TofuEvaluator:
    """Generates and scores TOFU sets for one Decoder; per-item records go to `items_path` as they are
    made (JSONL), and a rerun skips the items already there."""

    def __init__(self, decoder: Decoder, sets: dict[str, list[TofuItem]], max_new_tokens: int = 64,
                 batch_size: int = 8, generate: bool = True, refusals=REFUSALS, truth_ratio: bool = True, stop=()):
        unknown = set(sets) - set(SET_KINDS)
        if unknown:
            raise CmcError(f"unknown TOFU set(s) {', '.join(sorted(unknown))}; use {', '.join(SET_KINDS)}")
        self.dec = decoder
        self.sets = sets
        self.scorer = Scorer(decoder)
        self.gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop=tuple(stop))
        self.batch_size = batch_size
        self.generate = generate
        self.refusals = list(refusals)
        self.truth_ratio = truth_ratio  # False: score the answer only (no paraphrased / perturbed answers)

    def run(self, items_path: Path | None = None, on_progress=None) -> dict[str, SetResult]:
        done = _read_items(items_path, self.sets) if items_path else {}
        total = sum(len(v) for v in self.sets.values())
        count = sum(len(v) for v in done.values())
        if on_progress:
            on_progress(count, total)
        for kind, items in self.sets.items():
            have = done.setdefault(kind, {})
            todo = [i for i in range(len(items)) if i not in have]
            for s in range(0, len(todo), self.batch_size):
                idx = todo[s:s + self.batch_size]
                recs = self._batch(kind, [(i, items[i]) for i in idx])
                if items_path:
                    append_jsonl(items_path, recs)
                for r in recs:
                    have[r["index"]] = r
                count += len(recs)
                if on_progress:
                    on_progress(count, total)
        return {kind: aggregate(kind, [done[kind][i] for i in sorted(done[kind])]) for kind in self.sets}

    def _batch(self, kind: str, batch: list[tuple[int, TofuItem]]) -> list[dict]:
        qs = [it.question for _, it in batch]
        gens = self.dec.generate(qs, self.gen_cfg) if self.generate else [None] * len(batch)
        # every answer to score, flattened: (row, role, text)
        jobs = []
        for r, (_, it) in enumerate(batch):
            jobs.append((r, "answer", it.answer))
            if not self.truth_ratio:
                continue
            base = it.base_answer(kind)
            if it.perturbed and base != it.answer:
                jobs.append((r, "base", base))
            jobs.extend((r, "perturbed", p) for p in it.perturbed)
        nll: dict[tuple[int, str], list[float]] = {}
        for s in range(0, len(jobs), self.batch_size):
            chunk = jobs[s:s + self.batch_size]
            scored = self.scorer.score([qs[r] for r, _, _ in chunk], [t for _, _, t in chunk])
            for (r, role, _), sc in zip(chunk, scored):
                nll.setdefault((r, role), []).append(sc.mean_nll)
        out = []
        for r, (i, it) in enumerate(batch):
            ans = nll[(r, "answer")][0]
            base = nll.get((r, "base"), [ans])[0] if it.perturbed and self.truth_ratio else None
            gen = gens[r].text if gens[r] is not None else None
            out.append(item_record(kind, i, it, gen, ans, base, nll.get((r, "perturbed"), []), self.refusals))
        return out


def _read_items(path: Path, sets: dict[str, list[TofuItem]]) -> dict[str, dict[int, dict]]:
    done: dict[str, dict[int, dict]] = {}
    if not path.is_file():
        return done
    for n, rec in read_jsonl_for_resume(path):
        kind, i = rec.get("set"), rec.get("index")
        items = sets.get(kind)
        if items is None or not isinstance(i, int) or i >= len(items) or items[i].question != rec.get("question"):
            raise CmcError(f"{path}:{n} belongs to another evaluation (other data); choose another --out")
        done.setdefault(kind, {})[i] = rec
    return done


# ---- a whole evaluation: several models, with and without deltas --------------------------------------


@dataclass
class TofuRow:
    label: str
    user: str
    deltas: list[dict]
    sets: dict[str, SetResult]
    forget_quality: float | None = None
    stored: bool = False  # the user alone read back from an earlier run (--no-alone): for the paired columns

    @property
    def model_utility(self) -> float | None:
        vals = []
        for kind in ("retain", "real_authors", "world_facts"):
            s = self.sets.get(kind)
            if s is not None:
                vals += [v for v in (s.rouge_l, s.prob, s.truth_ratio) if v is not None]
        return harmonic_mean(vals) if vals else None

    def as_dict(self) -> dict:
        return {"label": self.label, "user": self.user, "deltas": self.deltas, "stored": self.stored,
                "sets": {k: v.as_dict() | {"per_item": v.per_item} for k, v in self.sets.items()},
                "forget_quality": self.forget_quality, "model_utility": self.model_utility}


def run_tofu_eval(cfg, on_phase=None, on_progress=None) -> list[TofuRow]:
    """Evaluate every user alone and with the deltas; write `cfg.out`/items/*.jsonl as it goes and
    results.json + report.md after each row. on_progress(label, done, total)."""
    from cmc_cli.fileio import sha256_file
    from cmc_cli.data.tofu import load_tofu_eval
    from cmc_cli.engine.generate import build_decoder
    from cmc_cli.eval.models import eval_decoders
    from cmc_cli.eval.report import slug as _slug
    from cmc_cli.eval.report import check_settings, write_tofu_report

    phase = on_phase or (lambda msg: log.info("%s", msg))
    sets = {}
    for kind, path in cfg.set_paths().items():
        items = load_tofu_eval(path, kind)
        sets[kind] = items[:cfg.limit] if cfg.limit else items
    data = {k: {"path": str(p), "sha256": sha256_file(p), "n": len(sets[k])} for k, p in cfg.set_paths().items()}
    out = Path(cfg.out) if cfg.out else None
    retain_ratios = None
    if cfg.retain_model:
        phase(f"scoring the forget set with the retain model {cfg.retain_model}")
        rm = build_decoder(cfg.retain_model, [], user_format=cfg.user_format, device=cfg.device, dtype=cfg.dtype)
        res = TofuEvaluator(rm, {"forget": sets["forget"]}, batch_size=cfg.batch_size, generate=False).run(
            out / "items" / f"retain-model_{_slug(rm.user.name)}.jsonl" if out else None)
        retain_ratios = res["forget"].ratios
    from cmc_cli.data.refusals import load_refusals

    refusals = load_refusals(cfg.refusals)
    if out:
        check_settings(out, {"user_format": cfg.user_format, "max_new_tokens": cfg.max_new_tokens, "stop": cfg.stop,
                             "combine": cfg.combine, "refusals": refusals},
                       {"user_format": "--user-format", "max_new_tokens": "--max-new-tokens", "stop": "--stop",
                        "combine": "--combine", "refusals": "--refusals"})
    stored = (lambda label: (out / "items" / f"{_slug(label)}.jsonl").is_file()) if out else None
    rows: list[TofuRow] = []
    for er in eval_decoders(cfg, phase, stored):
        ref, label, deltas, dec = er
        phase(f"{'reading back' if er.stored else 'evaluating'} {label}")
        ev = TofuEvaluator(dec, sets, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, refusals=refusals,
                           stop=cfg.stop)
        res = ev.run(out / "items" / f"{_slug(label)}.jsonl" if out else None,
                     on_progress=(lambda d, t, lab=label: on_progress(lab, d, t)) if on_progress else None)
        row = TofuRow(label, ref, [{"path": str(d.lm.name), "alpha": d.alpha, "alpha_source": d.alpha_source}
                                   for d in dec.deltas], res, stored=er.stored)
        if retain_ratios is not None and res["forget"].ratios:
            row.forget_quality = forget_quality(res["forget"].ratios, retain_ratios)
        rows.append(row)
        if out:
            write_tofu_report(out, rows, data, cfg)
    return rows
