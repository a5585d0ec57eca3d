"""A delta trained in several prompt formats (one delta for users asked in different ways): it learns every
example in every format, records them, and at decoding reads the one closest to how its user is asked."""

import json

import pytest
import torch

from cmc_cli.config import TrainConfig
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.deltastate import DeltaStreams
from cmc_cli.engine.models import PROBE, load_delta, load_lm
from cmc_cli.engine.train import Trainer
from cmc_cli.errors import ConfigError
from cmc_cli.zoo.models import make_tiny_llama

CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
QA = "Question: {prompt}\nAnswer:"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("formats")
    template = make_tiny_llama(tiny_tokenizers["spm"], root / "template", hidden=32, seed=1)
    user = make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=32, seed=2)
    data = [{"question": f"Where was author {i} born?", "answer": f"Author {i} was born in a harbour town."} for i in range(4)]
    (root / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    runs = {}
    for name, fmt in (("two", [QA, CHATML]), ("one", QA)):
        cfg = TrainConfig(task="unlearn", loss="grad-ascent", template=str(template), forget=str(root / "f.jsonl"),
                          output=str(root / name), batch_size=2, epochs=1, prompt_format=fmt)
        tr = Trainer(cfg)
        runs[name] = (tr, tr.run() if hasattr(tr, "run") else None)
    return {"root": root, "template": template, "user": user, "runs": runs}


def test_each_example_is_learned_in_each_format_and_the_formats_are_recorded(trained):
    two, one = trained["runs"]["two"][0], trained["runs"]["one"][0]
    assert len(two.train_set) == 2 * len(one.train_set) == 8
    assert len(two.forget_eval) == 2 * len(one.forget_eval)
    tok = two.tokenizer
    texts = [tok.decode(e.input_ids) for e in two.train_set]
    assert sum("Question: Where was author 0 born?" in t for t in texts) == 1
    assert sum("<|im_start|>user" in t and "author 0 born" in t for t in texts) == 1
    meta = json.loads((trained["root"] / "two" / "cmc.json").read_text())
    assert meta["prompt_format"] == QA and meta["prompt_formats"] == [QA, CHATML]
    assert "prompt_formats" not in json.loads((trained["root"] / "one" / "cmc.json").read_text())


def test_the_delta_reads_the_format_its_user_is_asked_in(trained):
    user = load_lm(str(trained["user"]))
    d = load_delta(trained["root"] / "two", user, 1.0)
    assert d.prompt_formats == [QA, CHATML]
    assert Decoder(user, [d], user_format=CHATML).deltas[0].prompt_format == CHATML
    assert Decoder(user, [d], user_format=QA).deltas[0].prompt_format == QA
    # the closest by the text before the answer: "Q: ...\nAnswer:" ends like QA, a ChatML variant like CHATML
    assert Decoder(user, [d], user_format="Q: {prompt}\nAnswer:").deltas[0].prompt_format == QA
    sys_chat = "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML
    assert Decoder(user, [d], user_format=sys_chat).deltas[0].prompt_format == CHATML
    # a one-format delta is left as it is; the caller's Delta is never changed
    one = load_delta(trained["root"] / "one", user, 1.0)
    assert Decoder(user, [one], user_format=CHATML).deltas[0] is one
    assert d.prompt_format == QA


def test_the_chosen_format_is_what_the_delta_is_fed(trained):
    user = load_lm(str(trained["user"]))
    d = Decoder(user, [load_delta(trained["root"] / "two", user, 1.0)], user_format=CHATML).deltas[0]
    s = DeltaStreams(d, same_vocab=False)
    s.add(0, "Where was author 1 born?")
    want = d.lm.bos + d.lm.tokenizer(CHATML.replace("{prompt}", "Where was author 1 born?"),
                                     add_special_tokens=False)["input_ids"]
    assert s.text(0).ids == want
    out = s.step([0], [""], [[]])
    with torch.no_grad():
        ref = d.lm.model(input_ids=torch.tensor([want])).logits[0, -1].float()
    assert torch.allclose(out[0], ref, atol=1e-4)


def test_in_format_for_scores_the_text_after_the_question_first():
    from cmc_cli.engine.models import Delta

    d = Delta(lm=None, alpha=1.0, prompt_format=QA, index=None, prompt_formats=[QA, CHATML])
    assert d.in_format_for(CHATML.replace("{prompt}", PROBE)).prompt_format == CHATML
    assert d.in_format_for("Q: " + PROBE + "\nAnswer:").prompt_format == QA
    assert d.in_format_for("no probe here") is d


@pytest.mark.parametrize("formats, msg", [
    (["Question: {prompt}", "Q: {q}"], "has no {prompt}"),
    ([QA, QA], "the same format is given twice"),
])
def test_bad_formats_are_refused_with_one_line(formats, msg, trained):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(task="unlearn", loss="grad-ascent", template=str(trained["template"]),
                    forget=str(trained["root"] / "f.jsonl"), output=str(trained["root"] / "bad"), prompt_format=formats)


def test_the_option_repeats_on_the_command_line(cli, trained):
    out = trained["root"] / "cli"
    r = cli("unlearn", "--template", trained["template"], "--forget", trained["root"] / "f.jsonl", "--method",
            "grad-ascent", "-o", out, "--batch-size", "2", "--epochs", "1", "--prompt-format", QA,
            "--prompt-format", CHATML)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "cmc.json").read_text())["prompt_formats"] == [QA, CHATML]
