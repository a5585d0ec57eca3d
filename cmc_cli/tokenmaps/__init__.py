"""Token maps between vocabularies (Vocab in, TokenMap out): the strategies and the TokenMap file.
Vocabularies and their surfaces are cmc_cli/vocab.py's."""

from cmc_cli.tokenmaps.strategies import KIND_NAMES, DeltaIndex, map_vocab
from cmc_cli.tokenmaps.tokenmap import TokenMap

__all__ = ["KIND_NAMES", "DeltaIndex", "TokenMap", "map_vocab"]
