"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) read with nibabel."""

from __future__ import annotations

import os

import numpy as np

from jaxmed.io.volume import ImageReadError, Volume

__all__ = ["is_nifti_path", "read_nifti"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")

# nibabel's (i, j, k) -> our (z, y, x) = (k, j, i): a permutation of index axes.
_KJI_TO_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
# RAS world -> LPS world: flip the sign of the first two world axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti_path(path) -> bool:
    """True if the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(_NIFTI_SUFFIXES)


def ras_ijk_to_lps_zyx(affine_ras: np.ndarray) -> np.ndarray:
    """Converts a nibabel affine to the `Volume` convention.

    Args:
        affine_ras: ``[4, 4]``, voxel ``(i, j, k, 1)`` -> RAS mm.

    Returns:
        ``[4, 4]`` float64, voxel ``(z, y, x, 1) = (k, j, i, 1)`` -> LPS mm.
    """
    return _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64) @ _KJI_TO_IJK


def read_nifti(path) -> Volume:
    """Reads a 2D or 3D NIfTI image as a `Volume`.

    The scale factors ``scl_slope``/``scl_inter`` are applied (nibabel's
    ``get_fdata``). The array is transposed from nibabel's ``(i, j, k)`` to
    ``(z, y, x) = (k, j, i)`` and the affine (nibabel's best affine: sform,
    else qform, else the zooms) is converted from RAS to LPS; no resampling or
    reorientation is done. See `jaxmed.io.volume` for the convention. A 4D
    image is accepted only if its fourth axis has length 1.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        The volume; ``modality`` is ``""`` and ``series_uid`` is None.

    Raises:
        ImageReadError: the file is missing, not NIfTI, truncated, or not 2D/3D.
    """
    import nibabel as nib

    path = os.fspath(path)
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except Exception as err:  # nibabel raises several types for bad headers
        raise ImageReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(path, f"not a NIfTI image (nibabel read it as {type(image).__name__})")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise ImageReadError(path, f"expected a 2D or 3D image, got shape {image.shape} (i, j, k, ...)")
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:  # truncated gzip / short data raise various errors
        raise ImageReadError(
            path, f"image data could not be read, file truncated? ({type(err).__name__}: {err})"
        ) from None
    data = data.reshape(shape + (1,) * (3 - len(shape)))
    array = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    affine = ras_ijk_to_lps_zyx(image.affine)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(
        array=array,
        spacing=spacing,
        affine=affine,
        modality="",
        series_uid=None,
        instance_uids=(),
        source=path,
    )
