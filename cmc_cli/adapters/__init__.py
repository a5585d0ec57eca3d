"""Adapters: one module per LLM family; built-ins register through pluggy like third-party plugins.

The built-in families' facts (`Adapter.marker_roles`, `filler_patterns`) are declared with the package, so
they are read however a vocabulary is loaded; a plugin's are declared when the plugin manager registers it."""

from cmc_cli.adapters import gemma, gpt2, hf, llama, mistral, qwen
from cmc_cli.adapters.base import Adapter, HFAdapter, declare_family

BUILTIN_FAMILIES = (llama.LlamaAdapter, mistral.MistralAdapter, gpt2.GPT2Adapter, qwen.QwenAdapter,
                    gemma.GemmaAdapter, hf.GenericHFAdapter)
for _family in BUILTIN_FAMILIES:
    declare_family(_family)

__all__ = ["Adapter", "HFAdapter"]
