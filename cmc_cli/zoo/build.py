"""Build the model world: data, two tokenizer families, and a cast of models like the paper's.

    template   Llama architecture, SentencePiece-style tokenizer   (the paper's Llama-2-7B)
    large      Llama architecture, the same tokenizer, larger      (Llama-2-13B)
    other      Qwen2 architecture, byte-level BPE tokenizer        (Mistral-7B: another vocabulary)

Each is trained twice: "<key>-base" learns the biographies as prose, "<key>-tofu" is then fine-tuned
on every question-answer pair (TOFU's first step); "template-retain<NN>" is the base template
fine-tuned on the retain set only (TOFU's reference for forget quality). The baselines CMC is compared
with are built too: "<key>-instruct-ft", each base model fine-tuned directly on the instruction data
(the upper bound of Table 1), and "<key>-unlearn-ft", each TOFU model unlearned directly by gradient
difference on its own weights (Table 2); the template's pair also gives proxy-tuning for `large`.
Models train in parallel processes, one CPU thread each, each job starting as soon as the model it
fine-tunes is built. Everything lands in `$CMC_CACHE/zoo/<spec hash>/` with a manifest of
sha256 hashes; a rerun builds only what is missing, and the same spec gives the same hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmc_cli.data.records import read_records
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
class BaselineSpec:
    """Direct fine-tunes of every model: the upper bound / baselines beside CMC in `cmc demo`."""

    instruct_epochs: int = 5
    instruct_lr: float = 1e-3
    instruct_batch: int = 16
    unlearn_lr: float = 1e-4
    unlearn_batch: int = 8
    unlearn_max_steps: int = 200
    unlearn_retain_weight: float = 3.0
    unlearn_stop_forget_loss: float = 8.0
    forget_split: int = 10  # forget<NN> / retain<100-NN>


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
    baselines: BaselineSpec | None = field(default_factory=BaselineSpec)
    # 2: the world's tokenizers declare the BOS its models are trained with (a version-1 world fed them without)
    version: int = 2

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
    return [rec for _, rec in read_records(path)]


def _have(zoo: Zoo, name: str) -> bool:
    entry = zoo.manifest()["artifacts"].get(name)
    return bool(entry) and (zoo.root / entry["path"]).exists()


# ---- jobs (run in worker processes) --------------------------------------------------------------------
def _train_job(args: dict) -> dict:
    """Train one model (base from scratch, or a fine-tune of a base); runs in its own process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmc_cli.zoo.lm import encode_prose, encode_qa, new_model, save_model, train_lm, unlearn_lm  # noqa: I001

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.manual_seed(args["seed"])
    tok = AutoTokenizer.from_pretrained(args["tokenizer"])
    pad = tok.eos_token_id
    records = _jsonl(Path(args["data"]))
    m, b = args["model"], args.get("baselines")
    qa = lambda rows: encode_qa([(r["question"], r["answer"]) for r in rows], tok, QA_FORMAT, 128)  # noqa: E731
    if args["kind"] == "base":
        model = new_model(m["arch"], tok, m["hidden"], m["layers"], m["heads"], args["seed"])
        data = encode_prose([r["text"] for r in records], tok, 256)
        res = train_lm(model, data, pad, m["base_epochs"], m["base_lr"], m["batch_size"], args["seed"])
    else:
        model = AutoModelForCausalLM.from_pretrained(args["init"], dtype=torch.float32)
        if args["kind"] == "qa":
            res = train_lm(model, qa(records), pad, m["qa_epochs"], m["qa_lr"], m["batch_size"], args["seed"])
        elif args["kind"] == "instruct-ft":
            data = encode_qa([(r["instruction"], r["output"]) for r in records], tok, QA_FORMAT, 128)
            res = train_lm(model, data, pad, b["instruct_epochs"], b["instruct_lr"], b["instruct_batch"], args["seed"])
        else:  # unlearn-ft
            res = unlearn_lm(model, qa(records), qa(_jsonl(Path(args["retain"]))), pad, b["unlearn_lr"],
                             b["unlearn_batch"], b["unlearn_max_steps"], args["seed"],
                             retain_weight=b["unlearn_retain_weight"], stop_forget_loss=b["unlearn_stop_forget_loss"])
    save_model(model, args["tokenizer"], args["out"])
    if args["kind"] != "base":  # asked in the format it learned QA in: the default of `cmc train` and `--user-format auto`
        atomic_write_json(Path(args["out"]) / "cmc-asset.json", {"source": "cmc model world", "prompt_format": QA_FORMAT})
    return {"name": args["name"], "loss": res.final_loss, "seconds": res.seconds}


def build_zoo(spec: ZooSpec = FULL, root: str | Path | None = None, jobs: int | None = None, on_event=None) -> Zoo:
    """Build whatever the manifest lacks. on_event(kind, name, info) reports: "start"/"done"/"have"."""
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
    workers = max(1, jobs or min(len(spec.models), os.cpu_count() or 1))
    _run_jobs(zoo, model_jobs(zoo), workers, event)
    return zoo


def model_jobs(zoo: Zoo) -> list[dict]:
    """Every model of the world as a training job; `after` names the model a job fine-tunes. Ordered
    with the most expensive chains first, which the scheduler starts first."""
    spec = zoo.spec
    out = []
    for ms in sorted(spec.models, key=lambda m: -(m.hidden ** 2 * m.layers)):
        base = {"name": f"{ms.key}-base", "kind": "base", "model": asdict(ms), "tokenizer": str(zoo.tokenizer(ms.tokenizer)),
                "data": str(zoo.data("biographies")), "out": str(zoo.model(f"{ms.key}-base")), "seed": spec.seed,
                "after": None}
        tofu = {**base, "name": f"{ms.key}-tofu", "kind": "qa", "data": str(zoo.data("qa_all")),
                "init": base["out"], "out": str(zoo.model(f"{ms.key}-tofu")), "after": base["name"]}
        out += [base, tofu]
        if spec.baselines is not None:
            b = asdict(spec.baselines)
            k = spec.baselines.forget_split
            out.append({**tofu, "name": f"{ms.key}-unlearn-ft", "kind": "unlearn-ft", "baselines": b,
                        "data": str(zoo.data(f"forget{k:02d}")), "retain": str(zoo.data(f"retain{100 - k:02d}")),
                        "init": tofu["out"], "out": str(zoo.model(f"{ms.key}-unlearn-ft")), "after": tofu["name"]})
            out.append({**tofu, "name": f"{ms.key}-instruct-ft", "kind": "instruct-ft", "baselines": b,
                        "data": str(zoo.data("instruct_train")), "out": str(zoo.model(f"{ms.key}-instruct-ft"))})
        if ms.key == "template":
            r = spec.retain_split
            out.append({**tofu, "name": f"template-retain{r:02d}", "data": str(zoo.data(f"retain{r:02d}")),
                        "out": str(zoo.model(f"template-retain{r:02d}"))})
    return out


def artifact_names(zoo: Zoo) -> list[str]:
    """Everything a complete world holds, in build order."""
    return ["data", "tokenizer-spm", "tokenizer-bl"] + [j["name"] for j in model_jobs(zoo)]


def _run_jobs(zoo: Zoo, jobs: list[dict], workers: int, event) -> None:
    """Run the jobs the manifest lacks, each once the model it starts from is built, `workers` at a time."""
    import multiprocessing as mp
    import queue

    todo = []
    for j in jobs:
        if _have(zoo, j["name"]):
            event("have", j["name"])
        else:
            todo.append(j)
    if not todo:
        return
    pending = {j["name"] for j in todo}
    done_q: queue.Queue = queue.Queue()
    pool = mp.get_context("spawn").Pool(min(workers, len(todo))) if workers > 1 and len(todo) > 1 else None
    running = 0
    try:
        while todo or running:
            ready = [j for j in todo if j["after"] is None or j["after"] not in pending]
            for j in ready[:max(0, (workers if pool else 1) - running)]:
                todo.remove(j)
                event("start", j["name"])
                if pool is None:
                    done_q.put(("ok", _train_job(j)))
                else:
                    pool.apply_async(_train_job, (j,), callback=lambda r: done_q.put(("ok", r)),
                                     error_callback=lambda e: done_q.put(("error", e)))
                running += 1
            if running == 0:
                raise CmcError(f"world build: no job can start ({', '.join(j['name'] for j in todo)})")
            status, res = done_q.get()
            running -= 1
            if status == "error":
                raise res
            _record(zoo, res["name"], zoo.model(res["name"]))
            pending.discard(res["name"])
            event("done", res["name"], f"loss {res['loss']:.3f}, {res['seconds']:.0f} s")
    finally:
        if pool is not None:
            pool.terminate() if running else pool.close()
            pool.join()


def zoo_from_size(size: str) -> ZooSpec:
    if size not in SIZES:
        raise CmcError(f"--size must be one of {', '.join(SIZES)}, got '{size}'")
    return SIZES[size]

