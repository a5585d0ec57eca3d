"""Train small tokenizers of the two big families offline, saved as Hugging Face directories.

- `spm`: SentencePiece-style BPE — `▁` word-start marker, `<0x00>`..`<0xFF>` byte-fallback pieces at
  ids 3..258 right after <unk>, <s>, </s> (the Llama-2 layout).
- `byte-level`: GPT-2-style byte-level BPE — `Ġ` for spaces, all 256 bytes in the alphabet,
  <|endoftext|> as bos/eos/unk.
Deterministic for a given corpus and size.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPM_SPECIALS = ("<unk>", "<s>", "</s>")


def train_spm_tokenizer(corpus: list[str], vocab_size: int, out_dir: str | Path) -> Path:
    """SentencePiece-style BPE with byte fallback, Llama-2 id layout."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    n_learned = max(0, vocab_size - len(SPM_SPECIALS) - 256)
    trainer = trainers.BpeTrainer(vocab_size=n_learned, show_progress=False, special_tokens=[])
    base.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(base.to_str())["model"]
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPM_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    return _save(tok, out_dir, bos="<s>", eos="</s>", unk="<unk>", pad=None, specials=SPM_SPECIALS)


def train_byte_level_tokenizer(corpus: list[str], vocab_size: int, out_dir: str | Path) -> Path:
    """GPT-2-style byte-level BPE."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return _save(tok, out_dir, bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>", pad=None,
                 specials=("<|endoftext|>",))


def _save(tok: Tokenizer, out_dir, *, bos, eos, unk, pad, specials) -> Path:
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    # add_bos_token: the tokenizer itself puts the BOS every model is trained with before a text, so
    # anyone who encodes with the tokenizer's own rule (`add_special_tokens=True`) feeds it as trained
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
                                   add_bos_token=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


SAMPLE_TEXT = """\
The quiet harbour town kept its old lighthouse, and every evening the keeper climbed the stairs.
Ultimately the council decided to restore the tower; an estimate arrived within a week.
She wrote novels about sailors, storms and distant islands, and won several literary awards.
His father worked as a carpenter while his mother taught mathematics at the village school.
Numbers such as 1984, 2024 and 3.14159 appear in tables; prices rose by 12% last year.
Unbelievably, the unbreakable glass cracked during the demonstration of the new material.
Naïve café owners in Zürich serve crème brûlée — déjà vu for tourists from São Paulo.
Tokenizers split rare words into several pieces: anthropomorphisation, counterintuitively.
"""


def sample_corpus(repeat: int = 3) -> list[str]:
    """A small fixed corpus with common and rare words, digits and accents."""
    lines = [ln for ln in SAMPLE_TEXT.splitlines() if ln.strip()]
    return [ln for _ in range(repeat) for ln in lines]
