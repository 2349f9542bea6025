"""Chest radiographs from files: read, checked, normalised and put on a square working grid.

Shared by the tasks that read radiographs (``jaxmed chest predict``,
``jaxmed vlm ask``). A DICOM radiograph is read with :mod:`jaxmed.io`
(``voi=True``: the file's window, MONOCHROME1 inverted so higher =
brighter), checked (one greyscale frame, a frontal view, large enough),
normalised (:func:`normalise_radiograph`), padded to a square (centred,
0 = air) and resampled onto the working grid (:func:`prepare_radiograph`).
Only the ViewPosition header field is read besides the pixels; no
patient-identifying field is.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.io.read import read_image
from jaxmed.io.volume import ImageReadError

Array = jax.Array

__all__ = ["LATERAL_VIEWS", "MIN_PIXELS", "Prepared", "normalise_radiograph", "prepare_radiograph"]

MIN_PIXELS = 256  # shortest side a radiograph must have
LATERAL_VIEWS = ("LL", "RL", "LATERAL")  # DICOM ViewPosition (0018,5101) codes of lateral projections
_PERCENTILES = (0.5, 99.5)
_PERCENTILE_STRIDE = 4  # pixels between the samples the percentiles are taken from, per axis


def normalise_radiograph(image: Array) -> Array:
    """Intensities mapped to ``[0, 1]`` by the image's 0.5th and 99.5th percentiles (clipped outside).

    The percentiles are taken on every 4th pixel of every 4th row, which is
    plenty at radiograph sizes and keeps the sort small.

    Args:
      image: ``[H, W]`` or ``[H, W, 1]``, higher = brighter (as :mod:`jaxmed.io`
        reads a radiograph).

    Returns:
      ``[H, W, 1]`` float32 in ``[0, 1]``; a constant image gives 0.
    """
    image = jnp.asarray(image, jnp.float32)
    if image.ndim == 2:
        image = image[..., None]
    sample = image[::_PERCENTILE_STRIDE, ::_PERCENTILE_STRIDE, 0]
    lo, hi = jnp.percentile(sample, jnp.asarray(_PERCENTILES))
    return jnp.clip((image - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0) * (hi > lo)


class Prepared(NamedTuple):
    """A radiograph on the working grid and how it got there.

    Attributes:
      image: ``[G, G, 1]`` float32 in [0, 1], normalised.
      native_shape: ``(rows, columns)`` of the file's image.
      pad: ``(top, left)`` rows and columns of padding added to make it square.
      factor: native pixels per working-grid pixel.
    """

    image: np.ndarray
    native_shape: tuple[int, int]
    pad: tuple[int, int]
    factor: float


def _view_position(path: str) -> str:
    """The DICOM ViewPosition of a file ("" when absent or not DICOM); no other header field is kept."""
    from jaxmed.io.dicom import open_dataset
    from jaxmed.io.nifti import is_nifti_path

    if is_nifti_path(path):
        return ""
    try:
        ds = open_dataset(path, stop_before_pixels=True)
    except ImageReadError:
        return ""
    return str(ds.get("ViewPosition", "") or "").strip().upper()


def prepare_radiograph(path: str | os.PathLike, *, grid: int) -> tuple[Prepared, list[str]]:
    """Reads and checks one radiograph and puts it on the working grid.

    Args:
      path: a DICOM (or NIfTI) file.
      grid: the working grid's side.

    Returns:
      ``(prepared, notes)``: the radiograph and notes for the table (unknown
      pixel spacing; the resampling factor).

    Raises:
      ImageReadError: the file cannot be read, or is not a single frontal
        greyscale radiograph of at least :data:`MIN_PIXELS` per side; the
        message names the file and the problem.
    """
    import warnings

    path = os.fspath(path)
    view = _view_position(path)
    if view in LATERAL_VIEWS:
        raise ImageReadError(path, f"a lateral view (ViewPosition {view!r}); the chest model reads frontal (PA/AP) "
                                   "radiographs only")
    with warnings.catch_warnings():
        # Unknown spacing is the rule for radiographs (PixelSpacing 0) and is reported as a note.
        warnings.simplefilter("ignore")
        volume = read_image(path, voi=True)
    if volume.channels != 1:
        raise ImageReadError(path, f"a colour image ({volume.photometric}); a radiograph is greyscale")
    if volume.shape[0] != 1:
        raise ImageReadError(path, f"{volume.shape[0]} frames; a radiograph is one frame")
    array = np.asarray(volume.array[0], np.float32)
    rows, cols = array.shape
    if min(rows, cols) < MIN_PIXELS:
        raise ImageReadError(path, f"too small for a chest radiograph ({rows}x{cols} pixels; at least "
                                   f"{MIN_PIXELS} per side)")
    if not np.all(np.isfinite(array)):
        raise ImageReadError(path, "non-finite pixel values")
    notes = []
    if not all(volume.spacing_known[1:]):
        notes.append("pixel spacing unknown (not needed: the radiograph is fitted to the working grid)")
    side = max(rows, cols)
    pad = ((side - rows) // 2, (side - cols) // 2)
    image = np.asarray(normalise_radiograph(jnp.asarray(array)))
    square = np.zeros((side, side, 1), np.float32)
    square[pad[0]:pad[0] + rows, pad[1]:pad[1] + cols] = image
    resized = np.asarray(jax.image.resize(jnp.asarray(square), (grid, grid, 1), "linear", antialias=True))
    factor = side / grid
    if factor > 1:
        notes.append(f"resampled by {1 / factor:.3f} onto the {grid}x{grid} working grid")
    return Prepared(np.clip(resized, 0.0, 1.0), (rows, cols), pad, factor), notes
