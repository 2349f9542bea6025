"""Rigid transforms in world (mm) space: parameters, matrices, and resampling a moving image on a fixed grid.

A rigid transform maps a point ``p`` of the fixed image's space to the point
of the moving image that should be seen there, ``T(p) = R (p - c) + c + t``,
with ``c`` the world position of the fixed grid's centre voxel (see
:mod:`jaxmed.data.registration`, which finds ``T``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from jaxmed.data.spatial import resample_to

__all__ = ["RigidParams", "RigidResult", "apply_rigid", "grid_center", "identity_params", "rigid_matrix",
           "rotation_matrix"]

# Full float32 products: at default precision some accelerators multiply in
# bf16/TF32 (~1e-3 relative), a tenth of a millimetre on positions of ~100 mm.
_matmul = partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


class RigidParams(NamedTuple):
    """A rigid transform about a centre (see the module docstring).

    Attributes:
        angles: ``[3]`` radians about the world axes ``(x_p, y_p, z_p)``,
            applied in that order (``R = R_z @ R_y @ R_x``); ``[1]`` for 2D
            (counter-clockwise from world axis 0 to world axis 1).
        translation: ``[d]`` mm along the world axes.
    """

    angles: Array
    translation: Array


class RigidResult(NamedTuple):
    """What `register_rigid` found (a leading batch axis on every field for a batch).

    Attributes:
        params: the transform, about ``center``.
        matrix: ``[d + 1, d + 1]`` the transform ``T`` as a matrix on world
            points (mm): fixed-image space -> moving-image space.
        center: ``[d]`` mm, the centre of rotation (the fixed grid's centre).
        metric_history: ``[sum(num_steps)]`` the metric (NCC, or MI in nats;
            higher is better) before each step, levels one after the other.
    """

    params: RigidParams
    matrix: Array
    center: Array
    metric_history: Array


# --------------------------------------------------------------------------
# Transforms


def identity_params(ndim: int = 3) -> RigidParams:
    """The identity transform for ``ndim``-D images (2 or 3)."""
    if ndim not in (2, 3):
        raise ValueError(f"rigid transforms are 2D or 3D, got ndim={ndim}")
    return RigidParams(angles=jnp.zeros(1 if ndim == 2 else 3), translation=jnp.zeros(ndim))


def rotation_matrix(angles: ArrayLike) -> Array:
    """Rotation from angles in radians.

    Args:
        angles: ``[1]`` (2D) or ``[3]`` (3D: about world axes x, y, z, applied
            in that order, ``R = R_z @ R_y @ R_x``).

    Returns:
        ``[2, 2]`` or ``[3, 3]`` orthogonal matrix with determinant 1.
    """
    angles = jnp.asarray(angles)
    if angles.shape == (1,):
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
    if angles.shape != (3,):
        raise ValueError(f"angles must be [1] (2D) or [3] (3D), got shape {angles.shape}")
    cx, cy, cz = jnp.cos(angles)
    sx, sy, sz = jnp.sin(angles)
    one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
    rx = jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([zero, cx, -sx]), jnp.stack([zero, sx, cx])])
    ry = jnp.stack([jnp.stack([cy, zero, sy]), jnp.stack([zero, one, zero]), jnp.stack([-sy, zero, cy])])
    rz = jnp.stack([jnp.stack([cz, -sz, zero]), jnp.stack([sz, cz, zero]), jnp.stack([zero, zero, one])])
    return _matmul(rz, _matmul(ry, rx))


def rigid_matrix(params: RigidParams, center: ArrayLike) -> Array:
    """The homogeneous matrix of ``T(p) = R (p - c) + c + t`` on world points.

    Args:
        params: angles (rad) and translation (mm).
        center: ``[d]`` mm, the centre of rotation ``c``.

    Returns:
        ``[d + 1, d + 1]`` matrix, world (mm) -> world (mm).
    """
    rotation = rotation_matrix(params.angles)
    ndim = rotation.shape[0]
    center = jnp.asarray(center, rotation.dtype)
    translation = jnp.asarray(params.translation, rotation.dtype)
    if center.shape != (ndim,) or translation.shape != (ndim,):
        raise ValueError(
            f"center and translation must be [{ndim}] for {ndim}D angles, got {center.shape} and {translation.shape}"
        )
    offset = center + translation - _matmul(rotation, center)
    top = jnp.concatenate([rotation, offset[:, None]], axis=1)
    return jnp.concatenate([top, jnp.eye(1, ndim + 1, ndim, dtype=top.dtype)], axis=0)


def grid_center(affine: ArrayLike, shape: Sequence[int]) -> Array:
    """World position (mm) of a grid's centre, index ``(n - 1) / 2`` along each axis: ``[d]``."""
    affine = jnp.asarray(affine)
    ndim = affine.shape[-1] - 1
    middle = (np.asarray(shape[-ndim:], dtype=np.float64) - 1.0) / 2.0
    return _matmul(affine[:ndim, :ndim], jnp.asarray(middle, affine.dtype)) + affine[:ndim, ndim]


def apply_rigid(
    moving: ArrayLike,
    matrix: ArrayLike,
    *,
    moving_affine: ArrayLike,
    fixed_affine: ArrayLike,
    fixed_shape: Sequence[int],
    order: int = 1,
    mode: str = "constant",
    cval: float = 0.0,
) -> Array:
    """The moving image on the fixed grid, through a rigid transform.

    Fixed voxel ``j`` takes the moving image at ``inv(moving_affine) @ matrix
    @ fixed_affine @ j``: one interpolation for header geometry and motion
    together. Pure and jittable (``fixed_shape`` static).

    Args:
        moving: ``[*S_moving]`` image.
        matrix: ``[d + 1, d + 1]`` world transform, fixed -> moving space
            (`RigidResult.matrix`; the identity resamples from the headers).
        moving_affine: ``[d + 1, d + 1]`` moving voxel -> world (mm).
        fixed_affine: ``[d + 1, d + 1]`` fixed voxel -> world (mm).
        fixed_shape: the fixed grid's shape, ``d`` ints.
        order, mode, cval: as `jaxmed.data.spatial.resample_to`.

    Returns:
        ``fixed_shape`` array.
    """
    dst = _matmul(jnp.asarray(matrix), jnp.asarray(fixed_affine))
    return resample_to(moving, moving_affine, dst, fixed_shape, order=order, mode=mode, cval=cval)


# --------------------------------------------------------------------------
# Metrics (higher is better; `weights` select and weight the voxels)
