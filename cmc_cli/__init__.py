"""cmc: Cross-model Control — one tiny delta model that steers many LLMs."""

__version__ = "0.1.0"
