"""The models an evaluation compares: each user alone (unless --no-alone) and with all the deltas at each
strength of --alpha (one row per strength)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cmc_cli.engine.decode import Decoder


@dataclass
class EvalRow:
    """One row of an evaluation: the user's reference, its label, the delta specs, the decoder; `stored`: the
    user alone under --no-alone, evaluated by an earlier run into the same --out and read back for the paired
    columns."""

    ref: str
    label: str
    deltas: list
    dec: Decoder
    stored: bool = False

    def __iter__(self):  # unpacks as (ref, label, deltas, decoder)
        return iter((self.ref, self.label, self.deltas, self.dec))


def eval_decoders(cfg, phase, stored: Callable[[str], bool] | None = None) -> Iterator[EvalRow]:
    """One EvalRow per row; each user model is loaded once. stored(label): whether --out already holds that row's
    records (then the user alone is read back under --no-alone, for the paired columns)."""
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.devices import pick_device, pick_dtype
    from cmc_cli.engine.generate import build_decoder

    dev = pick_device(cfg.device)
    dt = pick_dtype(cfg.dtype, dev)
    for ref in cfg.users:
        phase(f"loading user model {ref}")
        user = load_lm(ref, dtype=dt, device=str(dev))
        alone = Decoder(user, [], user_format=cfg.user_format, combine=cfg.combine)
        if not cfg.deltas or cfg.alone:
            yield EvalRow(ref, user.name, [], alone)
        elif stored is not None and stored(user.name):
            yield EvalRow(ref, user.name, [], alone, stored=True)
        seen = set()
        for alpha in (cfg.alpha if cfg.deltas else []):
            dec = build_decoder(user, cfg.deltas, cfg.token_maps, alpha=alpha, user_format=cfg.user_format,
                                combine=cfg.combine, device=cfg.device, dtype=cfg.dtype, on_phase=phase)
            label = " + ".join([user.name] + [f"{d.lm.name}@{d.alpha:g}" for d in dec.deltas])
            if label in seen:  # `auto` landed on a strength also given as a number
                phase(f"{label} is already evaluated (--alpha {alpha} gives the same strengths)")
                continue
            seen.add(label)
            yield EvalRow(ref, label, cfg.deltas, dec)
