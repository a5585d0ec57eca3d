"""`cmc generate` as a library call: load the models, decode the prompts in batches, and write one JSONL
record per prompt as each batch finishes, so an interrupted run keeps what it finished and `resume`
continues after it.

Output records (AlpacaEval-compatible): instruction, output, generator, plus finish_reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.config import DeltaSpec, GenerateConfig
from cmc_cli.config.runs import AUTO
from cmc_cli.data.instruct import Prompt, load_prompts
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import LoadedModel, load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.devices import pick_device, pick_dtype
from cmc_cli.errors import CmcError, TokenMapError
from cmc_cli.fileio import OutputLock, append_jsonl, read_jsonl_for_resume

log = logging.getLogger(__name__)


def load_decoder(cfg: GenerateConfig, on_phase=None) -> Decoder:
    dec = build_decoder(cfg.user, cfg.deltas, cfg.token_maps, alpha=cfg.alpha, expert=cfg.expert,
                        anti_expert=cfg.anti_expert, user_format=cfg.user_format, combine=cfg.combine,
                        device=cfg.device, dtype=cfg.dtype, on_phase=on_phase)
    dec.suppress_ids(cfg.suppress)  # names an unknown --suppress token before anything runs
    return dec


def build_decoder(user_ref: str | LoadedModel, deltas: list[DeltaSpec], token_maps: list[Path] = (), alpha: float | None = None,
                  expert: str | None = None, anti_expert: str | None = None, user_format: str = "auto",
                  combine: str | None = None, device: str = "auto", dtype: str = "auto", on_phase=None) -> Decoder:
    """Load (or reuse) the user model, the deltas with their token maps, and a proxy-tuning pair."""
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    phase = on_phase or (lambda msg: log.info("%s", msg))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    missing = [s.path for s in deltas if not s.path.is_dir()]
    if missing:
        raise CmcError(f"delta {missing[0]} does not exist; train one with `cmc train` or give a delta directory")
    maps = [(p, TokenMap.load(p)) for p in token_maps]
    if isinstance(user_ref, LoadedModel):
        user = user_ref
    else:
        phase(f"loading user model {user_ref}")
        user = load_lm(user_ref, dtype=dt, device=str(dev))
    loaded = []
    for spec in deltas:
        phase(f"loading delta {spec.path}")
        a = alpha if spec.alpha is None else spec.alpha  # None (neither given): calibrated, else DEFAULT_ALPHA
        loaded.append(load_delta(spec.path, user, a, [m for _, m in maps], device=str(dev), dtype=dt))
    used = {id(d.token_map) for d in loaded}
    cross = [d for d in loaded if d.token_map is not None]
    for path, m in maps:
        if id(m) in used:
            continue
        if not cross:
            log.info("token map %s is not needed: every delta has the user's vocabulary", path)
            continue
        m.check(delta=cross[0].lm.vocab, user=user.vocab, path=path)  # raises, naming both tokenizers
        raise TokenMapError(f"token map {path} fits none of the deltas")  # pragma: no cover - check raised
    ex = anti = None
    if expert:
        phase(f"loading proxy-tuning expert {expert} and anti-expert {anti_expert}")
        ex = load_lm(expert, dtype=dt, device=str(dev))
        anti = load_lm(anti_expert, dtype=dt, device=str(dev))
    return Decoder(user, loaded, expert=ex, anti_expert=anti, proxy_alpha=1.0 if alpha in (None, AUTO) else alpha,
                   user_format=user_format,
                   combine=combine)


def generator_name(dec: Decoder) -> str:
    parts = [dec.user.name] + [f"{d.lm.name}@{d.alpha:g}" for d in dec.deltas]
    if dec.expert is not None:
        parts.append(f"proxy({dec.expert.name}-{dec.anti_expert.name})@{dec.proxy_alpha:g}")
    return "+".join(parts)


class JsonlSink:
    """Appends finished records; on resume checks the file belongs to this run and drops a torn last line."""

    def __init__(self, path: Path, prompts: list[Prompt], generator: str, resume: bool, decoding: dict | None = None):
        self.path = path
        self.done = 0
        self.decoding = decoding or {}
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise CmcError(f"{path} already exists; pass --resume to continue it, or choose another --output")
            self.done = self._validate(prompts, generator)
        elif resume:
            log.info("%s does not exist yet; starting from the first prompt", path)

    def _validate(self, prompts: list[Prompt], generator: str) -> int:
        records = read_jsonl_for_resume(self.path)
        for i, (n, rec) in enumerate(records):
            if i >= len(prompts) or rec.get("instruction") != prompts[i].instruction:
                raise CmcError(f"{self.path}:{n} does not match prompt {i + 1} of the prompt file; "
                               "it was written for other prompts: choose another --output")
            if rec.get("generator") != generator:
                raise CmcError(f"{self.path}:{n} was written by generator '{rec.get('generator')}', not "
                               f"'{generator}'; choose another --output or the same models and alphas")
            was = rec.get("decoding")
            if isinstance(was, dict):  # records from before the settings were recorded carry none
                diff = [k for k in self.decoding if k in was and was[k] != self.decoding[k]]
                if diff:
                    shown = ", ".join(f"--{k.replace('_', '-')} {was[k]!r} (now {self.decoding[k]!r})" for k in diff)
                    raise CmcError(f"{self.path}:{n} was decoded with {shown}; resume with the same options, "
                                   "or choose another --output")
        return len(records)

    def write(self, records: list[dict]) -> None:
        append_jsonl(self.path, records)


@dataclass
class GenerateResult:
    records: list[dict] = field(default_factory=list)  # this run's
    skipped: int = 0  # already in the output (resume)
    generated_tokens: int = 0
    seconds: float = 0.0
    delta_tokens_per_token: list[float] = field(default_factory=list)
    generator: str = ""


def read_prompts(cfg: GenerateConfig) -> list[Prompt]:
    """The prompts of a run, with the checks that need no model (run them before loading models)."""
    prompts = load_prompts(cfg.prompts) if cfg.prompts else [Prompt(cfg.prompt, cfg.prompt, "--prompt")]
    out = Path(cfg.output) if cfg.output else None
    if out is not None:
        if out.is_dir():
            raise CmcError(f"--output {out} is a directory; give a .jsonl file path")
        if out.exists() and out.stat().st_size > 0 and not cfg.resume:
            raise CmcError(f"{out} already exists; pass --resume to continue it, or choose another --output")
    return prompts


def run_generate(cfg: GenerateConfig, decoder: Decoder | None = None, on_phase=None, on_batch=None,
                 on_text=None, on_records=None, prompts: list[Prompt] | None = None) -> GenerateResult:
    """on_batch(done, total); on_text(text so far) streams a single prompt; on_records(list) per batch.
    `prompts` replaces the ones cfg names (the output file is still resumed as cfg says)."""
    prompts = prompts if prompts is not None else read_prompts(cfg)
    dec = decoder or load_decoder(cfg, on_phase)
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=cfg.top_k, seed=cfg.seed, stop=tuple(cfg.stop), suppress=tuple(cfg.suppress))
    name = cfg.generator or generator_name(dec)
    decoding = decoding_settings(cfg, dec)
    if not cfg.output:
        return _generate(cfg, dec, gen_cfg, name, decoding, prompts, None, on_batch, on_text, on_records)
    with OutputLock(cfg.output):  # a second run writing the same file fails instead of writing every prompt twice
        sink = JsonlSink(Path(cfg.output), prompts, name, cfg.resume, decoding)
        return _generate(cfg, dec, gen_cfg, name, decoding, prompts, sink, on_batch, on_text, on_records)


def decoding_settings(cfg: GenerateConfig, dec: Decoder) -> dict:
    """What decides a record's text besides the models and alphas (the generator name): recorded in every
    record, compared on --resume. token_maps: each delta's map strategy (with its look-ahead k), or "same"."""
    maps = []
    for d in dec.deltas:
        meta = d.token_map.meta if d.token_map is not None else None
        maps.append("same" if meta is None else meta.get("strategy", "?") +
                    (f"(k={meta['lookahead_k']})" if meta.get("prefix_rule") == "lookahead" else ""))
    return {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "top_k": cfg.top_k, "seed": cfg.seed, "stop": list(cfg.stop), "suppress": list(cfg.suppress),
            "user_format": cfg.user_format, "combine": cfg.combine, "token_maps": maps}


def _generate(cfg, dec, gen_cfg, name, decoding, prompts, sink, on_batch, on_text, on_records) -> GenerateResult:
    start = sink.done if sink else 0
    res = GenerateResult(skipped=start, generator=name)
    t0 = time.perf_counter()
    total = len(prompts)
    if on_batch:
        on_batch(start, total)
    stream = (lambda row, text: on_text(text)) if on_text and total == 1 else None
    for b in range(start, total, cfg.batch_size):
        batch = prompts[b:b + cfg.batch_size]
        seeds = [cfg.seed + b + k for k in range(len(batch))]  # per prompt: the same in any batch or on resume
        gens = dec.generate([p.text for p in batch], gen_cfg, seeds=seeds, on_text=stream)
        recs = [{"instruction": p.instruction, "output": g.text, "generator": name, "finish_reason": g.finish_reason,
                 "decoding": decoding} for p, g in zip(batch, gens)]
        if sink:
            sink.write(recs)
        res.records.extend(recs)
        res.generated_tokens += sum(len(g.token_ids) for g in gens)
        if on_records:
            on_records(recs)
        if on_batch:
            on_batch(b + len(batch), total)
    res.seconds = time.perf_counter() - t0
    steps_tokens = max(1, dec.stats["generated"])
    res.delta_tokens_per_token = [n / steps_tokens for n in dec.stats["delta_tokens"]]
    return res
