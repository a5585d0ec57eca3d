"""The silence term of training (combine.silence_penalty, trainstep.chunked_terms): its value and gradients
against a direct computation, its general text (a file's windows, the template's own samples), and what it
does to a trained delta off-target."""

import json

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.config import TrainConfig
from cmc_cli.data.general import encode_general, read_plain_text, windows
from cmc_cli.engine.combine import IGNORE, SILENCE_VOCAB, combine, silence_penalty
from cmc_cli.engine.train import Trainer
from cmc_cli.engine.trainstep import chunked_terms, template_hidden
from cmc_cli.errors import ConfigError, DataError


def test_silence_penalty_by_hand_and_blind_to_a_per_position_constant():
    z = torch.tensor([[0.0, 3.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])  # centred row 0: -1, 2, -1, 0
    assert silence_penalty(z).item() == pytest.approx(1 + 4 + 1 + 0)
    assert silence_penalty(z + torch.tensor([[5.0], [-40.0]])).item() == pytest.approx(6.0, abs=1e-4)


def test_a_vocabulary_beyond_silence_vocab_is_summed_at_silence_vocab_ids_worth():
    v = 4 * SILENCE_VOCAB  # a Gemma-sized vocabulary (262,144 ids is 5.3x)
    z = torch.zeros(2, v, dtype=torch.float64)
    z[0, 7], z[1, 11], z[1, 12] = 3.0, -2.0, 1.0
    by_hand = [(3 - 3 / v) ** 2 + (v - 1) * (3 / v) ** 2,  # row 0: one id at 3, mean 3/v
               (-2 + 1 / v) ** 2 + (1 + 1 / v) ** 2 + (v - 2) * (1 / v) ** 2]  # row 1: mean -1/v
    assert silence_penalty(z).item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)  # float32 inside
    small = z[:, :SILENCE_VOCAB]  # at or below SILENCE_VOCAB ids: the plain sum
    assert silence_penalty(small).item() == pytest.approx(float((small - small.mean(-1, keepdim=True)).pow(2).sum()), rel=1e-6)


@pytest.fixture(scope="module")
def world(train_world):
    return train_world


def cfg(world, tmp_path, **kw):
    base = dict(task="unlearn", loss="idk", template=str(world / "template"), output=str(tmp_path / "out"),
                forget=str(world / "forget.jsonl"), retain=str(world / "retain.jsonl"), batch_size=4,
                micro_batch_size=2, epochs=2, lr=3e-3, general_samples=6, general_length=12, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", ["nll", "kl", "silence"])
def test_chunked_terms_equal_the_direct_computation_with_gradients(world, tmp_path, kind):
    tr = Trainer(cfg(world, tmp_path))
    torch.nn.init.normal_(tr.delta.get_output_embeddings().weight, std=0.5)  # a delta that is not flat
    batch = tr._to_device(tr.retain_set[:3])
    y = batch["targets"]
    h_t = template_hidden(tr.template, batch)
    body = tr.delta.get_decoder()
    h_d = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    total, parts = chunked_terms(tr.template, tr.delta, h_t if kind != "silence" else None, h_d, y, kind, 0.7, 0.3,
                                 "log-softmax-template", 5)
    total.backward()
    g_head = tr.delta.get_output_embeddings().weight.grad.clone()
    tr.delta.zero_grad()
    # the same from the full logits, with autograd
    h_d = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    keep = y != IGNORE
    d = tr.delta.get_output_embeddings()(h_d)[keep]  # (N, V)
    with torch.no_grad():
        t = tr.template(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[keep]
    final = combine(t, d)
    main = {"nll": F.cross_entropy(final, y[keep], reduction="sum"),
            "kl": (t.log_softmax(-1).exp() * (t.log_softmax(-1) - final.log_softmax(-1))).sum(),
            "silence": torch.zeros(())}[kind]
    sil = ((d - d.mean(-1, keepdim=True)) ** 2).sum()
    ref = (0.7 * main if kind != "silence" else 0.0) + 0.3 * sil
    ref.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["silence"] == pytest.approx(sil.item(), rel=1e-5) and parts["main"] == pytest.approx(main.item(), rel=1e-5, abs=1e-5)
    assert torch.allclose(g_head, tr.delta.get_output_embeddings().weight.grad, rtol=1e-4, atol=1e-6)


def test_general_text_file_is_cut_into_windows(tmp_path, tiny_tokenizers):
    from transformers import AutoTokenizer

    f = tmp_path / "g.txt"
    f.write_text("The harbour town\nhad boats.\n\n\n   \nSailors   wrote novels about the sea and the rope.\n")
    paragraphs = read_plain_text(f)
    assert paragraphs == ["The harbour town had boats.", "Sailors wrote novels about the sea and the rope."]
    assert [e.input_ids for e in windows([5, 6, 7, 8, 9], [1], 3, "x")] == [[1, 5, 6], [1, 7, 8], [1, 9]]
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizers["spm"]))
    enc = encode_general(paragraphs, tok, 6, str(f))
    assert all(len(e.input_ids) <= 6 and e.labels == e.input_ids for e in enc)
    flat = [t for e in enc[:len(enc)] for t in e.input_ids[1:]]  # each window after the BOS, in order
    whole = tok(paragraphs[0], add_special_tokens=False)["input_ids"] + tok(paragraphs[1], add_special_tokens=False)["input_ids"]
    assert flat == whole
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt holds no text"):
        read_plain_text(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(DataError, match="bin.txt:2: not UTF-8"):
        read_plain_text(tmp_path / "bin.txt")


def test_template_samples_are_the_seeds_and_recorded(world, tmp_path):
    a = Trainer(cfg(world, tmp_path / "a", seed=3))
    b = Trainer(cfg(world, tmp_path / "b", seed=3))
    c = Trainer(cfg(world, tmp_path / "c", seed=4))
    assert len(a.general_set) == 6 and all(len(e.input_ids) == 12 + len(a.bos) for e in a.general_set)
    assert [e.input_ids for e in a.general_set] == [e.input_ids for e in b.general_set]
    assert [e.input_ids for e in a.general_set] != [e.input_ids for e in c.general_set]
    assert a.data_hashes["general:template-samples"] == b.data_hashes["general:template-samples"]
    a.run()
    card = json.loads((tmp_path / "a" / "out" / "cmc.json").read_text())
    assert card["silence"] == {"weight": 0.1, "general": "template samples", "general_items": 6}
    off = Trainer(cfg(world, tmp_path / "off", silence=0.0))
    assert off.general_set == [] and "general:template-samples" not in off.data_hashes


def test_a_general_file_is_hashed_and_a_resume_with_another_is_refused(world, tmp_path):
    from cmc_cli.errors import CmcError

    g = tmp_path / "g.txt"
    g.write_text("The sea was calm.\n\nThe rope was long and the boats were red.\n")
    tr = Trainer(cfg(world, tmp_path, general=str(g), max_steps=2, checkpoint_every=1))
    assert str(g) in tr.data_hashes and len(tr.general_set) >= 2
    tr.run()
    g.write_text("Other text.\n")
    with pytest.raises(CmcError, match="data files differ"):
        Trainer(cfg(world, tmp_path, general=str(g), max_steps=2, checkpoint_every=1, resume=str(tmp_path / "out"))).run()


@pytest.mark.parametrize("bad,msg", [
    (dict(silence=-1.0), "--silence must be a finite number >= 0"),
    (dict(silence=float("nan")), "--silence must be a finite number >= 0"),
    (dict(general="nowhere.txt"), "--general nowhere.txt: no such file"),
    (dict(general_samples=0), "--general-samples must be a positive whole number"),
])
def test_bad_silence_options_are_one_line_errors(world, tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg):
        cfg(world, tmp_path, **bad)


def _general_silence(tr: Trainer) -> float:
    """Mean silence penalty per position of the delta on the run's general text."""
    batch = tr._to_device(tr.general_set)
    with torch.no_grad():
        h = tr.delta.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        _, parts = chunked_terms(None, tr.delta, None, h, batch["targets"], "silence", 0.0, 0.0, "log-softmax-template", 64)
    return parts["silence"] / int((batch["targets"] != IGNORE).sum())


def test_the_silence_term_keeps_a_trained_delta_flat_off_target(world, tmp_path):
    """The same idk run with and without the term: it learns the refusals either way, and the silent delta's
    logits on general text it never trained toward are flatter by far."""
    runs = {}
    for w in (0.0, 1.0):
        tr = Trainer(cfg(world, tmp_path / str(w), silence=w, epochs=20, general_samples=8))
        if w == 0.0:  # the same text to measure on
            tr.general_set = Trainer(cfg(world, tmp_path / "m", general_samples=8)).general_set
        res = tr.run()
        runs[w] = (res.history[0].forget_loss, res.history[-1].forget_loss, _general_silence(tr))
    (f0, f0_end, s0), (f1, f1_end, s1) = runs[0.0], runs[1.0]
    assert f0_end < f0 - 1.0 and f1_end < f1 - 1.0, runs  # both learn the refusals
    assert s1 < 0.25 * s0, (runs, s0, s1)
