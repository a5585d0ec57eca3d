"""The serving processor's logic (serve/state.py) against `cmc generate`'s decoder, without vLLM: a small
engine here keeps a persistent batch the way vLLM's does (requests arrive and finish at different steps,
freed rows are refilled, the last rows move into holes, two rows swap, a request is preempted and comes
back, one is cancelled), computes the user's logits from scratch each step, and takes the argmax of
ServeState's scores. Every request must get the tokens the Decoder gives its prompt alone."""

from __future__ import annotations

import pytest
import torch

from cmc_cli.config.serve import ServeConfig, ServedDelta
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.deltastate import DeltaStreams
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.serve.state import ServeState
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

PROMPTS = ["What colour is the box?", "Hi", "Tell me a story about a harbour town and its sailors, please.",
           "Where is the harbour?", "The sailors sang", "A box", "Why is the sea blue?", "Tell me about the town."]
FMT = "<|user|>\n{prompt}\n<|assistant|>\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("serve")
    return {
        "user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3),
        "cross": make_random_delta(tiny_tokenizers["spm"], root / "cross", prompt_format=FMT, seed=5),
        "small": make_random_delta(tiny_tokenizers["spm_small"], root / "small", prompt_format="Q: {prompt}\nA:", seed=6,
                                   head_std=0.5),
        "same": make_random_delta(tiny_tokenizers["bl"], root / "same", prompt_format="Q: {prompt}\nA:", seed=7),
    }


@pytest.fixture(scope="module")
def user(world):
    return load_lm(str(world["user"]))


def config(world, **kw) -> ServeConfig:
    deltas = [ServedDelta("cross", str(world["cross"]), 1.0), ServedDelta("small", str(world["small"]), 0.5),
              ServedDelta("same", str(world["same"]), 0.8)]
    return ServeConfig(user=str(world["user"]), deltas=deltas, default=kw.pop("default", ["cross"]), **kw)


def reference(world, user, prompt: str, alphas: dict[str, float], n: int) -> list[int]:
    """cmc's decoder on the prompt alone (raw user format, greedy)."""
    deltas = [load_delta(world[name], user, alpha=a) for name, a in alphas.items()]
    return Decoder(user, deltas, user_format="raw").generate([prompt], GenerationConfig(max_new_tokens=n))[0].token_ids


class Engine:
    """A persistent batch as vLLM's InputBatch keeps it, with greedy sampling through the processor's scores:
    a finished request frees its row (reported as removed), a new one takes a freed row first, then the
    last rows move into the holes left (one-way moves)."""

    def __init__(self, state: ServeState, user):
        self.state, self.user = state, user
        self.rows: list[dict | None] = []
        self.free: list[int] = []
        self.removed: list[int] = []
        self.added: list = []
        self.moved: list = []

    def add(self, req: dict) -> None:
        b = self.free.pop(0) if self.free else len(self.rows)
        if b == len(self.rows):
            self.rows.append(None)
        self.rows[b] = req
        self.added.append((b, req["xargs"], req["prompt_ids"], req["out"]))

    def finish(self, req: dict) -> None:
        b = self.rows.index(req)
        self.rows[b] = None
        self.removed.append(b)
        self.free.append(b)

    def condense(self) -> None:
        for h in sorted(self.free):
            while self.rows and self.rows[-1] is None:
                self.rows.pop()
            if h >= len(self.rows):
                continue
            self.rows[h] = self.rows.pop()
            self.moved.append((len(self.rows), h, False))
        while self.rows and self.rows[-1] is None:
            self.rows.pop()
        self.free = []

    def swap(self, i: int, j: int) -> None:
        self.rows[i], self.rows[j] = self.rows[j], self.rows[i]
        self.moved.append((i, j, True))

    def flush(self) -> None:
        """Report the batch's changes (vLLM does before each step)."""
        self.condense()
        self.state.update(self.removed, self.added, self.moved)
        self.removed, self.added, self.moved = [], [], []

    def step(self) -> None:
        self.flush()
        logits = []
        for r in self.rows:
            with torch.no_grad():
                ids = torch.tensor([r["prompt_ids"] + r["out"]])
                logits.append(self.user.model(input_ids=ids).logits[0, -1].float())
        scores = self.state.scores(torch.stack(logits))
        eos = self.user.tokenizer.eos_token_id
        for r, tok in zip(self.rows, scores.argmax(-1).tolist()):
            if tok == eos:
                r["done"] = True
            else:
                r["out"].append(tok)
                r["done"] = len(r["out"]) >= r["n"]


def request(dec: Decoder, prompt: str, xargs, n: int) -> dict:
    return {"prompt": prompt, "prompt_ids": dec.user_prompt_ids(prompt), "xargs": xargs, "out": [], "n": n, "done": False}


def run(engine: Engine, schedule: dict[int, list[dict]], steps: int, on_step=None) -> None:
    for t in range(steps):
        for r in schedule.get(t, []):
            engine.add(r)
        if on_step is not None:
            on_step(t, engine)
        if not any(r is not None for r in engine.rows):
            continue
        engine.step()
        for r in [r for r in engine.rows if r is not None and r["done"]]:
            engine.finish(r)
    engine.flush()


def test_requests_joining_leaving_and_moving_decode_as_cmc_generate_alone(world, user):
    state = ServeState.load(config(world), user.width)
    dec = Decoder(user, [], user_format="raw")
    choices = [None, {"cmc_deltas": ["cross"]}, {"cmc_deltas": ["small:1.3", "cross:0.6"]}, {"cmc_deltas": ["same"]},
               {"cmc_deltas": []}, {"cmc_deltas": ["cross:0"]}, {"cmc_deltas": ["same:0.4", "small"]},
               {"cmc_deltas": "cross:2"}]
    reqs = [request(dec, p, x, n) for p, x, n in zip(PROMPTS, choices, [9, 5, 12, 7, 6, 8, 10, 4])]
    engine = Engine(state, user)

    def swap_now_and_then(t, e):
        if t in (3, 7) and len(e.rows) >= 3 and all(e.rows[i] is not None for i in (0, 2)):
            e.swap(0, 2)

    run(engine, {0: reqs[:3], 1: reqs[3:5], 4: reqs[5:7], 6: reqs[7:]}, 30, swap_now_and_then)
    assert all(r["done"] for r in reqs)
    for r in reqs:
        alphas, _ = state.config.selection(r["xargs"])
        assert r["out"] == reference(world, user, r["prompt"], alphas, r["n"]), r["prompt"]
    assert state.live_state() == {"requests": 0, "cross": 0, "small": 0, "same": 0}


def test_a_cancelled_and_a_preempted_request_leave_nothing_behind(world, user):
    state = ServeState.load(config(world), user.width)
    dec = Decoder(user, [], user_format="raw")
    a, b, c = (request(dec, p, {"cmc_deltas": ["cross", "same"]}, 10) for p in PROMPTS[:3])
    engine = Engine(state, user)

    def events(t, e):
        if t == 3:  # b is cancelled: removed before it is done
            e.finish(b)
        if t == 4:  # a is preempted, then comes back with the ids it had
            e.finish(a)
        if t == 6:
            e.add(a)

    run(engine, {0: [a, b], 5: [c]}, 30, events)
    assert a["done"] and c["done"] and not b["done"]
    want = {"cmc_deltas": ["cross", "same"]}
    alphas, _ = state.config.selection(want)
    assert a["out"] == reference(world, user, a["prompt"], alphas, 10)
    assert c["out"] == reference(world, user, c["prompt"], alphas, 10)  # decoded after a cancelled one: as alone
    assert b["out"] == reference(world, user, b["prompt"], alphas, 10)[:len(b["out"])]
    assert state.live_state() == {"requests": 0, "cross": 0, "small": 0, "same": 0}


def test_pool_rows_added_and_dropped_keep_each_requests_delta_logits(world, user):
    """The delta's logits of a request equal a from-scratch run of the delta on its text, whatever the pool
    did to other rows (added, dropped) in between."""
    d = load_delta(world["cross"], user, alpha=1.0)
    pool = DeltaStreams(d, same_vocab=False)
    texts = {"a": "", "b": ""}
    pool.add("a", PROMPTS[0])
    pool.add("b", PROMPTS[1])

    def check(keys, out):
        for k, row in zip(keys, out):
            prompt = {"a": PROMPTS[0], "b": PROMPTS[1], "c": PROMPTS[2]}[k]
            ids = d.lm.bos + d.lm.tokenizer(FMT.replace("{prompt}", prompt) + texts[k], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                ref = d.lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            assert torch.allclose(row, ref, atol=1e-4)

    words = [" the", " harbour", "s", " box", " sang", " town", "!", " sea"]
    for t, w in enumerate(words):
        if t == 2:
            pool.add("c", PROMPTS[2])
            texts["c"] = ""
        if t == 4:
            pool.remove(["a"])
            texts.pop("a")
        keys = list(texts)[::-1] if t % 2 else list(texts)
        for k in keys:
            texts[k] += w
        check(keys, pool.step(keys, [texts[k] for k in keys], [[] for _ in keys], list(range(len(keys)))))
    assert len(pool) == 2
    pool.remove(["b", "c"])
    assert len(pool) == 0 and pool.lm.B == 0


@pytest.mark.parametrize("xargs, msg", [
    ({"cmc_deltas": ["nope"]}, "unknown delta 'nope'"),
    ({"cmc_deltas": ["cross:inf"]}, "finite"),
    ({"cmc_deltas": ["cross:1e9"]}, r"must be between -10 and 10 .*got '1e9'"),
    ({"cmc_deltas": ["cross:x"]}, "must be a number"),
    ({"cmc_deltas": 3}, "must be a list"),
    ({"cmc_deltas": ["cross", "cross:1"]}, "given twice"),
    ({"cmc_delta": ["cross"]}, "unknown field cmc_delta"),
    ({"cmc_prompt": ""}, "cmc_prompt"),
    ({"cmc_deltas": ["cross:auto"]}, "no calibrated strength for this model"),
])
def test_bad_request_fields_are_one_line_errors(world, xargs, msg):
    with pytest.raises(ValueError, match=msg) as e:
        config(world).selection(xargs)
    assert "\n" not in str(e.value)


def test_defaults_and_alphas(world):
    cfg = config(world, default=["cross", "same"])
    assert cfg.selection(None) == ({"cross": 1.0, "same": 0.8}, None)
    assert cfg.selection({"cmc_deltas": ["small:2.5"], "cmc_prompt": "Hi"}) == ({"small": 2.5}, "Hi")
    assert cfg.selection({"cmc_deltas": []}) == ({}, None)
    assert ServeConfig(**__import__("json").loads(cfg.to_env())) == cfg


def test_calibrated_strengths_serve_by_default_and_as_name_auto(world, user):
    """A delta served without a strength takes its calibration record for the user (engine/calibrecord.py); a
    request asks for it with NAME:auto; the record travels to the engine processes in the config."""
    import json

    from cmc_cli.config.serve import ServedDelta
    from cmc_cli.engine.calibrecord import RECORD, weights_fingerprint
    from cmc_cli.engine.models import load_delta

    d = load_delta(world["cross"], user, 1.0)
    entry = {"alpha": 1.75, "user": {"name": "user", "vocab": user.vocab.fingerprint,
                                     "weights": weights_fingerprint(world["user"])},
             "delta_weights": weights_fingerprint(world["cross"]), "map": {
                 "strategy": d.token_map.meta["strategy"], "delta": d.token_map.meta["delta"]["fingerprint"],
                 "user": d.token_map.meta["user"]["fingerprint"]}}
    (world["cross"] / RECORD).write_text(json.dumps({"format": "cmc-calibration/1", "entries": [entry]}))
    try:
        cfg = ServeConfig(user=str(world["user"]), deltas=[ServedDelta("cross", str(world["cross"]), None),
                                                            ServedDelta("same", str(world["same"]), "auto")],
                          default=["cross"])
        with pytest.raises(Exception, match="no calibrated strength"):  # `same` has no record: refused at load
            ServeState.load(cfg, user.width)
        cfg.deltas[1].alpha = 0.8
        state = ServeState.load(cfg, user.width)
        assert cfg.deltas[0].alpha == 1.75 and cfg.calibrated == {"cross": 1.75}
        assert cfg.selection(None) == ({"cross": 1.75}, None)
        assert cfg.selection({"cmc_deltas": ["cross:auto", "same"]}) == ({"cross": 1.75, "same": 0.8}, None)
        with pytest.raises(ValueError, match="'same' has no calibrated strength"):
            cfg.selection({"cmc_deltas": ["same:auto"]})
        assert ServeConfig(**json.loads(cfg.to_env())).calibrated == {"cross": 1.75}
        assert state.deltas["cross"].alpha_source == "calibrated"
    finally:
        (world["cross"] / RECORD).unlink()


def test_a_lookahead_token_map_serves_as_it_decodes(world, user, tmp_path, monkeypatch):
    """A pm-lookahead map (one extra tree-masked delta forward per step over the top-k candidates) through the
    pool's stream rows, which differ from the batch's rows once requests come and go."""
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    d = load_delta(world["cross"], user, alpha=1.0)
    tm = TokenMap.build(d.lm.vocab, user.vocab, strategy="pm-lookahead", lookahead_k=16)
    path = tm.save(tmp_path / "look.safetensors")
    cfg = config(world, token_maps=[str(path)])
    state = ServeState.load(cfg, user.width)
    assert state.deltas["cross"].lookahead is not None
    dec = Decoder(user, [], user_format="raw")
    reqs = [request(dec, p, {"cmc_deltas": x}, n) for p, x, n in
            zip(PROMPTS, [["cross"], ["cross:1.5", "same"], ["cross:0.7"], ["cross"]], [10, 6, 12, 8])]
    from cmc_cli.engine.streams import ResyncLM

    peeks, real_peek = [], ResyncLM.peek
    monkeypatch.setattr(ResyncLM, "peek", lambda self, branches: peeks.append(len(branches)) or real_peek(self, branches))
    run(Engine(state, user), {0: reqs[:2], 2: reqs[2:]}, 30)
    monkeypatch.setattr(ResyncLM, "peek", real_peek)
    assert sum(peeks) > 10  # the look-ahead ran
    for r in reqs:
        alphas, _ = cfg.selection(r["xargs"])
        deltas = [load_delta(world[n], user, alpha=a, token_maps=[path]) for n, a in alphas.items()]
        want = Decoder(user, deltas, user_format="raw").generate([r["prompt"]], GenerationConfig(max_new_tokens=r["n"]))
        assert r["out"] == want[0].token_ids
    assert state.live_state() == {"requests": 0, "cross": 0, "small": 0, "same": 0}


def test_prompt_logprobs_beside_deltas_are_refused():
    """vLLM computes prompt logprobs before any logits processor: with deltas on they would score the model
    alone, so they are a 400; with every delta off they are the truth and pass."""
    from cmc_cli.config.serve import check_prompt_logprobs

    with pytest.raises(ValueError, match="cmc eval general") as e:
        check_prompt_logprobs({"cross": 1.0}, 1)
    assert "\n" not in str(e.value)
    check_prompt_logprobs({"cross": 1.0}, None)
    check_prompt_logprobs({"cross": 0.0}, 0)
    check_prompt_logprobs({}, 5)
