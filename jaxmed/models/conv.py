"""Strided and transposed convolutions as pure functions, each in several implementations of one function.

Every layer is channels-last with ONE leading batch axis: ``(B, *spatial, C)``,
where the spatial rank (1, 2 or 3) is read from the kernel. A strided
down-sampling convolution and a transposed (up-sampling) convolution each come
in several *implementations* of one and the same function:

- ``"xla"``: the textbook op, ``lax.conv_general_dilated`` with strides, or
  ``lax.conv_transpose``; the reference the others are tested against.
- ``"s2d"`` / ``"subpixel"``: the stride is moved out of the convolution. A
  stride-``s`` convolution with kernel ``k`` equals space-to-depth by ``s``
  followed by a stride-1 convolution with kernel ``ceil(k / s)`` over ``s**N``
  times the channels. A stride-``s`` transposed convolution equals one stride-1
  convolution producing all ``s**N`` output phases as channels, each phase
  read at its own offset, then depth-to-space ("sub-pixel" convolution).
- ``"s2d_matmul"`` / ``"subpixel_matmul"``: the same, with the stride-1
  convolution written as patch extraction + one GEMM (im2col).
- ``"s2d_winograd"`` / ``"subpixel_winograd"``: the same, with the stride-1
  convolution (2 taps per axis for k = 2s) computed by Winograd's F(2, 2)
  algorithm: ``3**N`` GEMMs instead of ``4**N``.
- ``"auto"``: per layer, the one measured fastest on XLA:CPU
  (benchmarks/RESULTS.md).

Why: XLA:CPU computes the gradient of ``lax.conv_transpose`` about ten times
slower than PyTorch, and runs GEMMs far better than its convolution
gradients. All implementations take the *same* parameters, in the layout of
``flax.linen.Conv`` / ``flax.linen.ConvTranspose`` (``(*kernel, C_in, C_out)``,
``transpose_kernel=False``), with ``"SAME"`` padding; the weight re-mapping
happens inside the jitted function, so a checkpoint does not depend on the
implementation chosen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = ["DOWN_IMPLS", "UP_IMPLS", "conv_transpose", "depth_to_space", "space_to_depth", "strided_conv"]

DOWN_IMPLS = ("xla", "s2d", "s2d_matmul", "s2d_winograd", "auto")
UP_IMPLS = ("xla", "subpixel", "subpixel_matmul", "subpixel_winograd", "auto")


def _dimension_numbers(rank: int) -> tuple[str, str, str]:
    spatial = "DHW"[3 - rank :] if rank <= 3 else None
    if spatial is None:
        raise ValueError(f"spatial rank must be 1, 2 or 3, got {rank}")
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _as_tuple(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"expected {rank} values, got {value}")
    return value


def space_to_depth(x: Array, block: int | Sequence[int]) -> Array:
    """Moves ``block``-sized spatial tiles into channels.

    Args:
      x: ``(B, *spatial, C)``; each spatial size divisible by its block.
      block: tile size, one int or one per spatial axis.

    Returns:
      ``(B, *(spatial // block), prod(block) * C)``; the new channel index is
      ``(r_1, ..., r_N, c)`` in row-major order, ``r_i`` the offset in the tile.
    """
    rank = x.ndim - 2
    block = _as_tuple(block, rank)
    b, *spatial, c = x.shape
    if any(n % s for n, s in zip(spatial, block)):
        raise ValueError(f"spatial shape {tuple(spatial)} not divisible by block {block}")
    split = [b]
    for n, s in zip(spatial, block):
        split += [n // s, s]
    x = x.reshape(*split, c)
    # (B, n1, s1, n2, s2, ..., C) -> (B, n1, n2, ..., s1, s2, ..., C)
    perm = [0] + [1 + 2 * i for i in range(rank)] + [2 + 2 * i for i in range(rank)] + [1 + 2 * rank]
    x = x.transpose(perm)
    return x.reshape(b, *(n // s for n, s in zip(spatial, block)), math.prod(block) * c)


def depth_to_space(x: Array, block: int | Sequence[int]) -> Array:
    """Inverse of :func:`space_to_depth`.

    Args:
      x: ``(B, *spatial, prod(block) * C)``.
      block: tile size, one int or one per spatial axis.

    Returns:
      ``(B, *(spatial * block), C)``.
    """
    rank = x.ndim - 2
    block = _as_tuple(block, rank)
    b, *spatial, cb = x.shape
    if cb % math.prod(block):
        raise ValueError(f"{cb} channels not divisible by prod(block) = {math.prod(block)}")
    c = cb // math.prod(block)
    x = x.reshape(b, *spatial, *block, c)
    # (B, n1, ..., nN, s1, ..., sN, C) -> (B, n1, s1, n2, s2, ..., C)
    perm = [0]
    for i in range(rank):
        perm += [1 + i, 1 + rank + i]
    perm.append(1 + 2 * rank)
    x = x.transpose(perm)
    return x.reshape(b, *(n * s for n, s in zip(spatial, block)), c)


def _winograd_split(x: Array, axis: int) -> list[Array]:
    """Input transform of Winograd F(2, 2) along ``axis`` (length ``2T + 1``).

    Tile ``t`` covers inputs ``2t, 2t+1, 2t+2``; ``B^T = [[1, -1, 0], [0, 1, 0], [0, -1, 1]]``.
    """
    n = x.shape[axis]
    even0 = lax.slice_in_dim(x, 0, n - 1, stride=2, axis=axis)
    odd = lax.slice_in_dim(x, 1, n, stride=2, axis=axis)
    even1 = lax.slice_in_dim(x, 2, n, stride=2, axis=axis)
    return [even0 - odd, odd, even1 - odd]


def _winograd_input(x: Array, tiles: Sequence[int]) -> list[Array]:
    """The ``3**N`` transformed input tiles, each ``(B, *tiles, C)``, row-major over axes."""
    rank = x.ndim - 2
    x = jnp.pad(x, [(0, 0)] + [(0, 2 * t + 1 - n) for t, n in zip(tiles, x.shape[1:-1])] + [(0, 0)])
    u = [x]
    for axis in range(1, rank + 1):
        u = [part for piece in u for part in _winograd_split(piece, axis)]
    return u


def _winograd_filter(kernel: Array, rank: int) -> list[Array]:
    """The ``3**N`` transformed filters, each ``(C_in, C_out)``: G = [[1, 0], [1, 1], [0, 1]]."""
    g = [kernel]
    for _ in range(rank):
        g = [part for piece in g for part in (piece[0], piece[0] + piece[1], piece[1])]
    return g


def _winograd_output(m: list[Array], first_spatial_axis: int) -> Array:
    """A^T = [[1, 1, 0], [0, 1, 1]] along each spatial axis, interleaving the two outputs.

    Consecutive triples of ``m`` vary along the last axis, so it goes first.
    """
    rank = round(math.log(len(m), 3))
    for axis in reversed(range(first_spatial_axis, first_spatial_axis + rank)):
        merged = []
        for i in range(0, len(m), 3):
            m0, m1, m2 = m[i : i + 3]
            y = jnp.stack([m0 + m1, m1 + m2], axis=axis + 1)
            merged.append(y.reshape(*y.shape[:axis], 2 * y.shape[axis], *y.shape[axis + 2 :]))
        m = merged
    return m[0]


def _conv2_winograd(x: Array, kernel: Array) -> Array:
    """Stride-1 VALID convolution with a kernel of 2 taps per axis, Winograd F(2, 2).

    Per axis, two outputs of a two-tap filter take 3 multiplications instead
    of 4 (Lavin & Gray, 2016): ``y0 = m0 + m1, y1 = m1 + m2`` with
    ``m0 = (x0 - x1) g0, m1 = x1 (g0 + g1), m2 = (x2 - x1) g1``. In N dimensions
    that is ``3**N`` GEMMs over the tiles instead of ``4**N``; the transforms
    are additions only, so the result equals direct convolution up to float
    rounding. The transforms are linear, so autodiff of this function is a
    Winograd algorithm too and the backward pass saves the same share of
    multiplications. (A hand-written backward pass that avoided XLA's
    transposing copies was 4x slower overall: XLA:CPU's GEMM library runs the
    long-contraction, small-output GEMMs it needs poorly; see
    benchmarks/RESULTS.md.)

    Args:
      x: ``(B, *spatial, C_in)``.
      kernel: ``(2, ..., 2, C_in, C_out)``.

    Returns:
      ``(B, *(spatial - 1), C_out)``.

    References:
      A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural
      Networks", CVPR 2016.
    """
    rank = x.ndim - 2
    out = [n - 1 for n in x.shape[1:-1]]
    tiles = [-(-o // 2) for o in out]
    g = _winograd_filter(kernel, rank)
    m = [jnp.einsum("...c,co->...o", a, b) for a, b in zip(_winograd_input(x, tiles), g)]
    return _winograd_output(m, 1)[(slice(None), *(slice(0, o) for o in out))]


def _conv_stride1(x: Array, kernel: Array, *, method: str) -> Array:
    """Stride-1 VALID convolution (cross-correlation), channels-last.

    ``method``: ``"xla"`` (``lax.conv_general_dilated``), ``"matmul"`` (im2col
    + one GEMM) or ``"winograd"`` (2-tap kernels; other kernels use ``"xla"``).
    """
    rank = x.ndim - 2
    taps = kernel.shape[:rank]
    if method == "winograd" and all(t == 2 for t in taps):
        return _conv2_winograd(x, kernel)
    if method in ("xla", "winograd"):
        return lax.conv_general_dilated(
            x, kernel, (1,) * rank, "VALID", dimension_numbers=_dimension_numbers(rank)
        )
    out = [n - t + 1 for n, t in zip(x.shape[1:-1], taps)]
    # im2col: channel index (t_1, ..., t_N, c_in), matching kernel.reshape below.
    patches = [
        x[(slice(None), *(slice(o, o + n) for o, n in zip(offset, out)), slice(None))]
        for offset in itertools.product(*(range(t) for t in taps))
    ]
    patches = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
    return jnp.einsum("...k,ko->...o", patches, kernel.reshape(-1, kernel.shape[-1]))


_STRIDE1_METHOD = {
    "s2d": "xla", "s2d_matmul": "matmul", "s2d_winograd": "winograd",
    "subpixel": "xla", "subpixel_matmul": "matmul", "subpixel_winograd": "winograd",
}


def _auto_down(c_in: int, strides: Sequence[int]) -> str:
    """The down-sampling implementation measured fastest on XLA:CPU (benchmarks/RESULTS.md).

    Winograd on the space-to-depth form for wide 1D/2D layers. XLA's own
    strided convolution where the GEMMs would be thin (few input channels,
    e.g. the first layer of an image network) and in 3D (not measured; 27
    GEMMs per Winograd layer): there it is as fast and compiles much faster.
    """
    if len(strides) > 2 or c_in * math.prod(strides) < 64:
        return "xla"
    return "s2d_winograd"


def _auto_up(c_in: int, c_out: int, strides: Sequence[int]) -> str:
    """The up-sampling implementation measured fastest on XLA:CPU (benchmarks/RESULTS.md).

    Sub-pixel im2col + one GEMM; for few output channels (the last layer of
    an image network), where that GEMM would have only ``prod(strides) *
    c_out`` columns, Winograd if the layer is wide enough to be worth its
    compile time. Never ``"xla"``: XLA:CPU's transposed-convolution gradient
    is ten times slower than these.
    """
    if len(strides) <= 2 and c_out * math.prod(strides) < 16 and c_in >= 16:
        return "subpixel_winograd"
    return "subpixel_matmul"


def _same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """``"SAME"`` padding of a strided convolution, as XLA computes it."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def strided_conv(
    x: Array, kernel: Array, *, strides: int | Sequence[int], impl: str = "xla"
) -> Array:
    """Strided convolution with ``"SAME"`` padding (``flax.linen.Conv`` semantics).

    Args:
      x: ``(B, *spatial, C_in)``.
      kernel: ``(*k, C_in, C_out)``.
      strides: one int or one per spatial axis.
      impl: one of :data:`DOWN_IMPLS`; all give the same function.

    Returns:
      ``(B, *ceil(spatial / strides), C_out)``.
    """
    rank = x.ndim - 2
    strides = _as_tuple(strides, rank)
    k = kernel.shape[:rank]
    if impl == "auto":
        impl = _auto_down(kernel.shape[-2], strides)
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, strides, "SAME", dimension_numbers=_dimension_numbers(rank)
        )
    if impl not in DOWN_IMPLS:
        raise ValueError(f"unknown down-sampling impl {impl!r}; expected one of {DOWN_IMPLS}")
    spatial = x.shape[1:-1]
    taps = [-(-kk // s) for kk, s in zip(k, strides)]
    pads = []
    for n, kk, s, t in zip(spatial, k, strides, taps):
        lo, _ = _same_padding(n, kk, s)
        out = -(-n // s)
        # Enough padding for out + t - 1 whole tiles starting at -lo.
        pads.append((lo, s * (out + t - 1) - n - lo))
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    y = space_to_depth(x, strides)
    # w2[a_1.., (r_1.., c_in), c_out] = w[s a_1 + r_1, ..., c_in, c_out] (0 past the kernel).
    kernel = jnp.pad(kernel, [(0, s * t - kk) for kk, s, t in zip(k, strides, taps)] + [(0, 0)] * 2)
    split = []
    for s, t in zip(strides, taps):
        split += [t, s]
    c_in, c_out = kernel.shape[-2:]
    kernel = kernel.reshape(*split, c_in, c_out)
    perm = [2 * i for i in range(rank)] + [2 * i + 1 for i in range(rank)] + [2 * rank, 2 * rank + 1]
    kernel = kernel.transpose(perm).reshape(*taps, math.prod(strides) * c_in, c_out)
    return _conv_stride1(y, kernel, method=_STRIDE1_METHOD[impl])


def _transpose_phases(k: int, s: int) -> tuple[int, list[int], list[int]]:
    """Per-phase tap layout of a ``"SAME"`` transposed convolution along one axis.

    Output ``o = s m + r`` is ``sum_t w[k0_r + s t] x[m + d0_r + t]``.

    Returns:
      ``(taps, k0, d0)`` with ``taps = ceil(k / s)``.
    """
    pad_a = k - 1 if s > k - 1 else -(-(k + s - 2) // 2)  # lax._conv_transpose_padding
    k0 = [(pad_a - r) % s for r in range(s)]
    d0 = [(r + k0[r] - pad_a) // s for r in range(s)]
    return -(-k // s), k0, d0


def conv_transpose(
    x: Array, kernel: Array, *, strides: int | Sequence[int], impl: str = "xla"
) -> Array:
    """Transposed convolution with ``"SAME"`` padding (``flax.linen.ConvTranspose``).

    Args:
      x: ``(B, *spatial, C_in)``.
      kernel: ``(*k, C_in, C_out)`` (``transpose_kernel=False`` layout).
      strides: one int or one per spatial axis.
      impl: one of :data:`UP_IMPLS`; all give the same function.

    Returns:
      ``(B, *(spatial * strides), C_out)``.
    """
    rank = x.ndim - 2
    strides = _as_tuple(strides, rank)
    k = kernel.shape[:rank]
    if impl == "auto":
        impl = _auto_up(kernel.shape[-2], kernel.shape[-1], strides)
    if impl == "xla":
        return lax.conv_transpose(
            x, kernel, strides, "SAME", dimension_numbers=_dimension_numbers(rank)
        )
    if impl not in UP_IMPLS:
        raise ValueError(f"unknown up-sampling impl {impl!r}; expected one of {UP_IMPLS}")
    layouts = [_transpose_phases(kk, s) for kk, s in zip(k, strides)]
    taps = [lay[0] for lay in layouts]
    # One kernel holding every phase: (t_1.., c_in, (r_1.., c_out)).
    w = kernel
    for axis in reversed(range(rank)):
        t, k0, _ = layouts[axis]
        s = strides[axis]
        w = jnp.pad(w, [(0, 0)] * axis + [(0, s * t + s)] + [(0, 0)] * (w.ndim - axis - 1))
        index = np.array([[k0[r] + s * j for j in range(t)] for r in range(s)])
        index = np.where(index < k[axis], index, w.shape[axis] - 1)  # the last entry is a zero
        w = jnp.take(w, index, axis=axis)  # axis -> (s, t)
    c_in, c_out = kernel.shape[-2:]
    perm = [2 * i + 1 for i in range(rank)] + [2 * rank] + [2 * i for i in range(rank)] + [2 * rank + 1]
    w = w.transpose(perm).reshape(*taps, c_in, math.prod(strides) * c_out)
    spatial = x.shape[1:-1]
    pads = [
        (max(0, -min(d0)), max(0, max(d0) + t - 1)) for (t, _, d0) in layouts
    ]
    y = _conv_stride1(jnp.pad(x, [(0, 0), *pads, (0, 0)]), w, method=_STRIDE1_METHOD[impl])
    y = y.reshape(*y.shape[:-1], *strides, c_out)
    # Interleave axis by axis: phase r of axis i is read from offset d0_r + lo.
    for axis in range(rank):
        _, _, d0 = layouts[axis]
        lo = pads[axis][0]
        n = spatial[axis]
        # The phase axes of earlier spatial axes are consumed: this one is at 1 + rank.
        parts = [
            lax.slice_in_dim(
                lax.index_in_dim(y, r, axis=1 + rank, keepdims=False),
                d0[r] + lo,
                d0[r] + lo + n,
                axis=1 + axis,
            )
            for r in range(strides[axis])
        ]
        y = jnp.stack(parts, axis=2 + axis)
        y = y.reshape(*y.shape[: 1 + axis], n * strides[axis], *y.shape[3 + axis :])
    return y
