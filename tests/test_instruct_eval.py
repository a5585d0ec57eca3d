"""Instruction-following evaluation: the pairwise rule by hand, the judge against a direct forward pass,
and `cmc eval instruct` end to end with resume."""

import json

import pytest
import torch

from cmc_cli.engine.decode import Decoder

from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.score import Scorer
from cmc_cli.eval.instruct import JUDGE_PROMPT, judge_prefers_a
from cmc_cli.eval.metrics import pairwise_outcome, rouge_l
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama


def test_pairwise_outcome_both_orders_ties_half():
    assert pairwise_outcome(True, False) == 1.0   # X wins as A and as B
    assert pairwise_outcome(False, True) == 0.0   # X loses both
    assert pairwise_outcome(True, True) == 0.5    # the judge always picks A: position, not quality
    assert pairwise_outcome(False, False) == 0.5
    assert pairwise_outcome(None, None) == 0.5    # ties
    assert pairwise_outcome(True, None) == 0.5


def test_rouge_l_f_by_hand():
    r, f = rouge_l("cat ran home", "The cats were running home")
    assert r == pytest.approx(2 / 5) and f == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("instruct")
    rows = [{"instruction": "Name three fish.", "output": "Cod, salmon and trout."},
            {"instruction": "Describe the harbour.", "input": "One sentence.", "output": "The harbour is busy with boats."},
            {"instruction": "Say hi"},
            {"instruction": "What colour is box 2?", "output": "Box 2 is blue."}]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3),
            "judge": make_tiny_llama(tiny_tokenizers["spm"], root / "judge", hidden=48, seed=12),
            "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", seed=5, head_std=0.5)}


def test_judge_verdict_is_the_likelier_letter(models):
    judge = Decoder(load_lm(str(models["judge"])))
    triples = [("Name a fish.", "Cod.", "A boat."), ("Say hi", "Hello!", "Goodbye."), ("Q", "x", "y")]
    got = judge_prefers_a(judge, triples, batch_size=2)
    tok = judge.user.tokenizer
    a_id = tok(" A", add_special_tokens=False)["input_ids"][-1]
    b_id = tok(" B", add_special_tokens=False)["input_ids"][-1]
    for (i, a, b), verdict in zip(triples, got):
        ids = tok(JUDGE_PROMPT.format(instruction=i, a=a, b=b))["input_ids"]
        with torch.no_grad():
            logits = judge.user.model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert verdict == bool(logits[a_id] > logits[b_id])


def test_cli_eval_instruct_end_to_end_and_resume(models, workdir, cli):
    args = ["eval", "instruct", "--prompts", models["root"] / "prompts.jsonl", "--user", models["user"],
            "-d", f"{models['delta']}:0.5", "--judge", models["judge"], "--max-new-tokens", "6", "-o", "ev"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "ev" / "results.json").read_text())
    assert res["judge"]["prompt"] == JUDGE_PROMPT
    alone, with_delta = res["rows"]
    assert (alone["label"], with_delta["label"]) == ("user", "user + delta@0.5")
    assert alone["n"] == 4 and alone["n_ref"] == 3
    # the win rate by hand: the judge's next-token logits for " A" / " B" in both orders, per referenced item
    judge = load_lm(str(models["judge"]))
    tok = judge.tokenizer
    a_id, b_id = (tok(x, add_special_tokens=False)["input_ids"][-1] for x in (" A", " B"))

    def prefers_a(instruction, a, b):
        ids = tok(JUDGE_PROMPT.format(instruction=instruction, a=a, b=b))["input_ids"]
        with torch.no_grad():
            lg = judge.model(input_ids=torch.tensor([ids])).logits[0, -1]
        return None if lg[a_id] == lg[b_id] else bool(lg[a_id] > lg[b_id])

    refs = {"Name three fish.": "Cod, salmon and trout.", "Describe the harbour.\n\nOne sentence.":
            "The harbour is busy with boats.", "What colour is box 2?": "Box 2 is blue."}
    outs = [json.loads(x)["output"] for x in (workdir / "ev" / "generations" / "user.jsonl").read_text().splitlines()]
    wins = []
    for (instruction, ref), out in zip(refs.items(), [outs[0], outs[1], outs[3]]):  # prompt 3 has no reference
        first, second = prefers_a(instruction, out, ref), prefers_a(instruction, ref, out)
        wins.append(1.0 if (first, second) == (True, False) else 0.0 if (first, second) == (False, True) else 0.5)
    assert alone["win_rate"] == pytest.approx(sum(wins) / 3)
    ae = json.loads((workdir / "ev" / "alpaca_eval" / "user_delta@0.5.json").read_text())
    assert [set(x) for x in ae] == [{"instruction", "output", "generator"}] * 4
    assert ae[1]["instruction"] == "Describe the harbour." and ae[0]["generator"] == "user + delta@0.5"
    # the reference log-likelihood is the scorer's, by hand
    user = load_lm(str(models["user"]))
    dec = Decoder(user, [load_delta(models["delta"], user, 0.5)])
    scored = Scorer(dec).score(["Name three fish.", "Describe the harbour.\n\nOne sentence.", "What colour is box 2?"],
                               ["Cod, salmon and trout.", "The harbour is busy with boats.", "Box 2 is blue."])
    assert with_delta["ref_loglik"] == pytest.approx(sum(-s.mean_nll for s in scored) / 3, abs=1e-5)
    gens = (workdir / "ev" / "generations" / "user_delta@0.5.jsonl").read_text()
    r = cli(*args)  # resumed: nothing regenerated, same figures
    assert r.exit_code == 0, r.output
    assert (workdir / "ev" / "generations" / "user_delta@0.5.jsonl").read_text() == gens
    assert json.loads((workdir / "ev" / "results.json").read_text())["rows"] == res["rows"]
    assert "Response A: {a}" in (workdir / "ev" / "report.md").read_text()


def test_cli_eval_instruct_per_item_values_paired_ci_format_and_stop(models, workdir, cli):
    """results.json holds per-item values; each delta row's paired change against the user alone is the mean of
    the per-item differences; the user format is recorded as given and a resume under another one is refused."""
    args = ["eval", "instruct", "--prompts", models["root"] / "prompts.jsonl", "--user", models["user"],
            "-d", models["delta"], "--alpha", "0.5,1.5", "--max-new-tokens", "6", "--user-format", "raw"]
    r = cli(*args, "-o", "ev")
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "ev" / "results.json").read_text())
    assert res["settings"]["user_format"] == "raw" and res["settings"]["alpha"] == [0.5, 1.5]
    alone, weak, strong = res["rows"]
    recs = [json.loads(x) for x in (workdir / "ev" / "generations" / "user_delta@1.5.jsonl").read_text().splitlines()]
    assert {r["decoding"]["user_format"] for r in recs} == {"raw"}
    for row in (weak, strong):
        assert len(row["per_item"]["rouge_l_f"]) == 3 and row["rouge_l_f"] == pytest.approx(sum(row["per_item"]["rouge_l_f"]) / 3)
        for k in ("rouge_l_f", "ref_loglik"):
            diffs = [a - b for a, b in zip(row["per_item"][k], alone["per_item"][k])]
            assert row["paired"][k][0] == pytest.approx(sum(diffs) / len(diffs), abs=1e-9)
            assert row["paired"][k][1] <= row["paired"][k][0] <= row["paired"][k][2]
    assert strong["per_item"]["ref_loglik"] != alone["per_item"]["ref_loglik"]
    assert "Δ ROUGE-L F vs alone" in (workdir / "ev" / "report.md").read_text()
    r = cli(*args[:-2], "-o", "ev")  # --user-format auto now: the records say raw
    assert r.exit_code == 1 and "--user-format 'raw'" in r.output, r.output
    # --no-alone: the alone row read back, the pairing kept, nothing regenerated
    alone_file = workdir / "ev" / "generations" / "user.jsonl"
    before = alone_file.read_text()
    r = cli(*args, "--no-alone", "-o", "ev")
    assert r.exit_code == 0, r.output
    again = json.loads((workdir / "ev" / "results.json").read_text())["rows"]
    assert [x["stored"] for x in again] == [True, False, False] and alone_file.read_text() == before
    assert again[2]["paired"] == strong["paired"]
    # --stop cuts the generations at the string
    outs = [x["output"] for x in recs]
    stop = next(o[1:3] for o in outs if len(o) > 3)
    r = cli(*args, "--stop", stop, "-o", "stopped")
    assert r.exit_code == 0, r.output
    cut = [json.loads(x)["output"] for x in (workdir / "stopped" / "generations" / "user_delta@1.5.jsonl").read_text().splitlines()]
    assert cut == [o.split(stop)[0] for o in outs]
