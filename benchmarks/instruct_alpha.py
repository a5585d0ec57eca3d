"""The instruction delta on the other-vocabulary model against alpha, over the seeds of a `cmc demo` run:
greedy ROUGE-L through cmc's default map, PM-MinED and the shuffled control, paired per item against
the model alone and against the control (docs/world.md).

    cmc demo                              # trains the deltas: <world>/demo/deltas/instruct-s{0,1,2}
    python benchmarks/instruct_alpha.py [--demo DIR] [--alphas 1,2,3] [--seeds 3] [--limit 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmc_cli.data.tofu import TofuItem
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.eval.metrics import mean_ci, paired_bootstrap
from cmc_cli.eval.tofu import TofuEvaluator
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.build import FULL, QA_FORMAT, zoo_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=None, help="the world's directory (default: the full world in the cache)")
    ap.add_argument("--demo", default=None, help="the demo's output directory (default: <world>/demo)")
    ap.add_argument("--alphas", default="1,2,3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=40)
    args = ap.parse_args()
    world = Path(args.world) if args.world else zoo_root(FULL)
    demo = Path(args.demo) if args.demo else world / "demo"
    recs = [json.loads(x) for x in (world / "data" / "instruct_eval.jsonl").read_text().splitlines() if x.strip()]
    items = {"retain": [TofuItem(r["instruction"], r["output"], None, (), f"instruct_eval:{i}", (r["key"],))
                        for i, r in enumerate(recs[:args.limit])]}
    template, other = load_lm(str(world / "models" / "template-base")), load_lm(str(world / "models" / "other-base"))
    maps = {"exact-ext": TokenMap.build(template.vocab, other.vocab),
            "pm-mined": TokenMap.build(template.vocab, other.vocab, strategy="pm-mined")}

    def run(dec):
        return TofuEvaluator(dec, items, max_new_tokens=24, batch_size=20, truth_ratio=False).run()["retain"]

    alone = run(Decoder(other, user_format=QA_FORMAT))
    print(f"other alone: ROUGE-L {alone.rouge_l:.2f}")
    for a in (float(x) for x in args.alphas.split(",")):
        res: dict[str, list] = {}
        for seed in range(args.seeds):
            d = demo / "deltas" / f"instruct-s{seed}"
            for name, tm in (*maps.items(), ("shuffled", maps["exact-ext"].shuffled(seed))):
                res.setdefault(name, []).append(run(Decoder(other, [load_delta(d, other, a, [tm])], user_format=QA_FORMAT)))
        pooled = {k: [v for r in rs for v in r.per_item["rouge_l"]] for k, rs in res.items()}
        for name, rs in res.items():
            m, h = mean_ci([r.rouge_l for r in rs])
            va = paired_bootstrap(pooled[name], alone.per_item["rouge_l"] * args.seeds)
            vs = paired_bootstrap(pooled[name], pooled["shuffled"])
            print(f"alpha {a:g} other + delta ({name}): ROUGE-L {m:.2f} ± {h:.2f}; vs alone {va[0]:+.2f} "
                  f"[{va[1]:+.2f}, {va[2]:+.2f}]; vs shuffled {vs[0]:+.2f} [{vs[1]:+.2f}, {vs[2]:+.2f}]", flush=True)


if __name__ == "__main__":
    main()
