"""The models an evaluation compares: each user alone (unless --no-alone) and with all the deltas."""

from __future__ import annotations

from collections.abc import Iterator

from cmc_cli.engine.decode import Decoder


def eval_decoders(cfg, phase) -> Iterator[tuple[str, str, list, Decoder]]:
    """(user reference, row label, delta specs, decoder) per row; each user model is loaded once."""
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.devices import pick_device, pick_dtype
    from cmc_cli.engine.generate import build_decoder

    dev = pick_device(cfg.device)
    dt = pick_dtype(cfg.dtype, dev)
    for ref in cfg.users:
        phase(f"loading user model {ref}")
        user = load_lm(ref, dtype=dt, device=str(dev))
        variants = [[]] if not cfg.deltas else ([[], cfg.deltas] if cfg.alone else [cfg.deltas])
        for deltas in variants:
            dec = build_decoder(user, deltas, cfg.token_maps, alpha=cfg.alpha, user_format=cfg.user_format,
                                combine=cfg.combine, device=cfg.device, dtype=cfg.dtype, on_phase=phase)
            label = " + ".join([user.name] + [f"{d.lm.name}@{d.alpha:g}" for d in dec.deltas])
            yield ref, label, deltas, dec
