"""Region sets and modality-blanking schedules for masked-region training.

A *region set* is a bool array ``[V, *S]`` (``S = (H, W)`` or ``(D, H, W)``):
view ``v``'s loss is computed on the pixels where ``regions[v]`` is True. The
generators here give *disjoint* sets (each pixel in at most one view), and all
but :func:`organ_regions` cover every pixel.

A *blanking schedule* is a bool array ``[V, M]``: view ``v`` replaces the
modalities where ``blank[v]`` is True by a blank (see
:func:`jaxmed.losses.masked_region_losses`).

Every function is pure jax.numpy with static shapes, so it runs inside a
jitted, vmapped train step (random ones take a key first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"spatial shape must be (H, W) or (D, H, W) of positive sizes, got {shape}")
    return shape


def _one_hot_views(labels: Array, num_views: int) -> Array:
    """``labels [*S]`` in ``[0, V)`` -> bool ``[V, *S]``."""
    views = jnp.arange(num_views).reshape((num_views,) + (1,) * labels.ndim)
    return labels[None] == views


def block_regions(shape: Sequence[int], *, grid: Sequence[int]) -> Array:
    """Splits the image into a grid of blocks, one view per block.

    Args:
      shape: spatial shape ``(H, W)`` or ``(D, H, W)``.
      grid: blocks per axis, e.g. ``(2, 2)`` for four quadrants; sizes that do
        not divide evenly give blocks differing by one pixel.

    Returns:
      bool ``[prod(grid), *shape]``, a disjoint cover; views in row-major block
      order.
    """
    shape = _check_shape(shape)
    grid = tuple(int(g) for g in grid)
    if len(grid) != len(shape) or any(not 1 <= g <= s for g, s in zip(grid, shape)):
        raise ValueError(f"grid {grid} must give 1..size blocks on each axis of {shape}")
    labels = jnp.zeros(shape, jnp.int32)
    for axis, (s, g) in enumerate(zip(shape, grid)):
        index = (jnp.arange(s) * g) // s  # block of each position along this axis
        index = index.reshape(tuple(s if a == axis else 1 for a in range(len(shape))))
        labels = labels * g + index
    return _one_hot_views(labels, math.prod(grid))


def checkerboard_regions(shape: Sequence[int], *, cell: int, num_views: int = 2) -> Array:
    """Checkerboard of ``cell``-sized squares (cubes), coloured with ``num_views`` views.

    Square ``(i, j)`` belongs to view ``(i + j) mod num_views``; with two views
    this is the usual checkerboard, with more it is diagonal stripes of cells.

    Args:
      shape: spatial shape ``(H, W)`` or ``(D, H, W)``.
      cell: side of a square in pixels.
      num_views: number of views (colours), >= 1.

    Returns:
      bool ``[num_views, *shape]``, a disjoint cover.
    """
    shape = _check_shape(shape)
    if cell < 1 or num_views < 1:
        raise ValueError(f"cell and num_views must be >= 1, got cell={cell}, num_views={num_views}")
    labels = jnp.zeros(shape, jnp.int32)
    for axis, s in enumerate(shape):
        index = jnp.arange(s) // cell
        labels = labels + index.reshape(tuple(s if a == axis else 1 for a in range(len(shape))))
    return _one_hot_views(labels % num_views, num_views)


def random_partition_regions(
    key: Array, shape: Sequence[int], *, num_views: int, cell: int = 1
) -> Array:
    """A random balanced partition of ``cell``-sized squares into ``num_views`` views.

    The cells are shuffled and dealt round-robin, so the views hold equally
    many cells (up to one) and none is empty while there are at least
    ``num_views`` cells.

    Args:
      key: PRNG key.
      shape: spatial shape ``(H, W)`` or ``(D, H, W)``.
      num_views: number of views, >= 1.
      cell: side of a cell in pixels (1 = pixel-wise); edge cells are cropped.

    Returns:
      bool ``[num_views, *shape]``, a disjoint cover.
    """
    shape = _check_shape(shape)
    if cell < 1 or num_views < 1:
        raise ValueError(f"cell and num_views must be >= 1, got cell={cell}, num_views={num_views}")
    cells = tuple(-(-s // cell) for s in shape)
    labels = jax.random.permutation(key, math.prod(cells)) % num_views
    labels = labels.reshape(cells)
    for axis in range(len(shape)):
        labels = jnp.repeat(labels, cell, axis=axis, total_repeat_length=cells[axis] * cell)
    labels = labels[tuple(slice(0, s) for s in shape)]
    return _one_hot_views(labels, num_views)


def organ_regions(organ_mask: Array, partition: Array, *, background: bool = False) -> Array:
    """Restricts a region set to an organ (and optionally adds its outside as a view).

    Args:
      organ_mask: bool ``[*S]``, the organ.
      partition: bool ``[V, *S]``, e.g. from :func:`checkerboard_regions` or
        :func:`random_partition_regions`.
      background: if True, append one view holding everything outside the
        organ.

    Returns:
      bool ``[V, *S]`` (``[V + 1, *S]`` with ``background``): ``partition[v] &
      organ_mask``; disjoint if ``partition`` is. A view whose part misses the
      organ is empty (its loss is then 0).
    """
    organ_mask = jnp.asarray(organ_mask)
    if organ_mask.dtype != jnp.bool_ or partition.dtype != jnp.bool_:
        raise TypeError(
            f"organ_mask and partition must be bool, got {organ_mask.dtype} and {partition.dtype}"
        )
    if partition.shape[1:] != organ_mask.shape:
        raise ValueError(
            f"partition {partition.shape} must be [V, *S] for organ_mask of shape {organ_mask.shape}"
        )
    inside = partition & organ_mask[None]
    if background:
        inside = jnp.concatenate([inside, ~organ_mask[None]], axis=0)
    return inside


def one_modality_per_view(num_views: int, num_modalities: int) -> Array:
    """View ``v`` blanks modality ``v mod M`` (and only it).

    Args:
      num_views: ``V`` >= 1.
      num_modalities: ``M`` >= 2 (one must stay visible).

    Returns:
      bool ``[V, M]``.
    """
    if num_views < 1 or num_modalities < 2:
        raise ValueError(
            f"need num_views >= 1 and num_modalities >= 2, got {num_views}, {num_modalities}"
        )
    drop = jnp.arange(num_views) % num_modalities
    return drop[:, None] == jnp.arange(num_modalities)[None, :]


def single_modality_drops(num_modalities: int, *, include_none: bool = False) -> Array:
    """Every single-modality drop, one per view.

    Args:
      num_modalities: ``M`` >= 2.
      include_none: prepend a view that blanks nothing.

    Returns:
      bool ``[M, M]`` (the identity), or ``[M + 1, M]`` with a first row of
      False when ``include_none``.
    """
    drops = one_modality_per_view(num_modalities, num_modalities)
    if include_none:
        drops = jnp.concatenate([jnp.zeros((1, num_modalities), bool), drops], axis=0)
    return drops


def random_blanking(
    key: Array, num_views: int, num_modalities: int, *, num_blanked: int = 1
) -> Array:
    """Each view blanks ``num_blanked`` distinct modalities drawn uniformly.

    Args:
      key: PRNG key.
      num_views: ``V`` >= 1.
      num_modalities: ``M`` >= 1.
      num_blanked: modalities blanked per view, ``0 <= num_blanked < M`` so
        that every view keeps at least one.

    Returns:
      bool ``[V, M]`` with exactly ``num_blanked`` True entries per row.
    """
    if num_views < 1 or not 0 <= num_blanked < num_modalities:
        raise ValueError(
            f"need num_views >= 1 and 0 <= num_blanked < num_modalities, got "
            f"num_views={num_views}, num_blanked={num_blanked}, num_modalities={num_modalities}"
        )
    scores = jax.random.uniform(key, (num_views, num_modalities))
    # The rank of each score in its row is a uniform random permutation.
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    return rank < num_blanked
