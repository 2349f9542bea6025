"""Slice geometry: from DICOM orientation/position attributes to an affine.

Pure numpy functions with no file access. The convention (axes ``(z, y, x)``,
LPS patient coordinates in mm) is stated in `jaxmed.io.volume`.

DICOM facts used here (PS3.3 C.7.6.2.1.1): ImageOrientationPatient holds the
direction cosines of the first row (direction of increasing column index,
our ``x``) and of the first column (direction of increasing row index, our
``y``); PixelSpacing is ``(row spacing, column spacing)``, i.e. the distance
between rows (along ``y``) then between columns (along ``x``);
ImagePositionPatient is the centre of the first transmitted pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["StackGeometry", "axis_codes", "slice_affine", "slice_normal", "stack_geometry"]

# Direction cosines are stored as DS strings with ~6 digits; 1e-3 (about
# 0.06 degrees) separates rounding from a genuinely different orientation.
ORIENTATION_ATOL = 1e-3
# Positions are DS strings rounded to ~1e-3 mm or better.
POSITION_ATOL_MM = 1e-3


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice, ``row_cosine x column_cosine``.

    Args:
        orientation: the 6 values of ImageOrientationPatient.

    Returns:
        ``[3]`` float64 unit vector in LPS; for an axial slice ``(0, 0, 1)``,
        pointing towards the head.
    """
    o = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    return normal / np.linalg.norm(normal)


def slice_affine(
    orientation: Sequence[float],
    origin: Sequence[float],
    pixel_spacing: Sequence[float],
    step: Sequence[float],
) -> np.ndarray:
    """Affine of a stack of parallel slices.

    Args:
        orientation: the 6 values of ImageOrientationPatient.
        origin: ``[3]`` LPS mm, ImagePositionPatient of the first slice.
        pixel_spacing: PixelSpacing, ``(row spacing, column spacing)`` in mm.
        step: ``[3]`` LPS mm, from one slice's position to the next one's.

    Returns:
        ``[4, 4]`` float64, voxel ``(z, y, x, 1)`` -> LPS mm.
    """
    o = np.asarray(orientation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(step, dtype=np.float64)
    affine[:3, 1] = o[3:] * float(pixel_spacing[0])
    affine[:3, 2] = o[:3] * float(pixel_spacing[1])
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


class StackGeometry(NamedTuple):
    """Where each slice goes and the resulting grid.

    Attributes:
        order: ``[n]`` int, slice ``order[k]`` of the input is slice ``k`` of
            the volume (increasing position along the normal).
        affine: ``[4, 4]`` float64, voxel ``(z, y, x, 1)`` -> LPS mm.
    """

    order: np.ndarray
    affine: np.ndarray


class GeometryError(ValueError):
    """Slices do not form a regular grid; the message says why."""


def stack_geometry(
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    *,
    labels: Sequence[str],
    spacing_rtol: float = 0.01,
) -> StackGeometry:
    """Sorts parallel slices along their normal and checks they are evenly spaced.

    The slice spacing comes from the positions (never from SliceThickness):
    the step is ``(last - first) / (n - 1)`` after sorting by
    ``position . normal``. It may have an in-plane component (gantry tilt);
    the affine then is sheared, which is the true geometry.

    Args:
        positions: ``[n, 3]`` LPS mm, ImagePositionPatient of each slice, n >= 2.
        orientation: the 6 values of ImageOrientationPatient, shared by all.
        pixel_spacing: ``(row spacing, column spacing)`` in mm.
        labels: ``[n]`` names of the slices for error messages.
        spacing_rtol: a gap may differ from the median gap by this fraction
            (plus 1e-3 mm for the rounding of stored positions).

    Returns:
        The slice order and the affine.

    Raises:
        GeometryError: two slices at one position, uneven gaps (a missing
            slice), or positions that do not lie on a line; the message lists
            the positions and slices involved.
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = positions.shape[0]
    if n < 2:
        raise ValueError(f"stack_geometry needs at least 2 slices, got {n}")
    depth = positions @ slice_normal(orientation)
    order = np.argsort(depth, kind="stable")
    depth_sorted = depth[order]
    gaps = np.diff(depth_sorted)

    duplicates = np.flatnonzero(gaps <= POSITION_ATOL_MM)
    if duplicates.size:
        pairs = "; ".join(
            f"{labels[order[k]]} and {labels[order[k + 1]]} at {depth_sorted[k]:.3f} mm"
            for k in duplicates[:10]
        )
        more = f" (and {duplicates.size - 10} more)" if duplicates.size > 10 else ""
        raise GeometryError(
            f"{duplicates.size} pair(s) of slices share a position along the slice normal: "
            f"{pairs}{more}. Either a file is duplicated or the series holds several images "
            "per position (echoes, time points, b-values); split it before reading"
        )

    typical = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - typical) > spacing_rtol * typical + POSITION_ATOL_MM)
    if uneven.size:
        listed = "; ".join(
            f"{gaps[k]:.4g} mm between {labels[order[k]]} ({depth_sorted[k]:.3f} mm) and "
            f"{labels[order[k + 1]]} ({depth_sorted[k + 1]:.3f} mm)"
            + (f", about {round(gaps[k] / typical) - 1} slice(s) missing" if gaps[k] > 1.5 * typical else "")
            for k in uneven[:10]
        )
        more = f" (and {uneven.size - 10} more)" if uneven.size > 10 else ""
        raise GeometryError(
            f"uneven slice spacing: the usual gap is {typical:.4g} mm but {uneven.size} gap(s) differ: "
            f"{listed}{more}. Positions along the normal (mm): "
            + ", ".join(f"{d:.3f}" for d in depth_sorted[:50])
            + (" ..." if n > 50 else "")
        )

    ordered = positions[order]
    step = (ordered[-1] - ordered[0]) / (n - 1)
    predicted = ordered[0] + np.arange(n)[:, None] * step
    off_line = np.linalg.norm(ordered - predicted, axis=1)
    # A tenth of a pixel of in-plane misplacement is invisible; more means the
    # slices belong to different stacks.
    tol = 0.1 * float(min(pixel_spacing)) + POSITION_ATOL_MM
    if float(off_line.max()) > tol:
        k = int(np.argmax(off_line))
        raise GeometryError(
            f"slice positions do not lie on a line: {labels[order[k]]} is {off_line[k]:.3g} mm "
            "away from the line through the first and last slice (several stacks in one series?)"
        )
    affine = slice_affine(orientation, ordered[0], pixel_spacing, step)
    return StackGeometry(order=order, affine=affine)


_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def axis_codes(affine: np.ndarray) -> str:
    """Patient direction of each voxel axis ``(z, y, x)``, e.g. ``"SPL"``.

    Each letter is the LPS direction (L/R, P/A, S/I) closest to the direction
    in which that voxel index increases. A DICOM axial series read by jaxmed
    is ``"SPL"``; the MNI152 NIfTI template is ``"SAR"``.

    Args:
        affine: ``[4, 4]``, voxel ``(z, y, x, 1)`` -> LPS mm.

    Returns:
        Three letters, one per axis ``(z, y, x)``.
    """
    codes = []
    for column in np.asarray(affine, dtype=np.float64)[:3, :3].T:
        world = int(np.argmax(np.abs(column)))
        codes.append(_AXIS_LETTERS[world][0 if column[world] > 0 else 1])
    return "".join(codes)
