"""Instruction following: generate on a prompt set, export AlpacaEval inputs, and measure offline.

Per model (alone, and with deltas):
  generations   JSONL written as it goes (resumable), and `alpaca_eval/<model>.json` — the list of
                {instruction, output, generator} AlpacaEval reads, for users with judge access
  ref log-lik   mean over items of the mean per-token log-likelihood of the reference response under
                the (combined) model, scored like decoding (engine/score.py)
  ROUGE-L       F-measure and recall of the generation against the reference (stemmed)
  win rate      pairwise against the reference responses, judged by a local judge model: each pair is
                judged in both orders; a response that wins both counts 1, loses both 0, else 0.5
                (ties and position-following count half). The judge reads JUDGE_PROMPT and its
                verdict is the more likely of the letters A and B as the next token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmc_cli import __version__
from cmc_cli.config import GenerateConfig
from cmc_cli.data.instruct import Prompt, load_prompts
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.score import Scorer
from cmc_cli.engine.streams import LockstepLM
from cmc_cli.errors import CmcError
from cmc_cli.eval.metrics import pairwise_outcome, rouge_l
from cmc_cli.eval.report import instruct_columns, md_table
from cmc_cli.fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "You are a fair judge comparing two responses to the same instruction. Judge helpfulness, correctness "
    "and relevance; ignore length and order.\n\n"
    "Instruction: {instruction}\n\n"
    "Response A: {a}\n\n"
    "Response B: {b}\n\n"
    "Which response is better, A or B? The better response is"
)


def _label_id(tokenizer, letter: str) -> int:
    """The id the judge would write for ' A' / ' B' (the last piece of its tokenization)."""
    ids = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
    if not ids:
        raise CmcError(f"the judge's tokenizer cannot write '{letter}'")
    return int(ids[-1])


@torch.inference_mode()
def judge_prefers_a(judge: Decoder, triples: list[tuple[str, str, str]], batch_size: int = 8) -> list[bool | None]:
    """For (instruction, response A, response B): True if the judge prefers A, False for B, None on a tie."""
    tok = judge.user.tokenizer
    a_id, b_id = _label_id(tok, "A"), _label_id(tok, "B")
    if a_id == b_id:
        raise CmcError("the judge's tokenizer writes A and B with the same token; choose another judge")
    out: list[bool | None] = []
    for s in range(0, len(triples), batch_size):
        chunk = triples[s:s + batch_size]
        ids = [judge.user_prompt_ids(JUDGE_PROMPT.format(instruction=i, a=a, b=b)) for i, a, b in chunk]
        logits = LockstepLM(judge.user.model, judge.user.pad_id).start(ids)
        for la, lb in zip(logits[:, a_id].tolist(), logits[:, b_id].tolist()):
            out.append(None if la == lb else la > lb)
    return out


def win_rate_against(judge: Decoder, instructions: list[str], outputs: list[str], references: list[str],
                     batch_size: int = 8) -> list[float]:
    """Per-item outcome of `outputs` against `references`, judged in both orders (pairwise_outcome)."""
    first = judge_prefers_a(judge, list(zip(instructions, outputs, references)), batch_size)
    second = judge_prefers_a(judge, list(zip(instructions, references, outputs)), batch_size)
    return [pairwise_outcome(x, y) for x, y in zip(first, second)]


@dataclass
class InstructRow:
    label: str
    user: str
    deltas: list[dict]
    n: int
    n_ref: int = 0
    ref_loglik: float | None = None
    rouge_l_f: float | None = None
    rouge_l_recall: float | None = None
    win_rate: float | None = None
    files: dict = field(default_factory=dict)
    per_item: dict = field(default_factory=dict)  # metric -> per-item values (items with a reference): paired CIs
    paired: dict = field(default_factory=dict)  # metric -> (mean, low, high) of this row minus the user alone
    stored: bool = False  # the user alone read back from an earlier run (--no-alone)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_outputs(dec: Decoder, prompts: list[Prompt], outputs: list[str], judge: Decoder | None,
                     batch_size: int) -> dict:
    """The offline metrics of one model's outputs (items with a reference only)."""
    with_ref = [(p, o) for p, o in zip(prompts, outputs) if p.reference]
    if not with_ref:
        return {"n_ref": 0}
    scorer = Scorer(dec)
    ll = []
    for s in range(0, len(with_ref), batch_size):
        chunk = with_ref[s:s + batch_size]
        ll += [-sc.mean_nll if sc.n else None
               for sc in scorer.score([p.text for p, _ in chunk], [p.reference for p, _ in chunk])]
    rl = [rouge_l(o, p.reference) for p, o in with_ref]
    per_item = {"ref_loglik": ll, "rouge_l_f": [f for _, f in rl], "rouge_l_recall": [r for r, _ in rl]}
    if judge is not None:
        per_item["win_rate"] = win_rate_against(judge, [p.instruction for p, _ in with_ref], [o for _, o in with_ref],
                                                [p.reference for p, _ in with_ref], batch_size)
    res = {k: _mean([x for x in v if x is not None]) for k, v in per_item.items()}
    return {"n_ref": len(with_ref), **res, "per_item": per_item}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def pair_with_alone(row: InstructRow, alone: InstructRow | None) -> None:
    """The paired difference of each per-item metric against the same user alone (95% bootstrap CI)."""
    from cmc_cli.eval.metrics import paired_bootstrap

    if alone is None or not row.deltas:
        return
    for k, mine in row.per_item.items():
        theirs = alone.per_item.get(k)
        if theirs is None or len(theirs) != len(mine):
            continue
        both = [(a, b) for a, b in zip(mine, theirs) if a is not None and b is not None]
        if both:
            row.paired[k] = paired_bootstrap([a for a, _ in both], [b for _, b in both])


def run_instruct_eval(cfg, on_phase=None, on_progress=None) -> list[InstructRow]:
    from cmc_cli.engine.generate import build_decoder
    from cmc_cli.eval.models import eval_decoders
    from cmc_cli.eval.report import slug as _slug

    phase = on_phase or (lambda msg: log.info("%s", msg))
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[:cfg.limit] if cfg.limit else prompts
    out = Path(cfg.out) if cfg.out else None
    judge = None
    if cfg.judge:
        phase(f"loading judge {cfg.judge}")
        judge = build_decoder(cfg.judge, [], user_format=cfg.judge_format, device=cfg.device, dtype=cfg.dtype)
    stored = (lambda label: (out / "generations" / f"{_slug(label)}.jsonl").is_file()) if out else None
    rows, alone = [], {}
    for er in eval_decoders(cfg, phase, stored):
        gen_path = out / "generations" / f"{_slug(er.label)}.jsonl" if out else None
        records = _generations(cfg, er, prompts, gen_path, phase, on_progress)
        outputs = [r["output"] for r in records]
        row = InstructRow(er.label, er.ref, [{"path": d.lm.name, "alpha": d.alpha, "alpha_source": d.alpha_source}
                                             for d in er.dec.deltas], len(outputs), stored=er.stored)
        if out:
            ae = out / "alpaca_eval" / f"{_slug(er.label)}.json"
            atomic_write_json(ae, [{"instruction": r["instruction"], "output": r["output"], "generator": er.label}
                                   for r in records])
            row.files = {"generations": str(gen_path), "alpaca_eval": str(ae)}
        phase(f"scoring {er.label}")
        for k, v in evaluate_outputs(er.dec, prompts, outputs, judge, cfg.batch_size).items():
            setattr(row, k, v)
        if not er.deltas:
            alone[er.ref] = row
        pair_with_alone(row, alone.get(er.ref))
        rows.append(row)
        if out:
            write_instruct_report(out, rows, cfg)
    return rows


def _generations(cfg, er, prompts, gen_path, phase, on_progress) -> list[dict]:
    """One row's generations: resumed from (or read back from) `gen_path`, the missing ones generated with the
    evaluation's decoding settings (a resume under other settings is refused by the output file's records)."""
    from cmc_cli.engine.generate import run_generate
    from cmc_cli.fileio import read_jsonl_for_resume

    phase(f"{'reading back' if er.stored else 'generating with'} {er.label}")
    gcfg = GenerateConfig(user=er.ref, deltas=list(er.deltas), prompts=cfg.prompts,
                          output=str(gen_path) if gen_path else None, resume=True, generator=er.label,
                          max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop), user_format=cfg.user_format,
                          combine=cfg.combine, batch_size=cfg.batch_size, seed=0)
    before = [r for _, r in read_jsonl_for_resume(gen_path)] if gen_path and gen_path.is_file() else []
    res = run_generate(gcfg, er.dec, prompts=prompts,
                       on_batch=(lambda d, t, lab=er.label: on_progress(lab, d, t)) if on_progress else None)
    return (before + res.records)[:len(prompts)]


def write_instruct_report(out: Path, rows, cfg) -> None:
    judge = {"ref": cfg.judge, "format": cfg.judge_format, "prompt": JUDGE_PROMPT} if cfg.judge else None
    atomic_write_json(out / "results.json", {"format": "cmc-eval-instruct/1", "cmc_version": __version__,
                                             "prompts": str(cfg.prompts), "judge": judge,
                                             "settings": {"user_format": cfg.user_format, "max_new_tokens": cfg.max_new_tokens,
                                                          "stop": cfg.stop, "combine": cfg.combine, "alpha": cfg.alpha},
                                             "rows": [r.as_dict() for r in rows]})
    header, cells = instruct_columns(rows)
    lines = ["# Instruction-following evaluation", "",
             f"Prompts: `{cfg.prompts}`; greedy, {cfg.max_new_tokens} new tokens; user format `{cfg.user_format}`.",
             "ref log-lik: mean per-token log-likelihood of the reference responses; ROUGE-L F / R: of the "
             "generation against the reference; win rate: against the references, judged in both orders "
             "(ties half).", ""] + md_table(header, cells)
    lines += ["", "AlpacaEval inputs (for judges you have access to): " +
              ", ".join(f"`{r.files['alpaca_eval']}`" for r in rows if r.files.get("alpaca_eval")), ""]
    if judge:
        lines += [f"Judge: `{cfg.judge}` (format `{cfg.judge_format}`); verdict = the likelier of ' A' / ' B' next. "
                  "Prompt:", "", "```", JUDGE_PROMPT, "```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
