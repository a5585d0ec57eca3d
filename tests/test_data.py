import json

import pytest
from transformers import AutoTokenizer

from cmc_cli.data.instruct import collate, encode, load_instruct, load_tofu, render
from cmc_cli.data.records import DataError
from cmc_cli.engine.combine import IGNORE

FMT = "<|user|>\n{prompt}\n<|assistant|>\n"


def test_alpaca_and_chat_records(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}]},
    ], indent=1))
    a, b = load_instruct(p)
    assert (a.prompt, a.response) == ("Translate\n\nbonjour", "hello")
    assert (b.prompt, b.response) == ("Be brief.\nHi?", "Hello.")
    assert a.source.endswith("d.json:2") and b.source.endswith("d.json:7")  # the line each object starts on
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match="c.jsonl:1: the last message must have role 'assistant'"):
        load_instruct(bad)


def test_labels_cover_exactly_the_response_and_eos(tmp_path, tiny_tokenizers):
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizers["spm"]))
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"question": "Where was she born?", "answer": "In the harbour town."}) + "\n")
    (ex,) = load_tofu(p)
    (enc,) = encode([ex], tok, FMT, max_length=512)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
    learned = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
    assert tok.decode(learned[:-1]).strip() == "In the harbour town." and learned[-1] == tok.eos_token_id
    # the ids are those of the whole text tokenized at once (what the decoder will see)
    whole = tok(render(FMT, ex.prompt) + ex.response, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[1:-1] == whole
    cut = len(enc.input_ids) - 2
    batch = collate([enc, encode([ex], tok, FMT, cut)[0]], pad_id=0)
    assert batch["input_ids"].shape == (2, len(enc.input_ids))
    assert batch["targets"][0, :-1].tolist() == enc.labels[1:] and batch["targets"][1, cut - 1:].eq(IGNORE).all()
    assert batch["attention_mask"][1].sum() == cut
