"""`cmc generate`: decode a user LLM with one or more deltas (or proxy-tuning), to the terminal or JSONL."""

from __future__ import annotations

import functools
import json
from typing import Annotated

import typer

from cmc_cli.commands import options as O
from cmc_cli.commands._common import UI, console, err_console, handle_errors, info, status

Opt = typer.Option


@handle_errors
def generate(
    user: Annotated[str, Opt(help="The LLM to decode: path, cmc.yaml name or hub id in the local cache.")] = None,
    delta: O.DELTAS = None,
    token_map: O.TOKEN_MAPS = None,
    alpha: O.ALPHA = None,
    expert: Annotated[str, Opt(help="Proxy-tuning baseline: tuned model with the user's vocabulary.")] = None,
    anti_expert: Annotated[str, Opt(help="Proxy-tuning baseline: the expert's untuned counterpart.")] = None,
    prompt: Annotated[str, Opt("--prompt", "-p", help="One prompt; its answer streams to the terminal.")] = None,
    prompts: Annotated[str, Opt(help="Prompt file: JSONL or JSON list (Alpaca instruction/input, prompt, question).")] = None,
    output: Annotated[str, Opt("-o", "--output", help="JSONL output (instruction, output, generator), written as it goes.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue --output: skip the prompts it already holds.")] = None,
    generator: Annotated[str, Opt(help="Name in the output's 'generator' field. (default: user+delta@alpha...)")] = None,
    user_format: O.USER_FORMAT = None,
    combine: O.COMBINE = None,
    max_new_tokens: Annotated[int, Opt(help="(default: 256)")] = None,
    temperature: Annotated[float, Opt(help="0 = greedy. (default: 0)")] = None,
    top_p: Annotated[float, Opt(help="Nucleus sampling. (default: 1.0)")] = None,
    top_k: Annotated[int, Opt(help="0 = off. (default: 0)")] = None,
    seed: Annotated[int, Opt(help="Sampling seed; prompt i uses seed + i. (default: 0)")] = None,
    stop: O.STOP = None,
    suppress: Annotated[list[str], Opt("--suppress", help="Never generate this user token, as its tokenizer spells it or an id (repeatable).")] = None,
    batch_size: Annotated[int, Opt(help="Prompts decoded together. (default: 8)")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    config: O.CONFIG = None,
) -> None:
    """Decode a user LLM with deltas trained on another model (any vocabulary)."""
    flags = O.model_flags({k: v for k, v in locals().items() if k != "config"})  # the options, before any import
    from cmc_cli.config import GenerateConfig
    from cmc_cli.engine.generate import load_decoder, read_prompts, run_generate

    cfg = GenerateConfig.from_sources(config, flags)
    prompts = read_prompts(cfg)  # bad prompt files and outputs fail before the models load; read once
    run = functools.partial(run_generate, prompts=prompts)
    with status("loading models") as phase:
        dec = load_decoder(cfg, on_phase=phase)
    if cfg.prompt is not None and not cfg.output:
        res = _stream_one(cfg, dec, run)
    elif not cfg.output:  # records to stdout as JSON lines
        res = run(cfg, dec, on_records=lambda recs: [print(json.dumps(r, ensure_ascii=False), flush=True) for r in recs])
    elif UI.quiet:
        res = run(cfg, dec)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("prompts {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*cols, console=err_console) as p:
            task = p.add_task("generate", total=None)
            res = run(cfg, dec, on_batch=lambda done, total: p.update(task, completed=done, total=total))
    summary = _summary(res, cfg)
    info(f"[green]wrote[/green] {cfg.output}: {summary}" if cfg.output else summary)


def _stream_one(cfg, dec, run_generate):
    """One --prompt to the terminal: its answer streams as it grows (the final text, stop strings cut, last)."""
    shown = [""]

    def on_text(text):
        if not UI.quiet and text.startswith(shown[0]):
            console.print(text[len(shown[0]):], end="", highlight=False, markup=False, soft_wrap=True)
            shown[0] = text

    res = run_generate(cfg, dec, on_text=on_text)
    final = res.records[0]["output"]
    if UI.quiet:
        print(final)
    else:
        if final.startswith(shown[0]) and final != shown[0]:
            console.print(final[len(shown[0]):], end="", highlight=False, markup=False)
        console.print()
    return res


def _summary(res, cfg) -> str:
    rate = res.generated_tokens / res.seconds if res.seconds else 0.0
    per = ", ".join(f"{x:.2f}" for x in res.delta_tokens_per_token)
    summary = f"{len(res.records)} generated ({res.generated_tokens} tokens, {rate:,.1f} tok/s"
    summary += f"; delta tokens computed per generated token: {per})" if per else ")"
    if res.skipped:
        summary += f"; {res.skipped} already in {cfg.output}"
    return summary
