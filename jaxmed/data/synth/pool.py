"""A pool of synthetic subjects for training: the brain-MRI data source's `SynthSource` option."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from jaxmed.data.synth.config import SynthConfig
from jaxmed.data.synth.render import synth_slices
from jaxmed.data.synth.template import SynthTemplate

__all__ = ["SynthSource", "synth_pool"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthSource:
    """Synthetic subjects added to the brain template's training slices (a data-source option).

    ``num_subjects`` subjects are drawn once, each at the template's training
    slice positions (never its validation or test ones), by
    :func:`synth_pool`; the training set is the template's slices and
    theirs. ``jaxmed train --data brain-mri --synth-subjects K`` and the demo
    use it alike.

    Attributes:
        num_subjects: synthetic subjects; 0 = none (the template alone).
        config: what varies between them.
    """

    num_subjects: int = 0
    config: SynthConfig = SynthConfig()

    def __post_init__(self):
        if isinstance(self.num_subjects, bool) or not isinstance(self.num_subjects, (int, np.integer)) or (
                self.num_subjects < 0):
            raise ValueError(f"SynthSource.num_subjects must be an integer >= 0, got {self.num_subjects!r}")
        if isinstance(self.config, dict):
            object.__setattr__(self, "config", SynthConfig(**self.config))
        object.__setattr__(self, "num_subjects", int(self.num_subjects))


def synth_pool(
    key: Array,
    template: SynthTemplate,
    slice_positions: ArrayLike,
    *,
    num_subjects: int,
    config: SynthConfig = SynthConfig(),
    subjects_per_call: int = 4,
) -> np.ndarray:
    """Slices of ``num_subjects`` synthetic subjects at the given positions, as host arrays.

    Subject ``s`` is ``synth_slices(fold_in(key, s), ...)``, so a pool of
    ``K`` subjects is a prefix of one of ``K + m``. Subjects are made
    ``subjects_per_call`` at a time (vmapped; one compilation).

    Args:
        key: PRNG key.
        template: from `load_synth_template`.
        slice_positions: ``[N]`` template slice indices.
        num_subjects: ``K >= 0``.
        config: what varies.
        subjects_per_call: subjects per compiled call.

    Returns:
        float32 ``[K * N, H, W, 1]``, subject after subject.
    """
    positions = jnp.asarray(slice_positions, template.volume.dtype)
    h, w = template.shape[1:]
    if num_subjects == 0:
        return np.zeros((0, h, w, 1), np.float32)
    size = min(subjects_per_call, num_subjects)
    out = []
    for start in range(0, num_subjects, size):
        images = _pool_chunk(key, start + jnp.arange(size), template, positions, config=config)
        out.append(np.asarray(images)[: num_subjects - start].reshape(-1, h, w, 1))
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames="config")
def _pool_chunk(key, subjects, template, positions, *, config):
    return jax.vmap(lambda s: synth_slices(jax.random.fold_in(key, s), template, positions, config=config)["image"])(
        subjects)
