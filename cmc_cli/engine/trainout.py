"""What a training run writes besides checkpoints: config.yaml at the start, the delta with its cmc.json at
the end (docs/formats.md). Called by engine/train.Trainer."""

from __future__ import annotations

from cmc_cli.engine.delta import count_parameters, delta_card
from cmc_cli.fileio import atomic_write_json, atomic_write_text


def write_config(trainer) -> None:
    import yaml

    atomic_write_text(trainer.out / "config.yaml", yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False))


def selection(trainer) -> dict:
    """cmc.json's record of which whole-set evaluation the written weights come from."""
    stop = trainer.cfg.stop_forget_loss
    criterion = f"first evaluation with forget CE >= {stop}" if stop is not None else "the last evaluation"
    return {"criterion": criterion, "every": trainer.eval_every, "evaluated": trainer.evaluations[-1]}


def write_delta(trainer, history: list, stopped: str, steps: int) -> None:
    cfg, out = trainer.cfg, trainer.out
    trainer.delta.save_pretrained(str(out), safe_serialization=True)
    trainer.tokenizer.save_pretrained(str(out))
    last = history[-1].as_dict() if history else {}
    atomic_write_json(out / "cmc.json", delta_card(
        task=cfg.task,
        loss=cfg.loss if cfg.task == "unlearn" else "ce",
        combine=cfg.combine,
        prompt_format=trainer.prompt_format,
        **({"prompt_formats": trainer.prompt_formats} if len(trainer.prompt_formats) > 1 else {}),
        bos=trainer.bos,
        template={"ref": cfg.template, "adapter": trainer.adapter.name,
                  "fingerprint": trainer.template_vocab.fingerprint, "vocab_size": trainer.template_vocab.size},
        data=trainer.data_hashes,
        silence={"weight": cfg.silence, "general": cfg.general or "template samples",
                 "general_items": len(trainer.general_set)},
        **({"selection": selection(trainer)} if trainer.eval_every else {}),
        parameters=count_parameters(trainer.delta),
        distributed={"world_size": trainer.dist.world, "rank_batch": cfg.batch_size // trainer.dist.world},
        steps=steps,
        stopped=stopped,
        final=last,
    ))
