"""jaxmed.io: NIfTI, DICOM files, multi-frame files and series.

Expected values come from nibabel and from pydicom's own decoding and
``apply_modality_lut``, from the positions written by hand into synthetic
series, or from pydicom's bundled test files; never from jaxmed itself.
"""

import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from jaxmed.io import (
    ImageReadError,
    ReadProblem,
    UnknownSpacingWarning,
    Volume,
    axis_codes,
    describe_paths,
    format_description,
    list_series,
    load_volumes,
    read_image,
    read_series,
)

TEST_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))
CT5N = os.path.join(TEST_FILES, "dicomdirtests", "98892001", "CT5N")
MR700 = os.path.join(TEST_FILES, "dicomdirtests", "98892003", "MR700")
MR2_MIXED = os.path.join(TEST_FILES, "dicomdirtests", "98892003", "MR2")
CT2_GAP = os.path.join(TEST_FILES, "dicomdirtests", "77654033", "CT2")
MNI = os.path.join(
    os.path.dirname(os.path.dirname(nib.__file__)),
    "nilearn",
    "datasets",
    "data",
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "SECRET-ID-4711", "PatientBirthDate": "19700101"}


def _modality_values(path):
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)


def _lps_point(affine, zyx):
    return (affine @ np.array([*zyx, 1.0]))[:3]


# --------------------------------------------------------------------------- #
# Synthetic DICOM writer (pydicom only)
# --------------------------------------------------------------------------- #
def write_ct_slice(
    path,
    pixels,
    *,
    position=(0.0, 0.0, 0.0),
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing=(0.5, 0.75),
    series_uid="1.2.826.0.1.3680043.8.498.1",
    instance_number=1,
    slope=1.0,
    intercept=-1024.0,
):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance_number
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = "7"  # deliberately not the spacing: it must be ignored
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16), "MONOCHROME2", 16)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return ds


# --------------------------------------------------------------------------- #
# NIfTI
# --------------------------------------------------------------------------- #
def test_nifti_axes_affine_and_scaling(tmp_path, rng):
    data = rng.integers(-100, 100, size=(4, 5, 3)).astype(np.int16)  # (i, j, k)
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    image = nib.Nifti1Image(data, affine)
    image.header.set_slope_inter(0.5, 7.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(image, path)

    vol = read_image(path)
    assert isinstance(vol, Volume)
    assert vol.shape == (3, 5, 4) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, data.transpose(2, 1, 0) * 0.5 + 7.0)
    np.testing.assert_allclose(vol.spacing, (2.5, 1.1, 0.8), rtol=1e-6)
    # voxel (z, y, x) = (k, j, i) lands where nibabel puts (i, j, k), in LPS.
    for i, j, k in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        ras = affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(_lps_point(vol.affine, (k, j, i)), [-ras[0], -ras[1], ras[2]], atol=1e-9)
    assert vol.modality == "" and vol.series_uid is None and vol.source == str(path)


def test_nifti_2d_and_bad_files(tmp_path):
    nib.save(nib.Nifti1Image(np.arange(6, dtype=np.float32).reshape(3, 2), np.eye(4)), tmp_path / "flat.nii")
    vol = read_image(tmp_path / "flat.nii")
    assert vol.shape == (1, 2, 3)
    np.testing.assert_array_equal(vol.array[0], np.arange(6).reshape(3, 2).T)

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "time.nii")
    with pytest.raises(ImageReadError, match=r"time\.nii: expected a 2D or 3D image"):
        read_image(tmp_path / "time.nii")

    good = tmp_path / "good.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), good)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    assert info.value.path == str(cut) and "cut.nii" in str(info.value)


def test_mni_template_axes():
    vol = read_image(MNI)
    assert vol.shape == (189, 233, 197)
    assert vol.spacing == (1.0, 1.0, 1.0)
    # axis 0 runs inferior -> superior (LPS z grows), axial slices along axis 0
    assert vol.affine[2, 0] > 0 and axis_codes(vol.affine) == "SAR"
    ref = nib.load(MNI)
    np.testing.assert_array_equal(vol.array[90], np.asarray(ref.dataobj[:, :, 90], dtype=np.float32).T)
    # MNI origin (0, 0, 0) mm is voxel (i, j, k) = (98, 134, 72)
    np.testing.assert_allclose(_lps_point(vol.affine, (72, 134, 98)), [0, 0, 0], atol=1e-9)


# --------------------------------------------------------------------------- #
# Single DICOM files
# --------------------------------------------------------------------------- #
def test_ct_small_rescale_and_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_image(path)
    assert vol.shape == (1, 128, 128) and vol.modality == "CT"
    assert float(ds.RescaleIntercept) == -1024
    np.testing.assert_array_equal(vol.array[0], _modality_values(path))
    np.testing.assert_array_equal(vol.array[0], ds.pixel_array.astype(np.float32) - 1024)
    row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
    assert vol.spacing[1:] == pytest.approx((row_sp, col_sp))
    iop = np.array(ds.ImageOrientationPatient, float)
    ipp = np.array(ds.ImagePositionPatient, float)
    # DICOM PS3.3 C.7.6.2.1.1: P = IPP + col * dcol * row_cosine + row * drow * col_cosine
    expected = ipp + 7 * col_sp * iop[:3] + 5 * row_sp * iop[3:]
    np.testing.assert_allclose(_lps_point(vol.affine, (0, 5, 7)), expected, atol=1e-6)
    assert vol.series_uid == ds.SeriesInstanceUID and vol.instance_uids == (ds.SOPInstanceUID,)


def test_mr_non_integer_slope():
    path = get_testdata_file("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleSlope) != round(float(ds.RescaleSlope))
    vol = read_image(path)
    np.testing.assert_allclose(vol.array[0], apply_modality_lut(ds.pixel_array, ds), rtol=1e-6)


def test_enhanced_ct_per_frame_positions():
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    slope = float(shared.PixelValueTransformationSequence[0].RescaleSlope)
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ipps = [
        np.array(f.PlanePositionSequence[0].ImagePositionPatient, float)
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    order = np.argsort([p @ normal for p in ipps])

    vol = read_image(path)
    assert vol.shape == (2, 512, 512)
    for z, frame in enumerate(order):
        np.testing.assert_array_equal(vol.array[z], ds.pixel_array[frame] * slope + intercept)
        np.testing.assert_allclose(_lps_point(vol.affine, (z, 0, 0)), ipps[frame], atol=1e-6)
    assert vol.spacing[0] == pytest.approx(abs((ipps[1] - ipps[0]) @ normal))


def test_enhanced_mr_without_geometry():
    path = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    with pytest.warns(UnknownSpacingWarning, match="emri_small.dcm: pixel spacing unknown"):
        vol = read_image(path)
    assert vol.shape == (10, 64, 64) and vol.modality == "MR"
    np.testing.assert_array_equal(vol.array, ds.pixel_array.astype(np.float32))
    # this anonymised file has no functional groups: spacing from SpacingBetweenSlices, noted
    assert vol.spacing[0] == pytest.approx(float(ds.SpacingBetweenSlices))
    assert vol.spacing_known == (True, False, False) and vol.spacing[1:] == (1.0, 1.0)
    assert any("no per-slice positions" in n for n in vol.notes)
    assert any("no pixel spacing" in n for n in vol.notes)


def test_synthetic_enhanced_per_frame_rescale(tmp_path, rng):
    frames = rng.integers(0, 4000, size=(3, 4, 5)).astype(np.uint16)
    z = [20.0, 10.0, 15.0]
    slopes, intercepts = [1.0, 2.5, 0.5], [-1024.0, -10.0, 3.0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.set_pixel_data(frames, "MONOCHROME2", 12)
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.25]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(3):
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = [1.0, 2.0, z[k]]
        item.PixelValueTransformationSequence = [Dataset()]
        item.PixelValueTransformationSequence[0].RescaleSlope = slopes[k]
        item.PixelValueTransformationSequence[0].RescaleIntercept = intercepts[k]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)

    vol = read_image(path)
    for out_z, k in enumerate([1, 2, 0]):  # z = 10, 15, 20
        frame_ds = Dataset()
        frame_ds.RescaleSlope, frame_ds.RescaleIntercept = slopes[k], intercepts[k]
        np.testing.assert_allclose(vol.array[out_z], apply_modality_lut(frames[k], frame_ds), rtol=1e-6)
    assert vol.spacing == pytest.approx((5.0, 0.5, 0.25))
    np.testing.assert_allclose(vol.affine[:3, 3], [1.0, 2.0, 10.0])


def test_rt_dose_grid_frame_offsets():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    offsets = np.array(ds.GridFrameOffsetVector, float)
    vol = read_image(path)
    assert vol.shape == (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    assert vol.spacing[0] == pytest.approx(abs(offsets[1] - offsets[0]))
    np.testing.assert_array_equal(vol.array, _modality_values(path)[np.argsort(offsets)])


def test_raw_dataset_without_preamble_is_read(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    data = Path(src).read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(data[144 + meta_length :])
    np.testing.assert_array_equal(read_image(raw).array[0], _modality_values(src))


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        # pydicom calls it "CT_small without meta" but a stray first byte (0x20)
        # breaks the data set: force-reading gives one garbage element. jaxmed
        # reads raw data sets only when they start with a group 0002/0008 tag.
        ("no_meta.dcm", "not a DICOM file"),
        ("MR_truncated.dcm", r"pixel data truncated: 8130 of 8192 bytes"),
        ("rtstruct.dcm", r"no pixel data: not an image \(RT Structure Set Storage\)"),
        ("meta_missing_tsyntax.dcm", r"no Transfer Syntax UID"),
        # NumberOfFrames '1A' (an invalid IS) once crashed with a TypeError.
        ("badVR.dcm", r"NumberOfFrames \(0028,0008\) is '1A', not a positive integer"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom, on badVR.dcm
def test_pydicom_malformed_files(name, pattern):
    path = get_testdata_file(name)
    with pytest.raises(ImageReadError, match=pattern) as info:
        read_image(path)
    assert info.value.path == path and str(info.value).startswith(path + ": ")


def test_missing_decoder_names_packages(monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSNearLossless

    # Simulate an installation without python-gdcm: its plugin becomes "missing".
    decoder = get_decoder(JPEGLSNearLossless)
    unavailable = {**decoder._unavailable, **{name: ("gdcm>=3.0.10",) for name in decoder._available}}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", unavailable)
    path = get_testdata_file("JPEGLSNearLossless_16.dcm")
    with pytest.raises(ImageReadError, match="JPEG-LS") as info:
        read_image(path)
    assert "no installed package decodes it" in info.value.problem
    assert "pylibjpeg-libjpeg" in info.value.problem and "python-gdcm" in info.value.problem


def test_jpeg2000_decoded_by_installed_plugin():
    path = get_testdata_file("JPEG2000.dcm")
    np.testing.assert_array_equal(read_image(path).array[0], _modality_values(path))


def test_not_dicom_fails_fast(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 10000)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    start = time.perf_counter()
    for path, pattern in [(text, "not a DICOM file"), (png, "not a DICOM file"), (empty, "empty file")]:
        with pytest.raises(ImageReadError, match=pattern):
            read_image(path)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.dcm")
    with pytest.raises(ImageReadError, match="read_series"):
        read_image(tmp_path)
    assert time.perf_counter() - start < 2.0


def test_truncated_anywhere_raises_image_read_error(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    for cut in list(range(0, 1600, 37)) + list(range(1600, len(data), 2999)):
        path.write_bytes(data[:cut])
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert info.value.path == str(path)


# --------------------------------------------------------------------------- #
# Series
# --------------------------------------------------------------------------- #
def test_ct5n_sorted_by_position():
    files = sorted(os.listdir(CT5N))
    z = {f: float(pydicom.dcmread(os.path.join(CT5N, f)).ImagePositionPatient[2]) for f in files}
    by_z = sorted(files, key=z.get)  # axial, normal +z: ascending z
    vol = read_series(CT5N)
    assert vol.shape == (5, 16, 16) and vol.modality == "CT"
    for k, f in enumerate(by_z):
        np.testing.assert_array_equal(vol.array[k], _modality_values(os.path.join(CT5N, f)))
    assert vol.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    first = pydicom.dcmread(os.path.join(CT5N, by_z[0]))
    np.testing.assert_allclose(vol.affine[:3, 3], np.array(first.ImagePositionPatient, float))
    assert vol.instance_uids == tuple(pydicom.dcmread(os.path.join(CT5N, f)).SOPInstanceUID for f in by_z)
    assert axis_codes(vol.affine) == "SPL" and vol.notes == ()


def test_ct5n_shuffled_copy_gives_same_volume(tmp_path, rng):
    files = sorted(os.listdir(CT5N))
    for k, name in zip(rng.permutation(len(files)), files):
        shutil.copy(os.path.join(CT5N, name), tmp_path / f"slice_{k}.dcm")
    (tmp_path / "README.txt").write_text("not an image")
    vol = read_series(tmp_path)
    np.testing.assert_array_equal(vol.array, read_series(CT5N).array)
    assert any("skipped 1 file" in n and "README.txt" in n for n in vol.notes)


def test_radial_mr700_has_different_orientations():
    with pytest.raises(ImageReadError, match="different orientation") as info:
        read_series(MR700)
    assert info.value.path == MR700 and "4467" in info.value.problem


def test_real_series_with_gap_lists_positions():
    with pytest.raises(ImageReadError, match="uneven slice spacing") as info:
        read_series(CT2_GAP)
    assert (
        "202.5 mm" in info.value.problem
        and "-99.480" in info.value.problem
        and "103.020" in info.value.problem
    )


def test_mixed_series_folder_names_each_and_allows_choice():
    uids = {pydicom.dcmread(os.path.join(MR2_MIXED, f)).SeriesInstanceUID for f in os.listdir(MR2_MIXED)}
    assert len(uids) == 3
    with pytest.raises(ImageReadError, match="holds 3 series") as info:
        read_series(MR2_MIXED)
    assert all(uid in info.value.problem for uid in uids)
    assert {s["series_uid"] for s in list_series(MR2_MIXED)} == uids
    single = next(s["series_uid"] for s in list_series(MR2_MIXED) if s["num_files"] == 1)
    vol = read_series(MR2_MIXED, series_uid=single)
    assert vol.shape == (1, 16, 16) and vol.series_uid == single
    with pytest.raises(ImageReadError, match="no series with SeriesInstanceUID 1.2.3"):
        read_series(MR2_MIXED, series_uid="1.2.3")


def test_oblique_series_positions_decide_not_instance_numbers(tmp_path, rng):
    orientation = (0.6, 0.8, 0.0, 0.0, 0.0, -1.0)  # rows along (0.6, 0.8, 0), columns downwards
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([5.0, -3.0, 40.0])
    depths = [3.0, 0.0, 6.0, 1.5, 4.5]  # shuffled, spacing 1.5 mm
    positions = [origin + d * normal for d in depths]
    slopes = [1.0, 2.0, 0.5, 1.0, 3.0]
    os.makedirs(tmp_path / "s")
    pixels = []
    for k, (pos, slope) in enumerate(zip(positions, slopes)):
        p = rng.integers(0, 3000, size=(6, 5))
        # instance numbers deliberately unrelated to position
        write_ct_slice(
            tmp_path / "s" / f"{k}.dcm",
            p,
            position=pos,
            orientation=orientation,
            instance_number=10 - k,
            slope=slope,
        )
        pixels.append((p, slope))
    vol = read_series(tmp_path / "s")
    assert vol.shape == (5, 6, 5)
    assert vol.spacing == pytest.approx((1.5, 0.5, 0.75), abs=1e-5)
    for z, k in enumerate(np.argsort(depths)):
        p, slope = pixels[k]
        np.testing.assert_allclose(vol.array[z], p * slope - 1024.0)
        np.testing.assert_allclose(_lps_point(vol.affine, (z, 0, 0)), positions[k], atol=1e-5)
    # pixel (row 2, column 3) of the first slice, by PS3.3 C.7.6.2.1.1
    expected = positions[1] + 3 * 0.75 * np.array(orientation[:3]) + 2 * 0.5 * np.array(orientation[3:])
    np.testing.assert_allclose(_lps_point(vol.affine, (0, 2, 3)), expected, atol=1e-5)


def _axial(folder, zs, rng):
    os.makedirs(folder, exist_ok=True)
    for k, z in enumerate(zs):
        pixels = rng.integers(0, 100, size=(4, 4))
        write_ct_slice(
            os.path.join(folder, f"s{k}.dcm"), pixels, position=(0.0, 0.0, z), instance_number=k + 1
        )


def test_missing_slice_is_an_error_listing_the_gap(tmp_path, rng):
    _axial(tmp_path, [0.0, 2.0, 4.0, 8.0, 10.0], rng)
    with pytest.raises(ImageReadError, match="uneven slice spacing") as info:
        read_series(tmp_path)
    problem = info.value.problem
    assert (
        "4 mm between s2.dcm (4.000 mm) and s3.dcm (8.000 mm)" in problem and "1 slice(s) missing" in problem
    )


def test_duplicate_slice_names_both_files(tmp_path, rng):
    _axial(tmp_path, [0.0, 2.0, 4.0], rng)
    shutil.copy(tmp_path / "s1.dcm", tmp_path / "copy.dcm")
    with pytest.raises(ImageReadError, match="share a position") as info:
        read_series(tmp_path)
    assert "copy.dcm" in info.value.problem and "s1.dcm" in info.value.problem


def test_mixed_sizes_and_orientations(tmp_path, rng):
    _axial(tmp_path / "a", [0.0, 1.0], rng)
    write_ct_slice(tmp_path / "a" / "big.dcm", rng.integers(0, 9, size=(5, 4)), position=(0, 0, 2.0))
    with pytest.raises(
        ImageReadError, match=r"different size: 5x4 pixels \(1: big.dcm\); 4x4 pixels \(2: s0.dcm, s1.dcm\)"
    ):
        read_series(tmp_path / "a")
    _axial(tmp_path / "b", [0.0, 1.0], rng)
    write_ct_slice(
        tmp_path / "b" / "sag.dcm",
        rng.integers(0, 9, size=(4, 4)),
        position=(0, 0, 2.0),
        orientation=(0, 1, 0, 0, 0, -1),
    )
    with pytest.raises(ImageReadError, match="different orientation"):
        read_series(tmp_path / "b")


def test_missing_positions_fall_back_to_instance_number(tmp_path, rng):
    for k, inst in enumerate([3, 1, 2]):
        write_ct_slice(tmp_path / f"n{k}.dcm", np.full((2, 2), inst), position=None, instance_number=inst)
    vol = read_series(tmp_path)
    np.testing.assert_array_equal(vol.array[:, 0, 0], np.array([1, 2, 3]) - 1024.0)
    assert any("InstanceNumber" in n for n in vol.notes)


def test_read_series_bad_folders(tmp_path):
    with pytest.raises(ImageReadError, match="the folder is empty"):
        read_series(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(
        ImageReadError, match=r"no DICOM image files found \(1 unreadable file\(s\): a.txt: not a DICOM"
    ):
        read_series(tmp_path)
    with pytest.raises(ImageReadError, match="read_image"):
        read_series(tmp_path / "a.txt")
    with pytest.raises(ImageReadError, match="no such folder"):
        read_series(tmp_path / "nope")


# --------------------------------------------------------------------------- #
# Batch reading and descriptions
# --------------------------------------------------------------------------- #
def test_load_volumes_collects_problems(tmp_path):
    missing = str(tmp_path / "missing.dcm")
    no_meta = get_testdata_file("no_meta.dcm")
    volumes, problems = load_volumes([CT5N, get_testdata_file("CT_small.dcm"), no_meta, missing])
    assert [v.shape for v in volumes] == [(5, 16, 16), (1, 128, 128)]
    assert [p.path for p in problems] == [no_meta, missing]
    assert all(isinstance(p, ReadProblem) and p.problem for p in problems)


def test_describe_paths_is_json_and_never_identifies(tmp_path, rng):
    _axial(tmp_path / "study" / "series", [0.0, 3.0, 6.0], rng)
    truncated = tmp_path / "study" / "broken.dcm"
    truncated.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:5000])
    d = describe_paths([tmp_path / "study"])
    text = json.dumps(d) + format_description(d)
    for value in PATIENT.values():
        assert value not in text
    (item,) = d["items"]
    assert item["kind"] == "dicom series" and item["shape"] == [3, 4, 4] and item["num_files"] == 3
    assert item["spacing"] == [3.0, 0.5, 0.75] and item["orientation"] == "SPL"
    assert item["path"] == str(tmp_path / "study" / "series")
    (error,) = d["errors"]
    assert error["path"] == str(truncated) and "file truncated?" in error["problem"]
