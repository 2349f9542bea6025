"""The `Volume` every reader returns, and the errors readers raise.

Geometry convention (the one place it is stated):

* ``Volume.array`` is float32 with axes ``(z, y, x)``. For DICOM, ``x`` is the
  column index within a slice, ``y`` the row index and ``z`` the slice (or
  frame) index, ordered so that position along the slice normal increases. For
  NIfTI, ``(z, y, x)`` is nibabel's ``(k, j, i)``.
* ``Volume.affine`` is a 4x4 float64 matrix that maps a voxel index
  ``(z, y, x, 1)`` to a position ``(x_p, y_p, z_p, 1)`` in millimetres in the
  DICOM patient coordinate system, LPS: +x_p towards the patient's Left, +y_p
  Posterior, +z_p Superior (head).
* ``Volume.spacing`` is the length of the affine's first three columns, i.e.
  the voxel size in millimetres along ``(z, y, x)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["ImageReadError", "ReadProblem", "Volume"]


# eq=False: equality of numpy arrays is elementwise, so a generated __eq__
# would raise; compare `array` and `affine` explicitly instead.
@dataclass(frozen=True, eq=False)
class Volume:
    """A scalar image volume on a regular grid, in patient coordinates.

    Attributes:
        array: float32 ``[z, y, x]``; a single 2D image has ``z == 1``. Stored
            values are the modality values (rescale slope/intercept applied:
            Hounsfield units for CT, arbitrary units for MR).
        spacing: voxel size in mm along ``(z, y, x)``.
        affine: float64 ``[4, 4]``, voxel index ``(z, y, x, 1)`` -> patient
            position in mm, LPS (see the module docstring).
        modality: DICOM modality (``"CT"``, ``"MR"``, ...), or ``""`` if unknown
            (always ``""`` for NIfTI).
        series_uid: SeriesInstanceUID, or None (NIfTI, or absent).
        instance_uids: SOPInstanceUID of each file the volume was read from,
            in the order the files were read (series: slice order).
        source: the file or folder the volume came from.
        notes: assumptions the reader had to make (missing positions, pixel
            spacing or orientation; files skipped), empty when none.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str
    series_uid: str | None
    instance_uids: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.array.ndim != 3:
            raise ValueError(
                f"{self.source}: Volume.array must be 3D (z, y, x), got shape {self.array.shape}"
            )
        if self.affine.shape != (4, 4):
            raise ValueError(f"{self.source}: Volume.affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` size of the array."""
        return tuple(int(n) for n in self.array.shape)


class ImageReadError(ValueError):
    """A file or folder could not be read as an image.

    ``str(err)`` is ``"<path>: <problem>"``.

    Attributes:
        path: the file or folder at fault.
        problem: what is wrong with it, in words.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class ReadProblem:
    """A path that could not be read, as collected by batch readers."""

    path: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem}
