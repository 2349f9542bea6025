"""3D volume -> stack of 2D slices, remembering where each slice came from.

Which slices are kept depends on the data (how much foreground each holds), so
this runs on the host with numpy, once per volume, before batching; the
transforms that follow are jnp.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Slices", "slice_volume"]


class Slices(NamedTuple):
    """2D slices cut from one volume.

    Attributes:
        images: float32 ``[N, H, W]``, the kept slices in increasing index order.
        indices: int64 ``[N]``, the index of each slice along the cut axis of
            the volume.
    """

    images: np.ndarray
    indices: np.ndarray


def slice_volume(
    volume: Any,
    *,
    axis: int = 0,
    min_foreground: float = 0.0,
    threshold: float = 0.0,
    step: int = 1,
) -> Slices:
    """Cuts a 3D volume into 2D slices along one axis.

    Each slice keeps the other two axes in their original order: for a
    :class:`jaxmed.io.Volume` (axes ``(z, y, x)``), ``axis=0`` gives ``(y, x)``
    slices (axial, for an axially acquired scan), ``axis=1`` gives ``(z, x)``
    and ``axis=2`` gives ``(z, y)``. No flips are made.

    Args:
        volume: a :class:`jaxmed.io.Volume` (its ``.array`` is used) or any
            3D array (numpy or jax).
        axis: the axis to slice along, 0, 1 or 2 (negative counts from the end).
        min_foreground: keep a slice only if the fraction of its pixels above
            ``threshold`` is at least this (in [0, 1]; 0 keeps every slice).
        threshold: intensity above which a pixel counts as foreground, in the
            volume's units.
        step: keep every ``step``-th slice index (``0, step, 2 step, ...``)
            before the foreground test.

    Returns:
        :class:`Slices` ``(images [N, H, W] float32, indices [N] int64)``;
        ``N`` may be 0.

    Raises:
        ValueError: the array is not 3D, holds NaN or infinity, or an option is
            out of range; the message names ``volume.source`` when there is one.
    """
    source = getattr(volume, "source", None)
    where = f"{source}: " if source else ""
    array = np.asarray(getattr(volume, "array", volume), dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{where}expected a 3D volume, got an array of shape {array.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"{where}axis must be in [-3, 3), got {axis}")
    if not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be in [0, 1], got {min_foreground}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where}volume holds NaN or infinite values")
    stack = np.moveaxis(array, axis, 0)
    indices = np.arange(0, stack.shape[0], step, dtype=np.int64)
    if min_foreground > 0.0:
        fraction = np.mean(stack[indices] > threshold, axis=(1, 2))
        indices = indices[fraction >= min_foreground]
    return Slices(images=np.ascontiguousarray(stack[indices]), indices=indices)
