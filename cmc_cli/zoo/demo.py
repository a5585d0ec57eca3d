"""`cmc demo`: the whole pipeline on the model world, over seeds, with the controls that keep it honest.

1. build the world (zoo/build.py) if needed;
2. map the template's vocabulary onto the other model's: PM-MinED (the paper's), exact-only, exact-ext
   (cmc's default: exact, else an extension, never a shorter prefix), pm-suppress (PM-MinED whose
   prefix-mapped tokens get only suppressions) and, per seed, the shuffled control (exact-ext's targets
   permuted);
3. for each seed: train one unlearning delta beside the TOFU template (by default `idk`: forget questions
   toward refusals, retain answers kept) and one instruction delta beside the *base* template (QA pairs of
   half the authors);
4. apply both to the template, the larger model and the other-vocabulary model (through every map);
   greedy answers to forget, retain and held-out retain questions (kept out of the delta's training), and to
   instruction questions
   about the authors the instruction delta never saw in QA form;
5. report behaviour first — refusal rate, key accuracy (the answer contains the fact) — and the
   likelihood beside it, as mean ± 95% CI over seeds, with the paired per-item difference of each row
   against the model alone and against the shuffled-map control (pooled over seeds, bootstrap CI).
   A strong delta can move likelihoods through any map; a shuffled map cannot make a model refuse.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmc_cli.config.demo import CONTROL, UNLEARN_SETTINGS, DemoConfig
from cmc_cli.zoo.build import QA_FORMAT, Zoo, build_zoo, zoo_from_size

log = logging.getLogger(__name__)

@dataclass
class Row:
    """One row of a table: a model alone, with a delta (through a map), or a baseline; per seed its
    per-set results (eval.tofu.SetResult). Rows without a delta are evaluated once and stand for every seed."""

    label: str
    model: str  # template | large | other
    kind: str  # alone | delta | baseline
    map: str = ""  # the token map's strategy for `other`, "" for the same vocabulary
    per_seed: list = field(default_factory=list)  # [{set: SetResult}]
    alphas: list = field(default_factory=list)  # the delta's strength per seed (calibrated unless given)

    def shown(self) -> str:
        """The label with the strength used (its range over seeds when calibrated ones differ)."""
        if not self.alphas:
            return self.label
        lo, hi = min(self.alphas), max(self.alphas)
        return f"{self.label} a={lo:g}" if lo == hi else f"{self.label} a={lo:g}-{hi:g}"

    def values(self, kind: str, metric: str) -> list[float]:
        """The metric's value for each seed."""
        out = []
        for sets in self.per_seed:
            s = sets.get(kind)
            if s is None:
                continue
            if metric == "loglik":  # mean per-token log-likelihood of the reference answer
                v = sum(math.log(max(p, 1e-300)) for p in s.per_item["prob"]) / max(1, len(s.per_item["prob"]))
            else:
                v = s.prob if metric == "prob" else getattr(s, metric)
            if v is not None:
                out.append(v)
        return out

    def items(self, kind: str, metric: str, n_seeds: int) -> list[float]:
        """Per-item values pooled over seeds (a seed-independent row repeats itself for each seed)."""
        runs = self.per_seed if len(self.per_seed) == n_seeds else self.per_seed * n_seeds
        return [v for sets in runs for v in sets[kind].per_item.get(metric, [])]


@dataclass
class DemoResult:
    zoo: Zoo
    out: Path
    cfg: DemoConfig
    unlearn: list[Row] = field(default_factory=list)
    instruct: list[Row] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def run_demo(cfg: DemoConfig, on_phase=None, on_event=None) -> DemoResult:
    from cmc_cli.engine.models import load_lm
    from cmc_cli.tokenmaps.tokenmap import DEFAULT_STRATEGY, TokenMap

    phase = on_phase or (lambda msg: log.info("%s", msg))
    for key, val in UNLEARN_SETTINGS[cfg.size].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, val)
    t0 = time.perf_counter()
    zoo = build_zoo(zoo_from_size(cfg.size), cfg.root, cfg.jobs, on_event=on_event)
    res = DemoResult(zoo, Path(cfg.out) if cfg.out else zoo.root / "demo", cfg)
    res.seconds["world"] = time.perf_counter() - t0
    out = res.out

    phase("mapping vocabularies")
    models = {k: load_lm(str(zoo.model(k))) for k in
              ("template-tofu", "large-tofu", "other-tofu", "template-base", "large-base", "other-base")}
    delta_vocab, user_vocab = models["template-tofu"].vocab, models["other-tofu"].vocab
    maps = {name: TokenMap.build(delta_vocab, user_vocab, strategy=name) for name in cfg.maps}
    for name, tm in maps.items():
        tm.save(out / "tokenmaps" / f"template__other.{name}.safetensors")
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    forget, retain, unlearn_sets, instruct_sets = _eval_sets(zoo, cfg, out)
    res.unlearn = _rows(zoo, cfg, "unlearn")
    res.instruct = _rows(zoo, cfg, "instruct")
    res.seconds["deltas"] = res.seconds["eval"] = 0.0
    for seed in seeds:
        t1 = time.perf_counter()
        phase(f"seed {seed}: training the {cfg.method} unlearning delta beside template-tofu")
        d_unlearn = _train(zoo, cfg, "unlearn", seed, out / "deltas" / f"unlearn-s{seed}", forget, retain)
        phase(f"seed {seed}: training the instruction delta beside template-base")
        d_instruct = _train(zoo, cfg, "instruct", seed, out / "deltas" / f"instruct-s{seed}")
        res.seconds["deltas"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        control = maps[DEFAULT_STRATEGY].shuffled(seed)
        control.save(out / "tokenmaps" / f"template__other.shuffled-s{seed}.safetensors")
        seed_maps = {**maps, CONTROL: control}
        first = seed == seeds[0]
        _evaluate(res.unlearn, models, zoo, "tofu", d_unlearn, cfg.alpha, seed_maps, unlearn_sets, cfg, first, phase, seed)
        _evaluate(res.instruct, models, zoo, "base", d_instruct, cfg.instruct_alpha, seed_maps, instruct_sets, cfg, first,
                  phase, seed)
        res.seconds["eval"] += time.perf_counter() - t2
    _write(res)
    return res


def _eval_sets(zoo: Zoo, cfg: DemoConfig, out: Path) -> tuple:
    """The forget file, the retain file the delta trains on, and the evaluation sets of both tasks: the first
    `eval_limit` retain questions are held out of the delta's training (every model still knows them)."""
    from cmc_cli.data.records import read_records
    from cmc_cli.data.tofu import TofuItem, load_tofu_eval
    from cmc_cli.fileio import atomic_write_text

    lim = cfg.eval_limit
    forget, retain_all = zoo.data(f"forget{cfg.forget_split:02d}"), zoo.data(f"retain{100 - cfg.forget_split:02d}")
    retain_lines = [ln for ln in retain_all.read_text(encoding="utf-8").splitlines() if ln.strip()]
    retain = out / "data" / "retain-train.jsonl"
    atomic_write_text(retain, "\n".join(retain_lines[lim:]) + "\n")
    unlearn_sets = {"forget": load_tofu_eval(forget, "forget")[:lim], "retain": load_tofu_eval(retain, "retain")[:lim],
                    "heldout": load_tofu_eval(retain_all, "retain")[:lim]}
    instruct_sets = {"retain": [TofuItem(r["instruction"], r["output"], None, (), f"instruct_eval:{n}",
                                         (r["key"],) if r.get("key") else ())
                                for n, r in read_records(zoo.data("instruct_eval"))][:lim]}
    return forget, retain, unlearn_sets, instruct_sets


def _train(zoo: Zoo, cfg: DemoConfig, task: str, seed: int, output: Path, forget=None, retain=None) -> Path:
    from cmc_cli.config import TrainConfig
    from cmc_cli.engine.train import Trainer

    if output.exists():
        import shutil

        shutil.rmtree(output)  # the demo's own delta from an earlier run (checked before TrainConfig refuses it)
    if task == "unlearn":
        tc = TrainConfig(task="unlearn", loss=cfg.method, template=str(zoo.model("template-tofu")), forget=str(forget),
                         retain=str(retain), output=str(output), delta=cfg.unlearn_delta, prompt_format=QA_FORMAT,
                         lr=cfg.unlearn_lr, batch_size=cfg.unlearn_batch, epochs=1000, max_steps=cfg.unlearn_max_steps,
                         retain_weight=cfg.unlearn_retain_weight, seed=seed, max_length=128, device="cpu",
                         silence=cfg.silence,
                         # idk trains toward refusals and needs no stopping rule; the methods that push the
                         # forget answers down stop on the whole forget set's CE, evaluated every 20 steps
                         **({"eval_every": cfg.unlearn_max_steps} if cfg.method == "idk" else
                            {"eval_every": 20, "stop_forget_loss": cfg.stop_forget_loss}))
    else:
        tc = TrainConfig(task="instruct", template=str(zoo.model("template-base")), data=str(zoo.data("instruct_train")),
                         output=str(output), delta=cfg.delta, prompt_format=QA_FORMAT, lr=cfg.instruct_lr,
                         batch_size=cfg.instruct_batch, epochs=cfg.instruct_epochs, max_steps=cfg.instruct_max_steps,
                         seed=seed, max_length=128, device="cpu", silence=cfg.silence)
    Trainer(tc).run()
    return output


def _rows(zoo: Zoo, cfg: DemoConfig, task: str) -> list[Row]:
    rows = []
    for key in ("template", "large", "other"):
        rows.append(Row(key, key, "alone"))
        if key == "other":
            rows += [Row(f"other + delta ({m} map)", key, "delta", m) for m in tuple(cfg.maps) + (CONTROL,)]
        else:
            rows.append(Row(f"{key} + delta", key, "delta"))
    b = zoo.spec.baselines
    if b is not None and (task == "instruct" or b.forget_split == cfg.forget_split):
        what = "fine-tuned (upper bound)" if task == "instruct" else "unlearned directly (grad. diff.)"
        rows += [Row(f"{k} {what}", k, "baseline") for k in ("template", "large", "other")]
        rows.append(Row("large + proxy-tuning (template pair)", "large", "baseline"))
    return rows


def _decoder(row: Row, models: dict, prefix: str, zoo: Zoo, delta_dir: Path, alpha: float, maps: dict, cfg: DemoConfig,
             task: str):
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_delta, load_lm

    user = models[f"{row.model}-{prefix}"]
    if row.kind == "alone":
        return Decoder(user, user_format=QA_FORMAT)
    if row.kind == "delta":
        tms = [maps[row.map]] if row.map else []
        return Decoder(user, [load_delta(delta_dir, user, alpha, tms)], user_format=QA_FORMAT)
    tuned = lambda k: load_lm(str(zoo.model(f"{k}-{task}-ft")))  # noqa: E731
    if row.label.startswith("large + proxy"):
        return Decoder(user, expert=tuned("template"), anti_expert=models[f"template-{prefix}"],
                       proxy_alpha=1.0 if alpha is None else alpha, user_format=QA_FORMAT)
    return Decoder(tuned(row.model), user_format=QA_FORMAT)


def _strength(row: Row, models: dict, prefix: str, delta_dir: Path, given, maps: dict, chosen: dict) -> float | None:
    """The delta's strength on this row's model: the one given, else `cmc calibrate`'s choice for this model and
    map (the shuffled control gets the default map's, so that only the map differs)."""
    from cmc_cli.engine.calibrate import calibrate, training_texts
    from cmc_cli.tokenmaps.tokenmap import DEFAULT_STRATEGY

    if row.kind != "delta":
        return given
    if given is not None:
        return given
    key = (row.model, DEFAULT_STRATEGY if row.map == CONTROL else row.map)
    if key not in chosen:
        template = models[f"template-{prefix}"]
        if "texts" not in chosen:  # the delta's items and the template's samples, once per delta
            chosen["texts"] = training_texts(delta_dir, 32, template, {}, None)
        texts = chosen["texts"]
        tms = [maps[key[1]]] if key[1] else []
        chosen[key] = calibrate(delta_dir, models[f"{row.model}-{prefix}"], template, texts, tms, QA_FORMAT)[0].alpha
    return chosen[key]


def _evaluate(rows: list[Row], models: dict, zoo: Zoo, prefix: str, delta_dir: Path, alpha, maps: dict,
              sets: dict, cfg: DemoConfig, first: bool, phase, seed: int) -> None:
    from cmc_cli.eval.tofu import TofuEvaluator

    task = "unlearn" if prefix == "tofu" else "instruct"
    chosen: dict = {}
    for row in rows:
        if row.kind != "delta" and not first:
            continue  # the same greedy answers for every seed
        a = _strength(row, models, prefix, delta_dir, alpha, maps, chosen)
        phase(f"seed {seed}: {task}: {row.label}" + (f" (alpha {a:g})" if row.kind == "delta" else ""))
        if row.kind == "delta":
            row.alphas.append(a)
        dec = _decoder(row, models, prefix, zoo, delta_dir, a, maps, cfg, task)
        row.per_seed.append(TofuEvaluator(dec, sets, max_new_tokens=cfg.max_new_tokens, batch_size=16,
                                          truth_ratio=False).run())


# ---- report -------------------------------------------------------------------------------------------
def _ci(values: list[float]) -> str:
    from cmc_cli.eval.metrics import mean_ci

    if not values:
        return "—"
    m, h = mean_ci(values)
    return f"{m:.2f}" if math.isnan(h) else f"{m:.2f} ± {h:.2f}"


def _paired(row: Row, other: Row | None, kind: str, metric: str, n_seeds: int) -> str:
    from cmc_cli.eval.metrics import paired_bootstrap

    if other is None or row is other or row.kind != "delta":
        return ""
    a, b = row.items(kind, metric, n_seeds), other.items(kind, metric, n_seeds)
    if not a or len(a) != len(b):
        return ""
    m, lo, hi = paired_bootstrap(a, b)
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


UNLEARN_HEADER = ["model (TOFU)", "forget refusal", "forget key acc.", "retain refusal", "retain key acc.",
                  "held-out key acc.", "forget P(answer)", "Δ forget behaviour vs alone", "Δ vs shuffled map"]


def _behaviour(cfg: DemoConfig) -> tuple[str, str]:
    """The forget-set behaviour the unlearning method aims at: refusals for idk; for the others, the answers
    no longer stating the fact (the per-item metric is key_hit, so its paired change should be negative)."""
    return ("refusal", "refusal") if cfg.method == "idk" else ("key_accuracy", "key_hit")
INSTRUCT_HEADER = ["model (base)", "key acc.", "ROUGE-L", "answer log-lik", "Δ ROUGE-L vs alone", "Δ vs shuffled map"]


def unlearn_rows(res: DemoResult) -> list[list[str]]:
    n = res.cfg.seeds
    alone = {r.model: r for r in res.unlearn if r.kind == "alone"}
    control = next((r for r in res.unlearn if r.map == CONTROL), None)
    out = []
    _, item = _behaviour(res.cfg)
    for r in res.unlearn:
        out.append([r.shown(), _ci(r.values("forget", "refusal")), _ci(r.values("forget", "key_accuracy")),
                    _ci(r.values("retain", "refusal")), _ci(r.values("retain", "key_accuracy")),
                    _ci(r.values("heldout", "key_accuracy")), _ci(r.values("forget", "prob")),
                    _paired(r, alone.get(r.model), "forget", item, n),
                    _paired(r, control, "forget", item, n) if r.model == "other" and r.map != CONTROL else ""])
    return out


def instruct_rows(res: DemoResult) -> list[list[str]]:
    n = res.cfg.seeds
    alone = {r.model: r for r in res.instruct if r.kind == "alone"}
    control = next((r for r in res.instruct if r.map == CONTROL), None)
    out = []
    for r in res.instruct:
        out.append([r.shown(), _ci(r.values("retain", "key_accuracy")), _ci(r.values("retain", "rouge_l")),
                    _ci(r.values("retain", "loglik")), _paired(r, alone.get(r.model), "retain", "rouge_l", n),
                    _paired(r, control, "retain", "rouge_l", n) if r.model == "other" and r.map != CONTROL else ""])
    return out


def headline(res: DemoResult) -> str:
    """What the demo shows, in sentences computed from this run's figures (so true on any machine):
    behaviour first, the likelihood beside it."""
    from cmc_cli.eval.metrics import mean_ci, paired_bootstrap
    from cmc_cli.tokenmaps.tokenmap import DEFAULT_STRATEGY

    n = res.cfg.seeds
    f = lambda r, k, met: mean_ci(r.values(k, met))[0]  # noqa: E731
    by = {r.label: r for r in res.unlearn}
    other, sh = by["other"], by[f"other + delta ({CONTROL} map)"]
    cmc, pm = by[f"other + delta ({DEFAULT_STRATEGY} map)"], by["other + delta (pm-mined map)"]
    metric, item = _behaviour(res.cfg)
    what = "refuse" if metric == "refusal" else "still state the fact in"
    m, lo, hi = paired_bootstrap(cmc.items("forget", item, n), sh.items("forget", item, n))
    out = (f"Over {n} seed(s), the {res.cfg.method} delta trained beside the template makes `other` (another "
           f"architecture and vocabulary) {what} {f(cmc, 'forget', metric):.0%} of forget questions through cmc's "
           f"{DEFAULT_STRATEGY} map ({f(pm, 'forget', metric):.0%} through the paper's pm-mined, "
           f"{f(sh, 'forget', metric):.0%} through the shuffled control; paired difference {m:+.2f} "
           f"[{lo:+.2f}, {hi:+.2f}]) against {f(other, 'forget', metric):.0%} alone, with retain key accuracy "
           f"{f(other, 'retain', 'key_accuracy'):.2f} alone and {f(cmc, 'retain', 'key_accuracy'):.2f} with it; the "
           f"forgotten answers' probability goes {f(other, 'forget', 'prob'):.2f} -> {f(cmc, 'forget', 'prob'):.2f} "
           f"({f(sh, 'forget', 'prob'):.2f} shuffled).")
    by = {r.label: r for r in res.instruct}
    t0, t1 = by["template"], by["template + delta"]
    o0, o1, o_sh = by["other"], by[f"other + delta ({DEFAULT_STRATEGY} map)"], by[f"other + delta ({CONTROL} map)"]
    out += (f" The instruction delta moves ROUGE-L of the base models' answers {f(t0, 'retain', 'rouge_l'):.2f} -> "
            f"{f(t1, 'retain', 'rouge_l'):.2f} on the template and {f(o0, 'retain', 'rouge_l'):.2f} -> "
            f"{f(o1, 'retain', 'rouge_l'):.2f} on `other` ({f(o_sh, 'retain', 'rouge_l'):.2f} shuffled); the answers' "
            f"log-likelihood {f(o0, 'retain', 'loglik'):.2f} -> {f(o1, 'retain', 'loglik'):.2f} on `other` "
            f"({f(o_sh, 'retain', 'loglik'):.2f} shuffled).")
    return out


def _given(alpha) -> str:
    return "calibrated" if alpha is None else f"{alpha:g}"


def _write(res: DemoResult) -> None:
    from cmc_cli.eval.report import md_table
    from cmc_cli.fileio import atomic_write_json, atomic_write_text

    cfg = res.cfg
    md = ["# cmc demo on the model world", "", headline(res), "",
          f"World: {res.zoo.root} (size {cfg.size}); seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1}; alpha "
          f"{_given(cfg.alpha)} (unlearning), {_given(cfg.instruct_alpha)} (instruction), shown as a= per row "
          "(calibrated: `cmc calibrate`'s choice per model, map and seed; the shuffled control at the default map's); "
          f"{cfg.eval_limit} items per set; greedy, "
          f"{cfg.max_new_tokens} new tokens. Cells: mean ± 95% CI over seeds (Student t); Δ: paired per-item "
          "difference pooled over seeds, [95% bootstrap CI].", "",
          f"## Unlearning ({cfg.method}) forget{cfg.forget_split:02d} — behaviour first, the likelihood beside it", ""]
    md += md_table(UNLEARN_HEADER, unlearn_rows(res))
    md += ["", "## Instruction tuning — questions about authors the delta never saw in QA form", ""]
    md += md_table(INSTRUCT_HEADER, instruct_rows(res))
    md += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()), ""]
    atomic_write_text(res.out / "report.md", "\n".join(md))

    def dump(rows):
        return [{"label": r.label, "model": r.model, "kind": r.kind, "map": r.map, "alphas": r.alphas,
                 "per_seed": [{k: s.as_dict() for k, s in sets.items()} for sets in r.per_seed]} for r in rows]

    atomic_write_json(res.out / "results.json", {"format": "cmc-demo/2", "config": asdict(cfg), "seconds": res.seconds,
                                                 "headline": headline(res), "unlearn": dump(res.unlearn),
                                                 "instruct": dump(res.instruct)})
