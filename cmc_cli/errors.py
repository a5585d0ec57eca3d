"""Errors the user sees as one line, never as a traceback (unless CMC_DEBUG=1)."""


class CmcError(Exception):
    """Base class: the message is what the user reads; it says what is wrong and what to do."""

    exit_code = 1


class ConfigError(CmcError):
    """A configuration file or option is invalid."""


class ModelRefError(CmcError):
    """A model or tokenizer reference cannot be resolved offline."""


class TokenizerError(CmcError):
    """A tokenizer cannot be loaded or has an unusable vocabulary."""


class TokenMapError(CmcError):
    """A token map file is missing, corrupt, or built for other tokenizers."""


class AdapterError(CmcError):
    """An adapter is unknown, duplicated, or broken."""


class AssetError(CmcError):
    """A real asset (tokenizer, model) could not be fetched or verified."""


class DataError(CmcError):
    """A data file is missing, malformed or empty."""


class NonFiniteLoss(CmcError):
    """The training loss became NaN or infinite."""


def cause(exc: BaseException, limit: int = 300) -> str:
    """An exception's own words for a one-line message: its first line, with the next one when the first only
    announces a list ("Error(s) in loading state_dict for X:"), whitespace folded; cut at a word boundary with
    an ellipsis only past `limit` characters, so a message never stops mid-sentence without saying so."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"
