"""The adapter contract, and the Hugging Face machinery the built-in adapters share.

An adapter knows one LLM family: how to recognise it (`matches`), load its tokenizer and model
offline, turn its tokenizer into normalised surfaces (`token_surfaces`), and which prompt format a
delta trained on it uses by default. Third-party families subclass `Adapter` (or `HFAdapter`) and
register through the `cmc` entry-point group (docs/plugins.md).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from cmc_cli.adapters.gguf_vocab import repair_gguf_tokenizer
from cmc_cli.errors import AdapterError, TokenizerError, cause
from cmc_cli.refs import ModelRef
from cmc_cli.vocab import BYTE_LEVEL, PLAIN, SPM, Vocab, build_vocab

log = logging.getLogger(__name__)

DEFAULT_PROMPT_FORMAT = "<|user|>\n{prompt}\n<|assistant|>\n"

# Roles of special tokens known by their text, for tokenizers that do not declare them (the families'
# chat markers are their adapters' `marker_roles`).
KNOWN_SPECIAL_ROLES = {
    "<s>": "bos", "</s>": "eos", "<unk>": "unk", "<pad>": "pad", "<bos>": "bos", "<eos>": "eos",
    "<|endoftext|>": "eos", "<|begin_of_text|>": "bos", "<|end_of_text|>": "eos", "[PAD]": "pad",
    "[UNK]": "unk",
}


class Adapter:
    """Base class of adapters. Subclasses set the class attributes and may override methods."""

    name: str = ""
    description: str = ""
    convention: str | None = None  # spm | byte-level | plain; None: detect from the tokenizer
    model_types: tuple[str, ...] = ()  # config.json model_type values of this family
    gguf_archs: tuple[str, ...] = ()  # GGUF general.architecture values
    tokenizer_classes: tuple[str, ...] = ()  # tokenizer_config.json tokenizer_class values
    default_prompt_format: str = DEFAULT_PROMPT_FORMAT
    # Family facts the shared code reads. A chat marker's role and a filler's pattern mean the same in every
    # vocabulary that holds them (SmolLM2, a Llama, uses Qwen's ChatML markers), so every vocabulary is read
    # with those of all the declared families (`declare_family`, `family_marker_roles`, `family_filler`).
    marker_roles: dict[str, str] = {"<|end|>": "turn_end", "<|user|>": "user", "<|assistant|>": "assistant",
                                    "<|system|>": "system"}  # Phi-3 and the generic chat format
    filler_patterns: tuple[str, ...] = (r"\[PAD\d+\]",)  # added tokens that only pad or reserve space

    def matches(self, ref: ModelRef) -> bool:
        h = ref.hints
        return bool((h.get("family") == self.name)
                    or (h.get("model_type") and h["model_type"] in self.model_types)
                    or (h.get("gguf_arch") and h["gguf_arch"] in self.gguf_archs)
                    or (h.get("tokenizer_class") and h["tokenizer_class"] in self.tokenizer_classes))

    def load_tokenizer(self, ref: ModelRef):
        raise NotImplementedError

    def load_model(self, ref: ModelRef, dtype=None, device: str = "cpu"):
        """Optional: an adapter without it serves vocabularies only (map-vocab), and says so."""
        raise AdapterError(f"the {self.name} adapter reads vocabularies only: it cannot load the model {ref.name} "
                           "(map its vocabulary with cmc map-vocab, or use a family that loads models)")

    def token_surfaces(self, tokenizer, name: str = "") -> Vocab:
        raise NotImplementedError

    def load_vocab(self, ref: ModelRef) -> Vocab:
        """The tokenizer's vocabulary, read once and then from the cache (adapters/vocabcache.py)."""
        from cmc_cli.adapters.vocabcache import cached_vocab

        return cached_vocab(ref.path, ref.name, self.name,
                            lambda: self.token_surfaces(self.load_tokenizer(ref), name=ref.name))


# The family facts every vocabulary is read with: family name -> (marker_roles, filler_patterns). Declared, not
# discovered: the built-in families at import (adapters/__init__.py), a plugin's adapters when the plugin
# manager registers them; a subclass nobody registers changes nothing.
_DECLARED: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "generic": (dict(Adapter.marker_roles), tuple(Adapter.filler_patterns))}


def declare_family(adapter: Adapter | type[Adapter]) -> None:
    """Make an adapter's chat markers and fillers part of every vocabulary's reading (idempotent)."""
    _DECLARED[adapter.name] = (dict(adapter.marker_roles), tuple(adapter.filler_patterns))


def forget_families(keep: set[str]) -> None:
    """Drop the declared families not in `keep` (the plugin manager, when it forgets its plugins)."""
    for name in set(_DECLARED) - keep - {"generic"}:
        del _DECLARED[name]


def family_facts_digest() -> str:
    """A fingerprint of the declared facts: a cached vocabulary read with other facts is read again."""
    import hashlib

    facts = sorted((n, sorted(r.items()), sorted(f)) for n, (r, f) in _DECLARED.items())
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def family_marker_roles() -> dict[str, str]:
    """Role of every chat marker a declared family names, with the generic special-token names."""
    roles = dict(KNOWN_SPECIAL_ROLES)
    for markers, _ in _DECLARED.values():
        roles.update(markers)
    return roles


def family_filler() -> re.Pattern:
    """Added tokens that only pad or reserve space, by the declared families' patterns: special, with no role."""
    pats = sorted({p for _, fillers in _DECLARED.values() for p in fillers})
    return re.compile("^(" + "|".join(pats) + ")$")


class HFAdapter(Adapter):
    """Loads with `transformers` (never `trust_remote_code`) and reads conventions from tokenizer.json."""

    spm_tokenizer_class = "LlamaTokenizer"  # class used for a bare SentencePiece `tokenizer.model`

    # ---- loading ------------------------------------------------------------------------------
    def load_tokenizer(self, ref: ModelRef):
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        what = f"cannot load a tokenizer from {ref.path}"
        try:
            gguf = ref.gguf_file()
            if gguf is not None:
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
                return repair_gguf_tokenizer(tok, gguf)
            if ref.kind == "dir":
                if not any((ref.path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")):
                    raise TokenizerError(f"{what}: the directory has no tokenizer.json, tokenizer.model or .gguf file")
                return AutoTokenizer.from_pretrained(str(ref.path), trust_remote_code=False)
            if ref.kind == "tokenizer.json":
                return PreTrainedTokenizerFast(tokenizer_file=str(ref.path))
            return self._load_sentencepiece(ref.path)
        except TokenizerError:
            raise
        except Exception as e:  # transformers raises many types for unreadable files
            msg = cause(e)
            raise TokenizerError(f"{what} ({msg}); expected a tokenizer directory, tokenizer.json, "
                                 "tokenizer.model or .gguf file") from None

    def _load_sentencepiece(self, path: Path):
        from transformers import AutoTokenizer

        with open(path, "rb") as f:
            head = f.read(1)
        if head != b"\x0a":  # a SentencePiece ModelProto starts with its `pieces` field (tag 0x0A)
            raise TokenizerError(f"{path} is not a tokenizer file; expected a tokenizer directory, "
                                 "tokenizer.json, a SentencePiece tokenizer.model or a .gguf file")
        tmp = Path(tempfile.mkdtemp(prefix="cmc-spm-"))
        try:
            shutil.copyfile(path, tmp / "tokenizer.model")
            (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": self.spm_tokenizer_class}))
            tok = AutoTokenizer.from_pretrained(str(tmp), trust_remote_code=False)
            if len(tok) <= 3:
                raise TokenizerError(f"{path} is not a SentencePiece model file (no vocabulary read)")
            return tok
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_model(self, ref: ModelRef, dtype=None, device: str = "cpu"):
        from transformers import AutoModelForCausalLM

        kwargs = {"trust_remote_code": False}
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            gguf = ref.gguf_file()
            if gguf is not None:
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **kwargs)
            elif ref.kind == "dir" and (ref.path / "config.json").is_file():
                if not any(ref.path.glob("*.safetensors")):
                    bins = sorted(p.name for p in ref.path.glob("*.bin")) + sorted(p.name for p in ref.path.glob("*.pt"))
                    raise TokenizerError(f"{ref.path} has no safetensors weights ({', '.join(bins[:2]) or 'none'} "
                                         "instead); cmc never unpickles weights: convert them once with "
                                         "`model.save_pretrained(dir)` in a trusted environment")
                model = AutoModelForCausalLM.from_pretrained(str(ref.path), use_safetensors=True, **kwargs)
            else:
                raise TokenizerError(f"{ref.path} holds no model (no config.json or .gguf); give a model directory")
        except TokenizerError:
            raise
        except Exception as e:
            msg = cause(e)
            raise TokenizerError(f"cannot load a model from {ref.path} ({msg})") from None
        return model.to(device).eval()

    # ---- surfaces -----------------------------------------------------------------------------
    def detect_convention(self, tokenizer) -> tuple[str, bool]:
        """(convention, byte_fallback) read from the fast tokenizer's decoder and model."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return self.convention or PLAIN, False
        spec = json.loads(backend.to_str())
        text = json.dumps(spec.get("decoder"))
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback")) or '"ByteFallback"' in text
        if '"ByteLevel"' in text:
            return BYTE_LEVEL, byte_fallback
        if '"Metaspace"' in text or "\u2581" in text:
            return SPM, byte_fallback
        return self.convention or PLAIN, byte_fallback

    def token_surfaces(self, tokenizer, name: str = "") -> Vocab:
        n = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        special: dict[int, list[str]] = {}
        raw_text: set[int] = set()
        filler, known_roles = family_filler(), family_marker_roles()
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if i >= n:
                continue
            if tok.special or filler.match(tok.content):
                special[i] = []
            else:
                raw_text.add(i)
        for i in getattr(tokenizer, "all_special_ids", []):
            if i is not None and 0 <= i < n:
                special.setdefault(i, [])
        for attr, role in (("eos_token_id", "eos"), ("bos_token_id", "bos"), ("unk_token_id", "unk"), ("pad_token_id", "pad")):
            i = getattr(tokenizer, attr, None)
            if isinstance(i, int) and 0 <= i < n:
                special.setdefault(i, []).append(role)
        for i in list(special):
            role = known_roles.get(pieces[i] or "")
            if role and role not in special[i]:
                special[i].append(role)
        for i, p in enumerate(pieces):
            if p is None:
                special.setdefault(i, [])
                pieces[i] = f"<missing-{i}>"
        convention, byte_fallback = self.detect_convention(tokenizer)
        if n == 0:
            raise TokenizerError(f"the tokenizer '{name}' has an empty vocabulary")
        return build_vocab(name or getattr(tokenizer, "name_or_path", "") or "tokenizer", pieces, convention,
                           special=special, raw_text_ids=raw_text, byte_fallback=byte_fallback)
