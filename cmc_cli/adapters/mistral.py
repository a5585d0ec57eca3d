"""Mistral family: SentencePiece `▁` with `<0x..>` byte pieces (v0.1 vocabulary: 32,000)."""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import SPM


class MistralAdapter(HFAdapter):
    name = "mistral"
    description = "Mistral / Mixtral (SentencePiece, byte fallback)"
    convention = SPM
    model_types = ("mistral", "mixtral")
    gguf_archs = ()  # Mistral GGUFs say "llama"; the llama adapter handles them identically
    tokenizer_classes = ("MistralTokenizer",)
    marker_roles = {"[INST]": "inst_start", "[/INST]": "inst_end"}


@hookimpl
def cmc_register_adapters(register):
    register(MistralAdapter())
