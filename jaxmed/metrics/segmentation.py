"""Segmentation metrics: Dice per class, and surface distances in millimetres.

:func:`dice` is pure JAX on label maps of one example, jittable (with
``num_classes`` static) and vmappable over a batch. :func:`surface_distances`
runs on the host with numpy and scipy (a Euclidean distance transform).

.. note::
   Surfaces are the voxels of a mask with at least one face neighbour
   outside it (the mask minus its erosion by the cross-shaped structuring
   element; voxels on the array's edge count as surface). A distance is from
   a surface voxel's centre to the nearest voxel centre of the other surface,
   scaled by the voxel spacing. These are the conventions of MONAI's
   ``compute_hausdorff_distance`` / ``compute_average_surface_distance``
   (``symmetric=True``) without surfel-area weighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

Array = jax.Array


def dice(pred: Array, target: Array, *, num_classes: int, empty_score: float = 1.0) -> Array:
    """Dice coefficient per class, ``2 |P_c ∩ T_c| / (|P_c| + |T_c|)``.

    .. note::
       A class absent from both ``pred`` and ``target`` has no Dice (0 / 0);
       it scores ``empty_score``, by default 1 (a correct "absent"). Pass
       ``empty_score=jnp.nan`` to leave such classes out of a
       ``jnp.nanmean``. A class absent from one of the two scores 0. Values
       outside ``[0, num_classes)`` belong to no class (no check under jit).

    Args:
      pred: ``[*spatial]`` integer (or bool) predicted class per voxel.
      target: ``[*spatial]`` true class per voxel, same shape.
      num_classes: number of classes (static), background included.
      empty_score: the score of a class absent from both.

    Returns:
      ``[num_classes]`` float32, class 0 (background) first.
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape}, target {target.shape}")
    classes = jnp.arange(num_classes).reshape((1,) * pred.ndim + (num_classes,))
    p = pred.astype(jnp.int32)[..., None] == classes
    t = target.astype(jnp.int32)[..., None] == classes
    axes = tuple(range(pred.ndim))
    # Integer counts: float32 sums stop being exact above 2**24 voxels.
    intersection = jnp.sum(p & t, axis=axes, dtype=jnp.int32)
    total = jnp.sum(p, axis=axes, dtype=jnp.int32) + jnp.sum(t, axis=axes, dtype=jnp.int32)
    ratio = 2.0 * intersection / jnp.maximum(total, 1)
    return jnp.where(total > 0, ratio, jnp.asarray(empty_score, ratio.dtype))


class SurfaceDistances(NamedTuple):
    """Symmetric surface distances between two masks, in the units of the spacing (mm).

    Attributes:
      hausdorff: the largest distance from either surface to the other.
      hausdorff95: the larger of the two directed 95th percentiles (or the
        percentile asked for), each ``numpy.percentile`` (linear).
      mean: average symmetric surface distance: the mean over the voxels of
        both surfaces of their distance to the other surface.
    """

    hausdorff: float
    hausdorff95: float
    mean: float


def surface_distances(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    spacing: Sequence[float] | None = None,
    percentile: float = 95.0,
) -> SurfaceDistances:
    """Hausdorff, percentile Hausdorff and mean surface distance of two binary masks.

    .. note::
       Both masks empty: every distance is 0. One empty: every distance is
       ``inf`` (there is no surface to reach).

    Args:
      pred: ``[*spatial]`` binary predicted mask (2D or 3D).
      target: binary true mask, same shape.
      spacing: voxel size along each axis (e.g. mm, in array axis order);
        None: 1 per axis.
      percentile: the percentile of ``hausdorff95``.

    Returns:
      :class:`SurfaceDistances`.

    Raises:
      ValueError: shapes differ, a mask is not binary, or ``spacing`` does not
        give one positive size per axis.
    """
    pred, target = _binary(pred, "pred"), _binary(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape}, target {target.shape}")
    spacing = (1.0,) * pred.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must give one positive size per axis of {pred.shape}, got {spacing}")
    if not pred.any() and not target.any():
        return SurfaceDistances(0.0, 0.0, 0.0)
    if not pred.any() or not target.any():
        return SurfaceDistances(np.inf, np.inf, np.inf)
    pred_surface, target_surface = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[target_surface]
    both = np.concatenate([to_target, to_pred])
    return SurfaceDistances(
        hausdorff=float(both.max()),
        hausdorff95=float(max(np.percentile(to_target, percentile), np.percentile(to_pred, percentile))),
        mean=float(both.mean()),
    )


def _surface(mask):
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _binary(x, name):
    x = np.asarray(x)
    if not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} must be a binary mask, got values {np.unique(x)[:10]}")
    return x.astype(bool)
