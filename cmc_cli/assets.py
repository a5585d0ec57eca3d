"""The asset fetcher: real tokenizers (and later real models) brought offline through package registries.

Each asset ships inside a pinned PyPI package (ASSETS.md); `fetch` downloads that package with pip,
checks the sha256 of the file it needs, converts it once into a Hugging Face tokenizer directory
(loads in well under a second afterwards) and records where it came from in `cmc-asset.json`.
The cache lives outside the repository: `$CMC_CACHE`, default `~/.cache/cmc`. Nothing here runs
unless the user asks for it (`cmc fetch`); the rest of cmc only *looks* in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cmc_cli.errors import AssetError

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
                       "ggml-vocab-llama-bpe.gguf", "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e", 128257),
        TokenizerAsset("qwen2", "qwen", "Qwen2 tokenizer (byte-level BPE)", LLAMA_CPP,
                       "ggml-vocab-qwen2.gguf", "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c", 151936),
        TokenizerAsset("gpt2", "gpt2", "GPT-2 tokenizer (byte-level BPE)", LLAMA_CPP,
                       "ggml-vocab-gpt-2.gguf", "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac", 50257),
        TokenizerAsset("mistral", "mistral", "Mistral-7B-v0.1 tokenizer (SentencePiece)", MISTRAL_COMMON,
                       "tokenizer.model.v1", "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055", 32000),
    )
}

# What users type -> asset key. A bare family name means that family's reference tokenizer.
FAMILY_ALIASES = {
    "llama": "llama2", "llama2": "llama2", "llama-2": "llama2",
    "llama3": "llama3", "llama-3": "llama3",
    "mistral": "mistral",
    "gpt2": "gpt2", "gpt-2": "gpt2",
    "qwen": "qwen2", "qwen2": "qwen2",
}


def cache_dir() -> Path:
    return Path(os.environ.get("CMC_CACHE") or Path.home() / ".cache" / "cmc").expanduser()


def tokenizer_dir(key: str) -> Path:
    return cache_dir() / "tokenizers" / key


def is_family_name(text: str) -> bool:
    return text.lower() in FAMILY_ALIASES


def find_family(text: str) -> tuple[Path, str] | None:
    """(directory, adapter) of a fetched family tokenizer, or None."""
    key = FAMILY_ALIASES.get(text.lower())
    if key is None:
        return None
    d = tokenizer_dir(key)
    if (d / "cmc-asset.json").is_file():
        return d, TOKENIZERS[key].adapter
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_tokenizers(keys: list[str] | None = None, force: bool = False, report=None) -> dict[str, Path]:
    """Fetch, verify and convert the named tokenizers (all by default). Returns key -> directory."""
    report = report or (lambda msg: log.info("%s", msg))
    keys = keys or list(TOKENIZERS)
    unknown = [k for k in keys if k not in TOKENIZERS]
    if unknown:
        raise AssetError(f"unknown tokenizer asset(s) {', '.join(unknown)}; available: {', '.join(TOKENIZERS)}")
    out: dict[str, Path] = {}
    todo = []
    for k in keys:
        d = tokenizer_dir(k)
        if not force and (d / "cmc-asset.json").is_file():
            out[k] = d
            report(f"{k}: already in {d}")
        else:
            todo.append(TOKENIZERS[k])
    by_package: dict[Package, list[TokenizerAsset]] = {}
    for a in todo:
        by_package.setdefault(a.package, []).append(a)
    for pkg, assets in by_package.items():
        with tempfile.TemporaryDirectory(prefix="cmc-fetch-") as tmp:
            report(f"downloading {pkg.name}=={pkg.version} from PyPI ...")
            archive = _pip_download(pkg, Path(tmp))
            for a in assets:
                src = _extract_member(archive, pkg.prefix + a.member, Path(tmp))
                digest = sha256_file(src)
                if digest != a.sha256:
                    raise AssetError(f"{a.key}: checksum mismatch for {a.member} from {pkg.name}=={pkg.version} "
                                     f"(got {digest[:12]}, expected {a.sha256[:12]}); not installed")
                out[a.key] = _convert_tokenizer(a, src)
                report(f"{a.key}: {a.title}, {a.vocab_size} tokens -> {out[a.key]}")
    return out


def _pip_download(pkg: Package, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
    cmd.append(f"{pkg.name}=={pkg.version}")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"pip could not download {pkg.name}=={pkg.version} ({last}); check access to PyPI")
    files = [p for p in dest.iterdir() if p.suffix in (".gz", ".whl", ".zip")]
    if not files:
        raise AssetError(f"pip downloaded nothing for {pkg.name}=={pkg.version}")
    return files[0]


def _extract_member(archive: Path, member: str, dest: Path) -> Path:
    target = dest / Path(member).name
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tf:
                f = tf.extractfile(member)
                if f is None:
                    raise KeyError(member)
                target.write_bytes(f.read())
        else:
            with zipfile.ZipFile(archive) as zf:
                target.write_bytes(zf.read(member))
    except KeyError:
        raise AssetError(f"{archive.name} has no {member}; the pinned package changed") from None
    return target


def _convert_tokenizer(a: TokenizerAsset, src: Path) -> Path:
    """Load the raw file once with the family adapter and save a fast-loading HF tokenizer directory."""
    from cmc_cli.plugins import get_adapter
    from cmc_cli.refs import ModelRef

    adapter = get_adapter(a.adapter)
    tok = adapter.load_tokenizer(ModelRef(text=str(src), path=src, adapter=a.adapter))
    if len(tok) != a.vocab_size:
        raise AssetError(f"{a.key}: loaded {len(tok)} tokens from {src.name}, expected {a.vocab_size}")
    final = tokenizer_dir(a.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{a.key}.", dir=final.parent))
    try:
        tok.save_pretrained(str(staging))
        vocab = adapter.token_surfaces(tok, name=a.key)
        info = {"family": a.adapter, "key": a.key, "title": a.title,
                "source": f"{a.package.name}=={a.package.version}:{a.package.prefix}{a.member}",
                "sha256": a.sha256, "vocab_size": len(tok), "fingerprint": vocab.fingerprint}
        (staging / "cmc-asset.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
