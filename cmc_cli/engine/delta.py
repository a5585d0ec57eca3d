"""Delta models: fresh ones from presets shaped like the paper's, or existing model directories.

A fresh delta's output layer starts at zero, so at step 0 it adds nothing and training starts from
the template's own distribution (stable; DESIGN.md).
"""

from __future__ import annotations

import torch

from cmc_cli.errors import CmcError

# Llama-architecture shapes of the paper's delta models (llama2.c's 15M / 42M / 110M) and a tiny one.
PRESETS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    # sized for the built-in model world (docs/world.md), whose models have 1-3M parameters
    "mini": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "small": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4),
    "15m": dict(hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6),
    "42m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
    "110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12),
}


def random_lm(arch: str, seed: int, **config):
    """A randomly initialised causal LM of `arch` (llama | qwen2) from its config's fields, drawn from `seed`
    without touching the global RNG: the one place that makes a fresh model (deltas, the model world, tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in classes:
        raise ValueError(f"unknown architecture {arch!r}; one of {', '.join(classes)}")
    config_cls, model_cls = classes[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config_cls(**config))


def new_delta(preset: str, vocab_size: int, max_length: int, seed: int, bos_id=None, eos_id=None, pad_id=None):
    """A fresh Llama-architecture delta with a zeroed output layer."""
    if preset not in PRESETS:
        raise CmcError(f"unknown delta preset '{preset}'; one of {', '.join(PRESETS)} or a model directory")
    model = random_lm("llama", seed, vocab_size=vocab_size, max_position_embeddings=max(max_length, 64),
                      tie_word_embeddings=False, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                      **PRESETS[preset])
    torch.nn.init.zeros_(model.get_output_embeddings().weight)
    return model


DELTA_FORMAT = "cmc-delta/1"


def delta_card(*, task: str, prompt_format: str, template: dict, combine: str = "log-softmax-template",
               loss: str = "ce", **extra) -> dict:
    """The `cmc.json` written beside a delta's weights (docs/formats.md)."""
    from cmc_cli import __version__

    return {"format": DELTA_FORMAT, "cmc_version": __version__, "task": task, "loss": loss, "combine": combine,
            "prompt_format": prompt_format, "template": template, **extra}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def delta_for_training(delta: str, v_template: int, template_fingerprint: str, max_length: int, seed: int, tokenizer,
                       pad_id) -> "torch.nn.Module":
    """`cmc train --delta`: a fresh model of a preset, or a delta directory to continue training (fp32), which
    must have the template's vocabulary (cross-vocabulary training is not supported)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from cmc_cli.errors import cause

    path = Path(delta)
    if delta not in PRESETS and path.is_dir():  # a preset name wins; write ./tiny for a directory
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False,
                                                         use_safetensors=True)
        except Exception as e:
            raise CmcError(f"cannot load the delta from {path} ({cause(e)})") from None
        fp = None
        if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file():
            from cmc_cli.plugins import adapter_for
            from cmc_cli.refs import ModelRef

            dref = ModelRef(text=str(path), path=path)
            fp = adapter_for(dref).load_vocab(dref).fingerprint
        elif (path / "cmc.json").is_file():
            fp = json.loads((path / "cmc.json").read_text()).get("template", {}).get("fingerprint")
        if fp and fp != template_fingerprint:
            raise CmcError(f"the delta {path} uses another tokenizer than the template's; cross-vocabulary "
                           "training is not supported: use a delta with the template's vocabulary")
    else:
        model = new_delta(delta, v_template, max_length, seed, tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id)
    v_delta = model.get_output_embeddings().weight.shape[0]
    if v_delta != v_template:
        raise CmcError(f"the delta's vocabulary ({v_delta}) differs from the template's ({v_template}); "
                       "cross-vocabulary training is not supported: use a delta with the template's vocabulary")
    return model
