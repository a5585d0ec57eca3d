import math

import pytest
import torch

from cmc_cli.engine.combine import decode_scores, map_delta_logits


def test_token_map_gather_by_hand():
    delta = torch.tensor([[10.0, 20.0, 30.0]])  # (1, V_delta=3)
    index = torch.tensor([2, -1, 0, 0])  # user vocab 4
    assert map_delta_logits(delta, index).tolist() == [[30.0, 0.0, 10.0, 10.0]]
    # a user model with padded logits: extra ids get no adjustment
    assert map_delta_logits(delta, index, width=6).tolist() == [[30.0, 0.0, 10.0, 10.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        map_delta_logits(delta, index, width=3)


def test_two_deltas_equal_the_hand_summed_formula():
    torch.manual_seed(0)
    user = torch.randn(2, 5)
    d1, d2 = torch.randn(2, 3), torch.randn(2, 5)
    index = torch.tensor([0, 2, -1, 1, 1])
    got = decode_scores(user, [(0.5, d1, index), (2.0, d2, None)])
    for b in range(2):
        lse = math.log(sum(math.exp(x) for x in user[b].tolist()))
        m1, m2 = sum(d1[b].tolist()) / 3, sum(d2[b].tolist()) / 5  # each delta centred on its mean (centre_delta)
        for u in range(5):
            j = index[u].item()
            expected = (user[b, u].item() - lse + (0.5 * (d1[b, j].item() - m1) if j >= 0 else 0.0)
                        + 2.0 * (d2[b, u].item() - m2))
            assert got[b, u].item() == pytest.approx(expected, abs=1e-5)


def test_alpha_zero_is_the_user_model_alone():
    user = torch.randn(3, 7)
    got = decode_scores(user, [(0.0, torch.randn(3, 4), torch.tensor([0, 1, 2, 3, -1, 0, 1]))])
    assert torch.allclose(got, torch.log_softmax(user, -1))
    assert torch.equal(got.argmax(-1), user.argmax(-1))


def test_every_combine_mode_gives_the_same_distribution():
    """softmax ignores a per-position constant, and LogSoftmax only subtracts one: the paper's 'no
    LogSoftmax' ablation and log-softmaxing the delta too leave softmax(final) unchanged (across
    vocabularies: tests/test_centring.py)."""
    torch.manual_seed(1)
    user, delta = torch.randn(4, 9) * 3, torch.randn(4, 9)
    a = torch.log_softmax(decode_scores(user, [(0.7, delta, None)]), -1)
    b = torch.log_softmax(decode_scores(user, [(0.7, delta, None)], mode="sum"), -1)
    c = torch.log_softmax(decode_scores(user, [(0.7, delta, None)], mode="log-softmax-both"), -1)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_unlearning_loss_is_the_gradient_difference_and_its_variants():
    from cmc_cli.engine.combine import unlearning_loss

    assert unlearning_loss("ascent", 2.0, 0.5) == -2.0 + 0.5  # -CE(forget) + CE(retain)
    assert unlearning_loss("ascent", 2.0, 0.5, forget_weight=0.5, retain_weight=3.0) == -1.0 + 1.5
    assert unlearning_loss("refusal", 2.0, 0.5) == 2.5 and unlearning_loss("npo", 2.0) == 2.0
    f = torch.tensor(2.0, requires_grad=True)
    unlearning_loss("ascent", f, torch.tensor(1.0)).backward()
    assert f.grad.item() == -1.0


def test_deltas_of_different_combine_modes_need_one_given():
    from types import SimpleNamespace

    from cmc_cli.engine.decode import combine_mode
    from cmc_cli.errors import ConfigError

    a = SimpleNamespace(combine="log-softmax-template", lm=SimpleNamespace(name="a"))
    b = SimpleNamespace(combine="sum", lm=SimpleNamespace(name="b"))
    assert combine_mode([a, a], None) == "log-softmax-template" and combine_mode([], None) == "log-softmax-template"
    assert combine_mode([a, b], "sum") == "sum"
    with pytest.raises(ConfigError, match=r"different combine modes \(a: log-softmax-template, b: sum\); pass --combine"):
        combine_mode([a, b], None)
