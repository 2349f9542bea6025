"""Spatial transforms: resampling in world coordinates, centre crop or pad.

Grids are described as in :class:`jaxmed.io.Volume`: an array of shape
``(n_0, ..., n_{d-1})`` and an ``(d + 1, d + 1)`` affine that maps a voxel index
``(i_0, ..., i_{d-1}, 1)`` to a world position in millimetres (for volumes,
index order ``(z, y, x)`` and LPS world axes). Resampling only needs the two
affines to share a world frame, so it works for 2D images (3x3 affines) and
3D volumes (4x4) alike.

Voxel-centre convention: index ``i`` is the *centre* of voxel ``i``, so a grid
of ``n`` voxels spans ``[-0.5, n - 0.5]`` in index units. Resampling to a new
shape or spacing keeps the field of view's centre fixed (and, for a new shape,
its extent), as ``jax.image.resize`` does.

Output shapes are Python ints (static under ``jax.jit``); the arrays and
affines may be traced.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

__all__ = [
    "center_crop_or_pad",
    "resample_to",
    "resample_to_shape",
    "resample_to_spacing",
    "scaled_grid",
]

_MODES = ("constant", "nearest", "mirror", "wrap", "reflect")


def _check_shape(shape: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != ndim:
        raise ValueError(f"{what} must have {ndim} entries for a {ndim}D array, got {shape}")
    if any(n < 1 for n in shape):
        raise ValueError(f"{what} must be positive, got {shape}")
    return shape


def _check_invertible(affine: Array, name: str) -> None:
    """Raises for a concrete affine whose voxel axes are collapsed or parallel (traced ones pass unchecked)."""
    try:
        affine = np.asarray(affine, dtype=np.float64)
    except jax.errors.TracerArrayConversionError:
        return
    ndim = affine.shape[0] - 1
    linear = affine[:ndim, :ndim]
    # Relative to the voxel size, so that fine grids are not mistaken for singular ones.
    scale = float(np.prod(np.linalg.norm(linear, axis=0)))
    if not np.all(np.isfinite(affine)) or scale == 0 or abs(np.linalg.det(linear)) <= 1e-9 * scale:
        raise ValueError(f"{name} is not invertible (collapsed or parallel voxel axes, or not finite): {affine}")


def resample_to(
    array: ArrayLike,
    src_affine: ArrayLike,
    dst_affine: ArrayLike,
    dst_shape: Sequence[int],
    *,
    order: int = 1,
    mode: str = "constant",
    cval: float = 0.0,
) -> Array:
    """Resamples an array onto another grid through world coordinates.

    The value at destination voxel ``j`` is the source array interpolated at
    ``inv(src_affine) @ dst_affine @ j``: e.g. an ADC map onto the T2 grid of
    the same patient, given both affines.

    Args:
        array: ``[n_0, ..., n_{d-1}]`` source image.
        src_affine: ``[d + 1, d + 1]`` source voxel index -> world (mm).
        dst_affine: ``[d + 1, d + 1]`` destination voxel index -> world (mm).
        dst_shape: destination shape, ``d`` Python ints.
        order: 1 for (bi/tri)linear interpolation, 0 for nearest neighbour
            (use 0 for label maps).
        mode: how points outside the source are filled, as
            ``jax.scipy.ndimage.map_coordinates``: ``"constant"`` (``cval``;
            points less than one voxel outside blend the edge value with
            it), ``"nearest"``, ``"mirror"``, ``"wrap"``, ``"reflect"``.
        cval: fill value for ``mode="constant"``.

    Returns:
        ``dst_shape`` array, float.

    Raises:
        ValueError: bad shapes or settings, or a (concrete) ``src_affine``
            that is not invertible.

    Note:
        No anti-aliasing: downsampling by a large factor samples the source
        rather than averaging it; blur first when that matters.
    """
    array = jnp.asarray(array)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.float32)
    ndim = array.ndim
    dst_shape = _check_shape(dst_shape, ndim, "dst_shape")
    src_affine = jnp.asarray(src_affine)
    dst_affine = jnp.asarray(dst_affine)
    for name, affine in (("src_affine", src_affine), ("dst_affine", dst_affine)):
        if affine.shape != (ndim + 1, ndim + 1):
            raise ValueError(f"{name} must be {(ndim + 1, ndim + 1)} for a {ndim}D array, got {affine.shape}")
    _check_invertible(src_affine, "src_affine")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    # Compose the two maps first (solve, not an explicit inverse) and work in
    # float64 where enabled: world offsets of ~100 mm cost float32 ~1e-5 voxel.
    dtype = jnp.result_type(src_affine.dtype, dst_affine.dtype, jnp.float32)
    dst_to_src = jnp.linalg.solve(src_affine.astype(dtype), dst_affine.astype(dtype))
    grid = jnp.meshgrid(*(jnp.arange(n, dtype=dtype) for n in dst_shape), indexing="ij")
    coords = [
        sum(dst_to_src[i, k] * grid[k] for k in range(ndim)) + dst_to_src[i, ndim]
        for i in range(ndim)
    ]
    coords = [c.astype(array.dtype) for c in coords]
    return map_coordinates(array, coords, order=order, mode=mode, cval=cval)


def scaled_grid(
    affine: ArrayLike,
    shape: Sequence[int],
    *,
    new_shape: Sequence[int] | None = None,
    new_spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid with the same orientation and centre, and a new shape or spacing.

    Give exactly one of ``new_shape`` (the field of view keeps its extent;
    spacing becomes ``spacing * n / new_n``) or ``new_spacing`` (the new shape
    is ``round(n * spacing / new_spacing)``, at least 1).

    Args:
        affine: ``[d + 1, d + 1]`` voxel index -> world (mm); its column norms
            are the voxel spacing.
        shape: the grid's shape, ``d`` ints.
        new_shape: the new shape, ``d`` ints.
        new_spacing: the new voxel size in mm, ``d`` floats (index order).

    Returns:
        ``(new_affine, new_shape)``: a float64 numpy ``[d + 1, d + 1]`` array
        and a tuple of ints.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ndim = affine.shape[0] - 1
    shape = _check_shape(shape, ndim, "shape")
    if (new_shape is None) == (new_spacing is None):
        raise ValueError("give exactly one of new_shape and new_spacing")
    n = np.asarray(shape, dtype=np.float64)
    spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    if new_shape is not None:
        new_shape = _check_shape(new_shape, ndim, "new_shape")
        scale = n / np.asarray(new_shape, dtype=np.float64)
    else:
        new_spacing = np.asarray(new_spacing, dtype=np.float64)
        if new_spacing.shape != (ndim,) or np.any(new_spacing <= 0):
            raise ValueError(f"new_spacing must be {ndim} positive numbers, got {new_spacing.tolist()}")
        scale = new_spacing / spacing
        new_shape = tuple(max(1, int(k)) for k in np.round(n * spacing / new_spacing))
    m = np.asarray(new_shape, dtype=np.float64)
    # new index j -> old index scale * j + offset, with centres (n-1)/2 and
    # (m-1)/2 matched.
    offset = (n - 1.0) / 2.0 - scale * (m - 1.0) / 2.0
    new_to_old = np.eye(ndim + 1)
    new_to_old[:ndim, :ndim] = np.diag(scale)
    new_to_old[:ndim, ndim] = offset
    return affine @ new_to_old, new_shape


def resample_to_shape(
    array: ArrayLike,
    shape: Sequence[int],
    *,
    order: int = 1,
    mode: str = "nearest",
) -> Array:
    """Resamples an array to a new shape covering the same field of view.

    Voxel centres follow the half-voxel convention of ``jax.image.resize``
    (without its anti-aliasing).

    Args:
        array: ``[n_0, ..., n_{d-1}]`` image.
        shape: the new shape, ``d`` ints.
        order: 1 for linear, 0 for nearest-neighbour interpolation.
        mode: edge handling (see :func:`resample_to`); ``"nearest"`` keeps
            edge values instead of fading them to zero.

    Returns:
        ``shape`` array.
    """
    array = jnp.asarray(array)
    eye = np.eye(array.ndim + 1)
    dst_affine, shape = scaled_grid(eye, array.shape, new_shape=shape)
    return resample_to(array, eye, dst_affine, shape, order=order, mode=mode)


def resample_to_spacing(
    array: ArrayLike,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 1,
    mode: str = "nearest",
) -> Array:
    """Resamples an array to a new voxel size, keeping the field-of-view centre.

    Args:
        array: ``[n_0, ..., n_{d-1}]`` image.
        spacing: its voxel size in mm, ``d`` floats (index order; e.g.
            ``Volume.spacing``).
        new_spacing: the new voxel size in mm, ``d`` floats. Python numbers:
            they fix the output shape ``round(n * spacing / new_spacing)``.
        order: 1 for linear, 0 for nearest-neighbour interpolation.
        mode: edge handling (see :func:`resample_to`).

    Returns:
        the resampled array. For the matching affine, use
        ``scaled_grid(affine, array.shape, new_spacing=new_spacing)``.
    """
    array = jnp.asarray(array)
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (array.ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be {array.ndim} positive numbers, got {spacing.tolist()}")
    src_affine = np.diag(np.append(spacing, 1.0))
    dst_affine, shape = scaled_grid(src_affine, array.shape, new_spacing=new_spacing)
    return resample_to(array, src_affine, dst_affine, shape, order=order, mode=mode)


def center_crop_or_pad(array: ArrayLike, shape: Sequence[int], *, cval: float = 0.0) -> Array:
    """Crops or pads each axis, centred, to a target shape.

    Along an axis of length ``n`` going to ``m``: cropping keeps indices
    ``[(n - m) // 2, (n - m) // 2 + m)``; padding puts ``(m - n) // 2`` values
    before and the rest after. So padding a crop back puts the kept pixels
    where they were.

    Args:
        array: ``[n_0, ..., n_{d-1}]`` array.
        shape: target shape, ``d`` ints.
        cval: padding value.

    Returns:
        ``shape`` array, same dtype.
    """
    array = jnp.asarray(array)
    shape = _check_shape(shape, array.ndim, "shape")
    crops, pads = [], []
    for n, m in zip(array.shape, shape, strict=True):
        start = max(n - m, 0) // 2
        crops.append(slice(start, start + min(n, m)))
        before = max(m - n, 0) // 2
        pads.append((before, max(m - n, 0) - before))
    return jnp.pad(array[tuple(crops)], pads, constant_values=cval)
