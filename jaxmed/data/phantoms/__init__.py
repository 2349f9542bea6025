"""Procedural phantoms: synthetic scans whose ground truth is known.

Each phantom kind is a module with a frozen config dataclass and a pure,
jittable, vmappable ``sample(key, config) -> dict of arrays``; `PHANTOMS` is
the explicit registry of kinds and `make_dataset` draws many samples at once.
A new kind adds a module, a config, a sampler and an entry here.

Kinds:

* ``"mri"`` (:mod:`jaxmed.data.phantoms.mri`): multi-contrast pelvic MRI
  (T2, ADC, high-b DWI) with lesions, 2D or 3D.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms.mri import CONTRASTS, TISSUES, MRIPhantomConfig, Tissue, sample_mri

__all__ = [
    "CONTRASTS",
    "PHANTOMS",
    "TISSUES",
    "MRIPhantomConfig",
    "PhantomKind",
    "Tissue",
    "make_dataset",
    "sample_mri",
]


class PhantomKind(NamedTuple):
    """A registry entry: the config type of a kind and its sampler ``sample(key, config)``."""

    config: type
    sample: Callable[[jax.Array, Any], dict[str, jax.Array]]


PHANTOMS: dict[str, PhantomKind] = {
    "mri": PhantomKind(config=MRIPhantomConfig, sample=sample_mri),
}


def make_dataset(key: jax.Array, n: int, *, kind: str = "mri", config=None, chunk_size: int = 512) -> dict[str, np.ndarray]:
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
        chunk_size: samples generated per vectorised chunk.

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
    if n < 1 or chunk_size < 1:
        raise ValueError(f"n and chunk_size must be >= 1, got n={n}, chunk_size={chunk_size}")
    size = min(chunk_size, n)
    chunks = []
    for start in range(0, n, size):
        # The last chunk is drawn whole and cut: one compiled shape for all.
        chunk = _sample_chunk(key, start, sample=entry.sample, config=config, size=size)
        chunks.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[: n - start], chunk))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *chunks)


@functools.partial(jax.jit, static_argnames=("sample", "config", "size"))
def _sample_chunk(key, start, *, sample, config, size):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(size))
    return jax.vmap(lambda k: sample(k, config))(keys)
