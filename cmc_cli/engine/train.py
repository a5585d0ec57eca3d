"""Train a delta beside a frozen template (DESIGN.md): instruction tuning and unlearning.

The Trainer builds the run from a TrainConfig (template through engine/distributed.load_template), orders the
data, checkpoints and resumes; the step's seams (template forward, chunked combined losses, optimizer
step) are engine/trainstep.py's.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmc_cli.assets import asset_prompt_format
from cmc_cli.config import UNLEARN_METHODS, TrainConfig
from cmc_cli.data.instruct import Encoded, bos_ids, collate, encode, load_instruct, load_tofu
from cmc_cli.engine.checkpoint import check_same_run, load_checkpoint, save_checkpoint, tidy_checkpoint_dir
from cmc_cli.engine.combine import FORGET_SIGNS, IGNORE, npo_loss, npo_sequence_weights, unlearning_loss
from cmc_cli.engine.delta import count_parameters, delta_card, delta_for_training
from cmc_cli.engine.devices import pick_device, pick_dtype
from cmc_cli.engine.heads import final_hidden
from cmc_cli.engine.trainstep import (chunked_kl, chunked_nll, chunked_weighted_nll, delta_step, lr_at, sequence_logratio,
                                      template_hidden)
from cmc_cli.errors import CmcError, NonFiniteLoss
from cmc_cli.fileio import atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger(__name__)


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: int
    lr: float
    loss: float
    tokens: int
    tokens_per_s: float
    forget_loss: float | None = None
    retain_loss: float | None = None
    grad_norm: float = 0.0
    world_size: int | None = None  # processes of the run (torchrun); rank_batch: the examples each ran
    rank_batch: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TrainResult:
    output: Path
    steps: int
    stopped: str  # completed | max-steps | stop-forget-loss
    last: StepMetrics | None
    history: list[StepMetrics] = field(default_factory=list)


class Trainer:
    """Builds everything from a TrainConfig, then `run()`s. Usable from Python without the CLI."""

    def __init__(self, cfg: TrainConfig, on_step=None, on_phase=None, on_eval=None):
        self.cfg = cfg
        self.on_step = on_step or (lambda m: None)
        self.on_eval = on_eval or (lambda ev: log.info("evaluation %s", ev))
        self.phase = on_phase or (lambda msg: log.info("%s", msg))
        self.out = Path(cfg.output)
        self._setup()

    # -- setup --
    def _setup(self) -> None:
        from cmc_cli.plugins import get_adapter

        from cmc_cli.engine import distributed

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.dist = distributed.from_env()
        if self.dist.on and cfg.batch_size % self.dist.world:
            raise CmcError(f"--batch-size {cfg.batch_size} does not split over {self.dist.world} processes; give a "
                           f"multiple of {self.dist.world} (the global batch is split evenly, every rank the same share)")
        self.device = distributed.rank_device(self.dist, pick_device(cfg.device))
        distributed.init(self.dist, self.device)
        dtype = pick_dtype(cfg.dtype, self.device)
        self.phase(f"loading template {cfg.template}")
        lm = distributed.load_template(cfg.template, dtype, self.device, self.dist)  # under torchrun: sharded
        self.sharded = self.dist.on
        self.adapter = get_adapter(lm.adapter)
        self.tokenizer, self.template_vocab, self.template = lm.tokenizer, lm.vocab, lm.model
        self.prompt_format = cfg.prompt_format or asset_prompt_format(lm.path) or self.adapter.default_prompt_format
        self.pad_id = lm.pad_id
        self.phase("reading data")
        self.data_hashes: dict[str, str] = {}
        if cfg.task == "instruct":
            self.train_set = self._encode(cfg.data, load_instruct)
            self.retain_set: list[Encoded] = []
        else:
            forget = self._load(cfg.forget, load_tofu)
            # the true answers are what is measured; idk trains on the same questions with refusals
            self.forget_eval = encode(forget, self.tokenizer, self.prompt_format, cfg.max_length)
            self.train_set = self._refusal_set(forget) if cfg.loss == "idk" else self.forget_eval
            self.retain_set = self._encode(cfg.retain, load_tofu) if cfg.retain and cfg.retain_term() else []
            self.retain_eval = self.retain_set or (self._encode(cfg.retain, load_tofu) if cfg.retain else [])
        self.delta = self._make_delta().to(self.device)
        self.delta.train()
        self.optimizer = torch.optim.AdamW(self.delta.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # under torchrun a last partial batch is dropped, so that every rank runs the same forwards
        self.steps_per_epoch = (len(self.train_set) // cfg.batch_size if self.dist.on
                                else math.ceil(len(self.train_set) / cfg.batch_size))
        if self.steps_per_epoch == 0:
            raise CmcError(f"{len(self.train_set)} training examples are less than one --batch-size {cfg.batch_size} batch")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = int(cfg.warmup_ratio * self.total_steps)
        self.eval_every = (cfg.eval_every or max(1, self.total_steps // 5)) if cfg.task == "unlearn" else 0
        self.evaluations: list[dict] = []  # the last one is the delta written (selection)

    def _refusal_set(self, forget: list) -> list[Encoded]:
        """idk: each forget question paired with a refusal answer (drawn from the list by the seed)."""
        import random

        from cmc_cli.data.instruct import Example
        from cmc_cli.data.refusals import load_refusals

        refusals = load_refusals(self.cfg.refusals)
        if self.cfg.refusals:
            self.data_hashes[str(self.cfg.refusals)] = sha256_file(self.cfg.refusals)
        rng = random.Random(self.cfg.seed)
        examples = [Example(ex.prompt, rng.choice(refusals), ex.source) for ex in forget]
        return encode(examples, self.tokenizer, self.prompt_format, self.cfg.max_length)

    def _load(self, path, loader) -> list:
        """The file's examples; its sha256 goes into the run's record (resume checks it)."""
        self.data_hashes[str(path)] = sha256_file(path)
        return loader(path)

    def _encode(self, path, loader) -> list[Encoded]:
        return encode(self._load(path, loader), self.tokenizer, self.prompt_format, self.cfg.max_length)

    def _make_delta(self):
        v_template = self.template.get_output_embeddings().weight.shape[0]
        return delta_for_training(self.cfg.delta, v_template, self.template_vocab.fingerprint, self.cfg.max_length,
                                  self.cfg.seed, self.tokenizer, self.pad_id)

    # -- data order: a permutation per epoch from the seed, so a resumed run sees the same batches --
    def _order(self, n: int, epoch: int, salt: int = 0) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch * 7919 + salt)
        return torch.randperm(n, generator=g).tolist()

    def _batches(self, epoch: int):
        cfg = self.cfg
        order = self._order(len(self.train_set), epoch)
        retain_order = self._order(len(self.retain_set), epoch, salt=1) if self.retain_set else []
        for b in range(self.steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            main = [self.train_set[i] for i in idx]
            retain = []
            if retain_order:
                start = b * cfg.batch_size
                retain = [self.retain_set[retain_order[(start + k) % len(retain_order)]] for k in range(len(idx))]
            yield main, retain

    def _to_device(self, examples: list[Encoded]) -> dict:
        return {k: v.to(self.device) for k, v in collate(examples, self.pad_id).items()}

    def _loss_terms(self, examples: list[Encoded], kind: str, n_total: int) -> tuple[torch.Tensor, float]:
        """Backward-ready loss share of a micro-batch (already divided by the step's token count)."""
        batch = self._to_device(examples)
        h_t = template_hidden(self.template, batch, self.sharded)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            h_d = final_hidden(self.delta, batch["input_ids"], batch["attention_mask"])
        fn = chunked_kl if kind == "kl" else chunked_nll
        total, _ = fn(self.template, self.delta, h_t, h_d, batch["targets"], self.cfg.combine, self.cfg.loss_chunk)
        return total / n_total, float(total.detach()) / n_total

    def _npo(self, examples: list[Encoded], weight: float) -> float:
        """NPO's forget term (combine.npo_loss) over the step's forget examples, in micro-batches; its gradient
        through the NLL-shaped surrogate of combine.npo_sequence_weights. Returns the loss value."""
        cfg, mb, n = self.cfg, self.cfg.micro_batch_size, len(examples)  # n: the global batch's sequences
        mine = self.dist.shard(examples)
        value = 0.0
        for s in range(0, len(mine), mb):
            batch = self._to_device(mine[s:s + mb])
            h_t = template_hidden(self.template, batch, self.sharded)
            h_d = final_hidden(self.delta, batch["input_ids"], batch["attention_mask"])
            y = batch["targets"]
            r = sequence_logratio(self.template, self.delta, h_t, h_d.detach(), y, cfg.combine, cfg.loss_chunk)
            w = -npo_sequence_weights(r, cfg.npo_beta, n)[:, None].expand_as(y)  # (B, T)
            surrogate, _ = chunked_weighted_nll(self.template, self.delta, h_t, h_d, y, w, cfg.combine, cfg.loss_chunk)
            (weight * surrogate).backward()
            value += float(npo_loss(r, cfg.npo_beta, n))
        return self.dist.sum_floats(value)[0]

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean CE of the true forget answers and of the retain answers under the combined model, over the
        whole sets (or their first --eval-limit examples): what stopping and selection decide on."""
        cfg, out = self.cfg, {}
        for name, data in (("forget_ce", self.forget_eval), ("retain_ce", self.retain_eval)):
            data = data[:cfg.eval_limit] if cfg.eval_limit else data
            if not data:
                continue
            total, count = 0.0, 0
            data = data[self.dist.rank::self.dist.world]  # each rank a share; the sums are added over ranks
            for s in range(0, len(data), cfg.micro_batch_size):
                batch = self._to_device(data[s:s + cfg.micro_batch_size])
                h_t = template_hidden(self.template, batch, self.sharded)
                h_d = final_hidden(self.delta, batch["input_ids"], batch["attention_mask"])
                nll, k = chunked_nll(self.template, self.delta, h_t, h_d, batch["targets"], cfg.combine, cfg.loss_chunk)
                total, count = total + float(nll), count + k
            total, count = self.dist.sum_floats(total, count)
            out[name] = total / max(1, count)
        return out

    def _accumulate(self, examples: list[Encoded], kind: str, weight: float) -> float:
        """Forward/backward of one side of a step, in micro-batches; returns its mean loss."""
        mb = self.cfg.micro_batch_size
        n_total = sum(sum(1 for y in e.labels[1:] if y != IGNORE) for e in examples)  # of the global batch
        mine = self.dist.shard(examples)
        mean = 0.0
        for s in range(0, len(mine), mb):
            loss, val = self._loss_terms(mine[s:s + mb], kind, max(1, n_total))
            (weight * loss).backward()
            mean += val
        return self.dist.sum_floats(mean)[0]

    # -- main loop --
    def run(self) -> TrainResult:
        from cmc_cli.engine import distributed
        from cmc_cli.fileio import OutputLock

        with distributed.interrupts(self.dist):  # under torchrun SIGTERM stops a rank as Ctrl-C does
            if not self.dist.main:  # only rank 0 writes (and holds the output's lock)
                return self._run()
            with OutputLock(self.out):  # a second run writing the same --output fails instead of mixing with this one
                return self._run()

    def _run(self) -> TrainResult:
        cfg, writer = self.cfg, self.dist.main
        try:
            if writer:
                self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CmcError(f"cannot write --output {self.out}: {e.strerror or e}; choose a writable directory") from None
        ckpt_dir = self.out / "checkpoints" / "last"
        start_step, history = 0, []
        if cfg.resume:
            rdir = Path(cfg.resume)
            if writer and rdir.resolve() == self.out.resolve():  # our own output, under our lock: undo a killed save
                tidy_checkpoint_dir(rdir / "checkpoints" / "last")
            self.dist.barrier()
            rdir = rdir / "checkpoints" / "last" if (rdir / "checkpoints" / "last").is_dir() else rdir
            progress = load_checkpoint(rdir, self.delta, self.optimizer)
            if progress.get("data_hashes") != self.data_hashes:
                raise CmcError(f"cannot resume from {rdir}: the data files differ from the run that wrote it")
            check_same_run(progress.get("config"), cfg.to_dict(), rdir)
            start_step = progress["step"]
            try:
                history = [StepMetrics(**m) for m in progress.get("history", [])]
            except TypeError as e:
                raise CmcError(f"{rdir / 'progress.json'} is damaged or was edited: its history does not read as "
                               f"step metrics ({e}); restore it or start a new run") from None
            self.evaluations = list(progress.get("evaluations", []))
            self.phase(f"resumed at step {start_step} from {rdir}")
        metrics_path = self.out / "metrics.jsonl"
        if writer:
            self._write_config()
            atomic_write_text(metrics_path, "".join(json.dumps(m.as_dict()) + "\n" for m in history))
        log.info("delta: %d parameters; %d steps", count_parameters(self.delta), self.total_steps)

        step, stopped, t0, tokens_seen = 0, "completed", time.perf_counter(), 0

        def progress_state(s: int) -> dict:
            return {"step": s, "data_hashes": self.data_hashes, "history": [m.as_dict() for m in history],
                    "evaluations": self.evaluations, "config": cfg.to_dict()}

        def evaluate_at(s: int) -> bool:
            """Evaluate on the whole sets; True when the stopping criterion is met."""
            ev = {"step": s, **self.evaluate()}
            self.evaluations.append(ev)
            if writer:
                with (self.out / "evals.jsonl").open("a") as f:
                    f.write(json.dumps(ev) + "\n")
                self.on_eval(ev)
            return cfg.stop_forget_loss is not None and ev.get("forget_ce", -math.inf) >= cfg.stop_forget_loss

        if self.eval_every:
            if writer:
                atomic_write_text(self.out / "evals.jsonl", "".join(json.dumps(e) + "\n" for e in self.evaluations))
            if not self.evaluations:
                evaluate_at(start_step)

        try:
            for epoch in range(cfg.epochs):
                for main, retain in self._batches(epoch):
                    if step >= self.total_steps:
                        break
                    if step < start_step:  # already done before the interruption
                        step += 1
                        continue
                    lr = lr_at(step, self.total_steps, cfg.lr, self.warmup)
                    m = self._train_step(step, epoch, lr, main, retain)
                    step += 1  # the optimizer has stepped: from here on a checkpoint is at `step`
                    tokens_seen += m.tokens
                    m.tokens_per_s = tokens_seen / max(1e-9, time.perf_counter() - t0)
                    history.append(m)
                    if writer:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps(m.as_dict()) + "\n")
                        self.on_step(m)
                    if writer and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        save_checkpoint(ckpt_dir, self.delta, self.optimizer, progress_state(step))
                    if self.eval_every and (step % self.eval_every == 0 or step == self.total_steps):
                        if evaluate_at(step):
                            stopped = "stop-forget-loss"
                            break
                if stopped != "completed" or step >= self.total_steps:
                    break
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the save short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if writer:
                save_checkpoint(ckpt_dir, self.delta, self.optimizer, progress_state(step))
            raise CmcError(f"interrupted at step {step}" + (f"; checkpoint saved, continue with --resume {self.out}" if writer else "")) from None
        if cfg.max_steps and step >= cfg.max_steps and step < self.steps_per_epoch * cfg.epochs:
            stopped = "max-steps"
        if self.eval_every and (not self.evaluations or self.evaluations[-1]["step"] != step):
            evaluate_at(step)  # the written delta is always an evaluated one
        if writer:
            save_checkpoint(ckpt_dir, self.delta, self.optimizer, progress_state(step))
            self._write_delta(history, stopped, step)
        self.dist.barrier()  # every rank returns once the delta is written
        return TrainResult(self.out, step, stopped, history[-1] if history else None, history)

    def _train_step(self, step, epoch, lr, main, retain) -> StepMetrics:
        cfg = self.cfg
        tokens = sum(len(e.input_ids) for e in main + retain)
        forget_loss = retain_loss = None
        if cfg.task == "instruct":
            loss = self._accumulate(main, "nll", 1.0)
        else:  # config.UNLEARN_METHODS: the method's forget term, then its retain term
            # each side backpropagates with its weight in combine.unlearning_loss, which then gives the step's loss
            term = UNLEARN_METHODS[cfg.loss][0]  # ascent: -CE(forget answers); refusal: CE(-> refusals); npo
            fw = FORGET_SIGNS[term] * cfg.forget_weight
            forget_loss = self._npo(main, fw) if term == "npo" else self._accumulate(main, "nll", fw)
            if cfg.retain_term() is not None:
                retain_loss = self._accumulate(retain, cfg.retain_term(), cfg.retain_weight)
            loss = unlearning_loss(term, forget_loss, retain_loss, cfg.forget_weight, cfg.retain_weight)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"the loss became {loss} at step {step + 1}; the run stopped and the last good "
                                f"checkpoint in {self.out / 'checkpoints' / 'last'} is intact; lower --lr or check the data")
        self.dist.sum_grads(self.delta)  # every rank now holds the global batch's gradient
        norm = delta_step(self.delta, self.optimizer, cfg.clip, lr)
        return StepMetrics(step=step + 1, total_steps=self.total_steps, epoch=epoch + 1, lr=lr, loss=loss,
                           tokens=tokens, tokens_per_s=0.0, forget_loss=forget_loss, retain_loss=retain_loss,
                           grad_norm=norm, world_size=self.dist.world, rank_batch=cfg.batch_size // self.dist.world)

    # -- outputs --
    def _write_config(self) -> None:
        import yaml

        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _selection(self) -> dict:
        """cmc.json's record of which whole-set evaluation the written weights come from."""
        stop = self.cfg.stop_forget_loss
        criterion = f"first evaluation with forget CE >= {stop}" if stop is not None else "the last evaluation"
        return {"criterion": criterion, "every": self.eval_every, "evaluated": self.evaluations[-1]}

    def _write_delta(self, history: list[StepMetrics], stopped: str, steps: int) -> None:
        self.delta.save_pretrained(str(self.out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(self.out))
        last = history[-1].as_dict() if history else {}
        atomic_write_json(self.out / "cmc.json", delta_card(
            task=self.cfg.task,
            loss=self.cfg.loss if self.cfg.task == "unlearn" else "ce",
            combine=self.cfg.combine,
            prompt_format=self.prompt_format,
            bos=bos_ids(self.tokenizer),
            template={"ref": self.cfg.template, "adapter": self.adapter.name,
                      "fingerprint": self.template_vocab.fingerprint, "vocab_size": self.template_vocab.size},
            data=self.data_hashes,
            **({"selection": self._selection()} if self.eval_every else {}),
            parameters=count_parameters(self.delta),
            distributed={"world_size": self.dist.world, "rank_batch": self.cfg.batch_size // self.dist.world},
            steps=steps,
            stopped=stopped,
            final=last,
        ))
