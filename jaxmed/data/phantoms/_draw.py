"""Drawing blocks shared by the phantom kinds: coordinates, ellipsoids, random words, fields, noise, resampling.

Pure and jittable. Random quantities come from uint32 words drawn in one
`jax.random.bits` call per sample (`random_words`) and turned into uniforms,
normals, smooth fields or noise here. Phantoms that are smooth at the pixel
scale are drawn on a coarser grid and brought to the output grid by
`upsample_linear`.
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


def ellipse_form(y: jax.Array, x: jax.Array, centre: tuple, semi_axes: tuple, angle) -> jax.Array:
    """Quadratic form of a 2D ellipse, 0 at its centre and 1 on its outline, on separate coordinate arrays.

    The 2D form of `inside_ellipsoid` (same frame: ``angle`` rotates the
    semi-axes ``(along y, along x)``) for coordinates given as two
    broadcastable arrays (a column and a row of a grid, or points) rather
    than one stacked ``[..., 2]`` array, so that a grid is never built;
    ``centre``, ``semi_axes`` and ``angle`` may be arrays broadcastable
    against them too (one ellipse per slot or per pixel).
    """
    c, s = jnp.cos(angle), jnp.sin(angle)
    dy, dx = y - centre[0], x - centre[1]
    return jnp.square((c * dy + s * dx) / semi_axes[0]) + jnp.square((-s * dy + c * dx) / semi_axes[1])


def chord(q: jax.Array) -> jax.Array:
    """Length of the chord through a unit ball at squared distance ``q`` from its centre: ``2 sqrt(1 - q)``, 0 outside.

    A ray at squared normalised distance ``q`` from the axis of an ellipsoid
    (or a tube, or a ball) crosses it over ``chord(q)`` times the semi-axis
    along the ray: the thickness that a projection sums.
    """
    return 2.0 * jnp.sqrt(jnp.maximum(1.0 - q, 0.0))


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


def irwin_hall_normal(words: jax.Array, *, terms: int = 4) -> jax.Array:
    """uint32 words -> approximately standard normal float32 numbers, ``32 / (4 terms)`` per word.

    Each number is the sum of ``terms`` 4-bit digits of a word (Irwin-Hall of
    discrete uniforms on 0..15: mean ``7.5 terms``, variance ``85 terms / 4``),
    standardised: mean 0, variance 1. ``terms=4`` gives two numbers per word
    bounded by 3.25 and close to Gaussian; ``terms=2`` gives four, each
    triangular (bounded by 2.3), for noise that is smoothed afterwards, where
    a weighted sum of neighbours is Gaussian again. A dozen integer operations
    per word: for pixel noise this costs far less than `normal` (an inverse
    error function per word) or `rician`, and halves or quarters the random
    bits.

    Returns:
        float32 ``[32 // (4 * terms), *words.shape]``: the numbers from each
        word along the new leading axis (stacked there, not interleaved
        after the last axis, which costs XLA:CPU a strided copy).
    """
    if terms not in (2, 4):
        raise ValueError(f"terms must be 2 or 4, got {terms}")
    nibble = np.uint32(0x0F0F0F0F)
    pairs = (words & nibble) + ((words >> 4) & nibble)  # four bytes, each the sum of two digits (<= 30)
    byte = np.uint32(0xFF)
    if terms == 2:
        sums = [(pairs >> shift) & byte for shift in (0, 8, 16, 24)]
    else:
        sums = [(pairs & byte) + ((pairs >> 8) & byte), ((pairs >> 16) & byte) + (pairs >> 24)]
    mean, std = 7.5 * terms, math.sqrt(85.0 * terms / 4.0)
    return (jnp.stack(sums).astype(jnp.float32) - mean) * np.float32(1.0 / std)


def upsample_linear(x: jax.Array, factor: int, *, padded: bool = False) -> jax.Array:
    """Linear interpolation by an integer ``factor`` along the last two axes, pixel centres aligned.

    Output pixel ``i`` of an axis sits at input position ``(i + 0.5) / factor
    - 0.5``. With ``padded=False`` the output has ``factor * n`` pixels per
    axis and beyond the first and last input centres the edge value is kept:
    the same numbers as ``jax.image.resize(x, ..., method="linear")`` (up to
    rounding). With ``padded=True``, ``x`` carries one extra sample beyond
    each edge of the last two axes (``n + 2`` samples for ``factor * n``
    output pixels), which is used instead of repeating the edge: then every
    step is a slice of its input and XLA:CPU fuses it into its consumers,
    where the edge copies of ``padded=False`` cost a copy of the whole array.

    It is ``factor`` shifted weighted sums interleaved, a few operations per
    output pixel, where ``resize`` contracts with dense ``[out, in]`` weight
    matrices (a 512 -> 1024 upsampling costs it ~0.5 GFLOP per channel).
    Columns go first: interleaving along the last axis is the slow step on
    XLA:CPU, and done first it touches half the pixels.
    """
    for axis in (x.ndim - 1, x.ndim - 2):
        if not padded:
            x = _repeat_edges(x, axis)
        n = x.shape[axis] - 2
        previous, current, following = (jax.lax.slice_in_dim(x, i, i + n, axis=axis) for i in range(3))
        if factor == 1:
            x = current
            continue
        parts = []
        for j in range(factor):
            offset = (j + 0.5) / factor - 0.5  # in (-0.5, 0.5): towards the previous or the following centre
            neighbour = previous if offset < 0 else following
            parts.append(current + abs(offset) * (neighbour - current))
        stacked = jnp.stack(parts, axis=axis + 1)
        x = jnp.reshape(stacked, x.shape[:axis] + (n * factor,) + x.shape[axis + 1 :])
    return x


def _repeat_edges(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    return jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), x, jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)


def binomial_blur(x: jax.Array, *, padded: bool = False) -> jax.Array:
    """Separable ``[1, 2, 1] / 4`` smoothing of the last two axes.

    ``padded=False``: edges repeated, same shape out. ``padded=True``: ``x``
    has one extra sample beyond each edge of the last two axes, the output
    two fewer (slices only; see `upsample_linear`).
    """
    for axis in (x.ndim - 2, x.ndim - 1):
        if not padded:
            x = _repeat_edges(x, axis)
        n = x.shape[axis] - 2
        previous, current, following = (jax.lax.slice_in_dim(x, i, i + n, axis=axis) for i in range(3))
        x = 0.25 * (previous + following) + 0.5 * current
    return x


# --------------------------------------------------------------------------- #
# Physical space (mm, LPS): grids, rotated ellipsoids, smooth random fields
# --------------------------------------------------------------------------- #
def rotation_matrix(angles: jax.Array) -> jax.Array:
    """``Rz(c) @ Ry(b) @ Rx(a)`` for ``angles = (a, b, c)`` radians about the x, y, z axes: ``[3, 3]``."""
    a, b, c = angles[0], angles[1], angles[2]
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    rx = jnp.stack([one, zero, zero, zero, jnp.cos(a), -jnp.sin(a), zero, jnp.sin(a), jnp.cos(a)]).reshape(3, 3)
    ry = jnp.stack([jnp.cos(b), zero, jnp.sin(b), zero, one, zero, -jnp.sin(b), zero, jnp.cos(b)]).reshape(3, 3)
    rz = jnp.stack([jnp.cos(c), -jnp.sin(c), zero, jnp.sin(c), jnp.cos(c), zero, zero, zero, one]).reshape(3, 3)
    return rz @ ry @ rx


def rotated_ellipsoid_form(points: jax.Array, centre: jax.Array, semi_axes: jax.Array, rotation: jax.Array) -> jax.Array:
    """``|R^T (p - c) / semi|^2`` at each point ``[..., 3]``: 0 at the centre, 1 on the surface.

    ``rotation`` ``[3, 3]`` holds the ellipsoid's axes as columns, in world
    coordinates; ``semi_axes`` ``[3]`` are along those columns.
    """
    lead = (1,) * (points.ndim - 1)
    local = (points - jnp.reshape(centre, lead + (3,))) @ rotation
    return jnp.sum(jnp.square(local / jnp.reshape(semi_axes, lead + (3,))), axis=-1)


def wave_field_grid(shape: tuple[int, int, int], affine: jax.Array, frequencies: jax.Array, phases: jax.Array) -> jax.Array:
    """A smooth random field of unit variance at the voxel centres of a grid: ``sqrt(2/K) sum_k cos(w_k . p + phi_k)``.

    Random Fourier features: with ``w_k ~ N(0, I / l^2)`` and ``phi_k``
    uniform in ``[0, 2 pi)`` the field's covariance is ``exp(-|d|^2 / (2
    l^2))`` (in expectation over the draw). It is defined at every point in
    space, so one anatomy sampled on two grids shows the same texture.

    Args:
        shape: ``(z, y, x)``.
        affine: ``[4, 4]``, voxel ``(z, y, x, 1)`` -> position (mm).
        frequencies: ``[K, 3]`` angular frequencies (radians / mm).
        phases: ``[K]`` radians.

    Returns:
        float32 ``[*shape]``.

    On a grid ``p = o + z a + y b + x c`` each wave separates:
    ``cos(w.o + phi + z w.a + y w.b + x w.c) = Re(e^{i(w.o + phi + z w.a + y
    w.b)} e^{i x w.c})``, so the sum over waves is a ``[z y, 2K] @ [2K, x]``
    product of cosines and sines of the per-axis phases: no cosine per voxel
    per wave.
    """
    nz, ny, nx = shape
    steps = frequencies @ affine[:3, :3]  # [K, 3]: phase step per index along (z, y, x)
    start = frequencies @ affine[:3, 3] + phases  # [K]
    zy = (
        start[:, None, None]
        + steps[:, 0, None, None] * jnp.arange(nz, dtype=jnp.float32)[None, :, None]
        + steps[:, 1, None, None] * jnp.arange(ny, dtype=jnp.float32)[None, None, :]
    )  # [K, nz, ny]
    x = steps[:, 2, None] * jnp.arange(nx, dtype=jnp.float32)[None, :]  # [K, nx]
    left = jnp.concatenate([jnp.cos(zy), -jnp.sin(zy)], axis=0).reshape(2 * frequencies.shape[0], nz * ny)
    right = jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=0)
    field = jnp.matmul(left.T, right, precision=jax.lax.Precision.HIGHEST)
    return np.float32(math.sqrt(2.0 / frequencies.shape[0])) * field.reshape(nz, ny, nx)


def grid_ellipsoid_form(
    shape: tuple[int, int, int], affine: jax.Array, centre: jax.Array, semi_axes: jax.Array, rotation: jax.Array
) -> jax.Array:
    """`rotated_ellipsoid_form` at the voxel centres of a grid, ``[*shape]``, in two multiply-adds per voxel.

    With ``v(z, y) = S^-1 R^T (affine @ (z, y, 0, 1) - centre)`` and ``m =
    S^-1 R^T affine[:3, 2]`` the form at ``(z, y, x)`` is ``|v + x m|^2 =
    |v|^2 + 2 (v . m) x + |m|^2 x^2``: the ``[z, y]`` terms are computed
    once per row, not once per voxel.
    """
    nz, ny, nx = shape
    to_local = (rotation / semi_axes[None, :]).T  # [3, 3]: world offset -> normalised ellipsoid frame
    steps = to_local @ affine[:3, :3]  # columns: local step per index along (z, y, x)
    start = to_local @ (affine[:3, 3] - centre)
    v = (
        start[None, None, :]
        + jnp.arange(nz, dtype=jnp.float32)[:, None, None] * steps[None, None, :, 0]
        + jnp.arange(ny, dtype=jnp.float32)[None, :, None] * steps[None, None, :, 1]
    )  # [nz, ny, 3]
    m = steps[:, 2]
    x = jnp.arange(nx, dtype=jnp.float32)[None, None, :]
    row = jnp.sum(jnp.square(v), axis=-1)[..., None]
    slope = 2.0 * (v @ m)[..., None]
    return row + x * (slope + jnp.sum(jnp.square(m)) * x)
