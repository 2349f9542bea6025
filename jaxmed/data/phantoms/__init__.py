"""Procedural phantoms: synthetic scans whose ground truth is known.

Each phantom kind is a module with a frozen config dataclass and a pure,
jittable, vmappable ``sample(key, config) -> dict of arrays``; `PHANTOMS` is
the explicit registry of kinds and `make_dataset` draws many samples at once.
A new kind adds a module, a config, a sampler and an entry here.

Kinds:

* ``"mri"`` (:mod:`jaxmed.data.phantoms.mri`): multi-contrast pelvic MRI
  (T2, ADC, high-b DWI) with lesions, 2D or 3D; in physical mode a patient
  of :mod:`jaxmed.data.phantoms.patient` (LPS millimetres, graded lesions).
* ``"chest"`` (:mod:`jaxmed.data.phantoms.chest`): PA chest radiographs at
  full resolution (1024 or 2048 pixels) with lung, heart and finding masks
  and a structured truth record (`chest_truth`).
* ``"mri_exam"`` (:mod:`jaxmed.data.phantoms.exams`): 3D mpMRI exams as
  acquired at a site (`SITES`, :mod:`jaxmed.data.phantoms.sites`): T2, ADC
  and DWI each on its own grid with its affine, misregistered, with lesion
  grades and a lesion label map; saved as DICOM series and NIfTI with a truth
  record by :mod:`jaxmed.data.phantoms.exam_files` (`write_exam`, `exam_truth`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms.chest import (
    FINDING_TYPES,
    LUNGS,
    REGIONS,
    ZONES,
    ChestPhantomConfig,
    FindingSpec,
    chest_truth,
    sample_chest,
)
from jaxmed.data.phantoms.exam_files import exam_truth, write_exam
from jaxmed.data.phantoms.exams import ExamConfig, sample_exam
from jaxmed.data.phantoms.sites import SITES, SiteProfile
from jaxmed.data.phantoms.mri import CONTRASTS, MRIPhantomConfig, sample_mri
from jaxmed.data.phantoms.patient import PatientConfig, lesion_grade, sample_patient
from jaxmed.data.phantoms.tissues import EXAM_TISSUES, TISSUES, Tissue

__all__ = [
    "CONTRASTS",
    "EXAM_TISSUES",
    "FINDING_TYPES",
    "LUNGS",
    "PHANTOMS",
    "REGIONS",
    "SITES",
    "TISSUES",
    "ZONES",
    "ChestPhantomConfig",
    "ExamConfig",
    "FindingSpec",
    "MRIPhantomConfig",
    "PatientConfig",
    "PhantomKind",
    "SiteProfile",
    "Tissue",
    "chest_truth",
    "exam_truth",
    "lesion_grade",
    "make_dataset",
    "sample_chest",
    "sample_exam",
    "sample_mri",
    "sample_patient",
    "write_exam",
]


class PhantomKind(NamedTuple):
    """A registry entry: the config type of a kind and its sampler ``sample(key, config)``."""

    config: type
    sample: Callable[[jax.Array, Any], dict[str, jax.Array]]


PHANTOMS: dict[str, PhantomKind] = {
    "mri": PhantomKind(config=MRIPhantomConfig, sample=sample_mri),
    "chest": PhantomKind(config=ChestPhantomConfig, sample=sample_chest),
    "mri_exam": PhantomKind(config=ExamConfig, sample=sample_exam),
}

# Default chunks hold about this many bytes of samples (a chunk's
# intermediates are a few times more): 512 MRI slices of 64x64, or 12 chest
# radiographs of 1024x1024, 3 of 2048x2048.
_CHUNK_BYTES = 128 << 20
_MAX_CHUNK = 512


def make_dataset(
    key: jax.Array, n: int, *, kind: str = "mri", config=None, chunk_size: int | None = None
) -> dict[str, np.ndarray]:
    """Draws ``n`` phantoms of one kind, as host arrays.

    Sample ``i`` is ``PHANTOMS[kind].sample(jax.random.fold_in(key, i),
    config)``, so a data set of ``n`` is a prefix of one of ``n + m``. The
    sampler is jitted and vmapped over chunks of ``chunk_size`` keys, compiled
    once per (kind, config, chunk size); each chunk is moved to the host as it
    is made, so device memory stays bounded.

    Args:
        key: PRNG key.
        n: number of samples, >= 1.
        kind: a key of `PHANTOMS`.
        config: an instance of ``PHANTOMS[kind].config``; None uses its
            defaults.
        chunk_size: samples generated per vectorised chunk; None: as many
            as fit in about 128 MiB of output (at least 1, at most 512), so
            that full-resolution radiographs stay within memory.

    Returns:
        The sampler's dict with a leading axis of ``n`` on every array (numpy).
        For the default ``"mri"`` config: ``"image"`` float32
        ``[n, 64, 64, 3]`` in ``[0, 1]``; use
        ``MRIPhantomConfig(modalities=("t2",))`` for single-channel
        ``[n, 64, 64, 1]`` images, and ``lesion_probability=0`` for a set of
        normal scans.

    Raises:
        ValueError: unknown kind, a config of the wrong type, or a bad ``n``.
    """
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom kind {kind!r}; known: {sorted(PHANTOMS)}")
    entry = PHANTOMS[kind]
    config = entry.config() if config is None else config
    if not isinstance(config, entry.config):
        raise ValueError(f"phantom kind {kind!r} takes a {entry.config.__name__}, got {type(config).__name__}")
    if chunk_size is None:
        chunk_size = _default_chunk_size(entry.sample, config)
    if n < 1 or chunk_size < 1:
        raise ValueError(f"n and chunk_size must be >= 1, got n={n}, chunk_size={chunk_size}")
    size = min(chunk_size, n)
    out = None
    for start in range(0, n, size):
        # The last chunk is drawn whole and cut: one compiled shape for all.
        chunk = _sample_chunk(key, start, sample=entry.sample, config=config, size=size)
        if out is None:
            out = jax.tree_util.tree_map(lambda a: np.empty((n, *a.shape[1:]), a.dtype), chunk)
        # Copied into the result as it comes, so that the chunk's buffers are
        # freed for the next one (fresh pages cost more than the copy).
        count = min(size, n - start)
        jax.tree_util.tree_map(lambda o, a: o.__setitem__(slice(start, start + count), np.asarray(a)[:count]), out, chunk)
        del chunk
    return out


@functools.lru_cache(maxsize=64)
def _default_chunk_size(sample, config) -> int:
    shapes = jax.eval_shape(functools.partial(sample, config=config), jax.random.key(0))
    per_sample = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(shapes))
    return int(min(_MAX_CHUNK, max(1, _CHUNK_BYTES // max(per_sample, 1))))


@functools.partial(jax.jit, static_argnames=("sample", "config", "size"))
def _sample_chunk(key, start, *, sample, config, size):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(size))
    return jax.vmap(lambda k: sample(k, config))(keys)
