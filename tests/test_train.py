import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cmc_cli.config import TrainConfig
from cmc_cli.engine.combine import IGNORE, combine
from cmc_cli.engine.train import Trainer
from cmc_cli.engine.trainstep import chunked_nll, template_hidden
from cmc_cli.errors import CmcError, ConfigError


@pytest.fixture(scope="module")
def world(train_world):
    return train_world


def cfg(world, tmp_path, **kw):
    base = dict(task="instruct", template=str(world / "template"), output=str(tmp_path / "out"),
                data=str(world / "train.json"), batch_size=8, micro_batch_size=4, epochs=4, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_combine_matches_hand_computation():
    t = torch.tensor([[1.0, 2.0, 3.0]])
    d = torch.tensor([[0.5, -1.0, 0.0]])
    lse = torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(3.0)))
    expected = torch.tensor([[1.0 - lse + 0.5, 2.0 - lse - 1.0, 3.0 - lse]])
    assert torch.allclose(combine(t, d), expected)
    assert torch.allclose(combine(t, d, "sum"), t + d)
    assert torch.allclose(combine(t, d, "log-softmax-both"), F.log_softmax(t, -1) + F.log_softmax(d, -1))
    with pytest.raises(ValueError):
        combine(t, d, "average")


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_loss_and_gradients_equal_full_computation(world, tmp_path, chunk):
    tr = Trainer(cfg(world, tmp_path))
    torch.nn.init.normal_(tr.delta.get_output_embeddings().weight, std=0.5)
    batch = tr._to_device(tr.train_set[:3])
    h_t = template_hidden(tr.template, batch)
    h_d = tr.delta.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    total, n = chunked_nll(tr.template, tr.delta, h_t, h_d, batch["targets"], "log-softmax-template", chunk)
    total.backward()
    g_chunked = tr.delta.get_output_embeddings().weight.grad.clone()
    g_trunk = tr.delta.get_input_embeddings().weight.grad.clone()
    tr.delta.zero_grad()
    # independent: full logits of both models, combined, CE over response positions
    t_logits = tr.template(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    d_logits = tr.delta(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    final = F.log_softmax(t_logits, -1) + d_logits
    ref = F.cross_entropy(final.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    assert n == int((batch["targets"] != IGNORE).sum())
    assert torch.allclose(total, ref, rtol=1e-5, atol=1e-4)
    assert torch.allclose(g_chunked, tr.delta.get_output_embeddings().weight.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(g_trunk, tr.delta.get_input_embeddings().weight.grad, rtol=1e-4, atol=1e-6)
    assert g_trunk.abs().sum() > 0


def test_instruct_training_learns_and_leaves_template_untouched(world, tmp_path):
    before = load_file(str(world / "template" / "model.safetensors"))
    tr = Trainer(cfg(world, tmp_path, silence=0.0))  # the plain objective (the silence term: tests/test_silence.py)
    batch = tr._to_device(tr.train_set)
    h_t = template_hidden(tr.template, batch)

    def nll_with_delta():
        with torch.no_grad():
            h_d = tr.delta.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            total, n = chunked_nll(tr.template, tr.delta, h_t, h_d, batch["targets"], "log-softmax-template", 64)
        return float(total) / n

    start = nll_with_delta()
    with torch.no_grad():  # a fresh delta adds nothing: combined == template alone
        t_logits = tr.template(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        alone = F.cross_entropy(t_logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)
    assert start == pytest.approx(float(alone), rel=1e-5)
    result = tr.run()
    losses = [m.loss for m in result.history]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5
    assert nll_with_delta() < float(alone) - 0.5  # template + delta scores the responses higher
    for name, p in tr.template.named_parameters():
        assert p.grad is None and not p.requires_grad
        assert torch.equal(p.detach(), before[name]), name
    out = tmp_path / "out"
    info = json.loads((out / "cmc.json").read_text())
    assert info["task"] == "instruct" and info["combine"] == "log-softmax-template"
    assert info["template"]["fingerprint"] == tr.template_vocab.fingerprint and info["steps"] == 12
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 12
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.equal(reloaded.get_output_embeddings().weight, tr.delta.get_output_embeddings().weight)


def test_unlearning_raises_forget_loss_and_keeps_retain(world, tmp_path):
    tr = Trainer(cfg(world, tmp_path, task="unlearn", data=None, forget=str(world / "forget.jsonl"),
                     retain=str(world / "retain.jsonl"), batch_size=4, micro_batch_size=2, epochs=8, silence=0.0))
    result = tr.run()  # the gradient difference alone (the silence term: tests/test_silence.py)
    first, last = result.history[0], result.history[-1]
    assert last.forget_loss > first.forget_loss + 1.0  # forget CE rises
    assert last.retain_loss < first.retain_loss + 0.25  # retain CE stays within a bound (here it falls)
    assert last.loss == pytest.approx(-last.forget_loss + last.retain_loss)


def test_stop_forget_loss_ends_the_run(world, tmp_path):
    tr = Trainer(cfg(world, tmp_path, task="unlearn", data=None, forget=str(world / "forget.jsonl"), loss="grad-ascent",
                     batch_size=4, epochs=50, lr=1e-2, stop_forget_loss=12.0))
    result = tr.run()
    assert result.stopped == "stop-forget-loss" and result.last.forget_loss >= 12.0 and result.steps < 100


def test_resume_equals_uninterrupted_run(world, tmp_path):
    full = Trainer(cfg(world, tmp_path / "a")).run()
    c = cfg(world, tmp_path / "b")
    tr = Trainer(c)

    def interrupt(m):
        if m.step == 5:
            raise KeyboardInterrupt

    tr.on_step = interrupt
    with pytest.raises(CmcError, match="interrupted at step 5; checkpoint saved"):
        tr.run()
    c2 = cfg(world, tmp_path / "b", resume=str(tmp_path / "b" / "out"))
    resumed = Trainer(c2).run()
    assert [m.loss for m in resumed.history] == pytest.approx([m.loss for m in full.history], rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7), k


def test_non_finite_loss_stops_and_keeps_last_checkpoint(world, tmp_path, monkeypatch):
    import cmc_cli.engine.train as train_mod

    tr = Trainer(cfg(world, tmp_path, checkpoint_every=1))
    real = train_mod.chunked_terms
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        total, parts = real(*a, **k)
        nan = float("nan")
        return (total * nan, {k: v * nan for k, v in parts.items()}) if calls["n"] > 4 else (total, parts)  # 2 per step

    monkeypatch.setattr(train_mod, "chunked_terms", flaky)
    with pytest.raises(train_mod.NonFiniteLoss, match="at step 3.*checkpoint.*intact"):
        tr.run()
    progress = json.loads((tmp_path / "out" / "checkpoints" / "last" / "progress.json").read_text())
    assert progress["step"] == 2
    w = load_file(str(tmp_path / "out" / "checkpoints" / "last" / "delta.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_yaml_then_flags_precedence(tmp_path):
    for name in ("f", "r", "d"):
        (tmp_path / name).write_text("{}\n")
    f, r, d = (str(tmp_path / n) for n in ("f", "r", "d"))
    y = tmp_path / "train.yaml"
    y.write_text(f"task: unlearn\ntemplate: t\noutput: o\nforget: {f}\nretain: {r}\nlr: 0.5\nepochs: 3\n")
    c = TrainConfig.from_sources(y, {"epochs": 7, "lr": None})
    assert (c.lr, c.epochs, c.batch_size) == (0.5, 7, 16)  # yaml, flag, task default
    y.write_text("task: unlearn\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rate"):
        TrainConfig.from_sources(y, {})
    with pytest.raises(ConfigError, match="--retain is required"):
        TrainConfig(task="unlearn", template="t", output="o", forget=f)
    with pytest.raises(ConfigError, match="multiple of --micro-batch-size"):
        TrainConfig(template="t", output="o", data=d, batch_size=8, micro_batch_size=3)


def test_kl_retain_loss_runs_and_starts_at_zero(world, tmp_path):
    tr = Trainer(cfg(world, tmp_path, task="unlearn", data=None, forget=str(world / "forget.jsonl"),
                     retain=str(world / "retain.jsonl"), loss="kl", batch_size=4, epochs=2))
    result = tr.run()
    # a fresh delta adds nothing, so the combined distribution equals the template's: KL = 0
    assert result.history[0].retain_loss == pytest.approx(0.0, abs=1e-6)
    assert result.history[-1].retain_loss > 0 and result.history[-1].forget_loss > result.history[0].forget_loss


def test_resume_refuses_other_options_and_edited_progress(world, tmp_path):
    c = cfg(world, tmp_path, max_steps=4, checkpoint_every=2)
    Trainer(c).run()
    out = tmp_path / "out"
    with pytest.raises(CmcError, match=r"--lr 0.003 \(now 0.01\).*--seed 0 \(now 3\)"):
        Trainer(cfg(world, tmp_path, max_steps=4, lr=1e-2, seed=3, resume=str(out))).run()
    Trainer(cfg(world, tmp_path, max_steps=4, checkpoint_every=1, resume=str(out))).run()  # where/how it is written may differ
    progress = out / "checkpoints" / "last" / "progress.json"
    good = progress.read_text()
    for edit, msg in [(lambda p: {**p, "step": "x"}, "'step' must be a whole number"),
                      (lambda p: {**p, "history": {"a": 1}}, "'history' must be a JSON list"),
                      (lambda p: {k: v for k, v in p.items() if k != "param_groups"}, "'param_groups' is missing"),
                      (lambda p: {**p, "history": [{"nope": 1}]}, "history does not read as step metrics")]:
        progress.write_text(json.dumps(edit(json.loads(good))))
        with pytest.raises(CmcError, match=msg):
            Trainer(cfg(world, tmp_path, max_steps=4, resume=str(out))).run()
    progress.write_text("[1, 2]")
    with pytest.raises(CmcError, match="expected a JSON object"):
        Trainer(cfg(world, tmp_path, max_steps=4, resume=str(out))).run()


def test_a_killed_checkpoint_save_is_tidied(world, tmp_path):
    import shutil

    from cmc_cli.engine.checkpoint import tidy_checkpoint_dir

    Trainer(cfg(world, tmp_path, max_steps=2)).run()
    ck = tmp_path / "out" / "checkpoints"
    (ck / ".last.abc123").mkdir()  # a temp dir of a save killed half-way
    (ck / ".last.abc123" / "delta.safetensors").write_bytes(b"partial")
    shutil.move(str(ck / "last"), str(ck / "last.old"))  # killed between setting the old one aside and renaming in
    tidy_checkpoint_dir(ck / "last")
    assert sorted(p.name for p in ck.iterdir()) == ["last"]
    assert (ck / "last" / "progress.json").is_file()
    Trainer(cfg(world, tmp_path, max_steps=2, resume=str(tmp_path / "out"))).run()  # and it resumes from it


def test_a_second_trainer_on_the_same_output_fails(world, tmp_path):
    from cmc_cli.fileio import OutputLock

    with OutputLock(tmp_path / "out"):
        with pytest.raises(CmcError, match="being written by another cmc process"):
            Trainer(cfg(world, tmp_path, max_steps=2)).run()
    assert not (tmp_path / "out").exists()


def test_evaluation_runs_the_delta_in_eval_mode_and_restores_training(world, tmp_path):
    """The whole-set CE that stopping and selection read is deterministic even for a delta with dropout,
    and training mode comes back after it (the same forward as training: Trainer._hidden)."""
    tr = Trainer(cfg(world, tmp_path, task="unlearn", data=None, forget=str(world / "forget.jsonl"),
                     retain=str(world / "retain.jsonl"), batch_size=4, micro_batch_size=2, epochs=1))
    for m in tr.delta.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    if not any(isinstance(m, torch.nn.Dropout) for m in tr.delta.modules()):  # a model with no dropout layer
        first = next(m for m in tr.delta.modules() if isinstance(m, torch.nn.Embedding))
        first.register_forward_hook(lambda mod, inp, out: F.dropout(out, 0.5, mod.training))
    a, b = tr.evaluate(), tr.evaluate()
    assert a == b and tr.delta.training
    tr.delta.train()
    with torch.no_grad():
        h1, h2 = (tr._hidden(tr._to_device(tr.forget_eval[:2]))[1] for _ in range(2))
    assert not torch.equal(h1, h2)  # the probe can fail: in training mode the dropout does act
