"""The plugin manager: built-in adapters and third-party ones load the same way.

Third-party packages declare `[project.entry-points.cmc] myfamily = "my_pkg.cmc_plugin"`, where the
module has a `@hookimpl def cmc_register_adapters(register)`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import pluggy

from cmc_cli import hookspecs
from cmc_cli.adapters import BUILTIN_FAMILIES
from cmc_cli.adapters.base import Adapter, declare_family, forget_families
from cmc_cli.errors import AdapterError

BUILTIN_MODULES = (
    "cmc_cli.adapters.llama",
    "cmc_cli.adapters.mistral",
    "cmc_cli.adapters.gpt2",
    "cmc_cli.adapters.qwen",
    "cmc_cli.adapters.gemma",
    "cmc_cli.adapters.hf",  # generic: last, so the families above match first
)

_pm: pluggy.PluginManager | None = None


@dataclass(frozen=True)
class RegisteredAdapter:
    adapter: Adapter
    source: str  # "built-in" or "<distribution> <version>"


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        import importlib

        pm = pluggy.PluginManager("cmc")
        pm.add_hookspecs(hookspecs)
        for mod in BUILTIN_MODULES:
            pm.register(importlib.import_module(mod), name=mod)
        pm.load_setuptools_entrypoints("cmc")
        _pm = pm
    return _pm


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests; after installing a plugin in-process)."""
    global _pm
    _pm = None
    forget_families({a.name for a in BUILTIN_FAMILIES})


def registered_adapters() -> dict[str, RegisteredAdapter]:
    """name -> adapter, in match order: third-party plugins first, then the built-in families, `hf` last."""
    pm = get_plugin_manager()
    dists = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    found: list[RegisteredAdapter] = []
    # walk the implementations in registration order (pluggy would call the newest first)
    for impl in pm.hook.cmc_register_adapters.get_hookimpls():
        source = "built-in" if impl.plugin_name in BUILTIN_MODULES else dists.get(id(impl.plugin), impl.plugin_name)
        collected: list[Adapter] = []
        impl.function(register=collected.append)
        found += [RegisteredAdapter(a, source) for a in collected]
    out: dict[str, RegisteredAdapter] = {}
    for reg in found:
        a = reg.adapter
        if not isinstance(a, Adapter) or not a.name:
            raise AdapterError(f"plugin '{reg.source}' registered {a!r}, which is not a named cmc Adapter")
        missing = [m for m in ("load_tokenizer", "token_surfaces")  # load_model is optional (vocabulary only)
                   if getattr(type(a), m) is getattr(Adapter, m)]
        if missing:
            raise AdapterError(f"adapter '{a.name}' of plugin '{reg.source}' does not implement {', '.join(missing)}; "
                               "an Adapter must define them (or derive from HFAdapter)")
        if a.name in out:
            raise AdapterError(f"two adapters are named '{a.name}' ({out[a.name].source} and {reg.source}); "
                               "uninstall one of the plugins")
        out[a.name] = reg
        declare_family(a)
    builtin = [n for n, r in out.items() if r.source == "built-in"]
    plugin = [n for n, r in out.items() if r.source != "built-in"]
    generic = [n for n in builtin if n == "hf"]
    return {n: out[n] for n in plugin + [n for n in builtin if n != "hf"] + generic}


def get_adapter(name: str) -> Adapter:
    adapters = registered_adapters()
    if name in adapters:
        return adapters[name].adapter
    close = difflib.get_close_matches(name, list(adapters), n=1)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    raise AdapterError(f"unknown adapter '{name}'. {hint}Available: {', '.join(adapters)}")


def adapter_for(ref) -> Adapter:
    """The adapter named by the reference, else the first that matches it (`hf` matches anything)."""
    if ref.adapter:
        return get_adapter(ref.adapter)
    for reg in registered_adapters().values():
        if reg.adapter.matches(ref):
            return reg.adapter
    return get_adapter("hf")
