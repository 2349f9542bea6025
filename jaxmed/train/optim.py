"""Optax optimisers and learning-rate schedules built from an OptimConfig."""

from __future__ import annotations

from collections.abc import Callable

import optax

from jaxmed.train.config import OptimConfig


def _constant(config: OptimConfig, total_steps: int) -> optax.Schedule:
    return optax.constant_schedule(config.learning_rate)


def _cosine(config: OptimConfig, total_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(
        config.learning_rate, decay_steps=total_steps, alpha=config.final_lr_fraction
    )


def _warmup_cosine(config: OptimConfig, total_steps: int) -> optax.Schedule:
    if config.warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps ({config.warmup_steps}) must be smaller than the number "
            f"of steps ({total_steps})"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=total_steps,
        end_value=config.learning_rate * config.final_lr_fraction,
    )


SCHEDULES: dict[str, Callable[[OptimConfig, int], optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "warmup-cosine": _warmup_cosine,
}


def _adam(config: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    # Coupled L2: the decay term goes through Adam's scaling (Kingma & Ba).
    adam = optax.adam(lr)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), adam) if config.weight_decay else adam


def _adamw(config: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=config.weight_decay)


def _sgd(config: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    sgd = optax.sgd(lr, momentum=config.momentum or None)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd) if config.weight_decay else sgd


OPTIMIZERS: dict[str, Callable[[OptimConfig, optax.Schedule], optax.GradientTransformation]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def make_schedule(config: OptimConfig, *, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (0-based update count).

    Args:
      config: optimiser configuration.
      total_steps: length of the run, over which cosine schedules decay.

    Returns:
      An Optax schedule ``step -> learning rate``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return SCHEDULES[config.schedule](config, total_steps)


def make_optimizer(config: OptimConfig, *, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping (optional) followed by the configured optimiser.

    Args:
      config: optimiser configuration.
      total_steps: length of the run, for the learning-rate schedule.

    Returns:
      An Optax gradient transformation.

    .. note::
      Clipping sees the raw gradient, before weight decay is added, so the
      clip norm means the same thing for every optimiser.
    """
    lr = make_schedule(config, total_steps=total_steps)
    tx = OPTIMIZERS[config.optimizer](config, lr)
    if config.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
