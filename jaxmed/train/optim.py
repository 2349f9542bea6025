"""Optax optimisers and learning-rate schedules built from an OptimConfig."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import jax
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
      clip norm means the same thing for every optimiser. With
      ``config.lr_factors`` it clips the whole gradient, then each group of
      parameters has its own optimiser, the same but for the peak rate.
    """
    def build(learning_rate: float) -> optax.GradientTransformation:
        scaled = dataclasses.replace(config, learning_rate=learning_rate, lr_factors=())
        return OPTIMIZERS[config.optimizer](scaled, make_schedule(scaled, total_steps=total_steps))

    tx = build(config.learning_rate)
    if config.lr_factors:
        groups = {"rate": tx}
        for i, (_, factor) in enumerate(config.lr_factors):
            groups[f"factor_{i}"] = build(config.learning_rate * factor)
        tx = optax.multi_transform(groups, lambda params: _lr_groups(params, config.lr_factors))
    if config.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx


def _lr_groups(params: Any, lr_factors: tuple[tuple[str, float], ...]) -> Any:
    """Per parameter, ``"factor_i"`` for the first pattern of ``lr_factors`` its path matches, else ``"rate"``.

    Raises:
      ValueError: a pattern labels no parameter (naming it and a few paths).
    """
    used = set()

    def label(path, _):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        for i, (pattern, _) in enumerate(lr_factors):
            if fnmatch.fnmatchcase(name, pattern):
                used.add(i)
                return f"factor_{i}"
        return "rate"

    labels = jax.tree_util.tree_map_with_path(label, params)
    unused = [pattern for i, (pattern, _) in enumerate(lr_factors) if i not in used]
    if unused:
        paths = [jax.tree_util.keystr(path, simple=True, separator="/")
                 for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(f"lr_factors pattern(s) {unused} match no parameter (or only ones an earlier pattern "
                         f"took); parameters are e.g. {paths[:4]}")
    return labels
