"""Build the model world: data, two tokenizer families, and a cast of models like the paper's.

    template   Llama architecture, SentencePiece-style tokenizer   (the paper's Llama-2-7B)
    large      Llama architecture, the same tokenizer, larger      (Llama-2-13B)
    other      Qwen2 architecture, byte-level BPE tokenizer        (Mistral-7B: another vocabulary)

Each is trained twice: "<key>-base" learns the biographies as prose, "<key>-tofu" is then fine-tuned
on every question-answer pair (TOFU's first step); "template-retain<NN>" is the base template
fine-tuned on the retain set only (TOFU's reference for forget quality). Models train in parallel
processes, one CPU thread each. Everything lands in `$CMC_CACHE/zoo/<spec hash>/` with a manifest of
sha256 hashes; a rerun builds only what is missing, and the same spec gives the same hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmc_cli.errors import CmcError
from cmc_cli.fileio import atomic_write_json
from cmc_cli.zoo.world import REDUCED, WorldSpec, write_world_data

log = logging.getLogger(__name__)

QA_FORMAT = "Question: {prompt}\nAnswer:"


@dataclass(frozen=True)
class ModelSpec:
    key: str
    arch: str  # llama | qwen2
    tokenizer: str  # spm | bl
    hidden: int
    layers: int
    heads: int = 4
    base_epochs: int = 40
    qa_epochs: int = 12
    base_lr: float = 3e-3
    qa_lr: float = 1e-3
    batch_size: int = 16


@dataclass(frozen=True)
class ZooSpec:
    world: WorldSpec = field(default_factory=WorldSpec)
    spm_vocab: int = 700
    bl_vocab: int = 800
    models: tuple[ModelSpec, ...] = (
        ModelSpec("template", "llama", "spm", hidden=128, layers=4),
        ModelSpec("large", "llama", "spm", hidden=192, layers=6),
        ModelSpec("other", "qwen2", "bl", hidden=128, layers=4),
    )
    retain_split: int = 90  # template-retain90: the forget-quality reference
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


FULL = ZooSpec()
# For CI: 20 authors, tiny models, few epochs — the same pipeline in seconds
REDUCED_ZOO = ZooSpec(
    world=REDUCED, spm_vocab=500, bl_vocab=560,
    models=(ModelSpec("template", "llama", "spm", hidden=64, layers=2, base_epochs=40, qa_epochs=25, qa_lr=3e-3, batch_size=8),
            ModelSpec("large", "llama", "spm", hidden=96, layers=2, base_epochs=40, qa_epochs=25, qa_lr=3e-3, batch_size=8),
            ModelSpec("other", "qwen2", "bl", hidden=64, layers=2, base_epochs=40, qa_epochs=25, qa_lr=3e-3, batch_size=8)),
)
SIZES = {"full": FULL, "reduced": REDUCED_ZOO}


@dataclass
class Zoo:
    root: Path
    spec: ZooSpec

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    def tokenizer(self, kind: str) -> Path:
        return self.root / "tokenizers" / kind

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"spec": json.loads(json.dumps(asdict(self.spec))), "artifacts": {}}


def zoo_root(spec: ZooSpec) -> Path:
    from cmc_cli.assets import cache_dir

    return cache_dir() / "zoo" / spec.digest()


def _dir_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _record(zoo: Zoo, name: str, path: Path) -> None:
    m = zoo.manifest()
    m["artifacts"][name] = {"path": str(path.relative_to(zoo.root)), "sha256": _dir_hash(path) if path.is_dir()
                            else hashlib.sha256(path.read_bytes()).hexdigest()}
    atomic_write_json(zoo.manifest_path, m)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _have(zoo: Zoo, name: str) -> bool:
    entry = zoo.manifest()["artifacts"].get(name)
    return bool(entry) and (zoo.root / entry["path"]).exists()


# ---- jobs (run in worker processes) --------------------------------------------------------------------
def _train_job(args: dict) -> dict:
    """Train one model (base from scratch, or a fine-tune of a base); runs in its own process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmc_cli.zoo.lm import encode_prose, encode_qa, new_model, save_model, train_lm  # noqa: I001

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.manual_seed(args["seed"])
    tok = AutoTokenizer.from_pretrained(args["tokenizer"])
    pad = tok.eos_token_id
    records = _jsonl(Path(args["data"]))
    if args["kind"] == "base":
        m = args["model"]
        model = new_model(m["arch"], tok, m["hidden"], m["layers"], m["heads"], args["seed"])
        data = encode_prose([r["text"] for r in records], tok, 256)
        res = train_lm(model, data, pad, m["base_epochs"], m["base_lr"], m["batch_size"], args["seed"])
    else:
        model = AutoModelForCausalLM.from_pretrained(args["init"], dtype=torch.float32)
        m = args["model"]
        data = encode_qa([(r["question"], r["answer"]) for r in records], tok, QA_FORMAT, 128)
        res = train_lm(model, data, pad, m["qa_epochs"], m["qa_lr"], m["batch_size"], args["seed"])
    save_model(model, args["tokenizer"], args["out"])
    return {"name": args["name"], "loss": res.final_loss, "seconds": res.seconds}


def build_zoo(spec: ZooSpec = FULL, root: str | Path | None = None, jobs: int | None = None, on_event=None) -> Zoo:
    """Build whatever the manifest lacks. on_event(kind, name, info) reports: "start"/"done"/"have"."""
    import multiprocessing as mp

    from cmc_cli.zoo.tokenizers import train_byte_level_tokenizer, train_spm_tokenizer

    event = on_event or (lambda kind, name, info=None: log.info("%s %s %s", kind, name, info or ""))
    zoo = Zoo(Path(root) if root else zoo_root(spec), spec)
    zoo.root.mkdir(parents=True, exist_ok=True)
    m = zoo.manifest()
    if m["spec"] != json.loads(json.dumps(asdict(spec))):
        raise CmcError(f"{zoo.root} holds a world built from another spec; remove it or choose another --root")
    if not _have(zoo, "data"):
        event("start", "data")
        write_world_data(spec.world, zoo.root / "data")
        _record(zoo, "data", zoo.root / "data")
        event("done", "data")
    corpus = [r["text"] for r in _jsonl(zoo.data("biographies"))]
    corpus += [r["question"] + " " + r["answer"] for r in _jsonl(zoo.data("qa_all"))]
    for kind, size, fn in (("spm", spec.spm_vocab, train_spm_tokenizer), ("bl", spec.bl_vocab, train_byte_level_tokenizer)):
        name = f"tokenizer-{kind}"
        if not _have(zoo, name):
            event("start", name)
            fn(corpus, size, zoo.tokenizer(kind))
            _record(zoo, name, zoo.tokenizer(kind))
            event("done", name)
    # stage 1: base models; stage 2: fine-tunes of them
    stages = [[], []]
    for ms in spec.models:
        base = {"name": f"{ms.key}-base", "kind": "base", "model": asdict(ms), "tokenizer": str(zoo.tokenizer(ms.tokenizer)),
                "data": str(zoo.data("biographies")), "out": str(zoo.model(f"{ms.key}-base")), "seed": spec.seed}
        stages[0].append(base)
        tofu = {**base, "name": f"{ms.key}-tofu", "kind": "qa", "data": str(zoo.data("qa_all")),
                "init": base["out"], "out": str(zoo.model(f"{ms.key}-tofu"))}
        stages[1].append(tofu)
        if ms.key == "template":
            r = spec.retain_split
            stages[1].append({**tofu, "name": f"template-retain{r:02d}", "data": str(zoo.data(f"retain{r:02d}")),
                              "out": str(zoo.model(f"template-retain{r:02d}"))})
    workers = max(1, jobs or min(len(spec.models), os.cpu_count() or 1))
    ctx = mp.get_context("spawn")
    for stage in stages:
        todo = [j for j in stage if not _have(zoo, j["name"])]
        for j in stage:
            if j not in todo:
                event("have", j["name"])
        if not todo:
            continue
        for j in todo:
            event("start", j["name"])
        if workers == 1 or len(todo) == 1:
            results = map(_train_job, todo)
        else:
            pool = ctx.Pool(min(workers, len(todo)))
            results = pool.imap_unordered(_train_job, todo)
        try:
            for res in results:
                _record(zoo, res["name"], zoo.model(res["name"]))
                event("done", res["name"], f"loss {res['loss']:.3f}, {res['seconds']:.0f} s")
        finally:
            if workers > 1 and len(todo) > 1:
                pool.close()
                pool.join()
    return zoo


def zoo_from_size(size: str) -> ZooSpec:
    if size not in SIZES:
        raise CmcError(f"--size must be one of {', '.join(SIZES)}, got '{size}'")
    return SIZES[size]

