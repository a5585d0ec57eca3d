"""Llama family: Llama-2 (SentencePiece `▁`, byte fallback) and Llama-3 (byte-level BPE).

The convention is read from each tokenizer, so one adapter serves both generations.
"""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import SPM


class LlamaAdapter(HFAdapter):
    name = "llama"
    description = "Llama-2 / Llama-3 (SentencePiece or byte-level BPE, detected)"
    convention = SPM
    model_types = ("llama",)
    gguf_archs = ("llama",)
    tokenizer_classes = ("LlamaTokenizer", "LlamaTokenizerFast")
    # Llama-3's header and turn markers; Llama-2 chat's [INST]
    marker_roles = {"<|start_header_id|>": "header_start", "<|end_header_id|>": "header_end", "<|eot_id|>": "turn_end",
                    "[INST]": "inst_start", "[/INST]": "inst_end"}
    filler_patterns = (r"<\|reserved_special_token_\d+\|>",)


@hookimpl
def cmc_register_adapters(register):
    register(LlamaAdapter())
