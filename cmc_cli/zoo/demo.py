"""`cmc demo`: the whole pipeline on the model world, with the controls that keep it honest.

1. build the world (zoo/build.py) if needed;
2. map the template's vocabulary onto the other model's (PM-MinED), plus two controls: an
   exact-match-only map and a randomly shuffled map;
3. unlearning: train one delta beside the TOFU template on forget / retain, apply it to the
   template, the larger model and the other-vocabulary model; TOFU metrics on forget, retain,
   real authors and world facts (forget quality against the retain-only template);
4. instruction tuning: train one delta beside the *base* template on QA pairs of half the authors,
   ask all three base models about the other half (the knowledge comes from each model's prose
   training, the answering from the delta);
5. two tables shaped like the paper's Table 1 and Table 2, each row with its change against the
   model alone. A strong delta can push forget-set scores down through any map by flooding those
   contexts with large logits, so cross-vocabulary rows are shown beside the shuffled-map control:
   the transfer claimed is the gap to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.zoo.build import QA_FORMAT, Zoo, build_zoo, zoo_from_size

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    size: str = "full"
    root: str | None = None  # the world's directory (default: the cache)
    out: str | None = None  # where deltas, maps and the report go (default: <world>/demo)
    jobs: int | None = None
    alpha: float = 1.0  # the unlearning delta's strength
    # the instruction delta's (and its proxy-tuning row's). The paper's 1 by default; on the full world 2
    # gives better generations (ROUGE-L +0.21/+0.20/+0.07 instead of +0.04/+0.14/-0.06) at the cost of
    # likelihood (+0.8 instead of +2.1 nats on the template), and on the reduced world 2 is worse on both
    instruct_alpha: float = 1.0
    seed: int = 0
    delta: str = "tiny"  # delta preset
    # unlearning: None = the world size's setting (UNLEARN_SETTINGS); epochs are a ceiling, max_steps and
    # the forget-loss stopping rule end training first
    unlearn_lr: float | None = None
    unlearn_epochs: int = 100
    unlearn_batch: int | None = None
    unlearn_max_steps: int | None = None
    unlearn_retain_weight: float | None = None
    stop_forget_loss: float = 8.0
    instruct_lr: float = 3e-3
    instruct_epochs: int = 20
    instruct_batch: int = 8
    instruct_max_steps: int = 300
    eval_limit: int = 60  # items per TOFU set / instruction prompts evaluated
    max_new_tokens: int = 32
    forget_split: int = 10


# Measured on these machines (docs/world.md): on the full world, batch 8 with the retain term weighted 3
# forgets (ROUGE-L 1.00 -> 0.13) and keeps retain at 0.99; on the 20-author world the same setting floods
# forget contexts through any map (the shuffled control forgets as much), so it trains milder.
UNLEARN_SETTINGS = {
    "full": {"unlearn_lr": 3e-3, "unlearn_batch": 8, "unlearn_max_steps": 400, "unlearn_retain_weight": 3.0},
    "reduced": {"unlearn_lr": 3e-3, "unlearn_batch": 4, "unlearn_max_steps": 200, "unlearn_retain_weight": 1.0},
}


@dataclass
class DemoResult:
    zoo: Zoo
    out: Path
    tofu_rows: list = field(default_factory=list)
    instruct_rows: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def run_demo(cfg: DemoConfig, on_phase=None, on_event=None) -> DemoResult:
    from cmc_cli.config import TrainConfig
    from cmc_cli.engine.decode import Decoder, load_delta, load_lm
    from cmc_cli.engine.train import Trainer
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    phase = on_phase or (lambda msg: log.info("%s", msg))
    spec = zoo_from_size(cfg.size)
    for key, val in UNLEARN_SETTINGS[cfg.size].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, val)
    t0 = time.perf_counter()
    zoo = build_zoo(spec, cfg.root, cfg.jobs, on_event=on_event)
    res = DemoResult(zoo, Path(cfg.out) if cfg.out else zoo.root / "demo")
    res.seconds["world"] = time.perf_counter() - t0
    out = res.out
    t1 = time.perf_counter()

    # -- token maps: the template's vocabulary is the delta's; the other model is the user
    phase("mapping vocabularies")
    spm = load_lm(str(zoo.model("template-tofu")))
    models = {k: load_lm(str(zoo.model(k))) for k in
              ("template-tofu", "large-tofu", "other-tofu", "template-base", "large-base", "other-base")}
    maps = {"pm-mined": TokenMap.build(spm.vocab, models["other-tofu"].vocab)}
    maps["exact-only"] = TokenMap.build(spm.vocab, models["other-tofu"].vocab, strategy="exact")
    maps["shuffled"] = maps["pm-mined"].shuffled(cfg.seed)
    for name, tm in maps.items():
        tm.save(out / "tokenmaps" / f"template__other.{name}.safetensors")

    # -- the two deltas
    r = zoo.spec.retain_split
    forget = zoo.data(f"forget{cfg.forget_split:02d}")
    retain = zoo.data(f"retain{100 - cfg.forget_split:02d}")
    phase("training the unlearning delta beside template-tofu")
    Trainer(TrainConfig(task="unlearn", template=str(zoo.model("template-tofu")), forget=str(forget), retain=str(retain),
                        output=str(out / "deltas" / "unlearn"), delta=cfg.delta, prompt_format=QA_FORMAT,
                        lr=cfg.unlearn_lr, batch_size=cfg.unlearn_batch, epochs=cfg.unlearn_epochs,
                        max_steps=cfg.unlearn_max_steps, seed=cfg.seed, stop_forget_loss=cfg.stop_forget_loss,
                        retain_weight=cfg.unlearn_retain_weight,
                        max_length=128, device="cpu")).run()
    phase("training the instruction delta beside template-base")
    Trainer(TrainConfig(task="instruct", template=str(zoo.model("template-base")), data=str(zoo.data("instruct_train")),
                        output=str(out / "deltas" / "instruct"), delta=cfg.delta, prompt_format=QA_FORMAT,
                        lr=cfg.instruct_lr, batch_size=cfg.instruct_batch, epochs=cfg.instruct_epochs,
                        max_steps=cfg.instruct_max_steps, seed=cfg.seed, max_length=128, device="cpu")).run()
    res.seconds["deltas"] = time.perf_counter() - t1

    # -- rows: each model alone, with the delta, and for the other vocabulary the two controls
    def rows_for(prefix: str, delta_dir: Path, alpha: float):
        out_rows = []
        for key in ("template", "large", "other"):
            user = models[f"{key}-{prefix}"]
            out_rows.append((f"{key}", Decoder(user, user_format=QA_FORMAT)))
            variants = [("pm-mined", maps["pm-mined"])] if key == "other" else [("", None)]
            if key == "other":
                variants += [("exact-only", maps["exact-only"]), ("shuffled", maps["shuffled"])]
            for tag, tm in variants:
                d = load_delta(delta_dir, user, alpha, [tm] if tm is not None else [])
                label = f"{key} + delta" + (f" ({tag} map)" if tag else "")
                out_rows.append((label, Decoder(user, [d], user_format=QA_FORMAT)))
        return out_rows

    t2 = time.perf_counter()
    res.tofu_rows = _tofu(zoo, cfg, rows_for("tofu", out / "deltas" / "unlearn", cfg.alpha)
                          + baseline_rows(zoo, models, "unlearn", cfg), forget, retain, r, phase)
    res.instruct_rows = _instruct(zoo, cfg, rows_for("base", out / "deltas" / "instruct", cfg.instruct_alpha)
                                  + baseline_rows(zoo, models, "instruct", cfg), phase)
    res.seconds["eval"] = time.perf_counter() - t2
    _write(res, cfg)
    return res


def baseline_rows(zoo: Zoo, models: dict, task: str, cfg: DemoConfig) -> list:
    """The direct fine-tune of every model (instruct: the upper bound; unlearn: gradient difference on
    the model's own weights) and proxy-tuning of `large` with the template's pair (same vocabulary only).
    Empty when the world was built without baselines, or for another forget split than theirs."""
    from cmc_cli.engine.decode import Decoder, load_lm

    b = zoo.spec.baselines
    if b is None or (task == "unlearn" and b.forget_split != cfg.forget_split):
        return []
    prefix = "base" if task == "instruct" else "tofu"
    tuned = {k: load_lm(str(zoo.model(f"{k}-{task}-ft"))) for k in ("template", "large", "other")}
    what = "fine-tuned (upper bound)" if task == "instruct" else "unlearned directly (grad. diff.)"
    rows = [(f"{k} {what}", Decoder(tuned[k], user_format=QA_FORMAT)) for k in ("template", "large", "other")]
    rows.append(("large + proxy-tuning (template pair)", Decoder(models[f"large-{prefix}"], expert=tuned["template"],
                                                                anti_expert=models[f"template-{prefix}"],
                                                                proxy_alpha=cfg.alpha if task == "unlearn" else cfg.instruct_alpha,
                                                                user_format=QA_FORMAT)))
    return rows


def _tofu(zoo: Zoo, cfg: DemoConfig, rows, forget: Path, retain: Path, r: int, phase) -> list:
    from cmc_cli.data.tofu import load_tofu_eval
    from cmc_cli.engine.decode import Decoder, load_lm
    from cmc_cli.eval.tofu import TofuEvaluator, TofuRow, forget_quality

    lim = cfg.eval_limit
    sets = {"forget": load_tofu_eval(forget, "forget")[:lim], "retain": load_tofu_eval(retain, "retain")[:lim],
            "real_authors": load_tofu_eval(zoo.data("real_authors"), "real_authors")[:lim],
            "world_facts": load_tofu_eval(zoo.data("world_facts"), "world_facts")[:lim]}
    ref = Decoder(load_lm(str(zoo.model(f"template-retain{r:02d}"))), user_format=QA_FORMAT)
    ref_ratios = TofuEvaluator(ref, {"forget": sets["forget"]}, generate=False).run()["forget"].ratios
    out = []
    for label, dec in rows:
        phase(f"TOFU: {label}")
        res = TofuEvaluator(dec, sets, max_new_tokens=cfg.max_new_tokens, batch_size=16).run()
        row = TofuRow(label, dec.user.name, [{"alpha": d.alpha} for d in dec.deltas], res)
        row.forget_quality = forget_quality(res["forget"].ratios, ref_ratios)
        out.append(row)
    return out


def _instruct(zoo: Zoo, cfg: DemoConfig, rows, phase) -> list:
    from cmc_cli.data.instruct import load_prompts
    from cmc_cli.eval.instruct import InstructRow, evaluate_outputs
    from cmc_cli.engine.decode import GenerationConfig

    prompts = load_prompts(zoo.data("instruct_eval"))[:cfg.eval_limit]
    out = []
    for label, dec in rows:
        phase(f"instruction following: {label}")
        gens = []
        for s in range(0, len(prompts), 16):
            gens += dec.generate([p.text for p in prompts[s:s + 16]], GenerationConfig(max_new_tokens=cfg.max_new_tokens))
        outputs = [g.text for g in gens]
        row = InstructRow(label, dec.user.name, [{"alpha": d.alpha} for d in dec.deltas], len(outputs))
        for k, v in evaluate_outputs(dec, prompts, outputs, None, 16).items():
            setattr(row, k, v)
        out.append(row)
    return out


# ---- report -------------------------------------------------------------------------------------------
def _with_baseline(rows):
    """(row, the same model's row without a delta) — rows come model alone first, then its variants."""
    base = {}
    for r in rows:
        key = r.label.split(" ")[0]
        base.setdefault(key, r)
        yield r, base[key]


def table1_rows(rows) -> list[list[str]]:
    """Instruction following: ROUGE-L recall and reference log-likelihood, change against the model alone."""
    out = []
    for r, b in _with_baseline(rows):
        d_rl = "" if r is b else f"{r.rouge_l_recall - b.rouge_l_recall:+.2f}"
        d_ll = "" if r is b else f"{r.ref_loglik - b.ref_loglik:+.2f}"
        out.append([r.label, f"{r.rouge_l_recall:.2f}", d_rl, f"{r.ref_loglik:.2f}", d_ll])
    return out


def table2_rows(rows) -> list[list[str]]:
    """Unlearning: forget / retain ROUGE-L and truth ratio, FQ, MU, and the ROUGE-L changes."""
    out = []
    for r, b in _with_baseline(rows):
        f, rt = r.sets["forget"], r.sets["retain"]
        d = "" if r is b else f"{f.rouge_l - b.sets['forget'].rouge_l:+.2f} / {rt.rouge_l - b.sets['retain'].rouge_l:+.2f}"
        out.append([r.label, f"{f.rouge_l:.2f}", f"{f.truth_ratio:.2f}", f"{rt.rouge_l:.2f}", f"{rt.truth_ratio:.2f}",
                    f"{r.sets['world_facts'].prob:.2f}", f"{r.forget_quality:.2g}", f"{r.model_utility:.2f}", d])
    return out


TABLE1_HEADER = ["model (base)", "ROUGE-L", "Δ", "ref log-lik", "Δ"]
TABLE2_HEADER = ["model (TOFU)", "forget RL", "forget TR", "retain RL", "retain TR", "world P", "FQ", "MU",
                 "Δ RL forget / retain"]


def _write(res: DemoResult, cfg: DemoConfig) -> None:
    from cmc_cli.fileio import atomic_write_json, atomic_write_text

    md = ["# cmc demo on the model world", "",
          f"World: {res.zoo.root} (size {cfg.size}); alpha {cfg.instruct_alpha} for the instruction delta (and its "
          f"proxy-tuning row), {cfg.alpha} for the unlearning one; {cfg.eval_limit} items per set.", "",
          "## Table 1 — instruction tuning (questions about authors the delta never saw in QA form)", "",
          "| " + " | ".join(TABLE1_HEADER) + " |", "|" + "|".join(["---"] + ["---:"] * (len(TABLE1_HEADER) - 1)) + "|"]
    md += ["| " + " | ".join(c) + " |" for c in table1_rows(res.instruct_rows)]
    md += ["", f"## Table 2 — unlearning forget{cfg.forget_split:02d}", "",
           "| " + " | ".join(TABLE2_HEADER) + " |", "|" + "|".join(["---"] + ["---:"] * (len(TABLE2_HEADER) - 1)) + "|"]
    md += ["| " + " | ".join(c) + " |" for c in table2_rows(res.tofu_rows)]
    md += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()), ""]
    atomic_write_text(res.out / "report.md", "\n".join(md))
    atomic_write_json(res.out / "results.json", {
        "format": "cmc-demo/1", "config": cfg.__dict__, "seconds": res.seconds,
        "table1": [r.as_dict() for r in res.instruct_rows], "table2": [r.as_dict() for r in res.tofu_rows]})

