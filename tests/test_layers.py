"""The architecture's layers, read from the imports (docs/architecture.md): a module imports only from
its own layer or the layers below, and no module is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cmc_cli"

# lowest first; a module's layer is that of the longest prefix listed
LAYERS = [
    ("core", ["cmc_cli", "cmc_cli.errors", "cmc_cli.fileio", "cmc_cli.hookspecs", "cmc_cli.config"]),
    ("vocab", ["cmc_cli.vocab"]),
    ("adapters", ["cmc_cli.assets", "cmc_cli.adapters.gguf_meta", "cmc_cli.refs", "cmc_cli.adapters", "cmc_cli.plugins",
                  "cmc_cli.fetch"]),
    ("tokenmaps", ["cmc_cli.tokenmaps"]),
    ("data", ["cmc_cli.data"]),
    ("engine", ["cmc_cli.engine"]),
    ("eval", ["cmc_cli.eval"]),
    ("zoo", ["cmc_cli.zoo"]),
    ("serve", ["cmc_cli.serve"]),
    ("commands", ["cmc_cli.commands", "cmc_cli.app", "cmc_cli.__main__"]),
]
# order inside a layer, lowest first (a module may import only those before it or itself)
WITHIN = {
    "adapters": ["cmc_cli.assets", "cmc_cli.adapters.gguf_meta", "cmc_cli.refs", "cmc_cli.adapters", "cmc_cli.plugins",
                 "cmc_cli.fetch"],
    "eval": ["cmc_cli.eval.metrics", "cmc_cli.eval.report", "cmc_cli.eval.models", "cmc_cli.eval.general", "cmc_cli.eval.tofu",
             "cmc_cli.eval.instruct", "cmc_cli.eval.shift"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> tuple[int, int]:
    best = None
    for rank, (layer, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p, layer)
    assert best is not None, f"{name} is in no layer of tests/test_layers.py"
    rank, _, layer = best
    inside = [(len(p), i) for i, p in enumerate(WITHIN.get(layer, [])) if name == p or name.startswith(p + ".")]
    return rank, max(inside)[1] if inside else 0


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every cmc_cli import, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("cmc_cli"):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("cmc_cli")]
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_no_import_reaches_a_higher_layer():
    bad = []
    for path in MODULES:
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            theirs = layer_of(target)
            if theirs > mine:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} imports {target}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_tokenmaps_are_pure_vocab_in_tokenmap_out():
    """Resolving references, loading tokenizers and writing map files belong a layer up (engine/maps.py)."""
    allowed = {"core", "vocab", "tokenmaps"}
    bad = [f"{p.name}:{line}: {t}" for p in sorted((PKG / "tokenmaps").glob("*.py")) for line, t in imports(p)
           if LAYERS[layer_of(t)[0]][0] not in allowed]
    assert not bad, bad


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_function_is_over_60_lines():
    """A function reads on one screen: from its `def` to its last line, decorators aside."""
    long = {}
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long[f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long


def test_only_the_vllm_processor_imports_vllm():
    """The core package works without vLLM (the `serve` extra): vllm is imported in one module, which
    nothing else in cmc imports at module level."""
    importers = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "vllm" or n.startswith("vllm.") for n in names):
                importers.append(module_name(path))
    assert sorted(set(importers)) == ["cmc_cli.serve.vllm_processor"]
    top = [module_name(p) for p in MODULES for node in ast.parse(p.read_text()).body
           if isinstance(node, ast.ImportFrom) and node.module == "cmc_cli.serve.vllm_processor"]
    assert not top, top


@pytest.mark.parametrize("name, layer", [("cmc_cli.engine.decode", 5), ("cmc_cli.tokenmaps.tokenmap", 3),
                                         ("cmc_cli.commands.tables", 9), ("cmc_cli.serve.state", 8), ("cmc_cli.errors", 0)])
def test_layer_lookup(name, layer):
    assert layer_of(name)[0] == layer
