"""Images out: a volume as a DICOM series (one file per slice) or a NIfTI file.

Both writers take the `Volume` convention of `jaxmed.io.volume` (array
``(z, y, x)``, affine voxel ``(z, y, x, 1)`` -> LPS mm) and write files that
`jaxmed.io.read_series` and `jaxmed.io.read_image` read back to the same
array and affine:

* `write_dicom_series`: MR (or CT) Image Storage, explicit VR little endian,
  16-bit unsigned stored values with RescaleSlope/RescaleIntercept, one file
  per slice with its own ImagePositionPatient; ImageOrientationPatient,
  PixelSpacing, SliceThickness/SpacingBetweenSlices from the affine, which
  may be oblique. Values come back to within half the rescale slope.
* `write_nifti`: NIfTI-1, the inverse of `jaxmed.io.read_nifti`: array
  transposed to nibabel's ``(i, j, k) = (x, y, z)``, affine converted from
  LPS to RAS.

Neither overwrites an existing file unless ``overwrite=True``
(`FileExistsError` naming the file, raised before anything is written).
Patient and study attributes are synthetic placeholders: these writers are
for phantoms and derived images, not for real patient data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["write_dicom_series", "write_nifti"]

_MAX_STORED = 65535
# Row and column directions must be perpendicular to this cosine (the reader
# accepts 0.01; a writer should not produce what is barely accepted).
_PERPENDICULAR_ATOL = 1e-4
# NIfTI (i, j, k) <-> our (z, y, x) = (k, j, i), and RAS <-> LPS: each its own inverse.
_KJI_TO_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

PLACEHOLDER_PATIENT = {
    "PatientName": "PHANTOM^SYNTHETIC",
    "PatientID": "PHANTOM-0000",
    "PatientBirthDate": "",
    "PatientSex": "O",
}


def _volume_args(array, affine, where: str) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"{where}: array must be (z, y, x) or (y, x), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{where}: array must be numeric, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: array holds {int(np.size(array) - np.isfinite(array).sum())} NaN or infinite value(s)")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{where}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not np.allclose(affine[3], [0, 0, 0, 1], atol=1e-6):
        raise ValueError(f"{where}: the affine's last row must be (0, 0, 0, 1), got {affine[3].tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{where}: the affine is singular (a voxel axis of length 0 or two axes parallel)")
    return array, affine


def _refuse_existing(paths, overwrite: bool) -> None:
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise FileExistsError(f"{path}: file exists; pass overwrite=True to replace it")


def _ds(value: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)  # + 0.0: no "-0"


def _rescale(array: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` mapping the array's range onto 0..65535, as stored (decimal strings) and read back."""
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(array == np.round(array)))
    if integral and hi - lo <= _MAX_STORED and abs(lo) < 1e15:
        # Integer data (labels, masks, scanner units) are stored exactly.
        return 1.0, (0.0 if lo >= 0 and hi <= _MAX_STORED else lo)
    intercept = float(_ds(lo))
    span = hi - intercept
    if span <= 0:
        return 1.0, intercept
    # Rounded up so that the largest value still fits after the string round trip.
    slope = float(_ds(span / _MAX_STORED * (1 + 1e-9)))
    while span / slope > _MAX_STORED + 0.5:
        slope = float(_ds(slope * (1 + 1e-9)))
    return slope, intercept


def _uid(seed: str | None, *parts) -> str:
    from pydicom.uid import generate_uid

    if seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)]))


def write_dicom_series(
    folder,
    array,
    affine,
    *,
    modality: str = "MR",
    series_description: str = "",
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_seed: str | None = None,
    patient: Mapping[str, str] | None = None,
    study_description: str = "",
    attributes: Mapping[str, Any] | None = None,
    file_prefix: str = "IM",
    overwrite: bool = False,
) -> list[str]:
    """Writes a volume as a DICOM series, one file per slice.

    Geometry from the affine (voxel ``(z, y, x, 1)`` -> LPS mm): the row
    direction cosine (ImageOrientationPatient[:3]) is the ``x`` column of the
    affine normalised, the column cosine the ``y`` column; PixelSpacing is
    ``(|y column|, |x column|)``; slice ``k`` has ImagePositionPatient
    ``origin + k * z column``; SliceThickness and SpacingBetweenSlices are the
    slice step along the normal ``row x column``. Oblique and sheared
    (tilted) stacks are written as they are.

    .. note::
       The reader orders slices along ``row x column``. When the affine's
       ``z`` column points the other way (a left-handed index frame), the
       files still describe the same image, but `jaxmed.io.read_series`
       returns it with the slice axis reversed (``array[::-1]``, affine
       ``z`` column negated, origin at the last slice). A single slice keeps
       only the normal component of its ``z`` column.

    Values: stored as unsigned 16-bit integers with one RescaleSlope and
    RescaleIntercept for the series (``value = slope * stored +
    intercept``). Integer-valued arrays whose range spans at most 65535 are
    stored exactly (slope 1); others are spread over 0..65535, so that the
    values read back differ from ``array`` by at most ``slope / 2`` (slope
    ``(max - min) / 65535``) plus float32 rounding.

    Args:
        folder: created if missing; the files are
            ``{file_prefix}_{k + 1:04d}.dcm``.
        array: ``(z, y, x)`` (or ``(y, x)``, one slice), finite numbers.
        affine: ``[4, 4]``, the `jaxmed.io.volume` convention; the ``y`` and
            ``x`` columns must be perpendicular.
        modality: ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage).
        series_description, series_number: SeriesDescription, SeriesNumber.
        study_uid, series_uid, frame_of_reference_uid: UIDs; None makes new
            ones (from `uid_seed` when given).
        uid_seed: with it, every generated UID (study, series, frame of
            reference, each SOPInstanceUID) is a deterministic function of
            the seed (``pydicom.uid.generate_uid(entropy_srcs=...)``): the
            same call writes the same files.
        patient: PatientName, PatientID, ... (synthetic placeholders by
            default, `PLACEHOLDER_PATIENT`).
        study_description: StudyDescription.
        attributes: more data elements by keyword, written into every file
            (EchoTime, MagneticFieldStrength, Manufacturer, ...); they
            override the defaults.
        file_prefix: file name prefix.
        overwrite: replace existing files of the same names (other files in
            `folder` are left alone).

    Returns:
        The paths written, in slice order.

    Raises:
        ValueError: a bad array or affine (the message says which).
        FileExistsError: a target file exists and ``overwrite`` is False
            (nothing is written).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    folder = os.fspath(folder)
    array, affine = _volume_args(array, affine, folder)
    sop_class = {"MR": MRImageStorage, "CT": CTImageStorage}.get(modality)
    if sop_class is None:
        raise ValueError(f"{folder}: modality must be 'MR' or 'CT', got {modality!r}")
    step, col_step, row_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    row_spacing, col_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    row_cosine, col_cosine = row_step / col_spacing, col_step / row_spacing
    if abs(float(row_cosine @ col_cosine)) > _PERPENDICULAR_ATOL:
        raise ValueError(
            f"{folder}: the affine's y and x columns are not perpendicular (cosine "
            f"{float(row_cosine @ col_cosine):.3g}); DICOM slices need perpendicular rows and columns"
        )
    normal = np.cross(row_cosine, col_cosine)
    thickness = abs(float(step @ normal))
    if thickness < 1e-6 * float(np.linalg.norm(step)):
        raise ValueError(f"{folder}: the affine's z column lies in the slice plane; slices would coincide")

    n = array.shape[0]
    paths = [os.path.join(folder, f"{file_prefix}_{k + 1:04d}.dcm") for k in range(n)]
    _refuse_existing(paths, overwrite)
    slope, intercept = _rescale(array)
    stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), 0, _MAX_STORED).astype(np.uint16)

    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = series_uid or _uid(uid_seed, "series", series_number, series_description)
    frame_of_reference_uid = frame_of_reference_uid or _uid(uid_seed, "frame_of_reference")
    lo, hi = float(array.min()), float(array.max())
    os.makedirs(folder, exist_ok=True)
    for k, path in enumerate(paths):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = _uid(uid_seed, series_uid, k) if uid_seed is not None else _uid(None)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in {**PLACEHOLDER_PATIENT, **(patient or {})}.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = "20000101", "000000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = study_description
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDescription = series_description
        ds.Modality = modality
        ds.Manufacturer = "jaxmed"
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "PRIMARY"]
        position = affine[:3, 3] + k * step
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *col_cosine)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.SliceLocation = _ds(float(position @ normal))
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.WindowCenter = _ds((lo + hi) / 2)
        ds.WindowWidth = _ds(max(hi - lo, 1.0))
        if modality == "MR":
            # Type 1/2 attributes of the MR Image module (PS3.3 C.8.3.1); "RM": research mode.
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
            ds.MRAcquisitionType, ds.EchoTime, ds.EchoTrainLength, ds.RepetitionTime = "2D", "", "", ""
        else:
            ds.KVP = ""
        for keyword, value in (attributes or {}).items():
            setattr(ds, keyword, value)
        ds.set_pixel_data(stored[k], "MONOCHROME2", 16, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return paths


def write_nifti(path, array, affine, *, overwrite: bool = False) -> str:
    """Writes a volume as a NIfTI-1 file, the inverse of `jaxmed.io.read_nifti`.

    The array is transposed from ``(z, y, x)`` to nibabel's ``(i, j, k) =
    (x, y, z)`` and the affine converted from LPS ``(z, y, x)`` to RAS
    ``(i, j, k)``: ``A_ras = diag(-1, -1, 1, 1) @ A @ P`` with ``P`` the
    ``(z, y, x) <-> (i, j, k)`` permutation (both are their own inverses).
    It is stored as the sform (code 1, scanner), and as the qform too when
    it has no shear. Data types: bool as uint8; integers kept (int64 as
    int32 when it fits); floats as float32.

    Args:
        path: ends in ``.nii`` or ``.nii.gz``; its folder is created if missing.
        array: ``(z, y, x)`` or ``(y, x)``, finite.
        affine: ``[4, 4]``, voxel ``(z, y, x, 1)`` -> LPS mm.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: a bad path suffix, array or affine.
        FileExistsError: `path` exists and ``overwrite`` is False.
    """
    import nibabel as nib

    path = os.fspath(path)
    if not path.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    array, affine = _volume_args(array, affine, path)
    _refuse_existing([path], overwrite)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    elif array.dtype == np.int64 or array.dtype == np.uint64:
        if array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max:
            array = array.astype(np.int32)
    affine_ras = _RAS_TO_LPS @ affine @ _KJI_TO_IJK
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine_ras)
    image.set_sform(affine_ras, code=1)
    zooms = np.linalg.norm(affine_ras[:3, :3], axis=0)
    directions = affine_ras[:3, :3] / zooms
    if np.allclose(directions.T @ directions, np.eye(3), atol=1e-6):
        image.set_qform(affine_ras, code=1)
    else:
        image.set_qform(None, code=0)
    image.header.set_xyzt_units("mm")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nib.save(image, path)
    return path
