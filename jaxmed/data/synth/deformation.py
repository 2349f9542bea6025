"""Smooth diffeomorphic deformations: stationary velocity fields integrated by scaling and squaring."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

__all__ = ["integrate_velocity", "jacobian_determinant", "last_axis", "sample_field", "sample_velocity"]


def sample_field(field: Array, points: Array, *, mode: str, cval: float = 0.0) -> Array:
    """Linear interpolation of ``field [*S, C]`` at ``points [..., D]`` (index units): ``[..., C]``."""
    coords = [points[..., d] for d in range(points.shape[-1])]
    return jax.vmap(
        lambda f: map_coordinates(f, coords, order=1, mode=mode, cval=cval), in_axes=-1, out_axes=-1
    )(field)


def last_axis(vector: ArrayLike, ndim: int) -> Array:
    """A ``[C]`` vector shaped to broadcast against a ``[..., C]`` array of rank ``ndim``."""
    vector = jnp.asarray(vector)
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def sample_velocity(key: Array, shape, *, std: ArrayLike, smoothness: float, dtype=jnp.float32) -> Array:
    """A random smooth velocity field: Gaussian-smoothed white noise.

    White noise ``N(0, 1)`` on the grid is convolved along each axis with a
    Gaussian of ``smoothness`` nodes (weights renormalised near the edges)
    and divided by its pointwise standard deviation, so every component is
    ``N(0, std^2)`` at every node and correlated over about ``smoothness``.

    Args:
        key: PRNG key.
        shape: the grid, ``D`` ints.
        std: standard deviation of each component, in nodes.
        smoothness: Gaussian sigma of the smoothing, in nodes (> 0).
        dtype: float dtype.

    Returns:
        ``[*shape, D]`` velocity in nodes (component ``d`` along axis ``d``).
    """
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1 or not smoothness > 0:
        raise ValueError(f"need a non-empty grid and smoothness > 0, got {shape}, {smoothness}")
    ndim = len(shape)
    field = jax.random.normal(key, (*shape, ndim), dtype)
    norm = np.ones(shape)
    for axis, n in enumerate(shape):
        d = np.arange(n, dtype=np.float64)
        kernel = np.exp(-0.5 * ((d[:, None] - d[None, :]) / smoothness) ** 2)
        kernel /= kernel.sum(axis=1, keepdims=True)
        moved = jnp.tensordot(jnp.asarray(kernel, dtype), jnp.moveaxis(field, axis, 0), axes=(1, 0))
        field = jnp.moveaxis(moved, 0, axis)
        norm = norm * np.sqrt((kernel**2).sum(axis=1)).reshape([n if b == axis else 1 for b in range(ndim)])
    return field * jnp.asarray(1.0 / norm, dtype)[..., None] * std


def integrate_velocity(velocity: ArrayLike, *, steps: int) -> Array:
    """Integrates a stationary velocity field by scaling and squaring.

    The flow of ``v`` for unit time is ``exp(v) = (exp(v / 2^T))^(2^T)``:
    starting from the small displacement ``u = v / 2^T``, the map
    ``x -> x + u(x)`` is composed with itself ``T`` times,
    ``u <- u + u o (id + u)`` (linear interpolation, edge values extended
    beyond the grid). The result is a diffeomorphism when ``v / 2^T`` is
    small against the grid (positive Jacobian, `jacobian_determinant`), and
    ``exp(-v)`` is its inverse up to interpolation error.

    Args:
        velocity: ``[*S, D]``, in grid nodes (component ``d`` along axis
            ``d``).
        steps: ``T >= 0``, a Python int.

    Returns:
        ``[*S, D]`` displacement in nodes: the map is ``x -> x + u(x)``.

    References:
        Arsigny et al., MICCAI 2006; Ashburner, NeuroImage 38 (2007).
    """
    velocity = jnp.asarray(velocity)
    if not jnp.issubdtype(velocity.dtype, jnp.floating):
        velocity = velocity.astype(jnp.float32)
    *shape, ndim = velocity.shape
    if ndim != len(shape):
        raise ValueError(f"velocity must be [*S, D] with D = len(S), got shape {velocity.shape}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    grid = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=velocity.dtype) for n in shape), indexing="ij"), axis=-1)

    def square(_, u):
        return u + sample_field(u, grid + u, mode="nearest")

    return jax.lax.fori_loop(0, int(steps), square, velocity / 2.0 ** int(steps))


def jacobian_determinant(displacement: ArrayLike) -> Array:
    """Determinant of the Jacobian of ``x -> x + u(x)`` on its grid.

    Derivatives by central differences (one-sided at the edges), in nodes.

    Args:
        displacement: ``[*S, D]`` in nodes, each of the ``D`` axes of
            length >= 2.

    Returns:
        ``[*S]``: > 0 where the map preserves orientation (no folding).
    """
    u = jnp.asarray(displacement)
    *shape, ndim = u.shape
    rows = []
    for i in range(ndim):
        grads = jnp.gradient(u[..., i])
        grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
        rows.append(jnp.stack(grads, axis=-1))
    jacobian = jnp.stack(rows, axis=-2)  # [*S, D, D]: d u_i / d x_j
    eye = jnp.eye(ndim, dtype=u.dtype).reshape((1,) * len(shape) + (ndim, ndim))
    return jnp.linalg.det(eye + jacobian)
