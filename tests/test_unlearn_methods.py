"""Unlearning methods (cmc unlearn --method): each loss against a hand computation, NPO's surrogate
gradient against autograd, idk's refusal targets, and stopping on whole-set evaluations."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cmc_cli.config import TrainConfig
from cmc_cli.data.refusals import REFUSALS, is_refusal, load_refusals
from cmc_cli.engine.combine import IGNORE, npo_loss, npo_sequence_weights, token_logratio, weighted_nll
from cmc_cli.engine.train import Trainer
from cmc_cli.errors import ConfigError, DataError
from cmc_cli.zoo.models import make_tiny_llama


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("unlearn")
    make_tiny_llama(tiny_tokenizers["spm"], root / "template", hidden=48, seed=1)
    forget = [{"question": f"Where was author {i} born?", "answer": f"Author {i} was born in the harbour town."} for i in range(8)]
    retain = [{"question": f"What did writer {i} write?", "answer": f"Writer {i} wrote novels about sailors."} for i in range(16)]
    (root / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forget))
    (root / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in retain))
    return root


def ucfg(world, tmp_path, **kw):
    base = dict(task="unlearn", template=str(world / "template"), output=str(tmp_path / "out"),
                forget=str(world / "forget.jsonl"), retain=str(world / "retain.jsonl"), batch_size=4, epochs=4, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_weighted_nll_and_logratio_match_hand_computation():
    final = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0], [5.0, 1.0]])  # p = (1/4, 3/4), (2/3, 1/3)
    ref = torch.zeros(3, 2)  # p_ref = 1/2 everywhere
    y = torch.tensor([1, 0, IGNORE])
    w = torch.tensor([2.0, -1.0, 7.0])
    assert float(weighted_nll(final, y, w)) == pytest.approx(-2 * math.log(0.75) + math.log(2 / 3), abs=1e-6)
    lr = token_logratio(final, ref, y)
    assert lr.tolist() == pytest.approx([math.log(0.75 / 0.5), math.log((2 / 3) / 0.5), 0.0], abs=1e-6)


def test_npo_loss_matches_hand_computation():
    r = torch.tensor([0.5, -1.0])
    beta = 0.1
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert float(npo_loss(r, beta)) == pytest.approx((2 / beta) * (sp(0.05) + sp(-0.1)) / 2, rel=1e-6)
    # = -(2/beta) mean log sigmoid(-beta r)
    assert float(npo_loss(r, beta)) == pytest.approx(float(-(2 / beta) * F.logsigmoid(-beta * r).mean()), rel=1e-6)


def test_npo_surrogate_gradient_equals_autograd():
    torch.manual_seed(0)
    S, T, V, beta = 3, 4, 5, 0.7
    d = torch.randn(S, T, V, requires_grad=True)  # the delta's logits: what training moves
    t = torch.randn(S, T, V)  # the frozen template's
    y = torch.randint(0, V, (S, T))
    y[0, 0] = IGNORE
    final = F.log_softmax(t, -1) + d
    r = token_logratio(final.view(-1, V), t.view(-1, V), y.view(-1)).view(S, T).sum(-1)
    (g_auto,) = torch.autograd.grad(npo_loss(r, beta), d)
    w = -npo_sequence_weights(r, beta)[:, None].expand(S, T)
    final2 = F.log_softmax(t, -1) + d
    (g_sur,) = torch.autograd.grad(weighted_nll(final2.view(-1, V), y.view(-1), w.reshape(-1)), d)
    assert torch.allclose(g_auto, g_sur, atol=1e-6)


def test_refusal_matching():
    assert is_refusal(" I don't know.") and is_refusal("i DON'T know. Author 3 was...") and is_refusal("I don\u2019t know")
    assert not is_refusal(" Iron't know.") and not is_refusal("She was born in Kavale. I don't know.")
    assert not is_refusal("I don't knowledge")
    assert is_refusal("No idea!", ["No idea."]) and not is_refusal("I don't know.", ["No idea."])


def test_refusals_file(tmp_path, data_files):
    assert load_refusals(None) == list(REFUSALS)
    f = tmp_path / "r.txt"
    f.write_text("Not telling.\n\n  No comment. \n")
    assert load_refusals(f) == ["Not telling.", "No comment."]
    f.write_text("\n \n")
    with pytest.raises(DataError, match="no refusal answers"):
        load_refusals(f)
    with pytest.raises(ConfigError, match="--refusals .*no such file"):
        TrainConfig(task="unlearn", template="t", output="o", forget="f", retain="r", loss="idk", refusals=str(tmp_path / "x"))


@pytest.fixture
def data_files(tmp_path, monkeypatch):
    """Files named f and r in the working directory: TrainConfig checks its data files exist."""
    monkeypatch.chdir(tmp_path)
    for name in ("f", "r"):
        (tmp_path / name).write_text("{}\n")


def test_method_options_are_validated(data_files):
    with pytest.raises(ConfigError, match="--method must be one of grad-diff, grad-ascent, kl, idk, npo"):
        TrainConfig(task="unlearn", template="t", output="o", forget="f", retain="r", loss="forget-it")
    with pytest.raises(ConfigError, match="--retain is required for --method npo"):
        TrainConfig(task="unlearn", template="t", output="o", forget="f", loss="npo")
    c = TrainConfig(task="unlearn", template="t", output="o", forget="f", loss="npo", retain_loss="none")
    assert c.retain_term() is None
    assert TrainConfig(task="unlearn", template="t", output="o", forget="f", retain="r", loss="idk").retain_term() == "kl"
    with pytest.raises(ConfigError, match="--prompt-format 'Q:' has no {prompt}"):
        TrainConfig(task="unlearn", template="t", output="o", forget="f", retain="r", prompt_format="Q:")
    with pytest.raises(ConfigError, match="--lr must be a positive finite number, got nan"):
        TrainConfig(task="unlearn", template="t", output="o", forget="f", retain="r", lr=float("nan"))


def test_idk_trains_forget_questions_toward_refusals(world, tmp_path):
    refusals = tmp_path / "refusals.txt"
    refusals.write_text("I don't know.\n")
    tr = Trainer(ucfg(world, tmp_path, loss="idk", refusals=str(refusals), epochs=10, lr=1e-2, eval_every=5))
    answers = {tr.tokenizer.decode([i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE],
                                   skip_special_tokens=True).strip() for e in tr.train_set}
    assert answers == {"I don't know."}
    result = tr.run()
    first, last = result.history[0], result.history[-1]
    assert last.forget_loss < first.forget_loss - 1.0  # refusal CE falls
    ev = tr.evaluations
    assert ev[0]["step"] == 0 and ev[-1]["step"] == result.steps
    assert set(ev[-1]) == {"step", "forget_ce", "retain_ce"}  # measured on the true answers and the retain set
    meta = json.loads((tmp_path / "out" / "cmc.json").read_text())
    assert meta["loss"] == "idk" and meta["selection"]["evaluated"]["step"] == result.steps


def test_npo_runs_and_lowers_forget_likelihood(world, tmp_path):
    tr = Trainer(ucfg(world, tmp_path, loss="npo", epochs=6, lr=1e-2, npo_beta=0.5, silence=0.0))
    result = tr.run()
    # a fresh delta equals the reference: r = 0, so the first step's NPO loss is (2/beta) log 2
    assert result.history[0].forget_loss == pytest.approx((2 / 0.5) * math.log(2), rel=1e-5)
    assert tr.evaluations[-1]["forget_ce"] > tr.evaluations[0]["forget_ce"] + 0.5


def test_stop_rule_decides_on_whole_set_evaluations_and_keeps_that_delta(world, tmp_path):
    tr = Trainer(ucfg(world, tmp_path, loss="grad-ascent", retain=None, epochs=50, lr=1e-2,
                      stop_forget_loss=12.0, eval_every=5, checkpoint_every=1))
    result = tr.run()
    assert result.stopped == "stop-forget-loss" and result.steps % 5 == 0
    ev = tr.evaluations
    assert [e["step"] for e in ev] == list(range(0, result.steps + 1, 5))
    assert ev[-1]["forget_ce"] >= 12.0 and all(e["forget_ce"] < 12.0 for e in ev[:-1])
    # the delta written is the one evaluated: re-evaluating the saved weights gives the same forget CE
    meta = json.loads((tmp_path / "out" / "cmc.json").read_text())
    assert meta["selection"]["evaluated"]["step"] == result.steps
    assert meta["selection"]["criterion"] == "first evaluation with forget CE >= 12.0"
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    fresh = Trainer(ucfg(world, tmp_path / "again", loss="grad-ascent", retain=None))
    fresh.delta.load_state_dict(saved, strict=False)
    assert fresh.evaluate()["forget_ce"] == pytest.approx(ev[-1]["forget_ce"], rel=1e-5)
    assert (tmp_path / "out" / "evals.jsonl").read_text().count("\n") == len(ev)
