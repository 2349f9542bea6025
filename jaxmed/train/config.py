"""Training configuration: frozen dataclasses that round-trip through JSON.

A run is described by an :class:`OptimConfig` (how parameters move) and a
:class:`TrainConfig` (how long, how often, on how many devices). Both are
written to ``config.json`` beside the checkpoints with
:func:`dataclasses.asdict` and read back with :func:`config_from_dict`, so a
checkpoint can be reloaded without the script that made it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

# Names accepted by OptimConfig; the builders live in jaxmed.train.optim.
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
SCHEDULE_NAMES = ("constant", "cosine", "warmup-cosine")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """How the optimiser updates parameters.

    Attributes:
      optimizer: one of ``"adam"``, ``"adamw"``, ``"sgd"``.
      learning_rate: peak learning rate.
      schedule: ``"constant"``, ``"cosine"`` (decay from the peak to
        ``learning_rate * final_lr_fraction`` over the run) or
        ``"warmup-cosine"`` (linear warm-up from 0 over ``warmup_steps``, then
        cosine decay).
      warmup_steps: length of the linear warm-up (``"warmup-cosine"`` only).
      final_lr_fraction: learning rate at the last step, as a fraction of the
        peak (cosine schedules only).
      weight_decay: decoupled decay for ``"adamw"``; an L2 term added to the
        gradient for ``"adam"`` and ``"sgd"``.
      momentum: heavy-ball momentum for ``"sgd"`` (0 = plain SGD).
      grad_clip_norm: clip gradients to this global L2 norm before the
        optimiser sees them; ``None`` = no clipping.
      lr_factors: ``((pattern, factor), ...)``: a parameter whose path (its
        keys joined by ``/``, e.g. ``params/log_scale`` or
        ``params/decoder/Dense_0/kernel``) matches the glob ``pattern``
        (:func:`fnmatch.fnmatchcase`; the first match wins) learns at
        ``factor`` times the scheduled rate; the others at the rate. Every
        pattern must match some parameter.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    grad_clip_norm: float | None = None
    lr_factors: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        try:
            factors = tuple((pattern, float(factor)) for pattern, factor in self.lr_factors)
        except (TypeError, ValueError):
            raise ValueError(f"OptimConfig.lr_factors must be (pattern, factor) pairs, got {self.lr_factors!r}") from None
        object.__setattr__(self, "lr_factors", factors)
        for pattern, factor in factors:
            _check(isinstance(pattern, str) and pattern and math.isfinite(factor) and factor > 0,
                   f"OptimConfig.lr_factors: need a pattern and a positive factor, got ({pattern!r}, {factor})")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"OptimConfig.optimizer must be one of {OPTIMIZER_NAMES}, got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"OptimConfig.schedule must be one of {SCHEDULE_NAMES}, got {self.schedule!r}"
            )
        _check(math.isfinite(self.learning_rate) and self.learning_rate > 0,
               f"OptimConfig.learning_rate must be positive, got {self.learning_rate}")
        _check(self.warmup_steps >= 0,
               f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0.0 <= self.final_lr_fraction <= 1.0,
               f"OptimConfig.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        _check(self.weight_decay >= 0,
               f"OptimConfig.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.momentum < 1.0,
               f"OptimConfig.momentum must be in [0, 1), got {self.momentum}")
        _check(self.grad_clip_norm is None or self.grad_clip_norm > 0,
               f"OptimConfig.grad_clip_norm must be positive or None, got {self.grad_clip_norm}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How long and how a run trains.

    Attributes:
      steps: total number of optimiser updates.
      batch_size: global batch size (all devices and processes together); it
        must be divisible by the number of devices.
      seed: seeds the parameter initialisation, the data order and the
        per-step keys.
      log_every: append training metrics to ``metrics.jsonl`` every this many
        steps (and at the last step).
      eval_every: evaluate on the validation set every this many steps and at
        the last step; 0 = only at the last step. (Only when the fit loop is
        given an evaluation function.)
      checkpoint_every: save a checkpoint every this many steps (and at the
        end); 0 = only at the end.
      keep: number of most recent checkpoints kept on disk.
      patience: stop when the validation loss has not improved for this many
        evaluations in a row; ``None`` = never stop early.
      devices: number of devices of the data-parallel mesh; ``None`` = all.
      mixed_precision: compute in bfloat16 while parameters, gradients and
        optimiser state stay float32.
    """

    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 500
    keep: int = 3
    patience: int | None = None
    devices: int | None = None
    mixed_precision: bool = False

    def __post_init__(self):
        _check(self.steps >= 1, f"TrainConfig.steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        _check(self.log_every >= 1, f"TrainConfig.log_every must be >= 1, got {self.log_every}")
        _check(self.eval_every >= 0, f"TrainConfig.eval_every must be >= 0, got {self.eval_every}")
        _check(self.checkpoint_every >= 0,
               f"TrainConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.keep >= 1, f"TrainConfig.keep must be >= 1, got {self.keep}")
        _check(self.patience is None or self.patience >= 1,
               f"TrainConfig.patience must be >= 1 or None, got {self.patience}")
        _check(self.devices is None or self.devices >= 1,
               f"TrainConfig.devices must be >= 1 or None, got {self.devices}")
        if self.devices is not None and self.batch_size % self.devices:
            raise ValueError(
                f"TrainConfig.batch_size ({self.batch_size}) must be divisible by "
                f"the number of devices ({self.devices})"
            )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuilds a frozen config dataclass from its :func:`dataclasses.asdict` form.

    JSON has no tuples, so list values are turned back into tuples for fields
    annotated as tuples; nested dataclass fields are rebuilt recursively.
    Validation runs again in ``__post_init__``.

    Args:
      cls: the dataclass type.
      data: a mapping of field names to JSON values.

    Returns:
      An instance of ``cls``.

    Raises:
      ValueError: ``data`` names a field ``cls`` does not have.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _from_json(hints[name], value) for name, value in data.items()})


def replace_fields(config: C, fields: Mapping[str, Any]) -> C:
    """``config`` with ``fields`` replaced, given as JSON values (lists for tuples).

    Values are converted by the field's type annotation as in
    :func:`config_from_dict`; validation runs again in ``__post_init__``.

    Args:
      config: a frozen config dataclass instance.
      fields: ``{name: value}``.

    Returns:
      The new instance.

    Raises:
      ValueError: a name that is not a field of ``config`` (the message lists
        the fields), or a value the config refuses.
    """
    cls = type(config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    try:
        return dataclasses.replace(config, **{name: _from_json(hints[name], v) for name, v in fields.items()})
    except TypeError as e:
        raise ValueError(f"{cls.__name__}: {e}") from None


def _from_json(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # Optional[X] / X | None: convert with the first non-None member.
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return _from_json(members[0], value) if len(members) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if (origin is tuple or hint is tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_from_json(item, v) for v in value)
    return value
