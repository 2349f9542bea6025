"""Windows of an image and back: extraction by dynamic slices, merging by weighted sums and a count map.

:func:`extract_windows` cuts ``K`` equal windows at dynamic corners out of an
image, ``jax.vmap`` over ``lax.dynamic_slice`` (static window size, traced
corners: one compiled function for any layout). :func:`merge_windows` puts
per-window values back on the image grid as MONAI's ``AvgMerger`` and the
blending of ``sliding_window_inference`` do: the sum over windows of
``weight * value`` and the sum of the weights (the count map, 1 per covering
window for uniform weights), and their ratio where a pixel is covered.

.. note::
   Corners are the ``(row, column)`` of a window's first pixel. A corner
   that would put a window past the image's edge is moved back inside
   (clamped to ``[0, size - window]``, as an unbatched ``lax.dynamic_slice``
   does; vmapped, it would read a negative index from the far end);
   :func:`merge_windows` uses the same clamped corners, so extraction and
   merging agree. Callers that mean to leave the image should pad it first.

References:
  MONAI ``monai.inferers.merger.AvgMerger`` (``aggregate``: values and
  counts accumulated per patch location; ``finalize``: values / counts) and
  ``monai.inferers.sliding_window_inference`` (importance-map weighted
  blending).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

__all__ = ["clamp_corners", "extract_windows", "merge_windows"]


def clamp_corners(corners: Array, *, image_shape: Sequence[int], window: Sequence[int]) -> Array:
    """Corners moved inside the image as ``lax.dynamic_slice`` moves them.

    Args:
      corners: ``[K, 2]`` int ``(row, column)`` of each window's first pixel.
      image_shape: ``(H, W)``.
      window: ``(h, w)``, at most the image.

    Returns:
      ``[K, 2]`` int32 corners in ``[0, H - h] x [0, W - w]``.
    """
    corners = jnp.asarray(corners).astype(jnp.int32)
    high = jnp.asarray([image_shape[0] - window[0], image_shape[1] - window[1]], jnp.int32)
    return jnp.clip(corners, 0, high.reshape((1,) * (corners.ndim - 1) + (2,)))


def extract_windows(image: Array, corners: Array, *, window: Sequence[int]) -> Array:
    """``K`` windows of one image at dynamic corners, vmapped ``lax.dynamic_slice``.

    Args:
      image: ``[H, W, *rest]`` (e.g. ``[H, W, C]``, or a mask ``[H, W]``).
      corners: ``[K, 2]`` int corners (clamped into the image, see the module note).
      window: ``(h, w)``, static.

    Returns:
      ``[K, h, w, *rest]``.
    """
    h, w = (int(n) for n in window)
    if h > image.shape[0] or w > image.shape[1]:
        raise ValueError(f"window {(h, w)} is larger than the image {image.shape[:2]}")
    rest = image.shape[2:]

    def one(corner):
        start = (corner[0], corner[1], *(0,) * len(rest))
        return lax.dynamic_slice(image, start, (h, w, *rest))

    # Clamped here: a batched dynamic slice (a gather) would read a negative index from the far end.
    return jax.vmap(one)(clamp_corners(corners, image_shape=image.shape[:2], window=(h, w)))


def merge_windows(
    values: Array,
    corners: Array,
    *,
    image_shape: Sequence[int],
    weights: Array | None = None,
    fill: float = 0.0,
) -> tuple[Array, Array]:
    """Per-window values merged onto the image grid: weighted mean and count map.

    ``merged[p] = sum_k weights_k[p] values_k[p] / count[p]`` with ``count[p] =
    sum_k weights_k[p]`` over the windows covering pixel ``p`` (``fill`` where
    ``count == 0``), as MONAI's ``AvgMerger`` (uniform weights) and
    ``sliding_window_inference`` (an importance map as weights) blend patches.
    The windows are accumulated in order by a ``lax.scan`` of dynamic slices
    and updates into one buffer: memory stays one image, and the sum is
    bit-for-bit independent of how many windows overlap a pixel elsewhere.

    Args:
      values: ``[K, h, w]`` or ``[K, h, w, C]`` values per window pixel.
      corners: ``[K, 2]`` int corners (clamped into the image, see the module note).
      image_shape: ``(H, W)`` of the image grid.
      weights: ``[K, h, w]`` non-negative weights (e.g. a window's region mask
        times an importance map); None: 1 everywhere.
      fill: the merged value of pixels no window covers (weight 0).

    Returns:
      ``(merged, count)``: ``[H, W]`` (or ``[H, W, C]``) and ``[H, W]`` float32.
    """
    values = jnp.asarray(values, jnp.float32)
    k, h, w = values.shape[:3]
    rest = values.shape[3:]
    weights = jnp.ones((k, h, w), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if weights.shape != (k, h, w):
        raise ValueError(f"weights must be {(k, h, w)} for values {values.shape}, got {weights.shape}")
    corners = clamp_corners(corners, image_shape=image_shape, window=(h, w))
    weighted = values * weights.reshape(k, h, w, *(1,) * len(rest))
    total = jnp.zeros((*image_shape, *rest), jnp.float32)
    count = jnp.zeros(tuple(image_shape), jnp.float32)

    def add(carry, item):
        total, count = carry
        v, wt, corner = item
        start = (corner[0], corner[1], *(0,) * len(rest))
        total = lax.dynamic_update_slice(total, lax.dynamic_slice(total, start, (h, w, *rest)) + v, start)
        count = lax.dynamic_update_slice(count, lax.dynamic_slice(count, tuple(corner), (h, w)) + wt, tuple(corner))
        return (total, count), None

    (total, count), _ = lax.scan(add, (total, count), (weighted, weights, corners))
    covered = count.reshape(*image_shape, *(1,) * len(rest)) > 0
    safe = jnp.where(count > 0, count, 1.0).reshape(*image_shape, *(1,) * len(rest))
    return jnp.where(covered, total / safe, fill), count
