"""The initialization of one run: the registry encoder, with the leakage rule applied.

Owns :func:`load_weights` (``weights_registry.load_encoder`` for a run config) and
:class:`LeakageError`: an init pretrained on the images of the downstream task is
refused unless ``--allow-leakage`` (design §8.8); for a catalogue name the rule is
checked before anything is downloaded. On the built-in synthetic downstream data, a
pretraining method's name (``simclr``, ``moco``, ``convirt``, ``clip``,
``supervised``) without ``--checkpoint`` is that method pretrained on the built-in
synthetic corpus (:mod:`bench.pretrain.builtin`, made once, announced loudly).
"""

from __future__ import annotations

from pathlib import Path

from bench.engine.config import RunConfig


class LeakageError(RuntimeError):
    """The initialization was pretrained on the images of the downstream task."""


def _leakage_message(cfg: RunConfig, pretrained_on) -> str:
    return (
        f"init {cfg.init!r} was pretrained on {', '.join(pretrained_on or []) or 'data'} "
        f"that includes the {cfg.task} images, so its {cfg.task} numbers would be inflated "
        "(design §8.8). Pass --allow-leakage to run it anyway; the record and the report "
        "flag it."
    )


def _builtin_pretrained(cfg: RunConfig):
    """The built-in synthetic-corpus encoder of a pretraining method, as a registry load."""
    import weights_registry as wr
    from bench.pretrain.builtin import builtin_encoder

    path = builtin_encoder(cfg.init, cfg.arch, progress=cfg.progress)
    encoder, info = wr.load_encoder(path, cfg.arch, mean=cfg.mean, std=cfg.std)
    info.update(init=cfg.init, source=f"built-in synthetic pretraining ({path.parent})",
                pretrained_on=["cxrbench synthetic pretraining corpus"], seen_tasks=[], leakage=False,
                allow_leakage=cfg.allow_leakage)  # fmt: skip
    return encoder, info


def load_weights(cfg: RunConfig, *, synthetic: bool = False):
    """Registry encoder + info, with the leakage rule of design §8.8 applied.

    For a catalogue name the rule is checked before anything is downloaded. With
    ``synthetic`` (the built-in synthetic downstream data), a pretraining method's name
    without a checkpoint resolves to the built-in synthetic pretraining of that method.
    """
    import weights_registry as wr
    from bench.pretrain.methods import METHOD_NAMES

    if synthetic and cfg.init in METHOD_NAMES and cfg.checkpoint is None and not Path(cfg.init).exists():
        return _builtin_pretrained(cfg)
    path = Path(cfg.init).expanduser()
    if not path.exists():
        if "/" in cfg.init or cfg.init.endswith(wr.catalogue.CHECKPOINT_SUFFIXES):
            raise wr.WeightsError(f"checkpoint file not found: {path.resolve()}")
        entry = wr.get_entry(cfg.init)  # unknown names fail here, listing the known ones
        if wr.check_leakage(entry, cfg.task) and not cfg.allow_leakage:
            raise LeakageError(_leakage_message(cfg, entry.pretrained_on))
    encoder, info = wr.load_encoder(
        cfg.init,
        cfg.arch,
        checkpoint=cfg.checkpoint,
        prefix=cfg.prefix,
        allow_partial=cfg.allow_partial,
        trust_checkpoint=cfg.trust_checkpoint,
        mean=cfg.mean,
        std=cfg.std,
    )
    leakage = wr.check_leakage(info, cfg.task)
    info["leakage"] = leakage
    info["allow_leakage"] = cfg.allow_leakage
    if leakage and not cfg.allow_leakage:
        raise LeakageError(_leakage_message(cfg, info.get("pretrained_on")))
    return encoder, info
