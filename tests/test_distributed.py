"""`cmc train` / `cmc unlearn` under torchrun (2 CPU processes, gloo; the template sharded with FSDP2) against
the same run in one process: the delta's weights after K steps, and runs killed on N ranks and resumed on M."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on CPU")


@pytest.fixture(scope="module")
def world(train_world):
    return train_world


def command(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "cmc_cli", "-q"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "cmc_cli", "-q"]


def env() -> dict:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e.pop("CMC_DEBUG", None)
    return e


def train(nproc: int, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(command(nproc) + args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def instruct(world: Path, out: str, steps: int = 3) -> list[str]:
    return ["train", "--template", str(world / "template"), "--data", str(world / "train.json"), "--output", out,
            "--batch-size", "8", "--micro-batch-size", "2", "--epochs", "20", "--max-steps", str(steps), "--lr", "3e-3",
            "--delta", "tiny", "--silence", "0.5"]  # instruct's default is 0: the term runs under torchrun here too


def unlearn(world: Path, out: str, method: str) -> list[str]:
    return ["unlearn", "--template", str(world / "template"), "--forget", str(world / "forget.jsonl"), "--retain",
            str(world / "retain.jsonl"), "--method", method, "--output", out, "--batch-size", "4", "--epochs", "2",
            "--max-steps", "3", "--lr", "3e-3", "--delta", "tiny", "--eval-every", "2"]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.parametrize("task", ["instruct", "grad-diff", "npo"])
def test_two_processes_train_the_delta_one_process_trains(world, tmp_path, task):
    args = (lambda out: instruct(world, out)) if task == "instruct" else (lambda out: unlearn(world, out, task))
    train(1, args("one"), tmp_path)
    train(2, args("two"), tmp_path)
    # AdamW turns float noise in near-zero gradient entries (g ~ 1e-8, of the order of its eps) into steps of
    # up to lr/2: the weights agree to 1e-4 (measured 7e-5 with the silence term); the per-step losses, gradient
    # norms and silence values below agree to float precision
    assert max_diff(tmp_path / "one", tmp_path / "two") < 2e-4
    card = json.loads((tmp_path / "two" / "cmc.json").read_text())
    batch = 8 if task == "instruct" else 4
    assert card["distributed"] == {"world_size": 2, "rank_batch": batch // 2}
    assert json.loads((tmp_path / "one" / "cmc.json").read_text())["distributed"] == {"world_size": 1, "rank_batch": batch}
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["world_size"] for m in two] == [2] * len(one)
    for a, b in zip(one, two):  # the losses reported are the global batch's, summed over ranks
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
        assert abs(a["silence"] - b["silence"]) < 1e-5 * max(1.0, a["silence"])
    assert one[-1]["silence"] > 0  # the silence term ran (on general text sampled by the template, on every rank)
    if task != "instruct":
        ev1, ev2 = ((tmp_path / d / "evals.jsonl").read_text().splitlines() for d in ("one", "two"))
        for a, b in zip(ev1, ev2):  # whole-set evaluations, sharded over ranks and summed
            a, b = json.loads(a), json.loads(b)
            assert abs(a["forget_ce"] - b["forget_ce"]) < 1e-5 and abs(a["retain_ce"] - b["retain_ce"]) < 1e-5


def kill_after_a_checkpoint(nproc: int, args: list[str], cwd: Path, out: Path) -> int:
    """Start a run, SIGKILL every process of it once it has checkpointed at least step 2; the step saved."""
    proc = subprocess.Popen(command(nproc) + args, cwd=cwd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    progress = out / "checkpoints" / "last" / "progress.json"
    try:
        while proc.poll() is None:
            try:
                if json.loads(progress.read_text())["step"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return json.loads(progress.read_text())["step"]


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2-ranks-then-1", "1-rank-then-2"])
def test_a_run_killed_on_n_ranks_resumes_on_m(world, tmp_path, first, then):
    steps = 30
    train(1, instruct(world, "plain", steps), tmp_path)
    args = instruct(world, "run", steps) + ["--checkpoint-every", "1"]
    saved = kill_after_a_checkpoint(first, args, tmp_path, tmp_path / "run")
    assert 2 <= saved <= steps
    train(then, args + ["--resume", "run"], tmp_path)
    assert max_diff(tmp_path / "plain", tmp_path / "run") < 1e-5
    assert json.loads((tmp_path / "run" / "cmc.json").read_text())["steps"] == steps


def test_a_batch_that_does_not_split_over_the_ranks_is_one_clear_error(world, tmp_path):
    args = instruct(world, "bad")
    args[args.index("--batch-size") + 1] = "7"
    args[args.index("--micro-batch-size") + 1] = "7"
    r = train(2, args, tmp_path, check=False)
    assert r.returncode != 0
    assert "--batch-size 7 does not split over 2 processes" in r.stderr
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_ctrl_c_under_torchrun_saves_one_checkpoint_and_leaves_no_rank_running(world, tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C: torchrun and its workers get it, and torchrun
    then sends its workers SIGTERM): rank 0 saves the checkpoint of the last completed step, every process
    ends, and the run resumes to the weights of an uninterrupted one."""
    steps = 400
    args = instruct(world, "run", steps)
    proc = subprocess.Popen(command(2) + args, cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "checkpoint saved, continue with --resume" in err
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        raise AssertionError("a rank is still running")
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last" / "progress.json").read_text())["step"]
    assert 3 <= saved < steps
    train(1, instruct(world, "plain", steps), tmp_path)
    train(2, args + ["--resume", "run"], tmp_path)
    assert max_diff(tmp_path / "plain", tmp_path / "run") < 1e-5


def test_nproc_relaunches_under_torchrun(world, tmp_path):
    train(1, instruct(world, "one"), tmp_path)
    train(1, instruct(world, "flag") + ["--nproc", "2"], tmp_path)
    assert json.loads((tmp_path / "flag" / "cmc.json").read_text())["distributed"]["world_size"] == 2
    assert max_diff(tmp_path / "one", tmp_path / "flag") < 1e-5
    r = train(1, instruct(world, "zero") + ["--nproc", "0"], tmp_path, check=False)
    assert r.returncode == 1 and "--nproc must be at least 1" in r.stderr


SHARD_CHECK = """
import sys, torch
from torch.distributed.tensor import DTensor
from cmc_cli.engine import distributed
from cmc_cli.engine.models import load_lm
d = distributed.from_env()
dev = torch.device("cpu")
distributed.init(d, dev)
read = distributed.load_template_sharded(sys.argv[1], torch.float32, dev)
assert read is not None, "not read shard by shard"
whole = load_lm(sys.argv[1]).model
distributed.shard_template(whole, dev)
a, b = dict(read.named_parameters()), dict(whole.named_parameters())
assert a.keys() == b.keys()
for k in a:
    x, y = a[k], b[k]
    assert isinstance(x, DTensor) == isinstance(y, DTensor), k
    lx, ly = (x.to_local(), y.to_local()) if isinstance(x, DTensor) else (x, y)
    assert lx.shape == ly.shape and torch.equal(lx, ly), k
for (k, x), (_, y) in zip(read.named_buffers(), whole.named_buffers()):
    assert torch.equal(x, y), k
ids = torch.randint(5, 300, (2, 9))
from cmc_cli.engine.trainstep import template_hidden
from cmc_cli.engine.heads import head_logits
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
h1, h2 = template_hidden(read, batch, True), template_hidden(whole, batch, True)
assert torch.equal(h1, h2) and torch.equal(head_logits(read, h1), head_logits(whole, h2))
held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in read.parameters())
import pathlib
# one file per rank: lines the ranks print at the same moment interleave on the shared pipe
(pathlib.Path(sys.argv[2]) / f"ok-{d.rank}").write_text(f"{held} {sum(p.numel() for p in whole.parameters())}")
distributed.shutdown()
"""


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_template_is_read_shard_by_shard_as_loading_it_whole_then_sharding(world, tmp_path, tiny_tokenizers, tied):
    from cmc_cli.engine.delta import random_lm
    from transformers import AutoTokenizer

    path = world / "template"
    if tied:
        tok = AutoTokenizer.from_pretrained(str(tiny_tokenizers["spm"]))
        path = tmp_path / "tied"
        random_lm("llama", 4, vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True).save_pretrained(path)
        tok.save_pretrained(path)
    script = tmp_path / "check.py"
    script.write_text(SHARD_CHECK)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), str(path), str(tmp_path)], env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [(tmp_path / f"ok-{k}").read_text().split() for k in range(2)]
    held = [int(x[0]) for x in rows]
    total = int(rows[0][1])
    if not tied:  # every weight sharded: the two ranks hold the template once between them
        assert sum(held) == total and max(held) < 0.6 * total
