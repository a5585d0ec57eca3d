"""`cmc eval ...`: evaluations of user models with and without deltas."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli.commands import options as O
from cmc_cli.commands._common import UI, console, err_console, handle_errors, info

Opt = typer.Option
eval_app = typer.Typer(help="Evaluate user LLMs with and without deltas.", no_args_is_help=True)


@eval_app.command("tofu")
@handle_errors
def tofu(
    user: O.USERS = None,
    delta: O.DELTAS = None,
    token_map: O.TOKEN_MAPS = None,
    alpha: O.ALPHAS = None,
    forget: Annotated[str, Opt(help="TOFU forget set (question, answer, paraphrased_answer, perturbed_answer).")] = None,
    retain: Annotated[str, Opt(help="TOFU retain set.")] = None,
    real_authors: Annotated[str, Opt(help="TOFU real-authors set (question, answer, perturbed_answer).")] = None,
    world_facts: Annotated[str, Opt(help="TOFU world-facts set.")] = None,
    heldout: Annotated[str, Opt("--held-out", help="Questions the deltas never saw, of any topic (question, answer, optional key): what a delta costs beside what it was trained to change.")] = None,
    retain_model: Annotated[str, Opt(help="A model trained without the forget set: gives forget quality (KS test).")] = None,
    refusals: Annotated[str, Opt(help="Refusal answers for the refusal rate, one per line. (default: cmc's list)")] = None,
    alone: Annotated[bool, Opt("--alone/--no-alone", help="Also evaluate each user without deltas. (default: on)")] = None,
    user_format: O.USER_FORMAT = None,
    combine: O.COMBINE = None,
    max_new_tokens: Annotated[int, Opt(help="Greedy answer length for ROUGE-L. (default: 64)")] = None,
    stop: O.STOP = None,
    batch_size: Annotated[int, Opt(help="(default: 8)")] = None,
    limit: Annotated[int, Opt(help="Evaluate only the first N items of each set.")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Directory for results.json, report.md and per-item records (resumable).")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    config: O.CONFIG = None,
) -> None:
    """TOFU unlearning metrics (ROUGE-L, probability, truth ratio, forget quality, model utility)."""
    flags = O.model_flags({k: v for k, v in locals().items() if k != "config"})  # the options, before any import
    from cmc_cli.commands.tables import behaviour_table, tofu_table
    from cmc_cli.config import EvalTofuConfig
    from cmc_cli.eval.tofu import run_tofu_eval

    cfg = EvalTofuConfig.from_sources(config, flags)
    rows = _with_progress(lambda on_progress: run_tofu_eval(cfg, on_progress=on_progress), "items")
    behaviour = behaviour_table(rows)
    if behaviour is not None:
        console.print(behaviour)
    console.print(tofu_table(rows))
    if cfg.out:
        info(f"[green]wrote[/green] {cfg.out}/results.json and {cfg.out}/report.md")


@eval_app.command("instruct")
@handle_errors
def instruct(
    prompts: Annotated[str, Opt(help="Alpaca JSON/JSONL (instruction, input, output = reference response).")] = None,
    user: O.USERS = None,
    delta: O.DELTAS = None,
    token_map: O.TOKEN_MAPS = None,
    alpha: O.ALPHAS = None,
    judge: Annotated[str, Opt(help="A local judge LLM for the pairwise win rate against the references.")] = None,
    judge_format: Annotated[str, Opt(help="How the judge reads its prompt: raw | chat | a format string. (default: raw)")] = None,
    alone: Annotated[bool, Opt("--alone/--no-alone", help="Also evaluate each user without deltas. (default: on)")] = None,
    user_format: O.USER_FORMAT = None,
    combine: O.COMBINE = None,
    max_new_tokens: Annotated[int, Opt(help="(default: 256)")] = None,
    stop: O.STOP = None,
    batch_size: Annotated[int, Opt(help="(default: 8)")] = None,
    limit: Annotated[int, Opt(help="Evaluate only the first N prompts.")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Directory for generations, AlpacaEval JSON, results.json, report.md (resumable).")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    config: O.CONFIG = None,
) -> None:
    """Instruction following: AlpacaEval export, reference log-likelihood, ROUGE-L, judged win rate."""
    flags = O.model_flags({k: v for k, v in locals().items() if k != "config"})  # the options, before any import
    from cmc_cli.commands.tables import instruct_table
    from cmc_cli.config import EvalInstructConfig
    from cmc_cli.eval.instruct import run_instruct_eval

    cfg = EvalInstructConfig.from_sources(config, flags)
    rows = _with_progress(lambda on_progress: run_instruct_eval(cfg, on_progress=on_progress), "prompts")
    console.print(instruct_table(rows))
    if cfg.out:
        info(f"[green]wrote[/green] {cfg.out}/results.json, {cfg.out}/report.md and AlpacaEval inputs in {cfg.out}/alpaca_eval/")


@eval_app.command("general")
@handle_errors
def general(
    user: O.USERS = None,
    delta: O.DELTAS = None,
    token_map: O.TOKEN_MAPS = None,
    alpha: O.ALPHAS = None,
    text: Annotated[str, Opt(help="Plain UTF-8 text, paragraphs apart by blank lines. (default: the Brown corpus, `cmc fetch text`)")] = None,
    words: Annotated[int, Opt(help="Score each text after its first N words. (default: 4)")] = None,
    limit: Annotated[int, Opt(help="Texts scored, spread evenly over the file. (default: 150)")] = None,
    alone: Annotated[bool, Opt("--alone/--no-alone", help="Also score each user without deltas. (default: on)")] = None,
    combine: O.COMBINE = None,
    batch_size: Annotated[int, Opt(help="(default: 16)")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Directory for results.json (per-text values) and report.md.")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    config: O.CONFIG = None,
) -> None:
    """What deltas do to text nobody chose for them: NLL, perplexity and KL to the user alone, paired CI."""
    flags = O.model_flags({k: v for k, v in locals().items() if k != "config"})  # the options, before any import
    from cmc_cli.commands.tables import rich_table
    from cmc_cli.config import EvalGeneralConfig
    from cmc_cli.eval.general import run_general_eval, table

    cfg = EvalGeneralConfig.from_sources(config, flags)
    rows = _with_progress(lambda on_progress: run_general_eval(cfg, on_progress=on_progress), "texts")
    console.print(rich_table("General text: what the deltas change where they have nothing to do", *table(rows)))
    if cfg.out:
        info(f"[green]wrote[/green] {cfg.out}/results.json and {cfg.out}/report.md")


def _with_progress(run, unit: str):
    """run(on_progress) with one progress bar per evaluated model (none under --quiet)."""
    if UI.quiet:
        return run(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} " + unit),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*cols, console=err_console, transient=True) as p:
        tasks = {}

        def on_progress(label, done, total):
            if label not in tasks:
                tasks[label] = p.add_task(label, total=total)
            p.update(tasks[label], completed=done, total=total)

        return run(on_progress)


@eval_app.command("shift")
@handle_errors
def shift(
    base: Annotated[list[str], Opt("--base", help="Base model of a family (repeat; pairs with --tuned in order).")] = None,
    tuned: Annotated[list[str], Opt("--tuned", help="Fine-tuned model of the same family (same tokenizer as its base).")] = None,
    texts: Annotated[str, Opt(help="JSONL/JSON of `text` (or instruction+output, question+answer) records.")] = None,
    token_map: O.TOKEN_MAPS = None,
    top_k: Annotated[int, Opt(help="Tokens compared per position: union of both shifts' top-k. (default: 50)")] = 50,
    limit: Annotated[int, Opt(help="Use only the first N texts.")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Directory for results.json, report.md and heat maps (PNG).")] = None,
    device: O.DEVICE = "auto",
) -> None:
    """Logit-shift similarity between model families (the paper's premise): cosine, Spearman, Sinkhorn."""
    from cmc_cli.commands.tables import rich_table
    from cmc_cli.config import ShiftConfig
    from cmc_cli.eval.shift import run_shift_eval

    cfg = ShiftConfig(base=base, tuned=tuned, texts=texts, token_maps=token_map or [], top_k=top_k, limit=limit,
                      out=out, device=device)
    results = run_shift_eval(cfg.base, cfg.tuned, cfg.texts, cfg.token_maps, top_k=cfg.top_k, limit=cfg.limit,
                             out=cfg.out, device=cfg.device)
    t = rich_table("Logit-shift similarity (mean over shared positions; control: random other position)",
                   ["A → B", "positions", "cosine", "spearman", "sinkhorn", "control cos", "control sinkhorn"],
                   [[f"{r.a} → {r.b}", str(r.positions), f"{r.metrics['cosine'][0]:.3f}", f"{r.metrics['spearman'][0]:.3f}",
                     f"{r.metrics['sinkhorn'][0]:.3f}", f"{r.control['cosine'][0]:.3f}", f"{r.control['sinkhorn'][0]:.3f}"]
                    for r in results])
    console.print(t)
    if out:
        info(f"[green]wrote[/green] {out}/results.json, {out}/report.md and heat maps")
