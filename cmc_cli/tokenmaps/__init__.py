"""Token maps between vocabularies: surface normalisation, strategies, the TokenMap file."""

from cmc_cli.tokenmaps.strategies import KIND_NAMES, DeltaIndex, map_vocab
from cmc_cli.tokenmaps.surfaces import WORD_START, Vocab, build_vocab
from cmc_cli.tokenmaps.tokenmap import TokenMap

__all__ = ["KIND_NAMES", "DeltaIndex", "TokenMap", "Vocab", "WORD_START", "build_vocab", "map_vocab"]
