"""The models cmc decodes with: a loaded LLM with its tokenizer and vocabulary, and a delta applied at
a strength through a token map (DESIGN.md). Loading resolves a reference through its adapter; a
delta's token map is the one given for its vocabulary pair, else `tokenmaps/DELTA__USER.safetensors`
when it fits, else cmc's default map built in memory."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmc_cli.config.runs import AUTO, DEFAULT_ALPHA, check_alpha_value
from cmc_cli.data.instruct import bos_ids, render
from cmc_cli.errors import CmcError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model with its tokenizer and normalised vocabulary, as an adapter loaded it."""

    name: str
    model: object
    tokenizer: object
    vocab: object  # vocab.Vocab
    adapter: str = ""
    path: Path | None = None  # where it was loaded from
    feed_bos: list[int] | None = None  # the BOS it was trained with, when recorded (a delta's cmc.json)
    n_logits: int | None = None  # the width of its logits when no model is loaded (a server's user model)

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return next(i for i in (t.pad_token_id, t.eos_token_id, 0) if i is not None)

    @property
    def bos(self) -> list[int]:
        """What this model is fed before every text: as recorded at training, else its tokenizer's rule."""
        return list(self.feed_bos) if self.feed_bos is not None else bos_ids(self.tokenizer)

    @property
    def width(self) -> int:
        if self.model is None:
            return int(self.n_logits)
        return int(self.model.get_output_embeddings().weight.shape[0])


@dataclass
class Delta:
    """A trained delta applied at strength `alpha`; `index` maps user ids to delta ids (None: the
    user's own vocabulary, fed the user's ids)."""

    lm: LoadedModel
    alpha: float
    prompt_format: str
    index: torch.Tensor | None
    combine: str = "log-softmax-template"
    meta: dict = field(default_factory=dict)
    token_map: object = None  # the TokenMap behind `index` (None: same vocabulary)
    cap: torch.Tensor | None = None  # user ids that get only suppressions (TokenMap.cap_tensor)
    lookahead: object = None  # engine.lookahead.Lookahead for a map with prefix rule "lookahead"
    alpha_source: str = "given"  # given | calibrated (DELTA/calibration.json) | default (DEFAULT_ALPHA)
    prompt_formats: list[str] = field(default_factory=list)  # every format it was trained in (cmc.json); [] = one

    def in_format_for(self, user_prompt: str) -> "Delta":
        """This delta reading its prompts in the trained format closest to how its user is asked: user_prompt
        is the user's prompt text for PROBE (Decoder.user_prompt_text). Closest = the longest common end of
        the text after the question (where the answer starts), then of the text before it; ties: the first."""
        if len(self.prompt_formats) < 2 or PROBE not in user_prompt:
            return self
        before, after = user_prompt.split(PROBE, 1)

        def score(f: str) -> tuple[int, int]:
            fb, fa = render(f, PROBE).split(PROBE, 1)
            return _common_end(after, fa), _common_end(before, fb)

        best = max(self.prompt_formats, key=score)  # max keeps the first of equal scores
        return self if best == self.prompt_format else dataclasses.replace(self, prompt_format=best)

    def term(self, logits: torch.Tensor, lookahead: tuple | None = None, alpha=None, gathered=None) -> tuple:
        """This delta's term of combine.decode_scores for its logits (..., V_delta) of a step; lookahead:
        (rows, cols, extra) of DeltaStreams.lookahead for this step; alpha: instead of self.alpha (a float or
        a (B, 1) tensor of per-row strengths); gathered: the GatheredHead (engine/heads.py) that computed
        `logits`, whose index replaces the map's."""
        a = self.alpha if alpha is None else alpha
        if isinstance(a, torch.Tensor):
            a = a.to(logits.device)
        if gathered is not None:
            return (a, logits, gathered.index, None, None, True)
        return (a, logits, self.index, self.cap, lookahead)

    def reads_user_ids(self, user: LoadedModel) -> bool:
        """Same tokenizer as the user model: fed the user's ids instead of re-tokenized text."""
        return self.lm.vocab.fingerprint == user.vocab.fingerprint

    def heads(self, prompts: list[str]) -> list[str]:
        """Each prompt in the delta's own prompt format."""
        return [render(self.prompt_format, p) for p in prompts]


PROBE = "\x00cmc-prompt\x00"  # a question no format contains: where a format puts the prompt


def _common_end(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


def check_alpha(alpha: float, what: str = "--alpha") -> float:
    return check_alpha_value(alpha, what)  # the config's check, the one every option and request uses


def _resolve(text: str, adapter: str | None = None):
    from cmc_cli.plugins import adapter_for
    from cmc_cli.refs import resolve

    ref = resolve(text, adapter=adapter)
    ad = adapter_for(ref)
    tok = ad.load_tokenizer(ref)
    # the vocabulary as map-vocab reads it, from $CMC_CACHE/vocabs when the tokenizer's files were read before
    # (Gemma-3's 262,144 surfaces: 3 s to build, under 1 s to read back)
    return ref, ad, tok, ad.load_vocab(ref)


def load_lm(text: str, dtype=None, device: str = "cpu", adapter: str | None = None) -> LoadedModel:
    """Resolve a model reference and load model, tokenizer and vocabulary through its adapter."""
    ref, ad, tok, vocab = _resolve(text, adapter)
    model = ad.load_model(ref, dtype=dtype, device=device)
    model.requires_grad_(False)
    return LoadedModel(ref.name, model, tok, vocab, ad.name, ref.path)


def load_vocab_only(text: str, n_logits: int) -> LoadedModel:
    """A model's tokenizer and vocabulary without its weights (a serving engine runs the model itself);
    n_logits: the width of the logits it produces."""
    ref, ad, tok, vocab = _resolve(text)
    return LoadedModel(ref.name, None, tok, vocab, ad.name, ref.path, n_logits=int(n_logits))


def logits_width(path: Path) -> int:
    """The width of the logits a model directory's weights produce, from its config.json (no weights read)."""
    f = Path(path) / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CmcError(f"cannot read {f}: {e}") from e
    n = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if not isinstance(n, int):
        raise CmcError(f"{f} gives no vocab_size; vLLM and cmc need it")
    return n


def read_delta_meta(path: Path) -> dict:
    meta_path = path / "cmc.json"
    if not path.is_dir():
        raise CmcError(f"delta {path} does not exist; train one with `cmc train` or give a delta directory")
    if not meta_path.is_file():
        raise CmcError(f"{path} is not a cmc delta (no cmc.json); train one with `cmc train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CmcError(f"{meta_path} is unreadable ({e}); retrain or restore the delta") from None
    if not isinstance(meta, dict) or meta.get("format") != "cmc-delta/1":
        raise CmcError(f"{meta_path} is not a cmc delta description (format cmc-delta/1)")
    return meta


def load_delta(path: str | Path, user: LoadedModel, alpha: float, token_maps=(), device: str = "cpu",
               dtype=None, weights: bool = True, lm: LoadedModel | None = None) -> Delta:
    """Load a delta directory and the map from the user's vocabulary to its own (same vocabulary: none).

    token_maps: paths or TokenMaps to choose from (the one built for this delta and user tokenizer
    wins); else `tokenmaps/DELTA__USER.safetensors` when it fits; else cmc's default map (exact-ext), built in memory.
    alpha: a number; None: the strength `cmc calibrate` recorded for this user and map, else DEFAULT_ALPHA;
    "auto": the recorded one, an error without it. weights=False: every check and choice, the delta's
    weights not read (its tokenizer, config.json and files only; `cmc serve` checks so before its engine loads).
    lm: this delta directory already loaded by load_lm (calibration maps one delta to its template and a user)."""
    from cmc_cli.engine.maps import default_output
    from cmc_cli.tokenmaps.tokenmap import DEFAULT_STRATEGY, TokenMap

    path = Path(path)
    meta = read_delta_meta(path)
    if alpha is not None and alpha != AUTO:
        alpha = check_alpha(alpha, f"the alpha of delta {path}")
    if lm is None:
        lm = load_lm(str(path), dtype=dtype, device=device) if weights else load_vocab_only(str(path), logits_width(path))
    fp = meta.get("template", {}).get("fingerprint")
    if fp and fp != lm.vocab.fingerprint:
        raise CmcError(f"the tokenizer files in {path} differ from the ones the delta was trained with; restore them")
    index, tm = None, None
    if lm.vocab.fingerprint == user.vocab.fingerprint:
        if lm.width != user.width:
            index = torch.arange(min(lm.vocab.size, user.width))  # same ids; pads to the user's wider logits
    else:
        maps = [m if isinstance(m, TokenMap) else TokenMap.load(m) for m in token_maps]
        fits = [m for m in maps if m.meta["delta"]["fingerprint"] == lm.vocab.fingerprint
                and m.meta["user"]["fingerprint"] == user.vocab.fingerprint]
        default = default_output(lm.name, user.name)
        if fits:
            tm = fits[0]
        elif default.is_file() and _fits(default, lm, user):
            log.info("using token map %s", default)
            tm = TokenMap.load(default)
        else:
            log.info("building a %s token map %s -> %s in memory", DEFAULT_STRATEGY, user.name, lm.name)
            tm = TokenMap.build(lm.vocab, user.vocab)
        index = tm.index_tensor()
    # fed as in training: the recorded BOS; deltas from before it was recorded always got the tokenizer's bos
    legacy = [lm.tokenizer.bos_token_id] if lm.tokenizer.bos_token_id is not None else []
    lm.feed_bos = [int(i) for i in meta["bos"]] if isinstance(meta.get("bos"), list) else legacy
    if index is not None and index.numel() and int(index.max()) >= lm.width:
        raise CmcError(f"delta {path} has {lm.width} output logits but its tokenizer has {lm.vocab.size} tokens, and the "
                       f"token map sends user tokens to delta ids up to {int(index.max())}; its weights do not belong "
                       "to its tokenizer: restore the delta's files or retrain it")
    alpha, source = resolve_alpha(alpha, path, user, tm)
    look = None
    if tm is not None and tm.meta.get("prefix_rule") == "lookahead":
        from cmc_cli.engine.lookahead import Lookahead

        look = Lookahead(tm, lm.vocab, user.vocab, tm.lookahead_k)
    return Delta(lm=lm, alpha=alpha, prompt_format=meta.get("prompt_format") or "{prompt}", index=index,
                 combine=meta.get("combine", "log-softmax-template"), meta=meta, token_map=tm,
                 cap=tm.cap_tensor() if tm is not None else None, lookahead=look, alpha_source=source,
                 prompt_formats=[f for f in meta.get("prompt_formats") or [] if isinstance(f, str) and "{prompt}" in f])


def resolve_alpha(alpha, path: Path, user: LoadedModel, token_map) -> tuple[float, str]:
    """A delta's strength on this user: (alpha, given | calibrated | default); see load_delta."""
    from cmc_cli.engine.calibrecord import RECORD, find, weights_fingerprint

    if alpha is not None and alpha != AUTO:
        return float(alpha), "given"
    entry, why = None, f"{path / RECORD} does not exist"
    if (path / RECORD).is_file():
        entry, why = find(path, weights_fingerprint(path), user.vocab.fingerprint, weights_fingerprint(user.path), token_map)
    if entry is not None:
        log.info("delta %s on %s: calibrated alpha %g", path, user.name, entry["alpha"])
        return float(entry["alpha"]), "calibrated"
    if alpha == AUTO:
        raise CmcError(f"delta {path} has no calibrated strength for {user.name}: {why}; run `cmc calibrate {path} "
                       f"{user.path or user.name}` or give a number (PATH:ALPHA)")
    if (path / RECORD).is_file():
        log.warning("delta %s: its calibration does not apply to %s (%s); using alpha %g", path, user.name, why, DEFAULT_ALPHA)
    return DEFAULT_ALPHA, "default"


def _fits(path: Path, lm: LoadedModel, user: LoadedModel) -> bool:
    from cmc_cli.errors import TokenMapError
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    try:
        TokenMap.load(path, delta=lm.vocab, user=user.vocab)
        return True
    except TokenMapError as e:
        log.warning("not using %s: %s", path, e)
        return False
