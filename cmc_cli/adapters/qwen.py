"""Qwen family: byte-level BPE, ChatML markers <|im_start|> / <|im_end|>."""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import BYTE_LEVEL


class QwenAdapter(HFAdapter):
    name = "qwen"
    description = "Qwen2 / Qwen3 (byte-level BPE, ChatML)"
    convention = BYTE_LEVEL
    model_types = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    gguf_archs = ("qwen2", "qwen3", "qwen2moe", "qwen3moe")
    tokenizer_classes = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    marker_roles = {"<|im_start|>": "turn_start", "<|im_end|>": "turn_end"}  # ChatML (SmolLM2 uses it too)
    filler_patterns = (r"<\|extra_\d+\|>",)


@hookimpl
def cmc_register_adapters(register):
    register(QwenAdapter())
