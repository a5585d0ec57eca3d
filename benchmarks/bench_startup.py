"""Start-up: what a user waits for before cmc does anything, and `cmc map-vocab` of fetched tokenizers.

    cmc fetch tokenizers && python benchmarks/bench_startup.py [--repeats 7]

Median wall time of fresh processes after one warm-up run each: `python -c "import typer, rich"` (the floor
the issue measures against), a bare Typer app with cmc's number of commands rendering its --help, `cmc --help`,
and `cmc map-vocab llama2 mistral` / `llama2 qwen2` once their vocabularies are cached (the first map of a
tokenizer reads it through transformers, once). Beside each map: the in-process time of the same work (the
two cached vocabulary loads and TokenMap.build), and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """import typer
app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})
for i in range(11):
    app.command(f"c{i}")(lambda x: None)
app()
"""


def wall(argv: list[str], repeats: int, cwd: str) -> float:
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


WORK = """import sys, time
from cmc_cli.engine.maps import load_vocab
from cmc_cli.refs import resolve
from cmc_cli.tokenmaps.tokenmap import TokenMap
t0 = time.perf_counter()
TokenMap.build(load_vocab(resolve(sys.argv[1])), load_vocab(resolve(sys.argv[2])))
print(time.perf_counter() - t0)
"""


def in_process(delta: str, user: str, repeats: int) -> float:
    """The work alone, in a fresh process with the modules already imported: two cached vocabulary loads and
    the map (nothing of it warm in memory)."""
    run = [sys.executable, "-c", WORK, delta, user]
    return statistics.median(float(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
                             for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cmc = shutil.which("cmc") or sys.exit("cmc is not on PATH: pip install -e .")
    work = tempfile.mkdtemp()
    print(f"{platform.machine()}, {platform.python_version()}; median of {args.repeats} after a warm-up")
    floor = wall([sys.executable, "-c", "import typer, rich"], args.repeats, work)
    bare = wall([sys.executable, "-c", BARE, "--help"], args.repeats, work)
    helps = wall([cmc, "--help"], args.repeats, work)
    print(f"python -c 'import typer, rich': {floor:.3f} s")
    print(f"a bare Typer app's --help (11 commands): {bare:.3f} s ({bare / floor:.1f}x the import)")
    print(f"cmc --help: {helps:.3f} s ({helps / floor:.1f}x the import, {helps / bare:.2f}x the bare app)")
    for user in ("mistral", "qwen2"):
        out = str(Path(work) / f"{user}.safetensors")
        t = wall([cmc, "-q", "map-vocab", "llama2", user, "-o", out, "--overwrite"], args.repeats, work)
        inner = in_process("llama2", user, args.repeats)
        print(f"cmc map-vocab llama2 {user}: {t:.3f} s; in process (two cached vocabularies + the map) {inner:.3f} s; "
              f"ratio {t / inner:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
