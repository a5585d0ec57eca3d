"""Training under torchrun (docs/training.md): the process group, the data shard of each rank, the sum of
the delta's gradients over ranks, and the frozen template sharded with FSDP2.

Every rank builds the step's whole global batch (the order is the seed's, as in one process) and runs
its contiguous share of it; each share's loss is divided by the *global* token count, so summing the
gradients over ranks gives exactly the one-process gradient. The sum is one all-reduce of the flattened
gradients (what DDP's reducer does): the delta's output-head gradients are produced inside the chunked
loss's forward (engine/trainstep._FusedHeadLoss), outside the forward DDP wraps, so cmc sums them itself.
Every rank then clips and steps the same optimizer on the same gradients: the deltas stay identical.
Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from dataclasses import dataclass

import torch

from cmc_cli.errors import CmcError


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        """This rank's contiguous share of a global batch (every rank gets len // world of them)."""
        if not self.on:
            return items
        n = len(items) // self.world
        return items[self.rank * n:(self.rank + 1) * n]

    def sum_floats(self, *values: float) -> list[float]:
        if not self.on:
            return list(values)
        import torch.distributed as dist

        # nccl reduces only CUDA tensors; gloo CPU ones
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, model) -> None:
        """Sum every parameter's gradient over ranks, in one flattened all-reduce."""
        if not self.on:
            return
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        at = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()


def from_env() -> Dist:
    """The run's ranks from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); one process without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CmcError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    return Dist(world, rank, local)


def init(dist_info: Dist, device: torch.device) -> None:
    """Join the process group: nccl on GPU, gloo on CPU. A rank that waits longer than CMC_DIST_TIMEOUT
    seconds (default 600) for the others fails instead of hanging."""
    if not dist_info.on:
        return
    import torch.distributed as dist

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        raise CmcError(f"training under torchrun needs torch >= 2.6 (FSDP2's public fully_shard); this is {torch.__version__}")
    if dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get("CMC_DIST_TIMEOUT", "600")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timeout)


@contextlib.contextmanager
def interrupts(dist_info: Dist):
    """Around a run: under torchrun, SIGTERM (what torchrun sends its workers when it is stopped or a rank
    fails) raises KeyboardInterrupt as Ctrl-C does, so rank 0 saves its checkpoint; the signal handlers and
    the process group are restored and left at the end."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) if main_thread else None
    if dist_info.on and main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    ok = False
    try:
        yield
        ok = True
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old[0])
            signal.signal(signal.SIGINT, old[1])
        shutdown(together=ok)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def shutdown(together: bool = True) -> None:
    """Leave the process group; together (a run that ended normally on every rank): wait for every rank first —
    a rank tearing down while another still talks to it aborted the other (gloo: "terminate called without an
    active exception", ~1 run in 5 of tests/test_distributed.py). After an error a rank leaves at once: the
    others may never reach a barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def rank_device(dist_info: Dist, device: torch.device) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK) when the run is on CUDA."""
    if dist_info.on and device.type == "cuda":
        return torch.device("cuda", dist_info.local_rank)
    return device


def shard_template(model, device: torch.device) -> None:
    """FSDP2 on the frozen template: each decoder layer, the embeddings, the trunk, the output head and the
    root, bf16 compute on GPU, resharded after each forward. A template whose output head is tied to its
    embeddings has only its decoder layers sharded (the tied matrix, used both inside and outside the
    trunk's forward, stays whole on every rank). The template is never trained: requires_grad_(False) and
    eval() first."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.requires_grad_(False)
    model.eval()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else None
    kw = {"reshard_after_forward": True, **({"mp_policy": mp} if mp is not None else {})}
    trunk = model.get_decoder()
    layers = getattr(trunk, "layers", None)
    if layers is None:
        raise CmcError(f"cannot shard the template: {type(trunk).__name__} has no `layers`; train it on one process")
    for layer in layers:
        fully_shard(layer, **kw)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is emb.weight:
        return
    fully_shard(emb, **kw)
    fully_shard(head, **kw)
    fully_shard(trunk, **kw)
    fully_shard(model, **kw)


def load_template_sharded(path, dtype, device: torch.device):
    """The template of a Hugging Face safetensors directory, sharded with FSDP2 without ever being whole on a
    rank: the model is built with its parameters on the meta device (buffers real), sharded, then each
    rank reads only its rows of each weight from the safetensors files. None when the directory is not
    such a checkpoint or its tensor names do not match the model's (the caller loads it whole, then shards)."""
    from pathlib import Path

    from accelerate import init_empty_weights
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not (path / "config.json").is_file() or not files:
        return None
    index = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            index.update({k: f for k in sf.keys()})
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    model.tie_weights()  # as from_pretrained does: a tied head is the embeddings' matrix, saved once
    names = [n for n, _ in model.named_parameters()]
    if any(n not in index for n in names):
        return None
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    shard_template(model, device)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gave the head and the embeddings a tensor each
    with torch.no_grad():
        for name, p in model.named_parameters():
            with safe_open(str(index[name]), "pt") as sf:
                sl = sf.get_slice(name)
                if isinstance(p, DTensor):  # FSDP2 shards dim 0 as torch.chunk does
                    local = p.to_local()
                    rows = -(-p.shape[0] // p.device_mesh.size())
                    start = min(p.shape[0], p.device_mesh.get_local_rank() * rows)
                    if local.shape[0]:
                        local.copy_(sl[start:start + local.shape[0]].to(local.dtype))
                else:
                    p.copy_(sl[:].to(p.dtype))
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name].to(b.device))
    model.requires_grad_(False)
    model.eval()
    return model


def load_template(text: str, dtype, device: torch.device, dist_info: Dist):
    """The frozen template as a LoadedModel: in one process load_lm's; under torchrun sharded, read shard by
    shard (load_template_sharded) when it is a safetensors directory, else loaded whole, then sharded."""
    import logging

    from cmc_cli.engine.models import load_lm, load_vocab_only

    if not dist_info.on:
        return load_lm(text, dtype=dtype, device=str(device))
    lm = load_vocab_only(text, 0)
    model = load_template_sharded(lm.path, dtype, device) if lm.path is not None and lm.path.is_dir() else None
    if model is None:
        logging.getLogger(__name__).warning("template %s: not a safetensors checkpoint whose names match its model; "
                                            "loading it whole on every rank, then sharding it", text)
        lm = load_lm(text, dtype=dtype, device=str(device))
        shard_template(lm.model, device)
        return lm
    lm.model, lm.n_logits = model, None
    return lm
