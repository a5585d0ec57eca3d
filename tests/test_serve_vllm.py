"""`cmc serve` end to end: vLLM's OpenAI server with cmc's processor, over HTTP, against `cmc generate`'s
decoder on the same raw prompts. One server per module (vLLM starts in tens of seconds on 2 cores).

Needs the `serve` extra (vLLM); skipped without it unless CMC_REQUIRE_SERVE=1 (CI sets it, so a missing
vLLM fails there instead of skipping)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.serve.launch import ServerProcess
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

if os.environ.get("CMC_REQUIRE_SERVE") != "1":
    pytest.importorskip("vllm", reason="cmc serve needs the serve extra (vLLM)")

pytestmark = pytest.mark.serve

PROMPTS = ["What colour is the box?", "Hi", "Tell me a story about a harbour town and its sailors, please.",
           "Where is the harbour?", "The sailors sang", "A box", "Why is the sea blue?", "Tell me about the town.",
           "Who lives in the town?", "The harbour at night"]
FMT = "<|user|>\n{prompt}\n<|assistant|>\n"


VLLM_ARGS = ["--gpu-memory-utilization", "0.05", "--max-model-len", "256", "--seed", "0"]


def start(args: list[str], root: Path) -> ServerProcess:
    return ServerProcess(args, root / f"serve-{time.time_ns()}.log", VLLM_ARGS, cwd=root)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("served")
    return {
        "root": root,
        # head size 64: vLLM's CPU attention supports a fixed set of head sizes
        "user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=128, heads=2, seed=3),
        "cross": make_random_delta(tiny_tokenizers["spm"], root / "cross", prompt_format=FMT, seed=5, head_std=0.3),
        "same": make_random_delta(tiny_tokenizers["bl"], root / "same", prompt_format="Q: {prompt}\nA:", seed=7,
                                  head_std=0.3),
    }


@pytest.fixture(scope="module")
def server(models):
    root = models["root"]
    with start([str(models["user"]), "-d", f"cross={models['cross']}", "-d", f"same={models['same']}:0.8"], root) as s:
        yield s


@pytest.fixture(scope="module")
def reference(models):
    user = load_lm(str(models["user"]))
    cache = {}

    def ref(prompt: str, alphas: dict[str, float], n: int) -> list[int]:
        key = (prompt, tuple(sorted(alphas.items())), n)
        if key not in cache:
            deltas = [load_delta(models[name], user, alpha=a) for name, a in alphas.items()]
            dec = Decoder(user, deltas, user_format="raw")
            cache[key] = dec.generate([prompt], GenerationConfig(max_new_tokens=n))[0].token_ids
        return cache[key]

    ref.eos = user.tokenizer.eos_token_id
    return ref


def strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:ids.index(eos)] if eos in ids else ids


@pytest.mark.parametrize("xargs, alphas", [
    (None, {"cross": 1.0, "same": 0.8}),  # the server's defaults
    ({"cmc_deltas": ["cross"]}, {"cross": 1.0}),
    ({"cmc_deltas": ["same:1.5"]}, {"same": 1.5}),
    ({"cmc_deltas": []}, {}),
    ({"cmc_deltas": ["cross:0"]}, {}),
], ids=["defaults", "cross-vocab", "same-vocab", "none", "alpha-0"])
def test_greedy_http_completions_equal_cmc_generate(server, reference, xargs, alphas):
    for p in PROMPTS[:3]:
        assert strip_eos(server.complete(p, 16, xargs), reference.eos) == reference(p, alphas, 16), p


def test_the_deltas_change_the_answers(reference):
    """Guards the parity test against deltas too weak to matter."""
    changed = sum(reference(p, {"cross": 1.0}, 16) != reference(p, {}, 16) for p in PROMPTS[:3])
    changed_same = sum(reference(p, {"same": 1.5}, 16) != reference(p, {}, 16) for p in PROMPTS[:3])
    assert changed >= 2 and changed_same >= 2


def test_concurrent_requests_with_different_deltas_and_alphas(server, reference):
    choices = [{"cmc_deltas": ["cross"]}, {"cmc_deltas": ["same:0.4", "cross:1.7"]}, {"cmc_deltas": ["same"]},
               {"cmc_deltas": []}, {"cmc_deltas": ["cross:0.5"]}, None, {"cmc_deltas": ["same:2", "cross:0.3"]},
               {"cmc_deltas": ["cross:1.2"]}, {"cmc_deltas": ["same:0.9"]}, {"cmc_deltas": "cross:2"}]
    lengths = [12, 20, 8, 16, 24, 10, 18, 14, 22, 6]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda a: server.complete(*a), zip(PROMPTS, lengths, choices)))
    for p, n, x, ids in zip(PROMPTS, lengths, choices, got):
        alphas = {"cross": 1.0, "same": 0.8} if x is None else {}
        for item in ([] if x is None else [x["cmc_deltas"]] if isinstance(x["cmc_deltas"], str) else x["cmc_deltas"]):
            name, _, a = item.partition(":")
            alphas[name] = float(a) if a else {"cross": 1.0, "same": 0.8}[name]
        assert strip_eos(ids, reference.eos) == reference(p, alphas, n), (p, x)


@pytest.mark.parametrize("xargs, msg", [
    ({"cmc_deltas": ["nope"]}, "unknown delta 'nope'"),
    ({"cmc_deltas": ["cross:inf"]}, "finite"),
    ({"cmc_deltas": ["cross:strong"]}, "must be a number"),
    ({"cmc_deltas": 3}, "must be a list"),
    ({"cmc_delta": ["cross"]}, "unknown field cmc_delta"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(server, reference, xargs, msg):
    status, out = server.post({"model": "user", "prompt": "Hi", "max_tokens": 4, "vllm_xargs": xargs})
    assert status == 400, out
    assert msg in json.dumps(out)
    assert strip_eos(server.complete("Hi", 6, {"cmc_deltas": ["cross"]}), reference.eos) == reference("Hi", {"cross": 1.0}, 6)


def test_sampled_logprobs_include_the_deltas(server, models):
    """The logprobs a completion returns are the combined distribution's (cmc serve runs vLLM with
    --logprobs-mode processed_logprobs): equal to cmc's own teacher-forced scores of the same tokens."""
    user = load_lm(str(models["user"]))

    def forced(alphas: dict, ids: list[int]) -> list[float]:
        deltas = [load_delta(models[name], user, alpha=a) for name, a in alphas.items()]
        gen = Decoder(user, deltas, user_format="raw").generate([PROMPTS[0]], GenerationConfig(max_new_tokens=len(ids)),
                                                               force=[ids])
        return gen[0].token_logprobs

    for xargs, alphas in (({"cmc_deltas": ["cross:1.5", "same"]}, {"cross": 1.5, "same": 0.8}), ({"cmc_deltas": []}, {})):
        status, out = server.post({"model": server.model, "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
                                   "logprobs": 1, "return_token_ids": True, "vllm_xargs": xargs})
        assert status == 200, out
        ids, served = out["choices"][0]["token_ids"], out["choices"][0]["logprobs"]["token_logprobs"]
        assert served == pytest.approx(forced(alphas, ids), abs=2e-3), xargs
        if alphas:  # the guard: the same tokens under the model alone score otherwise
            assert served != pytest.approx(forced({}, ids), abs=1e-2)


@pytest.mark.parametrize("body", [{"echo": True, "logprobs": 1}, {"prompt_logprobs": 1}], ids=["echo", "prompt_logprobs"])
def test_prompt_logprobs_beside_deltas_are_a_400(server, body):
    base = {"model": server.model, "prompt": "Hi", "max_tokens": 2, "temperature": 0, **body}
    status, out = server.post({**base, "vllm_xargs": {"cmc_deltas": ["cross"]}})
    assert status == 400 and "cmc eval general" in json.dumps(out), out
    status, out = server.post({**base, "vllm_xargs": {"cmc_deltas": []}})  # the model alone: its own logprobs
    assert status == 200, out


def test_a_request_after_a_cancelled_one_decodes_as_alone(server, reference):
    body = {"model": "user", "prompt": PROMPTS[2], "max_tokens": 200, "temperature": 0, "stream": True,
            "vllm_xargs": {"cmc_deltas": ["cross", "same"]}}
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    r = urllib.request.urlopen(req, timeout=120)
    for _ in range(3):
        r.readline()
    r.close()  # the client goes away mid-answer: vLLM aborts the request
    time.sleep(1)
    for p in PROMPTS[:2]:
        alphas = {"cross": 1.0, "same": 0.8}
        assert strip_eos(server.complete(p, 16, {"cmc_deltas": ["cross", "same"]}), reference.eos) == reference(p, alphas, 16)
    assert server.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_server_leaves_nothing_running(models, sig):
    s = start([str(models["user"]), "-d", f"cross={models['cross']}"], models["root"])
    try:
        s.wait_ready()
    finally:
        s.stop(sig)
    deadline = time.time() + 30
    while s.session_alive() and time.time() < deadline:
        time.sleep(0.5)
    assert not s.session_alive(), s.tail()
