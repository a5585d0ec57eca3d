"""Print the markdown coverage tables of docs/tokenmaps.md for the real tokenizer pairs (and, once
`cmc fetch models` has run, the real-model pairs SmolLM2 <-> Gemma-3 and their neighbours).

    python benchmarks/coverage_tables.py > /tmp/coverage.md
"""

from __future__ import annotations

from cmc_cli import assets
from cmc_cli import fetch as fetcher
from cmc_cli.plugins import get_adapter
from cmc_cli.refs import ModelRef
from cmc_cli.tokenmaps import KIND_NAMES, TokenMap

PAIRS = [("llama2", "mistral"), ("llama2", "gpt2"), ("llama2", "qwen2"), ("llama2", "llama3"),
         ("gpt2", "llama3"), ("llama3", "llama2"), ("mistral", "llama2")]
MODEL_PAIRS = [("smollm2", "gemma3"), ("gemma3", "smollm2"), ("smollm2", "llama2"), ("smollm2", "qwen2"),
               ("llama2", "gemma3")]


def main() -> None:
    dirs = fetcher.fetch_tokenizers()
    vocabs = {}
    for key, d in dirs.items():
        adapter = get_adapter(assets.TOKENIZERS[key].adapter)
        vocabs[key] = adapter.load_vocab(ModelRef(text=key, path=d, adapter=adapter.name, origin="assets"))
    pairs = list(PAIRS)
    for key, a in assets.MODELS.items():
        d = assets.fetched_model(key)
        if d is not None:
            adapter = get_adapter(a.adapter)
            vocabs[key] = adapter.load_vocab(ModelRef(text=key, path=d, adapter=adapter.name, origin="assets"))
    pairs += [p for p in MODEL_PAIRS if p[0] in vocabs and p[1] in vocabs]
    for strategy in ("pm-mined", "exact-ext"):
        print(f"\n{strategy}:\n")
        print("| delta → user | " + " | ".join(KIND_NAMES) + " | mapped |")
        print("|---|" + "---:|" * (len(KIND_NAMES) + 1))
        for d, u in pairs:
            tm = TokenMap.build(vocabs[d], vocabs[u], strategy=strategy)
            c = tm.counts()
            n = tm.user_size
            cells = [f"{c[k]:,} ({100 * c[k] / n:.1f}%)" for k in KIND_NAMES]
            print(f"| {d} ({vocabs[d].size:,}) → {u} ({n:,}) | " + " | ".join(cells)
                  + f" | {100 * (n - c['unmapped']) / n:.1f}% |")


if __name__ == "__main__":
    main()
