"""Train a delta beside a frozen template (DESIGN.md): instruction tuning and unlearning.

The Trainer builds the run from a TrainConfig (template through engine/distributed.load_template), orders the
data, checkpoints and resumes; the step's seams (template forward, chunked combined losses, optimizer
step) are engine/trainstep.py's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmc_cli.assets import asset_prompt_format
from cmc_cli.config import UNLEARN_METHODS, TrainConfig
from cmc_cli.data.instruct import Encoded, bos_ids, collate, encode, load_instruct, load_tofu
from cmc_cli.engine.combine import FORGET_SIGNS, IGNORE, npo_loss, npo_sequence_weights, unlearning_loss
from cmc_cli.engine.delta import delta_for_training
from cmc_cli.engine.devices import pick_device, pick_dtype
from cmc_cli.engine.heads import final_hidden
from cmc_cli.engine.trainstep import (chunked_nll, chunked_terms, chunked_weighted_nll, delta_step,
                                      sequence_logratio, template_hidden)
from cmc_cli.errors import CmcError, NonFiniteLoss
from cmc_cli.fileio import sha256_file

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
    silence: float | None = None  # the silence term's value (retain + general text), before its weight
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
        # the formats the delta learns (each example in each); the first is the one a user's format does not choose
        self.prompt_formats = cfg.prompt_formats() or [asset_prompt_format(lm.path) or self.adapter.default_prompt_format]
        self.prompt_format = self.prompt_formats[0]
        self.pad_id = lm.pad_id
        self.phase("reading data")
        self.data_hashes: dict[str, str] = {}
        if cfg.task == "instruct":
            self.train_set = self._encode(cfg.data, load_instruct)
            self.retain_set: list[Encoded] = []
        else:
            forget = self._load(cfg.forget, load_tofu)
            # the true answers are what is measured; idk trains on the same questions with refusals
            self.forget_eval = self._in_formats(forget)
            self.train_set = self._refusal_set(forget) if cfg.loss == "idk" else self.forget_eval
            self.retain_set = self._encode(cfg.retain, load_tofu) if cfg.retain and cfg.retain_term() else []
            self.retain_eval = self.retain_set or (self._encode(cfg.retain, load_tofu) if cfg.retain else [])
            if cfg.silence and not self.retain_set:  # silent on the retain answers even without a retain term
                self.retain_set = self.retain_eval
        self.bos = bos_ids(self.tokenizer)
        self.general_set = self._general(lm) if cfg.silence else []
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

    def _general(self, lm) -> list[Encoded]:
        """The silence term's general text: --general's paragraphs, else the template's own samples."""
        from cmc_cli.data.general import encode_general, read_plain_text
        from cmc_cli.engine.general import template_samples

        cfg = self.cfg
        if cfg.general:
            return encode_general(self._load(cfg.general, read_plain_text), self.tokenizer, cfg.general_length,
                                  str(cfg.general))
        self.phase(f"sampling {cfg.general_samples} general texts from the template")
        out, digest = template_samples(lm, cfg.general_samples, cfg.general_length, cfg.seed, self.device, self.dist)
        self.data_hashes["general:template-samples"] = digest
        return out

    def _refusal_set(self, forget: list) -> list[Encoded]:
        """idk: each forget question paired with a refusal answer (drawn from the list by the seed)."""
        from cmc_cli.data.refusals import load_refusals, pair_refusals

        refusals = load_refusals(self.cfg.refusals)
        if self.cfg.refusals:
            self.data_hashes[str(self.cfg.refusals)] = sha256_file(self.cfg.refusals)
        return self._in_formats(pair_refusals(forget, refusals, self.cfg.seed))

    def _load(self, path, loader) -> list:
        """The file's examples; its sha256 goes into the run's record (resume checks it)."""
        self.data_hashes[str(path)] = sha256_file(path)
        return loader(path)

    def _encode(self, path, loader) -> list[Encoded]:
        return self._in_formats(self._load(path, loader))

    def _in_formats(self, examples: list) -> list[Encoded]:
        """The examples encoded in each prompt format, one format after the other."""
        return [e for f in self.prompt_formats for e in encode(examples, self.tokenizer, f, self.cfg.max_length)]

    def _make_delta(self):
        v_template = self.template.get_output_embeddings().weight.shape[0]
        return delta_for_training(self.cfg.delta, v_template, self.template_vocab.fingerprint, self.cfg.max_length,
                                  self.cfg.seed, self.tokenizer, self.pad_id)

    # -- data order: a permutation per epoch from the seed, so a resumed run sees the same batches --
    def _order(self, n: int, epoch: int, salt: int = 0) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch * 7919 + salt)
        return torch.randperm(n, generator=g).tolist()

    def _batches(self, epoch: int):
        """Per step: the training examples, and as many retain and general-text examples (cycled)."""
        cfg = self.cfg
        order = self._order(len(self.train_set), epoch)
        others = [(pool, self._order(len(pool), epoch, salt=salt)) for salt, pool in ((1, self.retain_set),
                                                                                   (2, self.general_set))]
        for b in range(self.steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            main = [self.train_set[i] for i in idx]
            start = b * cfg.batch_size
            retain, general = ([pool[o[(start + k) % len(o)]] for k in range(len(idx))] if o else [] for pool, o in others)
            yield main, retain, general

    def _to_device(self, examples: list[Encoded]) -> dict:
        return {k: v.to(self.device) for k, v in collate(examples, self.pad_id).items()}

    def _loss_terms(self, examples: list[Encoded], kind: str, n_total: int, weight: float,
                    silence: float) -> tuple[torch.Tensor, dict]:
        """Backward-ready loss share of a micro-batch (already divided by the step's token count) and its
        parts' sums; kind nll | kl | silence (the delta alone: no template forward)."""
        batch = self._to_device(examples)
        h_t, h_d = self._hidden(batch, template=kind != "silence")
        total, parts = chunked_terms(self.template, self.delta, h_t, h_d, batch["targets"], kind, weight, silence,
                                     self.cfg.combine, self.cfg.loss_chunk)
        return total / n_total, parts

    def _hidden(self, batch: dict, template: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The one template + delta forward of training, NPO and evaluation: the frozen template's final hidden
        states (None without `template`) and the delta's, under the same autocast."""
        h_t = template_hidden(self.template, batch, self.sharded) if template else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            h_d = final_hidden(self.delta, batch["input_ids"], batch["attention_mask"])
        return h_t, h_d

    def _npo(self, examples: list[Encoded], weight: float) -> float:
        """NPO's forget term (combine.npo_loss) over the step's forget examples, in micro-batches; its gradient
        through the NLL-shaped surrogate of combine.npo_sequence_weights. Returns the loss value."""
        cfg, mb, n = self.cfg, self.cfg.micro_batch_size, len(examples)  # n: the global batch's sequences
        mine = self.dist.shard(examples)
        value = 0.0
        for s in range(0, len(mine), mb):
            batch = self._to_device(mine[s:s + mb])
            h_t, h_d = self._hidden(batch)
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
        whole sets (or their first --eval-limit examples): what stopping and selection decide on; the delta in
        eval mode (no dropout) for the pass, as training left it after."""
        was_training = self.delta.training
        self.delta.eval()
        try:
            return self._evaluate()
        finally:
            self.delta.train(was_training)

    def _evaluate(self) -> dict:
        cfg, out = self.cfg, {}
        for name, data in (("forget_ce", self.forget_eval), ("retain_ce", self.retain_eval)):
            data = data[:cfg.eval_limit] if cfg.eval_limit else data
            if not data:
                continue
            total, count = 0.0, 0
            data = data[self.dist.rank::self.dist.world]  # each rank a share; the sums are added over ranks
            for s in range(0, len(data), cfg.micro_batch_size):
                batch = self._to_device(data[s:s + cfg.micro_batch_size])
                h_t, h_d = self._hidden(batch)
                nll, k = chunked_nll(self.template, self.delta, h_t, h_d, batch["targets"], cfg.combine, cfg.loss_chunk)
                total, count = total + float(nll), count + k
            total, count = self.dist.sum_floats(total, count)
            out[name] = total / max(1, count)
        return out

    def _accumulate(self, examples: list[Encoded], kind: str, weight: float, silence: float = 0.0) -> dict[str, float]:
        """Forward/backward of one side of a step (weight * its loss + silence * the silence term), in
        micro-batches; returns each part's mean per counted token over the global batch."""
        mb = self.cfg.micro_batch_size
        n_total = max(1, sum(sum(1 for y in e.labels[1:] if y != IGNORE) for e in examples))  # of the global batch
        mine = self.dist.shard(examples)
        sums = [0.0, 0.0]
        for s in range(0, len(mine), mb):
            loss, parts = self._loss_terms(mine[s:s + mb], kind, n_total, weight, silence)
            loss.backward()
            sums = [sums[0] + parts["main"], sums[1] + parts["silence"]]
        main, sil = self.dist.sum_floats(*sums)
        return {"main": main / n_total, "silence": sil / n_total}

    # -- main loop --
    def run(self) -> TrainResult:
        from cmc_cli.engine import distributed
        from cmc_cli.engine.trainrun import TrainRun
        from cmc_cli.fileio import OutputLock

        with distributed.interrupts(self.dist):  # under torchrun SIGTERM stops a rank as Ctrl-C does
            if not self.dist.main:  # only rank 0 writes (and holds the output's lock)
                return TrainRun(self).run()
            with OutputLock(self.out):  # a second run writing the same --output fails instead of mixing with this one
                return TrainRun(self).run()

    def _train_step(self, step, epoch, lr, main, retain, general) -> StepMetrics:
        cfg = self.cfg
        tokens = sum(len(e.input_ids) for e in main + retain + general)
        forget_loss = retain_loss = None
        silence = self._accumulate(general, "silence", 0.0, cfg.silence)["silence"] if general else 0.0
        if cfg.task == "instruct":
            loss = self._accumulate(main, "nll", 1.0)["main"]
        else:  # config.UNLEARN_METHODS: the method's forget term, then its retain term (and the silence term there)
            # each side backpropagates with its weight in combine.unlearning_loss, which then gives the step's loss
            term = UNLEARN_METHODS[cfg.loss][0]  # ascent: -CE(forget answers); refusal: CE(-> refusals); npo
            fw = FORGET_SIGNS[term] * cfg.forget_weight
            forget_loss = self._npo(main, fw) if term == "npo" else self._accumulate(main, "nll", fw)["main"]
            if retain:
                r = self._accumulate(retain, cfg.retain_term() or "silence", cfg.retain_weight, cfg.silence)
                retain_loss = r["main"] if cfg.retain_term() is not None else None
                silence += r["silence"]
            loss = unlearning_loss(term, forget_loss, retain_loss, cfg.forget_weight, cfg.retain_weight)
        loss += cfg.silence * silence
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"the loss became {loss} at step {step + 1}; the run stopped and the last good "
                                f"checkpoint in {self.out / 'checkpoints' / 'last'} is intact; lower --lr or check the data")
        self.dist.sum_grads(self.delta)  # every rank now holds the global batch's gradient
        norm = delta_step(self.delta, self.optimizer, cfg.clip, lr)
        return StepMetrics(step=step + 1, total_steps=self.total_steps, epoch=epoch + 1, lr=lr, loss=loss,
                           tokens=tokens, tokens_per_s=0.0, forget_loss=forget_loss, retain_loss=retain_loss,
                           grad_norm=norm, world_size=self.dist.world, rank_batch=cfg.batch_size // self.dist.world,
                           silence=silence if cfg.silence else None)
