"""`cmc calibrate DELTA USER`: the strength of one delta on one user model, from forward passes only.

What the delta was trained to do is measured on a few items of its own training data, what it must not do on
its retain answers and on general text; each model runs once over each text and the scores for every alpha
of the grid come from those passes (Scorer.profile). Everything the rule reads is a *greedy hit rate*: the
share of answer tokens that are the combined model's argmax, teacher-forced — what greedy decoding does:

    target  = template + delta's hits on its objective items (alpha 1, how it was trained): the responses
              (instruct, idk: more hits is the goal; the ascent methods and NPO make the forget answers lose
              the argmax, so fewer is)
    cost    = hits lost off-target: the user alone's hits minus user + alpha * delta's, on the retain answers
              and on general text (a gain is no cost: a delta trained with a retain term fits the retain
              answers better)
    budget  = template + delta's own cost on its template, per text, floored at COST_FLOOR
    alpha*  = among the alphas within budget on both texts, the smallest that reaches the target; if none
              does, the one closest to it (the best greedy fit the user can get: the smallest alpha within
              TIE of it); if no alpha is within budget, the smallest of the grid.

An idk delta (its objective answers are refusals) is then checked on what it was trained to do, not on its exact
wording: the hit rates read the one refusal each question was paired with, and on other vocabularies they *fall*
as alpha rises while the refusals themselves rise (SmolLM2's delta on Gemma-3, seed 0: exact-refusal token hits
0.87 -> 0.69 from alpha 1 to 3, greedy refusals 0.61 -> 0.94, held-out facts 1.00 throughout). So:

    refusal = the share of objective prompts whose greedy answer begins with a refusal (data/refusals.py,
              the delta's --refusals), by decoding REFUSAL_ITEMS of them for a few new tokens
    alpha*  = of the hits rule's alpha and the multiples of REFUSAL_STEP above it within the off-target budget,
              tried upward, the first whose refusal is within one prompt of template + delta's at alpha 1; if
              none is, the smallest with the most refusals.

An instruction delta has no off-target text: its job is to change how the model continues any prompt, and
it is trained without the silence term. Its cost on general text is measured and shown, never binding: on the
world it was what held `other` at a=0.75-1 (template + delta loses 10% of its greedy hits on sampled text at
a=1, `other` 9% at 1 and 34% at 2), where its answers got worse than alone (ROUGE-L 0.18 -> 0.06). Its hits
peak before its answers do (the world's `other`: hits at 1.5, ROUGE-L of greedy answers to new questions 0.20
there, 0.30 at 2.5; docs/world.md), so it is checked on its answers:

    rouge_l = mean ROUGE-L recall of the greedy answers to ANSWER_ITEMS objective prompts against their
              training answers (data/answers.py, as `cmc eval`)
    alpha*  = of the hits rule's alpha and the multiples of REFUSAL_STEP above it (all tried), the smallest
              whose rouge_l is within one prompt's worth (1/n) of the best.

Why hits and not likelihood or KL (docs/decoding.md has the figures): on the real pair the objective's NLL
is lowest at 1.25 while greedy hits peak at 1.0, where refusals, retain and held-out answers are all best;
KL(user || user + delta) on retain answers counts a delta that teaches the retain answers (hits 0.72 ->
0.80 at alpha 1) as damage and capped the strength at 0.75, where only 58% of forget questions are refused.
The NLL and KL curves are recorded and shown beside the rule.

The choice is recorded in DELTA/calibration.json (engine/calibrecord.py) with both models' fingerprints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.engine.calkeep import KEPT_TEXTS, LazyTemplate, budget_texts, template_fingerprint, template_side  # noqa: F401
from cmc_cli.engine.calscan import ANSWER_ITEMS, REFUSAL_ITEMS, answer_rouge, refusal_rate, scan_answers, scan_refusals
from cmc_cli.errors import CmcError

log = logging.getLogger(__name__)

GRID = tuple(i / 4 for i in range(1, 17))  # 0.25 .. 4.0
COST_FLOOR = 0.02  # share of tokens: losing this few greedy hits is allowed even to a delta whose own loss is smaller
TIE = 0.005  # hit rates this close are one plateau: the smallest alpha on it is chosen
RAISE_METHODS = ("grad-diff", "grad-ascent", "kl", "npo")  # their objective raises the forget answers' NLL


@dataclass
class Texts:
    """What calibration scores: (prompt, answer) pairs of the objective and of the retain set, general text."""

    objective: list[tuple[str, str]]
    direction: str  # lower | raise: which way the objective's NLL goes when the delta works (hits go the other)
    retain: list[tuple[str, str]] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    budgeted: bool = True  # the off-target cost binds (unlearning); False: measured and shown only (instruct)
    refusals: list[str] = field(default_factory=list)  # idk: the answers that count as refusing (the refusal scan)

    @property
    def scan(self) -> str:
        """Which behaviour scan follows the hits rule: "refusal" (idk), "rouge_l" (instruction), "" (none)."""
        if self.refusals and self.direction == "lower":
            return "refusal"
        return "" if self.budgeted else "rouge_l"


@dataclass
class Calibration:
    alpha: float
    reason: str
    grid: list[float]
    target: float  # template + delta's objective NLL (shown; the rule reads target_top1)
    budget: dict[str, float]  # greedy hits template + delta may lose off-target, per text
    fit: list[float]  # user + alpha * delta's objective NLL, per grid alpha
    cost: dict[str, list[float]]  # greedy hits lost off-target (retain / general) per grid alpha
    user_alone_fit: float
    top1: list[float] = field(default_factory=list)  # objective tokens that are user + alpha * delta's argmax
    target_top1: float = 0.0  # the same for template + delta: the rule's target
    kl: dict[str, list[float]] = field(default_factory=dict)  # KL(user || user + alpha * delta) off-target (shown)
    user_alone_top1: float = 0.0
    seconds: float = 0.0
    refusal: list[list[float]] = field(default_factory=list)  # idk: [alpha, greedy refusal rate] per scanned alpha
    target_refusal: float | None = None  # idk: template + delta's greedy refusal rate on the same prompts
    rouge_l: list[list[float]] = field(default_factory=list)  # instruct: [alpha, ROUGE-L of greedy answers] per scan step
    target_rouge_l: float | None = None  # instruct: template + delta's on the same prompts (shown, not a target)
    template_kept: bool = False  # the template's side read from DELTA/calibration-template.json (engine/calkeep.py)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def within_budget(grid, cost: dict[str, list[float]], budget: dict[str, float]) -> list[int]:
    """The grid indices whose off-target cost is within the budget on every text."""
    return [i for i in range(len(grid)) if all(cost[k][i] <= budget[k] for k in cost)]


def choose(grid, hits, target: float, direction: str, cost: dict[str, list[float]], budget: dict[str, float]) -> tuple[float, str]:
    """The rule above, on measured curves: (alpha, why). hits: the objective's greedy hits per grid alpha."""
    allowed = within_budget(grid, cost, budget)
    if not allowed:
        return grid[0], "every alpha loses more greedy hits off-target than the delta does on its template: the smallest"
    reach = [i for i in allowed if (hits[i] >= target if direction == "lower" else hits[i] <= target)]
    if reach:
        return grid[reach[0]], "the smallest alpha that reaches template + delta's greedy hits within the off-target budget"
    best = min(abs(hits[i] - target) for i in allowed)
    near = [i for i in allowed if abs(hits[i] - target) <= best + TIE]
    return grid[near[0]], "no allowed alpha reaches template + delta's greedy hits: the smallest allowed alpha closest to them"


def mean_over(scored: list, attr: str, sign: float = 1.0) -> float:
    vals = [sign * v for s in scored for v in getattr(s, attr)]
    return sum(vals) / max(1, len(vals))


def measure(dec, texts: Texts, alphas) -> tuple[list[float], dict[str, list[float]], list[float], dict[str, list[float]]]:
    """Objective NLL, off-target KL, the objective's greedy hits and the off-target texts' greedy hits per alpha,
    one forward pass of each model per text set."""
    from cmc_cli.engine.score import Scorer

    sc = Scorer(dec)
    obj = sc.profile([p for p, _ in texts.objective], [a for _, a in texts.objective], alphas)
    fit = [mean_over(obj[a], "token_logprobs", -1.0) for a in alphas]
    top1 = [mean_over(obj[a], "top1") for a in alphas]
    cost, hits = {}, {}
    if texts.retain:
        ret = sc.profile([p for p, _ in texts.retain], [a for _, a in texts.retain], alphas)
        cost["retain"] = [mean_over(ret[a], "kl") for a in alphas]
        hits["retain"] = [mean_over(ret[a], "top1") for a in alphas]
    if texts.general:
        raw = raw_decoder(dec)
        heads, tails = zip(*(split_text(t) for t in texts.general))
        gen = Scorer(raw).profile(list(heads), list(tails), alphas)
        cost["general"] = [mean_over(gen[a], "kl") for a in alphas]
        hits["general"] = [mean_over(gen[a], "top1") for a in alphas]
    return fit, cost, top1, hits


def split_text(text: str, words: int = 4) -> tuple[str, str]:
    """Plain text as (its first `words` words, the rest): continuation after a few words, as eval general."""
    parts = text.split(" ")
    return " ".join(parts[:words]), " ".join(parts[words:])


def raw_decoder(dec):
    """The same models reading plain text: the user raw, each delta without its prompt format."""
    from cmc_cli.engine.decode import Decoder

    deltas = [dataclasses.replace(d, prompt_format="{prompt}") for d in dec.deltas]
    return Decoder(dec.user, deltas, user_format="raw", combine=dec.combine)


def calibrate(delta_dir: str | Path, user, template, texts: Texts, token_maps=(), user_format: str = "auto",
              grid=GRID) -> tuple[Calibration, object]:
    """Measure and choose; returns the Calibration and the Delta loaded for the user (its map). template: a
    LoadedModel or a calkeep.LazyTemplate (loaded only if its side is not kept beside the delta)."""
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_delta

    t0 = time.perf_counter()
    d_u = load_delta(delta_dir, user, 1.0, token_maps)
    dec_u = Decoder(user, [d_u], user_format=user_format)
    fmt = dec_u.deltas[0].prompt_format  # of a delta trained in several formats: the one it reads for this user

    def measure_side(tpl, lm) -> dict:
        d_t = load_delta(delta_dir, tpl, 1.0, lm=lm)  # the delta's model and tokenizer loaded once
        if d_t.index is not None and d_t.token_map is not None:
            raise CmcError(f"the template {tpl.name} has another vocabulary than delta {delta_dir}; give the template "
                           "the delta was trained beside (--template)")
        dec_t = Decoder(tpl, [dataclasses.replace(d_t, prompt_format=fmt)], user_format=fmt)
        fit, _, top, hits = measure(dec_t, texts, [0.0, 1.0])
        return {"fit": fit, "top1": top, "hits": hits, "target": scan_target(texts, dec_t)}

    side, kept = template_side(Path(delta_dir), template, texts, fmt, d_u.lm, measure_side)
    t_fit, t_top, t_hits = side["fit"], side["top1"], side["hits"]
    u_fit, u_kl, u_top, u_hits = measure(dec_u, texts, [0.0, *grid])
    budget = {k: max(COST_FLOOR, v[0] - v[1]) for k, v in t_hits.items()}
    cost = {k: [v[0] - x for x in v[1:]] for k, v in u_hits.items()}
    bound = cost if texts.budgeted else {}
    alpha, why = choose(list(grid), u_top[1:], t_top[1], texts.direction, bound, budget)
    scans = behaviour_scan(texts, side["target"], dec_u, list(grid), within_budget(grid, bound, budget), alpha)
    if scans[2]:  # nothing within budget: no scan, the hits rule's choice stands
        alpha, why = scans[0], scans[1]
    if not texts.budgeted:
        why += " (an instruction delta: the off-target cost is shown, not bound)"
    cal = Calibration(alpha, why, list(grid), t_fit[1], budget, u_fit[1:], cost, u_fit[0], u_top[1:], t_top[1],
                      {k: v[1:] for k, v in u_kl.items()}, u_top[0], time.perf_counter() - t0, template_kept=kept)
    if texts.scan == "refusal":
        cal.refusal, cal.target_refusal = scans[2], side["target"]
    elif texts.scan == "rouge_l":
        cal.rouge_l, cal.target_rouge_l = scans[2], side["target"]
    return cal, d_u


def scan_target(texts: Texts, dec_t) -> float | None:
    """Template + delta's value in the behaviour scan (Texts.scan) on the scan's prompts; None: no scan."""
    if texts.scan == "refusal":
        return refusal_rate(dec_t, [p for p, _ in texts.objective[:REFUSAL_ITEMS]], texts.refusals)
    if texts.scan == "rouge_l":
        return answer_rouge(dec_t, texts.objective[:ANSWER_ITEMS])
    return None


def behaviour_scan(texts: Texts, target: float | None, dec_u, grid: list, allowed: list[int], start: float) -> tuple:
    """The scan that follows the hits rule's choice `start` (Texts.scan): (alpha, why, [[alpha, value], ...]);
    no scan: (start, "", []). target: template + delta's value (scan_target); dec_u: user + delta (its strength
    replaced per step)."""
    from cmc_cli.engine.decode import Decoder

    d_u = dec_u.deltas[0]

    def at(a: float):
        return Decoder(dec_u.user, [dataclasses.replace(d_u, alpha=a)], user_format=dec_u.user_format)

    if texts.scan == "refusal":
        prompts = [p for p, _ in texts.objective[:REFUSAL_ITEMS]]
        return scan_refusals(grid, allowed, start, target, lambda a: refusal_rate(at(a), prompts, texts.refusals),
                             len(prompts))
    if texts.scan == "rouge_l":
        items = texts.objective[:ANSWER_ITEMS]
        return scan_answers(grid, allowed, start, lambda a: answer_rouge(at(a), items), len(items))
    return start, "", []


def training_texts(delta_dir: Path, items: int, template, data: dict, general: str | None, seed: int = 0) -> Texts:
    """The delta's own training data (from DELTA/config.yaml, or `data`'s paths: data / forget / retain), the
    first `items` of each set, and general text: `general`'s paragraphs, else texts the template samples
    (another seed than training's, so that the budget is not measured on the text the delta was silenced on)."""
    import yaml

    from cmc_cli.data.instruct import load_instruct, load_tofu
    from cmc_cli.data.refusals import load_refusals, pair_refusals

    cfg_path = Path(delta_dir) / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg = {**(cfg or {}), **{k: v for k, v in data.items() if v}}
    refusals: list[str] = []

    def need(key: str) -> str:
        path = cfg.get(key)
        if not path or not Path(path).is_file():
            raise CmcError(f"calibration needs the delta's --{key} file ({path or 'not recorded in ' + str(cfg_path)} "
                           f"is missing); give it with --{key}")
        return path

    if cfg.get("task") == "instruct":
        objective, direction = load_instruct(need("data")), "lower"
    else:
        forget = load_tofu(need("forget"))
        if cfg.get("loss") == "idk":
            refusals = load_refusals(cfg.get("refusals"))
            objective, direction = pair_refusals(forget, refusals, int(cfg.get("seed") or 0)), "lower"
        else:
            objective, direction = forget, "raise" if cfg.get("loss") in RAISE_METHODS else "lower"
    retain = load_tofu(cfg["retain"])[:items] if cfg.get("retain") and Path(cfg["retain"]).is_file() else []
    texts = Texts([(e.prompt, e.response) for e in objective[:items]], direction, [(e.prompt, e.response) for e in retain],
                  budgeted=cfg.get("task") != "instruct", refusals=refusals)
    texts.general = budget_texts(template, items, general, seed, Path(delta_dir) / KEPT_TEXTS,
                                 template_fingerprint(Path(delta_dir), template))
    return texts


def entry(cal: Calibration, delta_dir: Path, delta, user) -> dict:
    """The record of one calibration (engine/calibrecord.py), with both models' fingerprints."""
    from cmc_cli import __version__
    from cmc_cli.engine.calibrecord import map_identity, weights_fingerprint

    return {"alpha": cal.alpha, "reason": cal.reason,
            "user": {"name": user.name, "vocab": user.vocab.fingerprint, "weights": weights_fingerprint(user.path)},
            "delta_weights": weights_fingerprint(delta_dir), "map": map_identity(delta.token_map),
            "measured": {k: v for k, v in cal.as_dict().items() if k not in ("alpha", "reason")},
            "cmc_version": __version__}


def run_calibrate(cfg, on_phase=None) -> tuple[Calibration, dict, Path]:
    """`cmc calibrate`: load the models, measure, choose, record. Returns the calibration, its record entry
    and the record's path."""
    from cmc_cli.engine.calibrecord import write_entry
    from cmc_cli.engine.devices import pick_device, pick_dtype
    from cmc_cli.engine.models import load_lm, read_delta_meta
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    phase = on_phase or (lambda msg: log.info("%s", msg))
    delta_dir = Path(cfg.delta)
    meta = read_delta_meta(delta_dir)
    dev = pick_device(cfg.device)
    dt = pick_dtype(cfg.dtype, dev)
    template_ref = cfg.template or meta.get("template", {}).get("ref")
    if not template_ref:
        raise CmcError(f"{delta_dir / 'cmc.json'} names no template; give the one the delta was trained beside with --template")
    # loaded only if what calibrations keep beside the delta (engine/calkeep.py) does not fit
    template = LazyTemplate(str(template_ref), dt, str(dev), on_load=phase)
    phase(f"loading user model {cfg.user}")
    user = load_lm(cfg.user, dtype=dt, device=str(dev))
    texts = training_texts(delta_dir, cfg.items, template,
                           {"data": cfg.data, "forget": cfg.forget, "retain": cfg.retain}, cfg.general)
    phase(f"scoring {len(texts.objective)} objective, {len(texts.retain)} retain and {len(texts.general)} general "
          f"texts at {len(GRID)} strengths")
    maps = [TokenMap.load(p) for p in cfg.token_maps]
    cal, d_u = calibrate(delta_dir, user, template, texts, maps, cfg.user_format)
    ent = entry(cal, delta_dir, d_u, user)
    return cal, ent, write_entry(delta_dir, ent)
