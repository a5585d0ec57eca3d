"""cmc's logits processor for vLLM (the V1 model runner's interface, vllm.v1.sample.logits_processor).

    import os
    from vllm import LLM, SamplingParams
    from cmc_cli.serve import configure, PROCESSOR

    configure("path/to/user", deltas=["unlearn=deltas/idk:1.0"])   # sets CMC_SERVE for vLLM's processes
    llm = LLM(model="path/to/user", dtype="float32", logits_processors=[PROCESSOR],
              logprobs_mode="processed_logprobs")     # sampled tokens' logprobs with the deltas
    sp = SamplingParams(temperature=0, max_tokens=64, extra_args={"cmc_deltas": ["unlearn:0.5"]})
    print(llm.generate(["Question: Who wrote ...?\\nAnswer:"], sp)[0].outputs[0].text)

Each engine process builds one CMCProcessor: it loads the user's tokenizer, every delta and its token map
once (serve/state.ServeState). A request picks its deltas and strengths in `extra_args`
(`vllm_xargs` over HTTP): {"cmc_deltas": ["NAME", "NAME:ALPHA", ...]}, [] for none; without the field it
gets the server's defaults. Bad fields are refused by validate_params, which vLLM's server answers with
HTTP 400; so are prompt logprobs beside deltas (config/serve.check_prompt_logprobs): vLLM computes them
before any processor. The sampled tokens' logprobs include the deltas under logprobs_mode
"processed_logprobs" (`cmc serve` sets it). vLLM's GPU Model Runner V2 has another interface: `cmc serve`
sets VLLM_USE_V2_MODEL_RUNNER=0.
"""

from __future__ import annotations

import logging

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from cmc_cli.config.serve import ServeConfig, check_prompt_logprobs
from cmc_cli.serve.state import ServeState

log = logging.getLogger(__name__)


class CMCProcessor(LogitsProcessor):
    _config: ServeConfig | None = None

    @classmethod
    def _served(cls) -> ServeConfig:
        if cls._config is None:
            cls._config = ServeConfig.from_env()
        return cls._config

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        deltas, _ = cls._served().selection(sampling_params.extra_args)
        check_prompt_logprobs(deltas, getattr(sampling_params, "prompt_logprobs", None))

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        if getattr(vllm_config, "use_v2_model_runner", False):
            raise ValueError("cmc's logits processor implements vLLM's V1 model runner interface; set "
                             "VLLM_USE_V2_MODEL_RUNNER=0 (cmc serve and cmc_cli.serve.configure do)")
        cfg = ServeConfig.from_env()
        n_logits = vllm_config.model_config.get_vocab_size()
        self.state = ServeState.load(cfg, n_logits, device)
        log.info("cmc: %d delta(s) loaded (%s), combine %s", len(self.state.deltas), ", ".join(self.state.deltas) or "-",
                 self.state.mode)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        self.state.update(
            removed=list(batch_update.removed),
            added=[(i, params.extra_args if params is not None else None, prompt, out)
                   for i, params, prompt, out in batch_update.added],
            moved=[(i, j, d == MoveDirectionality.SWAP) for i, j, d in batch_update.moved])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits
        return self.state.scores(logits).to(logits.dtype)
