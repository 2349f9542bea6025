"""Drawing blocks shared by the phantom kinds: coordinates, ellipsoids, random words, fields, noise.

Pure and jittable. Random quantities come from uint32 words drawn in one
`jax.random.bits` call per sample (`random_words`) and turned into uniforms,
normals, smooth fields or Rician noise here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def coordinates(shape: tuple[int, ...]) -> jax.Array:
    """Pixel-centre coordinates, isotropic, -1..1 across the largest axis: ``[*shape, ndim]``."""
    half = max(shape) / 2
    axes = [(jnp.arange(n) + 0.5 - n / 2) / half for n in shape]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def inside_ellipsoid(coords: jax.Array, centre: jax.Array, semi_axes: jax.Array, angle: jax.Array) -> jax.Array:
    """Whether each point lies in an ellipsoid rotated by ``angle`` in the last two axes.

    Args:
        coords: ``[*shape, ndim]``.
        centre: ``[ndim]``.
        semi_axes: ``[ndim]``, in the ellipsoid's own frame.
        angle: scalar, radians.

    Returns:
        bool ``[*shape]``.
    """
    ndim = coords.shape[-1]
    offset = coords - jnp.reshape(centre, (1,) * ndim + (ndim,))
    c, s = jnp.cos(angle), jnp.sin(angle)
    u, v = offset[..., -2], offset[..., -1]
    rotated = jnp.concatenate([offset[..., :-2], jnp.stack([c * u + s * v, -s * u + c * v], axis=-1)], axis=-1)
    q = jnp.sum(jnp.square(rotated / jnp.reshape(semi_axes, (1,) * ndim + (ndim,))), axis=-1)
    return q <= 1.0


def rotate(vector: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotates the last two components of ``vector [ndim]`` by ``angle`` (inverse of `inside_ellipsoid`'s frame change)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    u, v = vector[-2], vector[-1]
    return jnp.concatenate([vector[:-2], jnp.stack([c * u - s * v, s * u + c * v])])


def random_words(key: jax.Array, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """Random uint32 words in named blocks, from a single `jax.random.bits` call.

    One call, not one per quantity: every random call inlines its own
    Threefry hash, and under vmap each added about half a second of XLA:CPU
    compile time (eight of them more than doubled it).
    """
    sizes = [math.prod(shape) for shape in shapes.values()]
    words = jax.random.bits(key, (sum(sizes),), dtype=jnp.uint32)
    offsets = np.cumsum([0] + sizes)
    return {
        name: jnp.reshape(words[start:stop], shape)
        for (name, shape), start, stop in zip(shapes.items(), offsets[:-1], offsets[1:], strict=True)
    }


def uniform(words: jax.Array) -> jax.Array:
    """uint32 words -> float32 uniform in ``[0, 1)`` (23 mantissa bits, as `jax.random.uniform`)."""
    mantissa = jnp.right_shift(words, np.uint32(9)) | np.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


def normal(words: jax.Array) -> jax.Array:
    """uint32 words -> float32 standard normal by the inverse CDF (as `jax.random.normal`)."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    return np.float32(math.sqrt(2.0)) * jax.lax.erf_inv(jnp.maximum(2.0 * uniform(words) - 1.0, lo))


def smooth_fields(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Independent smooth random fields of roughly unit variance.

    Args:
        words: uint32 ``[count, cells, ..., cells]``: the coarse grids.
        shape: output spatial shape.

    Returns:
        float32 ``[count, *shape]``: coarse Gaussian noise, cubic-interpolated.
    """
    return jax.image.resize(normal(words), (words.shape[0], *shape), method="cubic")


def rician(words: jax.Array, signal: jax.Array, *, noise_std: float) -> jax.Array:
    """Magnitude of ``signal`` plus complex Gaussian noise: Rician samples, shaped like ``signal``.

    The complex noise ``r * exp(i theta)`` is drawn in polar form (Box-Muller)
    from one 32-bit word per pixel, two 16-bit uniforms: half the random bits
    of two `jax.random.normal` draws, which dominate the phantom's cost on CPU.
    Its radius is therefore truncated at ``sqrt(2 ln 2^17) = 4.8`` standard
    deviations. ``words`` is uint32 shaped like ``signal``.
    """
    u1 = ((words >> 16).astype(jnp.float32) + 0.5) * (1.0 / 65536)  # in (0, 1): log is finite
    u2 = (words & 0xFFFF).astype(jnp.float32) * (1.0 / 65536)
    r = noise_std * jnp.sqrt(-2.0 * jnp.log(u1))
    # |s + r e^{i theta}|^2 = s^2 + r^2 + 2 s r cos(theta); clamp rounding below 0.
    power = jnp.square(signal) + jnp.square(r) + 2.0 * signal * r * jnp.cos(2.0 * jnp.pi * u2)
    return jnp.sqrt(jnp.maximum(power, 0.0))
