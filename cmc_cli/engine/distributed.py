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

        t = torch.tensor(values, dtype=torch.float64)
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
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old[0])
            signal.signal(signal.SIGINT, old[1])
        shutdown()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
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


def is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
