"""The collateral-damage issue's part 4, measured on the model world: should a user token that is a proper
prefix of delta tokens get the delta's value for the strings that start with it (the largest logit among
its extensions), instead of exact-ext's value for its exact match? Greedy refusal rate of `other` + the
demo's idk deltas on the forget questions, exact-ext as built vs raised to the best extension, for every
such user token or only those with at most K extensions (docs/tokenmaps.md has the figures).

    cmc demo                                  # trains <world>/demo/deltas/unlearn-s{0,1,2}
    python benchmarks/prefix_value.py [--alphas 1.5,2.75] [--k 2]

The rule is applied by wrapping engine/combine.map_delta_logits in this process only: it is not in cmc.
"""

from __future__ import annotations

import argparse
import json

import torch

import cmc_cli.engine.combine as combine
from cmc_cli.data.refusals import is_refusal
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.eval.metrics import mean_ci
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.build import FULL, QA_FORMAT, zoo_root


def extensions(tm: TokenMap, delta_vocab, user_vocab) -> dict[int, list[int]]:
    """Mapped user id -> the delta ids whose surface is longer and starts with the user token's surface."""
    by_first: dict[str, list[tuple[str, int]]] = {}
    for t, s in enumerate(delta_vocab.surfaces):
        if s:
            by_first.setdefault(s[0], []).append((s, t))
    out = {}
    for u, s in enumerate(user_vocab.surfaces):
        if s and tm.index[u] >= 0:
            e = [t for ds, t in by_first.get(s[0], []) if len(ds) > len(s) and ds.startswith(s)]
            if e:
                out[u] = e
    return out


def raise_to_extensions(ext: dict[int, list[int]], k: int | None):
    """A map_delta_logits that gives each user token with at most k extensions max(its value, theirs)."""
    pairs = [(u, t) for u, e in ext.items() if k is None or len(e) <= k for t in e]
    rows = torch.tensor([u for u, _ in pairs], dtype=torch.long)
    cols = torch.tensor([t for _, t in pairs], dtype=torch.long)
    plain = combine.map_delta_logits

    def mapped(d, index, width=None, cap=None, lookahead=None):
        out = plain(d, index, width, cap, lookahead)
        best = torch.full(out.shape, float("-inf"), dtype=out.dtype)
        best = best.index_reduce(-1, rows, d[..., cols].to(out.dtype), "amax")
        return torch.maximum(out, best)

    return mapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="1.5,2.75")
    ap.add_argument("--k", type=int, default=2, help="the narrow variant: only user tokens with at most K extensions")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    world = zoo_root(FULL)
    template, other = load_lm(str(world / "models" / "template-tofu")), load_lm(str(world / "models" / "other-tofu"))
    tm = TokenMap.build(template.vocab, other.vocab)
    ext = extensions(tm, template.vocab, other.vocab)
    sizes = sorted(len(e) for e in ext.values())
    print(f"user tokens that are a proper prefix of delta tokens: {len(ext)} (median {sizes[len(sizes) // 2]} extensions)")
    questions = [json.loads(x)["question"] for x in (world / "data" / "forget10.jsonl").read_text().splitlines()][:40]
    plain = combine.map_delta_logits
    rules = {"exact-ext": plain, f"raised, <= {args.k} extensions": raise_to_extensions(ext, args.k),
             "raised, every prefix": raise_to_extensions(ext, None)}
    for alpha in (float(a) for a in args.alphas.split(",")):
        for name, rule in rules.items():
            combine.map_delta_logits = rule
            rates, sample = [], ""
            for seed in range(args.seeds):
                d = load_delta(world / "demo" / "deltas" / f"unlearn-s{seed}", other, alpha, [tm])
                outs = [g.text for g in Decoder(other, [d], user_format=QA_FORMAT).generate(
                    questions, GenerationConfig(max_new_tokens=24))]
                rates.append(sum(map(is_refusal, outs)) / len(outs))
                sample = sample or next((o for o in outs if not is_refusal(o)), "")
            m, h = mean_ci(rates)
            print(f"alpha {alpha:g}, {name}: forget refusal {m:.2f} ± {h:.2f}; a non-refusal: {sample.strip()[:40]!r}",
                  flush=True)
    combine.map_delta_logits = plain


if __name__ == "__main__":
    main()
