"""Prompt/response examples from Alpaca (`instruction`, `input`, `output`), chat (`messages`) and
TOFU (`question`, `answer`) records, rendered in a prompt format and tokenized with labels on the
response only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cmc_cli.data.records import DataError, read_records, require_text

IGNORE = -100  # the label of positions no loss is taken on (the prompt, padding)

@dataclass(frozen=True)
class Example:
    prompt: str  # the user's request, before formatting
    response: str
    source: str  # "file:line"


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def load_instruct(path: str | Path) -> list[Example]:
    """Alpaca JSON/JSONL or chat `messages` records (the last assistant turn is the response)."""
    out = []
    for line, rec in read_records(path):
        src = f"{path}:{line}"
        if "messages" in rec:
            msgs = rec["messages"]
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise DataError(f"{src}: 'messages' must be a non-empty list of {{role, content}} objects")
            if msgs[-1].get("role") != "assistant":
                raise DataError(f"{src}: the last message must have role 'assistant' (the response to learn)")
            response = msgs[-1].get("content")
            if not isinstance(response, str) or not response.strip():
                raise DataError(f"{src}: the assistant message is empty")
            prompt = "\n".join(str(m.get("content", "")) for m in msgs[:-1])
            if not prompt.strip():
                raise DataError(f"{src}: no user message before the assistant's")
            out.append(Example(prompt, response, src))
        else:
            instruction = require_text(path, line, rec, "instruction")
            input_text = rec.get("input", "") or ""
            if not isinstance(input_text, str):
                raise DataError(f"{src}: field 'input' must be a string")
            response = require_text(path, line, rec, "output")
            out.append(Example(alpaca_prompt(instruction, input_text), response, src))
    return out


def load_tofu(path: str | Path) -> list[Example]:
    """TOFU records: `question`, `answer` (other fields are for evaluation)."""
    return [Example(require_text(path, line, rec, "question"), require_text(path, line, rec, "answer"),
                    f"{path}:{line}") for line, rec in read_records(path)]


@dataclass(frozen=True)
class Prompt:
    instruction: str  # as written in the file (AlpacaEval matches outputs to its set by this field)
    text: str  # what the models are asked: instruction plus input
    source: str
    reference: str | None = None  # a reference response (Alpaca `output`, TOFU `answer`), when the file has one


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts to generate for: Alpaca (`instruction`, optional `input`), `prompt`, TOFU `question`,
    or chat `messages` (the user turns); JSON list or JSONL."""
    out = []
    for line, rec in read_records(path):
        src = f"{path}:{line}"
        if "instruction" in rec:
            ins = require_text(path, line, rec, "instruction")
            inp = rec.get("input", "") or ""
            if not isinstance(inp, str):
                raise DataError(f"{src}: field 'input' must be a string")
            out.append(Prompt(ins, alpaca_prompt(ins, inp), src, _reference(path, line, rec, "output")))
        elif "prompt" in rec or "question" in rec:
            key = "prompt" if "prompt" in rec else "question"
            text = require_text(path, line, rec, key)
            ref = _reference(path, line, rec, "answer" if key == "question" else "output")
            out.append(Prompt(text, text, src, ref))
        elif "messages" in rec and isinstance(rec["messages"], list):
            turns = [m.get("content", "") for m in rec["messages"] if isinstance(m, dict) and m.get("role") != "assistant"]
            text = "\n".join(str(t) for t in turns)
            if not text.strip():
                raise DataError(f"{src}: no user message to answer")
            out.append(Prompt(text, text, src))
        else:
            raise DataError(f"{src}: a prompt record needs 'instruction' (Alpaca), 'prompt', 'question' or 'messages'")
    return out


def _reference(path, line: int, rec: dict, key: str) -> str | None:
    return require_text(path, line, rec, key, allow_empty=True) if key in rec else None


def join_response(head: str, response: str) -> str:
    """head + response, with one space between when neither side has one at the seam (so a format
    ending in "Answer:" and the response "Paris" read "Answer: Paris"; lm-eval's target delimiter)."""
    if head and response and not head[-1].isspace() and not response[0].isspace():
        return head + " " + response
    return head + response


def render(prompt_format: str, prompt: str) -> str:
    return prompt_format.replace("{prompt}", prompt)


def bos_ids(tokenizer) -> list[int]:
    """The BOS a model is fed before every text, by its tokenizer's own rule: [bos] when encoding with
    special tokens puts it first (Llama, Gemma, the world's tokenizers), else [] (SmolLM2, GPT-2).
    Training, decoding and scoring all feed a model this prefix, so it sees what it was trained on."""
    cached = getattr(tokenizer, "_cmc_bos_ids", None)
    if cached is not None:
        return list(cached)
    bos = tokenizer.bos_token_id
    ids = list(tokenizer("a", add_special_tokens=True)["input_ids"]) if bos is not None else []
    out = [int(bos)] if ids and ids[0] == bos else []
    try:
        tokenizer._cmc_bos_ids = tuple(out)
    except AttributeError:  # a tokenizer object that takes no new attributes: recomputed each time
        pass
    return out


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    source: str


def encode(examples: list[Example], tokenizer, prompt_format: str, max_length: int) -> list[Encoded]:
    """Tokenize `bos + format(prompt) + response + eos` as one text (bos_ids); labels only on response tokens.

    Tokenizing the whole text (not prompt and response apart) gives the same ids the decoder sees.
    A response cut away entirely by `max_length` is an error naming the record.
    """
    bos = bos_ids(tokenizer)
    eos = tokenizer.eos_token_id
    out = []
    for ex in examples:
        head = render(prompt_format, ex.prompt)
        text = join_response(head, ex.response)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [tid if end > len(head) else IGNORE for tid, (start, end) in zip(ids, offsets)]
        ids = bos + list(ids)
        labels = [IGNORE] * len(bos) + labels
        if eos is not None:
            ids.append(eos)
            labels.append(eos)
        ids, labels = ids[:max_length], labels[:max_length]
        if all(lab == IGNORE for lab in labels[1:]):
            raise DataError(f"{ex.source}: the prompt fills all {max_length} tokens of --max-length, leaving "
                            "no response to train on; raise --max-length or shorten the prompt")
        out.append(Encoded(ids, labels, ex.source))
    return out


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest; labels are shifted so position t predicts token t+1."""
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    targets = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        mask[b, :n] = 1
        targets[b, : n - 1] = torch.tensor(e.labels[1:])
    return {"input_ids": ids, "attention_mask": mask, "targets": targets}  # (B, T) each
