"""The batched O(length) scorer against the decoder's step distributions under teacher forcing."""

import random

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.engine.decode import Decoder

from cmc_cli.engine.models import load_delta, load_lm

from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.score import Scorer
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

WORDS = ("the harbour town sailors wrote novels about red blue green boxes authors born in 1932 Paris "
         "naïve café — fishermen's nets, rope; lighthouse?").split()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("score")
    return {
        "user_bl": make_tiny_llama(tiny_tokenizers["bl"], root / "user-bl", hidden=48, seed=3),
        "user_spm": make_tiny_llama(tiny_tokenizers["spm"], root / "user-spm", hidden=48, seed=4),
        "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", prompt_format="Q: {prompt}\nA:", seed=5),
        "delta_bl": make_random_delta(tiny_tokenizers["bl"], root / "delta-bl", prompt_format="<q>{prompt}</q>", seed=7),
        "expert": make_tiny_llama(tiny_tokenizers["bl"], root / "expert", hidden=32, seed=8),
        "anti": make_tiny_llama(tiny_tokenizers["bl"], root / "anti", hidden=32, seed=9),
    }


def random_texts(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def teacher_forced(dec, prompts, answers):
    """Log-probabilities of each answer token from the decoder's own step distributions."""
    force = [dec.user_answer_ids(p, a) for p, a in zip(prompts, answers)]
    dec.trace = []
    dec.generate(prompts, GenerationConfig(max_new_tokens=max(len(f) for f in force)), force=force)
    out = []
    for r, f in enumerate(force):
        out.append([F.log_softmax(dec.trace[t]["final"][r], -1)[tid].item() for t, tid in enumerate(f)])
    dec.trace = None
    return out


@pytest.mark.parametrize("user_key,deltas", [
    ("user_bl", [("delta", 1.0)]),                      # cross vocabulary
    ("user_spm", [("delta", 0.8)]),                     # same vocabulary (fed the user's ids)
    ("user_spm", [("delta", 1.0), ("delta_bl", 0.5)]),  # both at once
    ("user_bl", []),                                    # the user model alone
], ids=["cross", "same", "both", "alone"])
def test_scorer_equals_decoder_under_teacher_forcing(world, user_key, deltas):
    user = load_lm(str(world[user_key]))
    dec = Decoder(user, [load_delta(world[d], user, a) for d, a in deltas])
    prompts = random_texts(6, 1)
    answers = random_texts(6, 2)
    got = Scorer(dec, chunk=7).score(prompts, answers)
    ref = teacher_forced(dec, prompts, answers)
    for g, r in zip(got, ref):
        assert len(g.token_logprobs) == len(r) > 0
        assert g.token_logprobs == pytest.approx(r, abs=2e-4)


@pytest.mark.parametrize("sparse", [0.5, 1.0], ids=["default", "moved-columns-only"])
def test_profile_gives_every_alpha_from_one_pass_as_separate_decoders_do(world, sparse, monkeypatch):
    """Scorer.profile's per-alpha log-probabilities, KL to the user alone and argmax hits equal a Decoder built
    at each alpha (teacher-forced), from one forward pass of each model; also with grid_normalisers reducing
    the columns the delta moves apart from the others (this map moves 85% of the user's ids: dense by default)."""
    monkeypatch.setattr("cmc_cli.engine.score.SPARSE_SHARE", sparse)
    user = load_lm(str(world["user_bl"]))
    prompts, answers = random_texts(4, 3), random_texts(4, 4)
    prof = Scorer(Decoder(user, [load_delta(world["delta"], user, 1.0)]), chunk=5).profile(prompts, answers, [0.0, 0.5, 2.0])
    for a in (0.0, 0.5, 2.0):
        dec = Decoder(user, [load_delta(world["delta"], user, a)])
        force = [dec.user_answer_ids(p, x) for p, x in zip(prompts, answers)]
        dec.trace = []
        dec.generate(prompts, GenerationConfig(max_new_tokens=max(len(f) for f in force)), force=force)
        for r, (sc, f) in enumerate(zip(prof[a], force)):
            steps = [dec.trace[t] for t in range(len(f))]
            lp = [F.log_softmax(st["final"][r], -1) for st in steps]
            alone = [F.log_softmax(st["user"][r].float(), -1) for st in steps]
            assert sc.token_logprobs == pytest.approx([x[t].item() for x, t in zip(lp, f)], abs=2e-4)
            kl = [(u.exp() * (u - x)).sum().item() for u, x in zip(alone, lp)]
            assert sc.kl == pytest.approx(kl, abs=2e-4)
            assert sc.top1 == [float(x.argmax().item() == t) for x, t in zip(lp, f)]
            if a == 0.0:
                assert max(sc.kl) < 1e-5


def test_continuations_happen_and_stay_short(world):
    """SentencePiece user tokens that end inside byte-level delta tokens ('m' + 'e' vs 'me'): the delta's
    tokenization of a prefix is then not a prefix of the full one; the scorer computes only short
    continuations for those positions."""
    user = load_lm(str(world["user_spm"]))
    dec = Decoder(user, [load_delta(world["delta_bl"], user, 1.0)])
    answers = ["fishermen's lighthouse authors novels harbour " * 3]
    s = Scorer(dec).score(["Who?"], answers)[0]
    assert 0 < s.delta_extra_tokens[0] < 3 * s.n
    assert s.token_logprobs == pytest.approx(teacher_forced(dec, ["Who?"], answers)[0], abs=2e-4)


def test_proxy_tuning_scores(world):
    user = load_lm(str(world["user_bl"]))
    dec = Decoder(user, [], expert=load_lm(str(world["expert"])), anti_expert=load_lm(str(world["anti"])), proxy_alpha=0.7)
    prompts, answers = random_texts(3, 5), random_texts(3, 6)
    got = Scorer(dec).score(prompts, answers)
    for g, r in zip(got, teacher_forced(dec, prompts, answers)):
        assert g.token_logprobs == pytest.approx(r, abs=2e-4)


def test_empty_answer_scores_nothing(world):
    user = load_lm(str(world["user_bl"]))
    s = Scorer(Decoder(user, [])).score(["Q", "Q2"], ["", "blue"])
    assert s[0].n == 0 and s[0].mean_nll == 0.0 and s[1].n > 0
    assert torch.isfinite(torch.tensor(s[1].token_logprobs)).all()


def test_answers_are_tokenized_in_context(world):
    from cmc_cli.data.instruct import join_response

    assert join_response("Answer:", "Paris") == "Answer: Paris"
    assert join_response("Answer:\n", "Paris") == "Answer:\nParis"
    assert join_response("Answer:", " Paris") == "Answer: Paris"
    user = load_lm(str(world["user_bl"]))
    dec = Decoder(user, [], user_format="Question: {prompt}\nAnswer:")
    tok = user.tokenizer
    ids = dec.user_answer_ids("Where?", "the harbour")
    full = tok("Question: Where?\nAnswer: the harbour")["input_ids"]
    prompt = tok("Question: Where?\nAnswer:")["input_ids"]
    assert ids == full[len(prompt):]
    assert tok.decode(ids) == " the harbour"  # byte-level: the space belongs to the answer's first token


@pytest.mark.parametrize("moved", [0, 3, 9, 40])
def test_grid_normalisers_reduce_only_the_moved_columns_exactly(moved):
    """grid_normalisers' logsumexp and argmax equal a dense reduction of z = base + sum a*t at every strength,
    whether the terms move no column, a few (the sparse path) or most (dense); ties between a moved and an
    unmoved column go to the smaller id, as torch.argmax does on the full row."""
    from cmc_cli.engine.score import grid_normalisers

    g = torch.Generator().manual_seed(moved)
    base = torch.randint(-3, 3, (6, 40), generator=g).float()  # integers: ties everywhere
    terms = []
    for _ in range(2):
        t = torch.zeros(6, 40)
        cols = torch.randperm(40, generator=g)[:moved]
        t[:, cols] = torch.randint(-2, 3, (6, moved), generator=g).float()
        terms.append(t)
    strengths = [[0.0, 0.0], [1.0, 0.0], [0.5, 2.0], [3.0, -1.0]]
    for alphas, (lse, arg) in zip(strengths, grid_normalisers(base, terms, strengths)):
        z = base + alphas[0] * terms[0] + alphas[1] * terms[1]
        assert torch.allclose(lse, torch.logsumexp(z, -1), atol=1e-5)
        assert torch.equal(arg, z.argmax(-1))
        assert torch.equal(arg, torch.tensor([int((r == r.max()).nonzero()[0]) for r in z]))  # the first maximum
