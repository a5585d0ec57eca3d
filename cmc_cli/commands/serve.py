"""`cmc serve`: serve a user LLM with deltas through vLLM's OpenAI-compatible server (docs/serving.md)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from cmc_cli.commands import options as O
from cmc_cli.commands._common import handle_errors, info, status

Opt = typer.Option


@handle_errors
def serve(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The LLM to serve: a model directory, cmc.yaml name or fetched model (e.g. smollm2).")],
    delta: Annotated[list[str], Opt("--delta", "-d", help="A delta to load, [NAME=]PATH[:ALPHA] (NAME: what requests call it; default the directory's name). Repeatable; requests that name none get all of them.")] = None,
    token_map: O.TOKEN_MAPS = None,
    alpha: Annotated[float, Opt(help="Strength of deltas given without :ALPHA. (default: each delta's calibrated strength for the user, `cmc calibrate`; 1.0 where none is recorded)")] = None,
    combine: O.COMBINE = None,
    host: Annotated[str, Opt(help="Address to listen on. (default: 127.0.0.1)")] = None,
    port: Annotated[int, Opt(help="Port to listen on. (default: 8000)")] = None,
    device: O.DEVICE = None,
    dtype: O.DTYPE = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Check and print the vLLM command, do not start it.")] = False,
) -> None:
    """Serve USER with deltas through vLLM (OpenAI API); arguments after `--` go to `vllm serve`."""
    from cmc_cli.errors import ConfigError
    from cmc_cli.serve import server

    host, port = host or "127.0.0.1", 8000 if port is None else port
    device, dtype = device or "auto", dtype or "auto"
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    server.check_vllm()
    with status("checking the user model, deltas and token maps"):
        cfg, name, dev, dt = server.prepare(user, delta or [], alpha, token_map or [], combine, dtype, device)
    argv = server.vllm_command(cfg, name, dev, dt, host, port, list(ctx.args))
    shown = ", ".join(f"{d.name} (alpha {d.alpha:g}{', calibrated' if d.name in cfg.calibrated else ''})"
                      for d in cfg.deltas) or "none"
    info(f"serving {name} on http://{host}:{port}/v1 with deltas: {shown}")
    info("choose per request: vllm_xargs {\"cmc_deltas\": [\"NAME:ALPHA\", ...]}")
    if dry_run:
        print(shlex.join(argv))
        return
    server.exec_server(argv, server.serve_env(cfg))
