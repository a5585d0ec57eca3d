"""GPT-2 family: byte-level BPE (`Ġ` marks a space, `Ċ` a newline), <|endoftext|> as bos/eos/unk."""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import BYTE_LEVEL


class GPT2Adapter(HFAdapter):
    name = "gpt2"
    description = "GPT-2 (byte-level BPE)"
    convention = BYTE_LEVEL
    model_types = ("gpt2",)
    gguf_archs = ("gpt2",)
    tokenizer_classes = ("GPT2Tokenizer", "GPT2TokenizerFast")


@hookimpl
def cmc_register_adapters(register):
    register(GPT2Adapter())
