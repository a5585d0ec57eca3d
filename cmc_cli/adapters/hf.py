"""Generic Hugging Face adapter: any tokenizer `transformers` loads; the convention is detected."""

from cmc_cli.adapters.base import HFAdapter
from cmc_cli.hookspecs import hookimpl


class GenericHFAdapter(HFAdapter):
    name = "hf"
    description = "any transformers tokenizer/model; convention detected from tokenizer.json"

    def matches(self, ref) -> bool:
        return True


@hookimpl
def cmc_register_adapters(register):
    register(GenericHFAdapter())
