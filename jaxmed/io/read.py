"""`read_image`: one file, DICOM or NIfTI, to a `Volume`."""

from __future__ import annotations

import dataclasses
import os

from jaxmed.io.nifti import is_nifti_path, read_nifti
from jaxmed.io.volume import ImageReadError, Volume

__all__ = ["read_image"]


def read_image(path, *, voi: bool = False) -> Volume:
    """Reads one image file as a `Volume` (axes, LPS, values: `jaxmed.io.volume`).

    ``.nii``/``.nii.gz`` files are read as NIfTI (`read_nifti`); anything else
    as DICOM (`jaxmed.io.dicom_volume.read_dicom`): a single-frame image becomes a
    volume with ``z == 1``, a multi-frame image one slice per frame; colour
    images are ``(z, y, x, 3)`` RGB.

    Args:
        path: the file.
        voi: DICOM only: apply the file's VOI LUT or first window to the
            modality values (greyscale; MONOCHROME1 still inverted after it).
            NIfTI files have none: their values are returned unchanged, with
            a note.

    Returns:
        The volume: float32 modality values (rescale applied, higher is
        brighter), or VOI output with `voi`; RGB for colour images.

    Raises:
        ImageReadError: the file is missing, not an image, or unreadable; the
            message names the file and the problem.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageReadError(path, "is a folder; use read_series(folder) for a DICOM series")
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file")
    if not os.path.isfile(path):
        # FIFOs and devices would block a read instead of failing.
        raise ImageReadError(path, "not a regular file")
    if is_nifti_path(path):
        volume = read_nifti(path)
        if voi:
            note = "voi=True ignored: NIfTI files hold no VOI LUT or window"
            volume = dataclasses.replace(volume, notes=(*volume.notes, note))
        return volume
    from jaxmed.io.dicom_volume import read_dicom

    return read_dicom(path, voi=voi)
