"""`read_image`: one file, DICOM or NIfTI, to a `Volume`."""

from __future__ import annotations

import os

from jaxmed.io.nifti import is_nifti_path, read_nifti
from jaxmed.io.volume import ImageReadError, Volume

__all__ = ["read_image"]


def read_image(path) -> Volume:
    """Reads one image file as a `Volume` (axes and LPS convention: `jaxmed.io.volume`).

    ``.nii``/``.nii.gz`` files are read as NIfTI (`read_nifti`); anything else
    as DICOM (`jaxmed.io.dicom.read_dicom`): a single-frame image becomes a
    volume with ``z == 1``, a multi-frame image one slice per frame.

    Args:
        path: the file.

    Returns:
        The volume, float32 modality values (rescale applied).

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
        return read_nifti(path)
    from jaxmed.io.dicom import read_dicom

    return read_dicom(path)
