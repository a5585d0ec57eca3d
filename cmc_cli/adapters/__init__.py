"""Adapters: one module per LLM family; built-ins register through pluggy like third-party plugins."""

from cmc_cli.adapters.base import Adapter, HFAdapter

__all__ = ["Adapter", "HFAdapter"]
