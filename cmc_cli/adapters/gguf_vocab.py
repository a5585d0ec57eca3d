"""Make a tokenizer that transformers loaded from a GGUF agree with the GGUF's own vocabulary.

transformers' GGUF conversion gets some vocabularies wrong (measured on the llama.cpp vocab files):
- DeepSeek-LLM and DeepSeek-Coder: the control tokens (BOS, EOS) and user-defined tokens are
  stored as byte-level pieces (`<ï½ľbeginâĸģofâĸģsentenceï½ľ>`), and BOS, EOS and `<|endoftext|>`
  are added again as 3 new ids past the vocabulary, which take over the roles: the tokenizer then
  adds a BOS that lies beyond the model's logits;
- Llama-3 gains a phantom `<|endoftext|>` at id 128,256;
- token types are ignored: Phi-3's 53 `[PADnnnnn]` tokens (type UNKNOWN) are ordinary text.

The GGUF's token list, token types and special ids are the truth: `repair_gguf_tokenizer` rebuilds
the tokenizer so that its size and every piece equal the token list, control / unknown / unused
tokens are special added tokens, user-defined ones are added non-special tokens, and BOS / EOS /
UNK / PAD are the GGUF's ids. It refuses (TokenizerError) where that cannot be done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cmc_cli.adapters.gguf_meta import read_gguf_header
from cmc_cli.errors import TokenizerError

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_TYPES = (UNKNOWN, CONTROL, UNUSED)  # never text: special tokens (roles only from the ids)
ROLE_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
             "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}
_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token",
         "tokenizer.ggml.add_eos_token", *ROLE_KEYS.values())


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    types: list[int]
    roles: dict[str, int]  # role -> id, only those the GGUF declares
    add_bos: bool | None
    add_eos: bool | None

    @property
    def size(self) -> int:
        return len(self.tokens)


def read_gguf_vocab(path: str | Path) -> GGUFVocab:
    meta = read_gguf_header(path, _KEYS)
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{path}: the GGUF has no tokenizer.ggml.tokens; it carries no vocabulary")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{path}: the GGUF lists {len(tokens)} tokens but {len(types)} token types")
    roles = {}
    for role, key in ROLE_KEYS.items():
        i = meta.get(key)
        if i is not None:
            if not 0 <= int(i) < len(tokens):
                raise TokenizerError(f"{path}: {key} = {i} lies outside its {len(tokens)} tokens")
            roles[role] = int(i)
    return GGUFVocab(tokens=list(tokens), types=[int(t) for t in types], roles=roles,
                     add_bos=meta.get("tokenizer.ggml.add_bos_token"), add_eos=meta.get("tokenizer.ggml.add_eos_token"))


def repair_gguf_tokenizer(tok, path: str | Path):
    """The tokenizer transformers loaded from the GGUF at `path`, made to agree with the GGUF's vocabulary."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    gv = read_gguf_vocab(path)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{path}: transformers gave a slow tokenizer for this GGUF; cmc needs a fast one")
    n = gv.size
    have = tok.convert_ids_to_tokens(list(range(min(n, len(tok)))))
    want = [h if h is not None and _same_piece(h, w) else w for h, w in zip(have, gv.tokens)] + gv.tokens[len(have):]
    if (len(tok) == n and have == want and _types_respected(tok, gv) and _roles_respected(tok, gv)
            and _bos_respected(tok, gv)):
        return tok
    spec = json.loads(backend.to_str())
    renamed = _fix_model_vocab(spec, want, path)
    by_content = {t: i for i, t in enumerate(want)}
    added = {}
    for a in spec.get("added_tokens") or []:
        if a["id"] < n and a["content"] == want[a["id"]]:
            added[a["id"]] = a
    def as_added(i: int, special: bool) -> None:
        a = added.setdefault(i, {"id": i, "content": want[i], "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False})
        a["special"] = special

    for i, t in enumerate(gv.types):
        if t in SPECIAL_TYPES or (t == USER_DEFINED and i in renamed):
            as_added(i, t != USER_DEFINED)
    for i in gv.roles.values():  # a declared role makes a token special whatever its type (Aquila's id 0)
        as_added(i, True)
    spec["added_tokens"] = [added[i] for i in sorted(added)]
    _fix_post_processor(spec.get("post_processor"), by_content, n)
    try:
        backend = Tokenizer.from_str(json.dumps(spec))
    except Exception as e:
        raise TokenizerError(f"{path}: cannot rebuild its tokenizer from the GGUF vocabulary ({e})") from None
    kwargs = {role + "_token": want[i] for role, i in gv.roles.items()}
    for attr in ("bos", "eos", "unk", "pad"):  # keep what transformers found where the GGUF says nothing
        if attr not in gv.roles:
            old = getattr(tok, attr + "_token", None)
            if old is not None and old in by_content:
                kwargs[attr + "_token"] = old
    for flag, gguf_says in (("add_bos_token", gv.add_bos), ("add_eos_token", gv.add_eos)):
        # the GGUF's own flag first (transformers 5.19 ignores it for byte-level GGUFs), said explicitly
        value = getattr(tok, flag, None) if gguf_says is None else gguf_says
        if value is not None:
            kwargs[flag] = bool(value)
    fixed = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=getattr(tok, "chat_template", None),
                                    model_max_length=tok.model_max_length, padding_side=tok.padding_side, **kwargs)
    fixed.name_or_path = tok.name_or_path
    if not _bos_respected(fixed, gv):
        raise TokenizerError(f"{path}: the rebuilt tokenizer does not add its BOS as the GGUF asks; convert the model "
                             "with llama.cpp's or transformers' own tools instead")
    if len(fixed) != n or fixed.convert_ids_to_tokens(list(range(n))) != want:
        raise TokenizerError(f"{path}: the rebuilt tokenizer still disagrees with the GGUF's {n} tokens; "
                             "convert the model with llama.cpp's or transformers' own tools instead")
    return fixed


def _same_piece(have: str, want: str) -> bool:
    """Equal, or equal once spaces are written as SentencePiece's `▁` (Gemma's GGUF stores its
    user-defined whitespace tokens with plain spaces, its tokenizer with `▁`)."""
    return have == want or have == want.replace(" ", "\u2581")


def _types_respected(tok, gv: GGUFVocab) -> bool:
    dec = getattr(tok, "added_tokens_decoder", {})
    return all(i in dec and dec[i].special for i, t in enumerate(gv.types) if t in SPECIAL_TYPES)


def _bos_respected(tok, gv: GGUFVocab) -> bool:
    """The tokenizer adds a BOS exactly when the GGUF says to (tokenizer.ggml.add_bos_token)."""
    if gv.add_bos is None or gv.roles.get("bos") is None:
        return True
    adds = tok("a", add_special_tokens=True)["input_ids"][:1] == [gv.roles["bos"]]
    return adds == bool(gv.add_bos)


def _roles_respected(tok, gv: GGUFVocab) -> bool:
    return all(getattr(tok, role + "_token_id", None) == i for role, i in gv.roles.items())


def _fix_model_vocab(spec: dict, want: list[str], path) -> set[int]:
    """Give the model's own vocabulary the GGUF's pieces at the ids whose text it mangled; returns those ids."""
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    n = len(want)
    renamed: set[int] = set()
    if isinstance(vocab, dict):  # BPE / WordPiece / WordLevel: piece -> id
        over = [i for i in vocab.values() if i >= n]
        if over:
            raise TokenizerError(f"{path}: the tokenizer's model has ids up to {max(over)} past the GGUF's {n} tokens")
        inv = {i: p for p, i in vocab.items()}
        for i, w in enumerate(want):
            h = inv.get(i)
            if h is not None and h != w:
                if w in vocab and vocab[w] != i:
                    raise TokenizerError(f"{path}: token {w!r} appears at ids {vocab[w]} and {i}")
                _check_merges(model, h, path)
                del vocab[h]
                vocab[w] = i
                renamed.add(i)
    elif isinstance(vocab, list):  # Unigram: [piece, score] by id
        if len(vocab) > n:
            raise TokenizerError(f"{path}: the tokenizer's model has {len(vocab)} pieces, the GGUF {n}")
        for i, entry in enumerate(vocab):
            if entry[0] != want[i]:
                entry[0] = want[i]
                renamed.add(i)
    return renamed


def _check_merges(model: dict, piece: str, path) -> None:
    for m in model.get("merges") or []:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if piece in (a, b) or a + b == piece:
            raise TokenizerError(f"{path}: the piece {piece!r} takes part in a merge; cannot rename it to the GGUF's text")


def _fix_post_processor(pp: dict | None, by_content: dict[str, int], n: int) -> None:
    """Point the post-processor's special tokens (the BOS it adds) at the GGUF's ids."""
    if not pp:
        return
    for sub in pp.get("processors") or []:
        _fix_post_processor(sub, by_content, n)
    for st in (pp.get("special_tokens") or {}).values():
        st["ids"] = [by_content.get(t, i) if i >= n else i for t, i in zip(st.get("tokens", []), st.get("ids", []))]
