"""pluggy hook specifications of the `cmc` plugin system (docs/plugins.md)."""

import pluggy

hookspec = pluggy.HookspecMarker("cmc")
hookimpl = pluggy.HookimplMarker("cmc")


@hookspec
def cmc_register_adapters(register):
    """Register LLM-family adapters by calling register(adapter) once per Adapter instance."""
