"""Tests of jaxmed.io.write: DICOM series and NIfTI out, read back through jaxmed.io's readers."""

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from jaxmed.io import axis_codes, read_image, read_series, write_dicom_series, write_nifti


def _rotation(ax, ay, az):
    """Rz @ Ry @ Rx, radians (numpy, independent of the phantom's helper)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing=(3.0, 0.6, 0.7), rotation=np.eye(3), origin=(-20.5, 13.25, 40.0)):
    """Voxel (z, y, x) -> LPS with x along the rotated L axis, y along P, z along S (a DICOM-handed stack)."""
    affine = np.eye(4)
    affine[:3, 0] = rotation[:, 2] * spacing[0]
    affine[:3, 1] = rotation[:, 1] * spacing[1]
    affine[:3, 2] = rotation[:, 0] * spacing[2]
    affine[:3, 3] = origin
    return affine


def _tolerance(array):
    # The stored values are round((v - intercept) / slope) with slope = range / 65535.
    return (array.max() - array.min()) / 65535 / 2 * (1 + 1e-6) + 1e-6 * np.abs(array).max()


@pytest.fixture
def volume(rng):
    return rng.normal(300.0, 120.0, size=(5, 12, 10)).astype(np.float32)


def test_axial_series_round_trip(tmp_path, volume):
    affine = _affine()
    paths = write_dicom_series(tmp_path / "s", volume, affine, series_description="t2", series_number=7)
    assert [os.path.basename(p) for p in paths] == [f"IM_{k:04d}.dcm" for k in range(1, 6)]
    back = read_series(tmp_path / "s")
    assert back.array.shape == volume.shape and back.modality == "MR"
    assert np.abs(back.array - volume).max() <= _tolerance(volume)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert back.spacing_known == (True, True, True) and axis_codes(back.affine) == "SPL"
    assert back.notes == ()


@pytest.mark.parametrize("angles", [(0.3, 0.0, 0.0), (0.35, -0.2, 0.5), (1.2, 0.7, -2.0)])
def test_oblique_series_round_trip(tmp_path, volume, angles):
    affine = _affine(rotation=_rotation(*angles))
    write_dicom_series(tmp_path / "s", volume, affine)
    back = read_series(tmp_path / "s")
    assert np.abs(back.array - volume).max() <= _tolerance(volume)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    ds = pydicom.dcmread(tmp_path / "s" / "IM_0001.dcm")
    orientation = np.array(ds.ImageOrientationPatient, float)
    assert np.abs(orientation - np.round(orientation)).max() > 0.1  # genuinely oblique
    np.testing.assert_allclose(orientation[:3], affine[:3, 2] / 0.7, atol=1e-9)
    np.testing.assert_allclose(orientation[3:], affine[:3, 1] / 0.6, atol=1e-9)


def test_tilted_stack_round_trip(tmp_path, volume):
    # Gantry tilt: the slice step has an in-plane component (a sheared affine).
    affine = _affine()
    affine[:3, 0] += np.array([0.0, 0.4, 0.0])
    write_dicom_series(tmp_path / "s", volume, affine)
    back = read_series(tmp_path / "s")
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert float(pydicom.dcmread(tmp_path / "s" / "IM_0002.dcm").SliceThickness) == pytest.approx(3.0)


def test_left_handed_stack_reads_back_reversed(tmp_path, volume):
    # Slices stepping against row x column: the same image, slice axis reversed by the reader.
    affine = _affine()
    affine[:3, 0] *= -1
    write_dicom_series(tmp_path / "s", volume, affine)
    back = read_series(tmp_path / "s")
    assert np.abs(back.array - volume[::-1]).max() <= _tolerance(volume)
    flipped = affine.copy()
    flipped[:3, 0] *= -1
    flipped[:3, 3] = affine[:3, :3] @ [4, 0, 0] + affine[:3, 3]
    np.testing.assert_allclose(back.affine, flipped, atol=1e-4)


def test_single_slice_and_integer_values_are_exact(tmp_path, rng):
    labels = rng.integers(0, 4, size=(1, 9, 11)).astype(np.int32)
    affine = _affine(spacing=(5.0, 0.8, 0.8), rotation=_rotation(0.2, 0.1, 0.0))
    write_dicom_series(tmp_path / "one", labels[0], affine)  # (y, x) is one slice
    back = read_image(tmp_path / "one" / "IM_0001.dcm")
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    ds = pydicom.dcmread(tmp_path / "one" / "IM_0001.dcm")
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    signed = rng.integers(-1000, 3000, size=(3, 4, 5)).astype(np.int16)
    write_dicom_series(tmp_path / "ct", signed, _affine(), modality="CT")
    np.testing.assert_array_equal(read_series(tmp_path / "ct").array, signed)


def test_headers_uids_and_frame_of_reference_as_written(tmp_path, volume):
    affine = _affine(rotation=_rotation(0.1, 0.0, 0.0))
    frame = "1.2.826.0.1.3680043.8.498.12345"
    kwargs = dict(series_number=3, series_description="adc", frame_of_reference_uid=frame, uid_seed="exam-1")
    write_dicom_series(tmp_path / "a", volume, affine, attributes={"EchoTime": 81.0}, **kwargs)
    files = sorted((tmp_path / "a").iterdir())
    headers = [pydicom.dcmread(f) for f in files]
    ds = headers[0]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.FrameOfReferenceUID == frame and ds.SeriesNumber == 3 and ds.SeriesDescription == "adc"
    assert ds.PatientName == "PHANTOM^SYNTHETIC" and float(ds.EchoTime) == 81.0
    assert ds.BitsStored == 16 and ds.PixelRepresentation == 0
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.6, 0.7])
    assert float(ds.SliceThickness) == pytest.approx(3.0) == float(ds.SpacingBetweenSlices)
    for k, h in enumerate(headers):
        np.testing.assert_allclose(np.array(h.ImagePositionPatient, float), affine[:3, :3] @ [k, 0, 0] + affine[:3, 3], atol=1e-6)
        assert h.InstanceNumber == k + 1 and h.SeriesInstanceUID == ds.SeriesInstanceUID
    uids = [h.SOPInstanceUID for h in headers] + [ds.SeriesInstanceUID, ds.StudyInstanceUID]
    assert len(set(uids)) == len(uids) and all(UID(u).is_valid for u in uids)
    # Seeded: the same call writes the same UIDs; unseeded: new ones.
    write_dicom_series(tmp_path / "b", volume, affine, **kwargs)
    again = [pydicom.dcmread(f).SOPInstanceUID for f in sorted((tmp_path / "b").iterdir())]
    assert again == uids[: len(files)]
    write_dicom_series(tmp_path / "c", volume, affine)
    fresh = pydicom.dcmread(tmp_path / "c" / "IM_0001.dcm")
    assert fresh.SOPInstanceUID != ds.SOPInstanceUID and fresh.FrameOfReferenceUID != frame


def test_never_overwrites_without_permission(tmp_path, volume):
    affine = _affine()
    write_dicom_series(tmp_path / "s", volume, affine)
    before = (tmp_path / "s" / "IM_0001.dcm").read_bytes()
    with pytest.raises(FileExistsError, match="IM_0001.dcm"):
        write_dicom_series(tmp_path / "s", volume + 1, affine)
    assert (tmp_path / "s" / "IM_0001.dcm").read_bytes() == before
    write_dicom_series(tmp_path / "s", volume + 100, affine, overwrite=True)
    assert np.abs(read_series(tmp_path / "s").array - (volume + 100)).max() <= _tolerance(volume + 100)
    write_nifti(tmp_path / "m.nii.gz", volume, affine)
    with pytest.raises(FileExistsError, match="m.nii.gz"):
        write_nifti(tmp_path / "m.nii.gz", volume, affine)
    write_nifti(tmp_path / "m.nii.gz", volume, affine, overwrite=True)


@pytest.mark.parametrize(
    "array, affine, message",
    [
        (np.zeros((2, 2, 2, 2)), _affine(), "array must be"),
        (np.array([[[0.0, np.nan]]]), _affine(), "NaN"),
        (np.zeros((2, 3, 3)), np.eye(3), "4x4"),
        (np.zeros((2, 3, 3)), np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.zeros((2, 3, 3)), np.array([[0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]), "perpendicular"),
        (np.zeros((2, 3, 3)), np.array([[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1.0]]), "singular"),
    ],
)
def test_bad_input_raises(tmp_path, array, affine, message):
    with pytest.raises(ValueError, match=message):
        write_dicom_series(tmp_path / "s", array, affine)
    assert not (tmp_path / "s").exists()


def test_bad_modality_and_nifti_suffix(tmp_path, volume):
    with pytest.raises(ValueError, match="modality"):
        write_dicom_series(tmp_path / "s", volume, _affine(), modality="US")
    with pytest.raises(ValueError, match=r"\.nii"):
        write_nifti(tmp_path / "m.img", volume, _affine())


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (0.35, -0.2, 0.5)])
def test_nifti_round_trip_inverts_the_reader(tmp_path, volume, angles):
    affine = _affine(rotation=_rotation(*angles))
    write_nifti(tmp_path / "v.nii.gz", volume, affine)
    back = read_image(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(back.array, volume)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    # Independently of jaxmed's reader: nibabel sees (i, j, k) = (x, y, z) in RAS.
    image = nib.load(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.transpose(2, 1, 0))
    voxel = np.array([2.0, 3.0, 4.0])  # (z, y, x)
    lps = affine[:3, :3] @ voxel + affine[:3, 3]
    ras = image.affine[:3, :3] @ voxel[::-1] + image.affine[:3, 3]
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.affine, atol=1e-4)
    # The same geometry as DICOM reads back to the same affine.
    write_dicom_series(tmp_path / "s", volume, affine)
    np.testing.assert_allclose(read_series(tmp_path / "s").affine, back.affine, atol=1e-4)


def test_nifti_dtypes(tmp_path, rng):
    mask = rng.random((3, 4, 5)) > 0.5
    write_nifti(tmp_path / "mask.nii", mask, _affine())
    image = nib.load(tmp_path / "mask.nii")
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(read_image(tmp_path / "mask.nii").array, mask)
    labels = rng.integers(0, 70000, size=(3, 4, 5))
    write_nifti(tmp_path / "labels.nii.gz", labels, _affine())
    assert nib.load(tmp_path / "labels.nii.gz").get_data_dtype() == np.int32
    np.testing.assert_array_equal(read_image(tmp_path / "labels.nii.gz").array, labels)
