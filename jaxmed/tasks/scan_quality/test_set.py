"""The study's test set: held-out normal slices and copies of them corrupted by k-space artefacts."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.artefacts import ARTEFACTS

__all__ = ["TestSet", "make_test_set", "subset_indices"]


class TestSet(NamedTuple):
    """Normal slices and corrupted copies of them.

    Attributes:
      images: float32 ``[N, H, W, 1]``: the normal slices first, then for each
        artefact in order, ``copies`` corrupted copies of each normal slice.
      labels: int ``[N]``, 1 for corrupted.
      groups: str ``[N]``: ``"normal"`` or the artefact name.
      source: int ``[N]``: the index of the normal slice each image came from.
    """

    __test__ = False  # not a pytest class

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    source: np.ndarray

    def take(self, rows: np.ndarray) -> TestSet:
        return TestSet(self.images[rows], self.labels[rows], self.groups[rows], self.source[rows])


def make_test_set(
    key: jax.Array,
    normal: np.ndarray,
    *,
    artefacts: Sequence[str],
    severity: float,
    copies: int = 1,
) -> TestSet:
    """Held-out normal slices plus copies with each artefact at one severity.

    The corrupted image is clipped to [0, 1], the last step of the training
    slices' preprocessing. Copy ``c`` of slice ``i`` with artefact number
    ``a`` uses key ``fold_in(fold_in(fold_in(key, a), c), i)``.

    Args:
      key: PRNG key.
      normal: float32 ``[n, H, W, 1]`` normal slices.
      artefacts: names in :data:`jaxmed.data.artefacts.ARTEFACTS`.
      severity: in [0, 1] (see :mod:`jaxmed.data.artefacts`).
      copies: corrupted copies of each slice per artefact.

    Returns:
      A :class:`TestSet` of ``n * (1 + copies * len(artefacts))`` images.
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    normal = np.asarray(normal, np.float32)
    n = len(normal)
    # All copies of all slices in one call per artefact, copy-major.
    copy, row = np.divmod(np.arange(copies * n), n)
    inputs = normal[row, ..., 0]
    images = [normal]
    for a, name in enumerate(artefacts):
        base = jax.random.fold_in(key, a)
        keys = jax.vmap(lambda c, i, base=base: jax.random.fold_in(jax.random.fold_in(base, c), i))(copy, row)
        images.append(np.asarray(_corrupt(keys, inputs, jnp.float32(severity), name=name))[..., None])
    groups = np.asarray(["normal"] * n + [name for name in artefacts for _ in row])
    source = np.concatenate([np.arange(n), *[row] * len(artefacts)])
    return TestSet(np.concatenate(images), (groups != "normal").astype(np.int32), groups, source)


@functools.partial(jax.jit, static_argnames="name")
def _corrupt(keys: jax.Array, images: jax.Array, severity: jax.Array, *, name: str) -> jax.Array:
    """``ARTEFACTS[name]`` of each image, clipped to [0, 1]; severity traced: one compilation per artefact."""
    return jax.vmap(lambda k, x: jnp.clip(ARTEFACTS[name](k, x, severity=severity), 0.0, 1.0))(keys, images)


def subset_indices(test: TestSet, *, per_group: int) -> np.ndarray:
    """Rows of the first ``per_group`` images of each group, for the slow estimators.

    The same normal slices are taken in every group (corrupted copies of the
    chosen normal slices), so the groups differ only by the artefact.
    """
    rows = []
    for group in dict.fromkeys(test.groups):
        g = np.flatnonzero(test.groups == group)
        g = g[np.unique(test.source[g], return_index=True)[1]]  # the first copy of each slice
        rows.extend(g[test.source[g] < per_group])
    return np.asarray(sorted(rows), dtype=np.int64)
