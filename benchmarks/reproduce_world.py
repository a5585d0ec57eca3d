"""Reproduce the paper's experiments at the scale of the built-in model world (docs/results.md).

    python benchmarks/reproduce_world.py                      # full world (built first if missing)
    python benchmarks/reproduce_world.py --size reduced --limit 20 --seeds 0   # a quick look

Prints, and writes to --out (results.json, tables.md, alpha_sweep.png):
  Table 1  instruction tuning: ROUGE-L recall / reference log-likelihood on questions about authors the
           delta never saw in QA form, for the three base models, mean ± spread over --seeds
  Table 2  unlearning forget10: the demo's delta and a milder one (stopped at forget CE 3), with the map controls
  Table 3  three delta sizes (tiny, mini, small)
  Figure 4 alpha from 0.25 to 2: forget / retain ROUGE-L (unlearning) and ROUGE-L (instruction)
  Table 4  ablations on the other-vocabulary model: PM-MinED, min-ed alone, exact-only, exact-ext (cmc's
           default), shuffled,
           and without LogSoftmax on the user's logits (--combine sum)
  Shift    logit-shift similarity between the world's models: same task (both TOFU-tuned) vs a
           different task (the other model tuned on unrelated prose), with the random-position control
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from cmc_cli.config import TrainConfig
from cmc_cli.data.instruct import load_prompts
from cmc_cli.data.tofu import load_tofu_eval
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.train import Trainer
from cmc_cli.eval.instruct import evaluate_outputs
from cmc_cli.eval.tofu import TofuEvaluator
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.build import QA_FORMAT, build_zoo, zoo_from_size
from cmc_cli.zoo.demo import UNLEARN_SETTINGS

KEYS = ("template", "large", "other")


class World:
    """The built world's models, data and maps, and the benchmark's operations on them: training a delta,
    a decoder for a model with a delta through a map, and the TOFU / instruction metrics of a decoder."""

    def __init__(self, size: str, lim: int):
        self.zoo = zoo = build_zoo(zoo_from_size(size))
        self.ul = UNLEARN_SETTINGS[size]
        self.lim = lim
        self.sets = {"forget": load_tofu_eval(zoo.data("forget10"), "forget")[:lim],
                     "retain": load_tofu_eval(zoo.data("retain90"), "retain")[:lim]}
        self.prompts = load_prompts(zoo.data("instruct_eval"))[:lim]
        self.models = {f"{k}-{s}": load_lm(str(zoo.model(f"{k}-{s}"))) for k in KEYS for s in ("base", "tofu")}
        tpl, oth = self.models["template-tofu"].vocab, self.models["other-tofu"].vocab
        # the paper's protocol: PM-MinED for every cross-vocabulary row (named: cmc's default is exact-ext since
        # 2026-12-01, docs/tokenmaps.md), its ablations, cmc's default beside them, and the shuffled PM-MinED control
        self.maps = {s: TokenMap.build(tpl, oth, strategy=s) for s in ("pm-mined", "min-ed", "exact-ext")}
        self.maps["exact-only"] = TokenMap.build(tpl, oth, strategy="exact")
        self.maps["shuffled"] = self.maps["pm-mined"].shuffled(0)

    def train(self, task: str, name: str, **kw) -> Path:
        zoo, ul = self.zoo, self.ul
        d = zoo.root / "reproduce" / "deltas" / name  # weights stay in the cache, out of the repository
        base = dict(task=task, output=str(d), prompt_format=QA_FORMAT, max_length=128, device="cpu", delta="tiny")
        if task == "unlearn":
            base.update(template=str(zoo.model("template-tofu")), forget=str(zoo.data("forget10")),
                        retain=str(zoo.data("retain90")), lr=ul["unlearn_lr"], batch_size=ul["unlearn_batch"],
                        epochs=100, max_steps=ul["unlearn_max_steps"], retain_weight=ul["unlearn_retain_weight"],
                        stop_forget_loss=8.0)
        else:
            base.update(template=str(zoo.model("template-base")), data=str(zoo.data("instruct_train")), lr=3e-3,
                        batch_size=8, epochs=20, max_steps=300)
        base.update(kw, overwrite=True)  # the script's own deltas, retrained on every run
        Trainer(TrainConfig(**base)).run()
        return d

    def decoder(self, user_key: str, delta_dir: Path | None, alpha=1.0, tm: str = "pm-mined", combine=None):
        user = self.models[user_key]
        if delta_dir is None:
            return Decoder(user, user_format=QA_FORMAT)
        d = load_delta(delta_dir, user, alpha, [self.maps[tm]] if user_key.startswith("other") else [])
        return Decoder(user, [d], user_format=QA_FORMAT, combine=combine)

    def tofu(self, dec) -> dict:
        r = TofuEvaluator(dec, self.sets, max_new_tokens=32, batch_size=16).run()
        return {"forget_RL": r["forget"].rouge_l, "retain_RL": r["retain"].rouge_l,
                "forget_TR": r["forget"].truth_ratio, "retain_P": r["retain"].prob}

    def instruct(self, dec) -> dict:
        gens = []
        for s in range(0, len(self.prompts), 16):
            gens += dec.generate([p.text for p in self.prompts[s:s + 16]], GenerationConfig(max_new_tokens=32))
        m = evaluate_outputs(dec, self.prompts, [g.text for g in gens], None, 16)
        return {"RL": m["rouge_l_recall"], "ref_ll": m["ref_loglik"]}


def table1(w: World, seeds: list[int]) -> tuple[dict, dict]:
    """Instruction tuning over seeds; also the instruction deltas by seed."""
    t1 = {k: {"alone": w.instruct(w.decoder(f"{k}-base", None))} for k in KEYS}
    per_seed = {k: [] for k in KEYS}
    inst_dirs = {}
    for s in seeds:
        inst_dirs[s] = w.train("instruct", f"instruct-s{s}", seed=s)
        for k in KEYS:
            per_seed[k].append(w.instruct(w.decoder(f"{k}-base", inst_dirs[s])))
    for k in KEYS:
        for m in ("RL", "ref_ll"):
            vals = [x[m] for x in per_seed[k]]
            t1[k][m] = (statistics.mean(vals), (max(vals) - min(vals)) / 2)
    t1["other"]["shuffled"] = w.instruct(w.decoder("other-base", inst_dirs[seeds[0]], tm="shuffled"))
    return t1, inst_dirs


def table2(w: World, strong: Path, mild: Path) -> dict:
    """The demo's delta and a milder one, on every model, with the shuffled control on `other`."""
    t2 = {}
    for name, d in (("alone", None), ("strong", strong), ("mild", mild)):
        for k in KEYS:
            t2[f"{k} {name}"] = w.tofu(w.decoder(f"{k}-tofu", d))
        if d is not None:
            t2[f"other {name} shuffled"] = w.tofu(w.decoder("other-tofu", d, tm="shuffled"))
    return t2


def table3(w: World, strong: Path) -> dict:
    """Delta sizes (the strong delta is the tiny one)."""
    t3 = {}
    for preset in ("tiny", "mini", "small"):
        d = strong if preset == "tiny" else w.train("unlearn", f"unlearn-{preset}", delta=preset)
        for k in KEYS:
            t3[f"{preset} {k}"] = w.tofu(w.decoder(f"{k}-tofu", d))
    return t3


def alpha_sweep(w: World, alphas: list[float], strong: Path, instruct_delta: Path) -> dict:
    sweep = {"unlearn": {k: [] for k in KEYS}, "instruct": {k: [] for k in KEYS}}
    for a in alphas:
        for k in KEYS:
            sweep["unlearn"][k].append(w.tofu(w.decoder(f"{k}-tofu", strong, alpha=a)))
            sweep["instruct"][k].append(w.instruct(w.decoder(f"{k}-base", instruct_delta, alpha=a)))
    return {"alphas": alphas, **sweep}


def table4(w: World, strong: Path, mild: Path) -> dict:
    """Ablations on the other-vocabulary model (strong and mild deltas)."""
    t4 = {}
    for dname, d in (("strong", strong), ("mild", mild)):
        for tm in ("pm-mined", "min-ed", "exact-only", "exact-ext", "shuffled"):
            t4[f"{dname} {tm}"] = w.tofu(w.decoder("other-tofu", d, tm=tm))
        t4[f"{dname} pm-mined, no LogSoftmax"] = w.tofu(w.decoder("other-tofu", d, combine="sum"))
    return t4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="full")
    ap.add_argument("--out", default="results/world")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alphas", default="0.25,0.5,1,1.5,2")
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    w = World(args.size, args.limit)
    results: dict = {"size": args.size, "limit": args.limit}
    seeds = [int(s) for s in args.seeds.split(",")]
    results["table1"], inst_dirs = table1(w, seeds)
    strong = w.train("unlearn", "unlearn")
    mild = w.train("unlearn", "unlearn-mild", stop_forget_loss=3.0)  # stops as soon as forget CE reaches 3
    results["table2"] = table2(w, strong, mild)
    results["table3"] = table3(w, strong)
    results["alpha_sweep"] = alpha_sweep(w, [float(a) for a in args.alphas.split(",")], strong, inst_dirs[seeds[0]])
    results["table4"] = table4(w, strong, mild)
    results["map_counts"] = {k: v.counts() for k, v in w.maps.items() if k != "shuffled"}
    # upper bounds (each model fine-tuned directly) and proxy-tuning (the paper's baselines)
    results["baselines"] = baselines_section(w.zoo, w.models, args.limit, w.tofu, w.instruct)
    results["shift"] = shift_section(w.zoo, w.models, w.maps["pm-mined"], out, args.limit)
    results["seconds"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = tables_markdown(results)
    (out / "tables.md").write_text(md)
    plot_sweep(results["alpha_sweep"], out / "alpha_sweep.png")
    print(md)


def baselines_section(zoo, models, lim, tofu, instruct) -> dict:
    """The world's direct fine-tunes of each model (instruction: CE on the training QA pairs; unlearning:
    gradient difference on its own weights; built by `cmc zoo build`, docs/world.md) and proxy-tuning of
    `large` with the template's pair (same vocabulary)."""
    out = {}
    tuned = {k: load_lm(str(zoo.model(f"{k}-instruct-ft"))) for k in KEYS}
    for k in KEYS:
        out[f"instruct {k} fine-tuned"] = instruct(Decoder(tuned[k], user_format=QA_FORMAT))
    out["instruct large + proxy-tuning"] = instruct(Decoder(models["large-base"], expert=tuned["template"],
                                                            anti_expert=models["template-base"], user_format=QA_FORMAT))
    unlearned = {k: load_lm(str(zoo.model(f"{k}-unlearn-ft"))) for k in KEYS}
    for k in KEYS:
        out[f"unlearn {k} fine-tuned"] = tofu(Decoder(unlearned[k], user_format=QA_FORMAT))
    out["unlearn large + proxy-tuning"] = tofu(Decoder(models["large-tofu"], expert=unlearned["template"],
                                                       anti_expert=models["template-tofu"], user_format=QA_FORMAT))
    return out


def shift_section(zoo, models, tm, out: Path, lim: int) -> dict:
    import json as _json

    from cmc_cli.eval.shift import Family, compare_families, heatmap_png
    from cmc_cli.zoo.lm import encode_prose, train_lm

    texts = [_json.loads(x)["question"] + " " + _json.loads(x)["answer"]
             for x in zoo.data("qa_all").read_text().splitlines()[:lim]]
    # a different task for the other model: continued training on unrelated prose (classics, towns)
    other = load_lm(str(zoo.model("other-base")))
    bios = [_json.loads(x)["text"] for x in zoo.data("biographies").read_text().splitlines()]
    prose = [t for t in bios if t.startswith(("The classic author", "The town of"))]
    other.model.requires_grad_(True)
    train_lm(other.model, encode_prose(prose, other.tokenizer, 256), other.tokenizer.eos_token_id, 10, 1e-3, 8, 0)
    fa = Family("template (TOFU)", models["template-base"], models["template-tofu"])
    same = compare_families(fa, Family("other (TOFU)", models["other-base"], models["other-tofu"]), texts, tm.index_tensor())
    diff = compare_families(fa, Family("other (other prose)", models["other-base"], other), texts, tm.index_tensor())
    heatmap_png(same, out / "shift_same_task.png")
    return {"same_task": same.as_dict(), "different_task": diff.as_dict()}


def _f(x, nd=2):
    return f"{x:.{nd}f}"


def tables_markdown(r: dict) -> str:
    L = ["## Table 1 — instruction tuning (ROUGE-L recall / reference log-likelihood; mean ± half-range over seeds)", "",
         "| model | alone RL | + delta RL | alone log-lik | + delta log-lik |", "|---|---:|---:|---:|---:|"]
    for k in KEYS:
        t = r["table1"][k]
        L.append(f"| {k} | {_f(t['alone']['RL'])} | {_f(t['RL'][0])} ± {_f(t['RL'][1])} | {_f(t['alone']['ref_ll'])} | "
                 f"{_f(t['ref_ll'][0])} ± {_f(t['ref_ll'][1])} |")
    sh = r["table1"]["other"]["shuffled"]
    L += [f"| other, shuffled map (seed 0) | | {_f(sh['RL'])} | | {_f(sh['ref_ll'])} |", ""]

    def tofu_table(title, rows):
        out = [f"## {title}", "", "| row | forget RL | retain RL | forget TR | retain P |", "|---|---:|---:|---:|---:|"]
        out += [f"| {k} | {_f(v['forget_RL'])} | {_f(v['retain_RL'])} | {_f(v['forget_TR'])} | {_f(v['retain_P'])} |"
                for k, v in rows.items()]
        return out + [""]

    L += tofu_table("Table 2 — unlearning forget10 (strong: the demo's delta; mild: stopped at forget CE 3)",
                    r["table2"])
    L += tofu_table("Table 3 — delta sizes (tiny 32x2, mini 64x2, small 96x3)", r["table3"])
    L += tofu_table("Table 4 — ablations on the other-vocabulary model", r["table4"])
    a = r["alpha_sweep"]
    L += ["## Figure 4 — alpha sweep (alpha_sweep.png)", "", "| alpha | " + " | ".join(
        f"{k} forget / retain RL | {k} instruct RL" for k in KEYS) + " |", "|---:|" + "---:|---:|" * len(KEYS)]
    for i, al in enumerate(a["alphas"]):
        cells = []
        for k in KEYS:
            u, ins = a["unlearn"][k][i], a["instruct"][k][i]
            cells += [f"{_f(u['forget_RL'])} / {_f(u['retain_RL'])}", _f(ins["RL"])]
        L.append(f"| {al:g} | " + " | ".join(cells) + " |")
    s = r["shift"]
    L += ["", "## Logit-shift similarity (template TOFU shift vs other's)", "",
          "| comparison | positions | cosine | spearman | sinkhorn | control cosine | control sinkhorn |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in (("same task (both TOFU)", s["same_task"]), ("different task", s["different_task"])):
        m, ctl = c["metrics"], c["shuffled_control"]
        L.append(f"| {name} | {c['positions']} | {_f(m['cosine']['mean'])} | {_f(m['spearman']['mean'])} | "
                 f"{_f(m['sinkhorn']['mean'], 3)} | {_f(ctl['cosine']['mean'])} | {_f(ctl['sinkhorn']['mean'], 3)} |")
    L += ["", "## Baselines — direct fine-tunes (upper bounds) and proxy-tuning", "",
          "| row | metrics |", "|---|---|"]
    for k, v in r["baselines"].items():
        L.append(f"| {k} | " + ", ".join(f"{m} {_f(x)}" for m, x in v.items()) + " |")
    L += ["", f"Map counts (template -> other): {r['map_counts']['pm-mined']}", f"Total time: {r['seconds']:.0f} s", ""]
    return "\n".join(L)


def plot_sweep(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k, style in zip(KEYS, ("o-", "s-", "^-")):
        axes[0].plot(sweep["alphas"], [x["forget_RL"] for x in sweep["unlearn"][k]], style, label=f"{k} forget")
        axes[0].plot(sweep["alphas"], [x["retain_RL"] for x in sweep["unlearn"][k]], style, alpha=0.5,
                     linestyle="--", label=f"{k} retain")
        axes[1].plot(sweep["alphas"], [x["RL"] for x in sweep["instruct"][k]], style, label=k)
    axes[0].set(title="Unlearning: ROUGE-L recall vs alpha", xlabel="alpha", ylabel="ROUGE-L recall")
    axes[1].set(title="Instruction delta: ROUGE-L recall vs alpha", xlabel="alpha", ylabel="ROUGE-L recall")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
