"""Adapters: one module per LLM family; built-ins register through pluggy like third-party plugins.

The built-in family modules are imported with the package, so the family facts they declare
(`Adapter.marker_roles`, `filler_patterns`) are read however a vocabulary is loaded."""

from cmc_cli.adapters import gemma, gpt2, hf, llama, mistral, qwen  # noqa: F401  (their family facts)
from cmc_cli.adapters.base import Adapter, HFAdapter

__all__ = ["Adapter", "HFAdapter"]
