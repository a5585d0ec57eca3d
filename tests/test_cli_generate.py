"""`cmc generate` end to end: terminal streaming, JSONL output, resume, token maps, one-line errors."""

import json

import pytest

from cmc_cli.config import DeltaSpec
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("gen")
    user = make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3)
    delta = make_random_delta(tiny_tokenizers["spm"], root / "delta", prompt_format="Q: {prompt}\nA:", seed=5)
    other = make_random_delta(tiny_tokenizers["spm_small"], root / "other", seed=6)
    prompts = root / "prompts.jsonl"
    rows = [{"instruction": "What colour is box 1?"}, {"instruction": "Name a town", "input": "by the sea"},
            {"question": "Where was author 3 born?"}, {"prompt": "Tell me about sailors."}, {"instruction": "Hi"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"user": user, "delta": delta, "other": other, "prompts": prompts, "root": root}


def test_single_prompt_streams_the_libraries_greedy_answer(models, workdir, cli):
    r = cli("-q", "generate", "--user", models["user"], "--delta", f"{models['delta']}:0.5", "-p", "What colour is box 1?",
            "--max-new-tokens", "12")
    assert r.exit_code == 0, r.output
    user = load_lm(str(models["user"]))
    d = load_delta(models["delta"], user, 0.5)
    expected = Decoder(user, [d]).generate(["What colour is box 1?"], GenerationConfig(max_new_tokens=12))[0].text
    assert r.stdout == expected + "\n"


def test_prompt_file_to_jsonl_and_resume_after_an_interruption(models, workdir, cli):
    common = ["generate", "--user", models["user"], "-d", models["delta"], "-d", f"{models['other']}:0.3",
              "--prompts", models["prompts"], "--max-new-tokens", "6", "--temperature", "0.8", "--seed", "4",
              "--batch-size", "2"]
    r = cli("-q", *common, "-o", "full.jsonl")
    assert r.exit_code == 0, r.output
    full = (workdir / "full.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in full]
    assert [x["instruction"] for x in recs] == ["What colour is box 1?", "Name a town", "Where was author 3 born?",
                                               "Tell me about sailors.", "Hi"]
    assert all(set(x) == {"instruction", "output", "generator", "finish_reason", "decoding"} for x in recs)
    assert recs[0]["decoding"]["temperature"] == 0.8 and recs[0]["decoding"]["token_maps"] == ["exact-ext", "exact-ext"]
    assert recs[0]["generator"] == "user+delta@1+other@0.3"
    # an interrupted run: three records and a torn fourth line
    (workdir / "part.jsonl").write_text("\n".join(full[:3]) + "\n" + full[3][:20])
    r = cli("-q", *common, "-o", "part.jsonl", "--resume")
    assert r.exit_code == 0, r.output
    assert (workdir / "part.jsonl").read_text().splitlines() == full
    # without --resume an existing output is never overwritten
    r = cli(*common, "-o", "part.jsonl")
    assert r.exit_code == 1 and "already exists" in r.output
    assert (workdir / "part.jsonl").read_text().splitlines() == full
    # resuming with other alphas is refused
    other = [a if a != f"{models['other']}:0.3" else f"{models['other']}:0.9" for a in common]
    r = cli(*other, "-o", "part.jsonl", "--resume")
    assert r.exit_code == 1 and "generator" in r.output
    # resuming with other decoding settings is refused, naming them; the file is untouched
    hotter = [a if a != "0.8" else "1.2" for a in common]
    r = cli(*hotter, "--max-new-tokens", "9", "-o", "part.jsonl", "--resume")
    assert r.exit_code == 1 and "--temperature 0.8 (now 1.2)" in r.output and "--max-new-tokens 6 (now 9)" in r.output
    assert (workdir / "part.jsonl").read_text().splitlines() == full


def test_a_second_writer_of_the_same_output_fails(models, workdir, cli):
    from cmc_cli.fileio import OutputLock

    args = ["generate", "--user", models["user"], "-d", models["delta"], "--prompts", models["prompts"],
            "--max-new-tokens", "4", "-o", "busy.jsonl"]
    with OutputLock(workdir / "busy.jsonl"):  # another process holding the output, as a running cmc does
        r = cli(*args)
    assert r.exit_code == 1 and "being written by another cmc process" in r.output
    assert not (workdir / "busy.jsonl").exists() or (workdir / "busy.jsonl").stat().st_size == 0
    r = cli("-q", *args)  # the lock is released with its holder
    assert r.exit_code == 0, r.output
    assert len((workdir / "busy.jsonl").read_text().splitlines()) == 5


def test_token_map_file_is_used_and_checked(models, workdir, cli):
    r = cli("-q", "map-vocab", models["delta"], models["user"], "-o", "m.safetensors")
    assert r.exit_code == 0, r.output
    args = ["-q", "generate", "--user", models["user"], "-d", models["delta"], "-p", "Hi", "--max-new-tokens", "8"]
    with_map = cli(*args, "--token-map", "m.safetensors")
    built = cli(*args)
    assert with_map.exit_code == 0 and with_map.stdout == built.stdout
    r = cli("-q", "map-vocab", models["other"], models["user"], "-o", "wrong.safetensors")
    r = cli(*args, "--token-map", "wrong.safetensors")
    assert r.exit_code == 1 and "was built for delta tokenizer" in r.output


@pytest.mark.parametrize("extra,message", [
    (["-d", "missing-delta"], "does not exist"),
    (["--alpha", "nan"], "--alpha must be a finite number"),
    (["-d", "DELTA:inf"], "the part after ':' must be a finite number"),
    (["-d", "DELTA:1e9"], "the part after ':' must be between -10 and 10"),
    (["--alpha", "-11"], "--alpha must be between -10 and 10"),
    (["-d", "DELTA:strong"], "must be a number"),
    (["--user-format", "chat"], "no chat template"),
    (["--user-format", "Question"], "--user-format must be auto, raw, chat or a format string"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompts", "PROMPTS"], "exactly one of --prompt"),
    (["--suppress", "no-such-token", "-o", "out.jsonl"], "--suppress: 'no-such-token' is not a token"),
])
def test_bad_options_give_one_line_errors(models, workdir, cli, extra, message):
    extra = [str(models["delta"]) + x[5:] if x.startswith("DELTA") else models["prompts"] if x == "PROMPTS" else x
             for x in extra]
    r = cli("generate", "--user", models["user"], "-p", "Hi", "--max-new-tokens", "2", *extra)
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (workdir / "out.jsonl").exists()  # nothing written before the error


def test_prompt_longer_than_the_context_window(models, workdir, cli):
    r = cli("generate", "--user", models["user"], "-p", "word " * 400)
    assert r.exit_code == 1 and "context window" in r.output


def test_bad_prompt_file_names_the_line(models, workdir, cli):
    (workdir / "bad.jsonl").write_text('{"instruction": "ok"}\n{"text": "no field"}\n')
    r = cli("generate", "--user", models["user"], "--prompts", "bad.jsonl")
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output


def test_delta_spec_parsing(tmp_path):
    assert DeltaSpec.parse("deltas/a:0.5") == DeltaSpec(tmp_path.__class__("deltas/a"), 0.5)
    assert DeltaSpec.parse("deltas/a").alpha is None
    (tmp_path / "odd:name").mkdir()
    assert DeltaSpec.parse(str(tmp_path / "odd:name")).alpha is None  # an existing path wins


def test_resume_on_a_file_that_is_not_jsonl(models, workdir, cli):
    (workdir / "notes.jsonl").write_text("not json at all\nreally not\n")
    r = cli("generate", "--user", models["user"], "--prompts", models["prompts"], "--max-new-tokens", "3",
            "-o", "notes.jsonl", "--resume")
    assert r.exit_code == 1 and "notes.jsonl:1: malformed JSON; fix or remove the file" in r.output
    assert (workdir / "notes.jsonl").read_text() == "not json at all\nreally not\n"
    # one line of text, with or without its newline: not a torn record of ours, so never cut off
    for text in ("this is not json\n", "hello"):
        (workdir / "notes.jsonl").write_text(text)
        r = cli("generate", "--user", models["user"], "--prompts", models["prompts"], "--max-new-tokens", "3",
                "-o", "notes.jsonl", "--resume")
        assert r.exit_code == 1 and "notes.jsonl:1: malformed JSON" in r.output
        assert (workdir / "notes.jsonl").read_text() == text
