"""Gemma family: SentencePiece `▁` with byte fallback, <start_of_turn> / <end_of_turn> markers."""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import SPM


class GemmaAdapter(HFAdapter):
    name = "gemma"
    description = "Gemma 1-3 (SentencePiece, byte fallback)"
    convention = SPM
    model_types = ("gemma", "gemma2", "gemma3", "gemma3_text")
    gguf_archs = ("gemma", "gemma2", "gemma3")
    tokenizer_classes = ("GemmaTokenizer", "GemmaTokenizerFast")
    spm_tokenizer_class = "GemmaTokenizer"
    marker_roles = {"<start_of_turn>": "turn_start", "<end_of_turn>": "turn_end"}
    filler_patterns = (r"<unused\d+>",)


@hookimpl
def cmc_register_adapters(register):
    register(GemmaAdapter())
