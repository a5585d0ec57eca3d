"""One training run of a Trainer, part by part: the output directory, resuming, the metrics files, the
evaluation schedule (and the stopping rule it decides), checkpoints and interrupts. Trainer.run() calls
TrainRun(trainer).run(); the step itself is Trainer._train_step."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

from cmc_cli.engine import trainout
from cmc_cli.engine.checkpoint import check_same_run, load_checkpoint, save_checkpoint, tidy_checkpoint_dir
from cmc_cli.engine.delta import count_parameters
from cmc_cli.engine.trainstep import lr_at
from cmc_cli.errors import CmcError
from cmc_cli.fileio import atomic_write_text

log = logging.getLogger(__name__)


class TrainRun:
    def __init__(self, trainer):
        self.tr, self.cfg, self.out = trainer, trainer.cfg, trainer.out
        self.writer = trainer.dist.main  # only rank 0 writes
        self.ckpt_dir = self.out / "checkpoints" / "last"
        self.metrics = self.out / "metrics.jsonl"
        self.history: list = []
        self.step, self.stopped = 0, "completed"
        self.t0, self.seen = time.perf_counter(), 0  # tokens trained on in this process, for tokens/s

    def run(self):
        from cmc_cli.engine.train import TrainResult

        start = self.begin()
        self.t0 = time.perf_counter()
        try:
            for epoch in range(self.cfg.epochs):
                if self.epoch(epoch, start):
                    break
        except KeyboardInterrupt:
            self.interrupted()
        self.finish()
        return TrainResult(self.out, self.step, self.stopped, self.history[-1] if self.history else None, self.history)

    def begin(self) -> int:
        """The output directory, a resumed state, the config and metrics files, the first evaluation;
        returns the step to start from."""
        tr = self.tr
        try:
            if self.writer:
                self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CmcError(f"cannot write --output {self.out}: {e.strerror or e}; choose a writable directory") from None
        start = self.resume() if self.cfg.resume else 0
        if self.writer:
            trainout.write_config(tr)
            atomic_write_text(self.metrics, "".join(json.dumps(m.as_dict()) + "\n" for m in self.history))
        log.info("delta: %d parameters; %d steps", count_parameters(tr.delta), tr.total_steps)
        if tr.eval_every:
            if self.writer:
                atomic_write_text(self.out / "evals.jsonl", "".join(json.dumps(e) + "\n" for e in tr.evaluations))
            if not tr.evaluations:
                self.evaluate_at(start)
        return start

    def resume(self) -> int:
        """The delta, optimizer, history and evaluations of --resume (its options and data must be this run's)."""
        from cmc_cli.engine.train import StepMetrics

        tr, rdir = self.tr, Path(self.cfg.resume)
        if self.writer and rdir.resolve() == self.out.resolve():  # our own output, under our lock: undo a killed save
            tidy_checkpoint_dir(rdir / "checkpoints" / "last")
        tr.dist.barrier()
        rdir = rdir / "checkpoints" / "last" if (rdir / "checkpoints" / "last").is_dir() else rdir
        progress = load_checkpoint(rdir, tr.delta, tr.optimizer)
        check_same_run(progress.get("config"), self.cfg.to_dict(), rdir)  # options first: they explain data changes
        if progress.get("data_hashes") != tr.data_hashes:
            raise CmcError(f"cannot resume from {rdir}: the data files differ from the run that wrote it")
        try:
            self.history = [StepMetrics(**m) for m in progress.get("history", [])]
        except TypeError as e:
            raise CmcError(f"{rdir / 'progress.json'} is damaged or was edited: its history does not read as "
                           f"step metrics ({e}); restore it or start a new run") from None
        tr.evaluations = list(progress.get("evaluations", []))
        tr.phase(f"resumed at step {progress['step']} from {rdir}")
        return progress["step"]

    def epoch(self, epoch: int, start: int) -> bool:
        """One epoch's steps (those before `start` were done before an interruption); True when the run ends."""
        tr = self.tr
        for main, retain, general in tr._batches(epoch):
            if self.step >= tr.total_steps:
                break
            if self.step < start:
                self.step += 1
                continue
            m = tr._train_step(self.step, epoch, lr_at(self.step, tr.total_steps, self.cfg.lr, tr.warmup), main, retain, general)
            self.step += 1  # the optimizer has stepped: from here on a checkpoint is at `step`
            self.record(m)
            if tr.eval_every and (self.step % tr.eval_every == 0 or self.step == tr.total_steps) and self.evaluate_at(self.step):
                self.stopped = "stop-forget-loss"
                return True
        return self.step >= tr.total_steps

    def record(self, m) -> None:
        """A step's metrics: the history, metrics.jsonl, the callback, and a checkpoint every --checkpoint-every."""
        self.seen += m.tokens
        m.tokens_per_s = self.seen / max(1e-9, time.perf_counter() - self.t0)
        self.history.append(m)
        if not self.writer:
            return
        with self.metrics.open("a") as f:
            f.write(json.dumps(m.as_dict()) + "\n")
        self.tr.on_step(m)
        if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            save_checkpoint(self.ckpt_dir, self.tr.delta, self.tr.optimizer, self.progress())

    def progress(self) -> dict:
        tr = self.tr
        return {"step": self.step, "data_hashes": tr.data_hashes, "history": [m.as_dict() for m in self.history],
                "evaluations": tr.evaluations, "config": self.cfg.to_dict()}

    def evaluate_at(self, s: int) -> bool:
        """Evaluate on the whole sets (evals.jsonl, the callback); True when the stopping criterion is met."""
        tr = self.tr
        ev = {"step": s, **tr.evaluate()}
        tr.evaluations.append(ev)
        if self.writer:
            with (self.out / "evals.jsonl").open("a") as f:
                f.write(json.dumps(ev) + "\n")
            tr.on_eval(ev)
        return self.cfg.stop_forget_loss is not None and ev.get("forget_ce", -math.inf) >= self.cfg.stop_forget_loss

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: save a checkpoint at the last finished step (a second signal cannot cut it short)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.writer:
            save_checkpoint(self.ckpt_dir, self.tr.delta, self.tr.optimizer, self.progress())
        raise CmcError(f"interrupted at step {self.step}"
                       + (f"; checkpoint saved, continue with --resume {self.out}" if self.writer else "")) from None

    def finish(self) -> None:
        """The stop reason, a last evaluation (the written delta is always an evaluated one), the checkpoint
        and the delta; every rank returns once it is written."""
        tr, cfg = self.tr, self.cfg
        if cfg.max_steps and self.step >= cfg.max_steps and self.step < tr.steps_per_epoch * cfg.epochs:
            self.stopped = "max-steps"
        if tr.eval_every and (not tr.evaluations or tr.evaluations[-1]["step"] != self.step):
            self.evaluate_at(self.step)
        if self.writer:
            save_checkpoint(self.ckpt_dir, tr.delta, tr.optimizer, self.progress())
            trainout.write_delta(tr, self.history, self.stopped, self.step)
        tr.dist.barrier()
