from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_test_command_of_readme():
    readme = ROOT / "README.md"
    lines = [ln.strip() for ln in readme.read_text().splitlines() if "python -m pytest" in ln]
    assert len(lines) == 1, lines
    command = lines[0].replace("pip install", "python -m pip install -q").replace("pip uninstall", "python -m pip uninstall -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci, (command, ci)
