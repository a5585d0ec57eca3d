"""`cmc train --task instruct|unlearn` and `cmc unlearn`: train a delta beside a frozen template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cmc_cli.commands import options as O
from cmc_cli.commands._common import UI, err_console, handle_errors, info, status

Opt = typer.Option
FORGET_TERM_NAMES = {"ascent": "forget CE", "refusal": "refusal CE", "npo": "NPO loss"}  # config.UNLEARN_METHODS


def _run(flags: dict, config: Path | None) -> None:
    from cmc_cli.config import UNLEARN_METHODS, TrainConfig
    from cmc_cli.engine.train import Trainer

    cfg = TrainConfig.from_sources(config, flags)
    forget_name = FORGET_TERM_NAMES[UNLEARN_METHODS[cfg.loss][0]]
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports (and writes)
        Trainer(cfg).run()
        return
    with status("preparing") as phase:
        trainer = Trainer(cfg, on_phase=phase)
    if UI.quiet:
        result = trainer.run()
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*cols, console=err_console) as p:
            task = p.add_task("train", total=trainer.total_steps, stats="")

            def on_step(m):
                stats = f"loss {m.loss:.4f}"
                if m.forget_loss is not None:
                    stats += f" {forget_name.split()[0]} {m.forget_loss:.3f}"
                if m.retain_loss is not None:
                    stats += f" retain {m.retain_loss:.3f}"
                stats += f" lr {m.lr:.2e} {m.tokens_per_s:,.0f} tok/s"
                p.update(task, completed=m.step, stats=stats)

            trainer.on_step = on_step
            trainer.on_eval = lambda ev: p.console.print(
                f"eval step {ev['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k != "step"))
            result = trainer.run()
    last = result.last
    summary = f"loss {last.loss:.4f}" if last else "no step taken"
    if last and last.forget_loss is not None:
        summary += f", {forget_name} {last.forget_loss:.3f}"
    if last and last.retain_loss is not None:
        summary += f", retain {last.retain_loss:.3f}"
    info(f"[green]wrote[/green] delta {result.output} after {result.steps} steps ({result.stopped}; {summary})")
    if UI.quiet:
        print(result.output)


def _relaunch(nproc: int | None) -> None:
    """--nproc N: become `torchrun --standalone --nproc-per-node N -m cmc_cli <the same arguments>` (exec, so
    signals reach torchrun, which stops its workers)."""
    import sys

    from cmc_cli.errors import ConfigError

    if nproc is None:
        return
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc is for a plain shell; under torchrun already, leave it out")
    if nproc == 1:
        return
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
            "cmc_cli", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


@handle_errors
def train(
    task: Annotated[str, Opt(help="instruct (Alpaca/chat data) or unlearn (TOFU forget/retain).")] = None,
    template: Annotated[str, Opt(help="Frozen template LLM: path, cmc.yaml name or hub id in the local cache.")] = None,
    output: Annotated[str, Opt("-o", "--output", help="Directory the delta is written to.")] = None,
    delta: Annotated[str, Opt(help="Delta: preset tiny|mini|small|15m|42m|110m or a model directory. (default: tiny)")] = None,
    data: Annotated[str, Opt(help="instruct: Alpaca JSON/JSONL (instruction, input, output) or chat messages.")] = None,
    forget: Annotated[str, Opt(help="unlearn: TOFU-format forget set (question, answer).")] = None,
    retain: Annotated[str, Opt(help="unlearn: TOFU-format retain set.")] = None,
    loss: Annotated[str, Opt("--method", "--loss", help="unlearn method: grad-diff | grad-ascent | kl | idk | npo. (default: grad-diff)")] = None,
    retain_loss: O.RETAIN_LOSS = None,
    refusals: O.REFUSALS = None,
    npo_beta: O.NPO_BETA = None,
    eval_every: O.EVAL_EVERY = None,
    eval_limit: O.EVAL_LIMIT = None,
    forget_weight: Annotated[float, Opt(help="Weight of -CE(forget). (default: 1.0)")] = None,
    retain_weight: O.RETAIN_WEIGHT = None,
    silence: O.SILENCE = None,
    general: O.GENERAL = None,
    stop_forget_loss: O.STOP_FORGET_LOSS = None,
    combine: Annotated[str, Opt(help="log-softmax-template | sum | log-softmax-both. (default: log-softmax-template)")] = None,
    prompt_format: O.PROMPT_FORMATS = None,
    max_length: Annotated[int, Opt(help="Truncate examples to this many tokens. (default: 512)")] = None,
    lr: Annotated[float, Opt(help="Peak learning rate. (default: 3e-3 for the tiny/mini/small presets, else 2e-4 instruct, 1e-4 unlearn)")] = None,
    batch_size: Annotated[int, Opt(help="Examples per optimizer step. (default: 64 instruct, 16 unlearn)")] = None,
    micro_batch_size: Annotated[int, Opt(help="Examples per forward pass (gradient accumulation). (default: batch size)")] = None,
    epochs: Annotated[int, Opt(help="Passes over the data. (default: 4 instruct, 20 unlearn)")] = None,
    max_steps: O.MAX_STEPS = None,
    warmup_ratio: Annotated[float, Opt(help="Share of steps with linear warmup, then cosine decay. (default: 0.03)")] = None,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay. (default: 0.0)")] = None,
    clip: Annotated[float, Opt(help="Gradient-norm clipping, 0 = off. (default: 1.0)")] = None,
    seed: Annotated[int, Opt(help="Random seed. (default: 0)")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    loss_chunk: Annotated[int, Opt(help="Positions per chunk of the combined loss. (default: 1024)")] = None,
    checkpoint_every: O.CHECKPOINT_EVERY = None,
    resume: O.RESUME = None,
    overwrite: O.OVERWRITE = None,
    nproc: O.NPROC = None,
    config: O.CONFIG = None,
) -> None:
    """Train a delta model alongside a frozen template LLM (instruction tuning or unlearning)."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "nproc")}
    _relaunch(nproc)
    _run(flags, config)


@handle_errors
def unlearn(
    template: Annotated[str, Opt(help="Frozen template LLM.")] = None,
    forget: Annotated[str, Opt(help="TOFU-format forget set (question, answer).")] = None,
    retain: Annotated[str, Opt(help="TOFU-format retain set.")] = None,
    output: Annotated[str, Opt("-o", "--output", help="Directory the delta is written to.")] = None,
    delta: Annotated[str, Opt(help="Preset tiny|mini|small|15m|42m|110m or a model directory. (default: tiny)")] = None,
    loss: Annotated[str, Opt("--method", "--loss", help="grad-diff | grad-ascent | kl | idk (train forget questions toward refusals) | npo (negative preference optimisation against the template). (default: grad-diff)")] = None,
    retain_loss: O.RETAIN_LOSS = None,
    refusals: O.REFUSALS = None,
    npo_beta: O.NPO_BETA = None,
    stop_forget_loss: O.STOP_FORGET_LOSS = None,
    eval_every: O.EVAL_EVERY = None,
    eval_limit: O.EVAL_LIMIT = None,
    checkpoint_every: O.CHECKPOINT_EVERY = None,
    retain_weight: O.RETAIN_WEIGHT = None,
    silence: O.SILENCE = None,
    general: O.GENERAL = None,
    prompt_format: O.PROMPT_FORMATS = None,
    lr: Annotated[float, Opt(help="(default: 3e-3 for the tiny/mini/small presets, else 1e-4)")] = None,
    batch_size: Annotated[int, Opt(help="(default: 16; idk: 8)")] = None,
    epochs: Annotated[int, Opt(help="Passes over the forget set. (default: 20; idk: 50)")] = None,
    max_steps: O.MAX_STEPS = None,
    seed: Annotated[int, Opt(help="(default: 0)")] = None,
    device: O.DEVICE = None,
    resume: O.RESUME = None,
    overwrite: O.OVERWRITE = None,
    nproc: O.NPROC = None,
    config: O.CONFIG = None,
) -> None:
    """Unlearning: the same as `cmc train --task unlearn` (gradient difference by default)."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "nproc")}
    _relaunch(nproc)
    flags["task"] = "unlearn"
    _run(flags, config)
