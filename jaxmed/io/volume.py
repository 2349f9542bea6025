"""The `Volume` every reader returns, the errors and warnings readers raise, and `to_greyscale`.

Geometry and intensity convention (the one place it is stated):

* ``Volume.array`` is float32 with axes ``(z, y, x)`` for greyscale images and
  ``(z, y, x, c)`` for colour images, channels last, ``c == 3`` (R, G, B). For
  DICOM, ``x`` is the column index within a slice, ``y`` the row index and
  ``z`` the slice (or frame) index, ordered so that position along the slice
  normal increases; a multi-frame colour file (ultrasound cine) is
  ``(frames, y, x, 3)``. For NIfTI, ``(z, y, x)`` is nibabel's ``(k, j, i)``.
* ``Volume.affine`` is a 4x4 float64 matrix that maps a voxel index
  ``(z, y, x, 1)`` to a position ``(x_p, y_p, z_p, 1)`` in millimetres in the
  DICOM patient coordinate system, LPS: +x_p towards the patient's Left, +y_p
  Posterior, +z_p Superior (head).
* ``Volume.spacing`` is the length of the affine's first three columns, i.e.
  the voxel size in millimetres along ``(z, y, x)``. It is never 0: when the
  file gives no spacing for an axis, or gives 0 (radiographs often store
  PixelSpacing 0), the spacing is **unknown**: 1 mm is put in the affine so
  that nothing downstream divides by 0, ``Volume.spacing_known`` is False for
  that axis, a note says so and the reader warns (`UnknownSpacingWarning`,
  naming the file). Millimetre measurements along such an axis are
  meaningless; index-space work is fine.
* Greyscale values are the modality values: the DICOM modality LUT (rescale
  slope/intercept or Modality LUT Sequence) applied, i.e. Hounsfield units for
  CT and arbitrary units for MR. **Higher always means brighter**:
  MONOCHROME1 images (radiographs, where the stored minimum is white) are
  inverted after the modality LUT as ``v' = (lo + hi) - v``, where ``lo..hi``
  is the range of values the modality LUT can output (the stored-value range
  ``0..2**BitsStored - 1``, or its signed twin, mapped through the rescale;
  for a Modality LUT Sequence ``0..2**bits - 1``). This is the output range
  pydicom documents for ``apply_modality_lut`` and uses in
  ``apply_windowing``; pydicom's own functions never invert MONOCHROME1
  (``apply_voi_lut`` keeps its sense). The inverted values keep that range
  and do not depend on the image content, unlike ``max - v`` over the
  pixels, which ``apply_presentation_lut`` uses for an INVERSE shape and
  which would invert the slices of one series differently.
  ``Volume.photometric`` keeps "MONOCHROME1" and a note records the
  inversion.
* With ``voi=True`` (`jaxmed.io.read_image`, `jaxmed.io.read_series`) the
  file's VOI LUT or first window is applied to the modality values as
  pydicom's ``apply_voi_lut`` does (VOI LUT Sequence preferred over
  WindowCenter/WindowWidth), and MONOCHROME1 is inverted afterwards over the
  VOI output range. The default is ``voi=False``: modality values.
* Colour values are the stored sample values after pydicom's photometric
  conversion to RGB: YBR_FULL and YBR_FULL_422 through
  ``pydicom.pixels.convert_color_space``, PALETTE COLOR through
  ``pydicom.pixels.apply_color_lut`` (so 8- or 16-bit, as the palette's
  entries are); YBR_ICT/YBR_RCT are undone by the JPEG 2000 decoder. No
  modality LUT or VOI applies to colour images. `to_greyscale` makes one
  channel when a caller needs it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["ImageReadError", "ReadProblem", "UnknownSpacingWarning", "Volume", "short_error", "to_greyscale"]

# ITU-R BT.601 luma weights for (R, G, B); the same weights as DICOM's YBR_FULL
# (PS3.3 C.7.6.3.1.2), so Y of a YBR_FULL image is recovered exactly up to rounding.
BT601_LUMA = (0.299, 0.587, 0.114)
_COLOUR_CHANNELS = 3
_MAX_PROBLEM_CHARS = 300


# eq=False: equality of numpy arrays is elementwise, so a generated __eq__
# would raise; compare `array` and `affine` explicitly instead.
@dataclass(frozen=True, eq=False)
class Volume:
    """An image volume on a regular grid, in patient coordinates.

    Attributes:
        array: float32 ``[z, y, x]`` (greyscale) or ``[z, y, x, 3]`` (colour,
            RGB, channels last); a single 2D image has ``z == 1``. Greyscale
            values are modality values (Hounsfield units for CT), higher is
            brighter (MONOCHROME1 inverted); see the module docstring.
        spacing: voxel size in mm along ``(z, y, x)``; 1.0 where unknown (see
            `spacing_known`).
        affine: float64 ``[4, 4]``, voxel index ``(z, y, x, 1)`` -> patient
            position in mm, LPS (see the module docstring).
        modality: DICOM modality (``"CT"``, ``"MR"``, ...), or ``""`` if unknown
            (always ``""`` for NIfTI).
        series_uid: SeriesInstanceUID, or None (NIfTI, or absent).
        instance_uids: SOPInstanceUID of each file the volume was read from,
            in the order the files were read (series: slice order).
        source: the file or folder the volume came from.
        notes: assumptions the reader had to make (missing positions, pixel
            spacing or orientation; files skipped; MONOCHROME1 inverted; VOI
            applied; converted to greyscale), empty when none.
        photometric: the PhotometricInterpretation stored in the file(s)
            (``"MONOCHROME2"``, ``"MONOCHROME1"``, ``"RGB"``,
            ``"YBR_FULL_422"``, ``"PALETTE COLOR"``, ...), several joined by
            "/"; ``""`` for NIfTI. It says where the values came from; whether
            the array has channels is `channels`.
        spacing_known: for each axis ``(z, y, x)``, whether the spacing comes
            from the file (False: 1 mm assumed). For a single slice the z
            spacing only places the slice's thickness in the affine.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str
    series_uid: str | None
    instance_uids: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()
    photometric: str = ""
    spacing_known: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self):
        colour = self.array.ndim == 4 and self.array.shape[-1] == _COLOUR_CHANNELS
        if self.array.ndim != 3 and not colour:
            raise ValueError(
                f"{self.source}: Volume.array must be (z, y, x) or (z, y, x, 3), got shape {self.array.shape}"
            )
        if self.affine.shape != (4, 4):
            raise ValueError(f"{self.source}: Volume.affine must be 4x4, got {self.affine.shape}")
        if len(self.spacing_known) != 3:
            raise ValueError(f"{self.source}: Volume.spacing_known needs one flag per axis (z, y, x)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` size of the grid (without the channel axis of a colour array)."""
        return tuple(int(n) for n in self.array.shape[:3])

    @property
    def channels(self) -> int:
        """1 for greyscale, 3 for colour (RGB, the last axis of `array`)."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[-1])

    @property
    def is_colour(self) -> bool:
        """True when `array` is ``(z, y, x, 3)`` RGB."""
        return self.channels > 1


def to_greyscale(volume: Volume) -> Volume:
    """One channel from a colour volume, by ITU-R BT.601 luma.

    ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, the weights of DICOM's
    YBR_FULL), in the units of the colour values (0..255 for 8-bit images).
    Nothing else changes: geometry, `photometric` (still the file's) and UIDs
    are kept, and a note records the conversion.

    Args:
        volume: any volume.

    Returns:
        `volume` itself if it is already greyscale, else a new volume with a
        float32 ``[z, y, x]`` array.
    """
    if not volume.is_colour:
        return volume
    luma = volume.array @ np.asarray(BT601_LUMA, dtype=np.float32)
    note = "converted from RGB to greyscale: ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B"
    return dataclasses.replace(volume, array=luma.astype(np.float32, copy=False), notes=(*volume.notes, note))


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


def short_error(err: BaseException) -> str:
    """An exception as one line of at most 300 characters, for `ImageReadError` problems."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 3] + "..."


class UnknownSpacingWarning(UserWarning):
    """A volume was read without a usable pixel or slice spacing (1 mm assumed).

    The message names the file or folder. Batch readers can silence it with
    ``warnings.simplefilter("ignore", UnknownSpacingWarning)``: the same fact
    is in ``Volume.notes`` and ``Volume.spacing_known``.
    """


@dataclass(frozen=True)
class ReadProblem:
    """A path that could not be read, as collected by batch readers."""

    path: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem}
