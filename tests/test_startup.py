"""Start-up stays light (issue: a CLI that answers at once): `cmc --help` and loading every command module
import neither torch nor transformers; the heavy libraries load only in the code paths that run models."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "vllm")
COMMANDS = ["_common", "adapters", "calibrate", "demo", "eval", "fetch", "generate", "map_vocab", "options", "serve",
            "tables", "train", "zoo"]


def imported_after(code: str, mods=HEAVY) -> dict:
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {tuple(mods)!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_app_and_every_command_module_load_without_torch():
    mods = "; ".join(f"import cmc_cli.commands.{m}" for m in COMMANDS)
    assert imported_after(f"import cmc_cli.app; {mods}") == dict.fromkeys(HEAVY, False)


def test_help_imports_nothing_heavy():
    code = ("from typer.testing import CliRunner\nfrom cmc_cli.app import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['map-vocab', '--help'])\nassert r.exit_code == 0, r.output")
    assert imported_after(code) == dict.fromkeys(HEAVY, False)


def test_help_reads_no_yaml_progress_bars_or_fetch_code():
    """What --help does not need is not imported either: the command modules import their config, the YAML
    library, rich's progress bars and the fetch code where a command runs (0.19 -> 0.11 s of imports)."""
    light = ("yaml", "rich.progress", "cmc_cli.fetch", "cmc_cli.config.runs", "cmc_cli.config.train")
    code = "from typer.testing import CliRunner\nfrom cmc_cli.app import app\nassert CliRunner().invoke(app, ['--help']).exit_code == 0"
    assert imported_after(code, light) == dict.fromkeys(light, False)
    assert imported_after("import cmc_cli.config; cmc_cli.config.TrainConfig", light)["cmc_cli.config.train"] is True


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: importing the engine's model code does load torch."""
    assert imported_after("import cmc_cli.engine.models")["torch"] is True
