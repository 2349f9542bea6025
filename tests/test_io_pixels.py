"""jaxmed.io pixel values: colour, MONOCHROME1 radiographs, VOI, unknown spacing, decoders.

Expected values come from pydicom's own decoding (``Dataset.pixel_array``,
which converts YCbCr to RGB itself), ``apply_modality_lut``, ``apply_voi_lut``
and ``apply_color_lut``, from formulas of the DICOM standard written out here
with numpy (PS3.3 C.11.2.1.2.1 windowing, the BT.601 luma), or from files that
hold the same image twice (lossless JPEG 2000 and its uncompressed twin).
"""

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from jaxmed.io import (
    ImageReadError,
    UnknownSpacingWarning,
    Volume,
    describe_paths,
    format_description,
    read_image,
    read_series,
    to_greyscale,
)
from jaxmed.io.pixels import install_hint

RG1_UNCR = get_testdata_file("RG1_UNCR.dcm")  # adult PA chest CR, MONOCHROME1, PixelSpacing 0
RG1_J2KR = get_testdata_file("RG1_J2KR.dcm")  # the same image, lossless JPEG 2000


def _expected_colour(path):
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array  # pydicom converts YBR_FULL(_422) to RGB by default
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(rgb, ds)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return ds, np.asarray(rgb, dtype=np.float32).reshape(n, int(ds.Rows), int(ds.Columns), 3)


def _quiet_read(path, **kwargs):
    with warnings.catch_warnings():  # most of these files give no pixel spacing: tested below
        warnings.simplefilter("ignore", UnknownSpacingWarning)
        return read_image(path, **kwargs)


# --------------------------------------------------------------------------- #
# Colour
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb.dcm",  # RGB, native
        "SC_ybr_full_uncompressed.dcm",  # YBR_FULL, native
        "SC_ybr_full_422_uncompressed.dcm",  # YBR_FULL_422, native (subsampled)
        "SC_rgb_jpeg_dcmtk.dcm",  # YBR_FULL, JPEG baseline
        "examples_ybr_color.dcm",  # YBR_FULL_422, JPEG baseline, 30-frame ultrasound cine
        "US1_J2KR.dcm",  # YBR_RCT, lossless JPEG 2000 (the decoder undoes the transform)
        "SC_rgb_rle_16bit_2frame.dcm",  # 16-bit RGB, RLE, 2 frames
        "SC_rgb_expb_2frame.dcm",  # big endian, 2 frames
        "SC_rgb_jpeg_gdcm.dcm",  # RGB, JPEG lossless (python-gdcm)
        "SC_rgb_jls_lossy_sample.dcm",  # RGB, JPEG-LS near-lossless (python-gdcm)
    ],
)
def test_colour_matches_pydicom_rgb(name):
    path = get_testdata_file(name)
    ds, expected = _expected_colour(path)
    vol = _quiet_read(path)
    assert vol.is_colour and vol.channels == 3 and vol.array.dtype == np.float32
    assert vol.array.shape == expected.shape and vol.shape == expected.shape[:3]
    assert vol.photometric == ds.PhotometricInterpretation
    np.testing.assert_array_equal(vol.array, expected)


@pytest.mark.parametrize(
    ("compressed", "uncompressed"),
    [
        ("JPEG-LL.dcm", None),  # JPEG lossless SV1, 16-bit CT
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", None),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # enhanced MR, JPEG-LS lossless
        ("JPEGLSNearLossless_16.dcm", None),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),  # JPEG 2000 lossless
    ],
)
def test_compressed_greyscale_decoded(compressed, uncompressed):
    # The transfer syntaxes of archived CT/MR, decoded by the python-gdcm plugin.
    path = get_testdata_file(compressed)
    ds = pydicom.dcmread(path)
    vol = _quiet_read(path)
    if "PerFrameFunctionalGroupsSequence" not in ds:  # enhanced: rescale per frame, tested in test_io
        expected = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(vol.array, np.asarray(expected, np.float32).reshape(vol.array.shape))
    if uncompressed is not None:  # lossless: the same values as the uncompressed twin
        np.testing.assert_array_equal(vol.array, _quiet_read(get_testdata_file(uncompressed)).array)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OBXXXX1A_rle_2frame.dcm", "gdcm-US-ALOKA-16.dcm"])
def test_palette_colour_through_the_lut(name):
    path = get_testdata_file(name)
    ds, expected = _expected_colour(path)
    vol = _quiet_read(path)
    assert vol.photometric == "PALETTE COLOR" and vol.array.shape == expected.shape
    np.testing.assert_array_equal(vol.array, expected)


def test_ybr_and_rgb_files_of_one_picture_agree():
    # pydicom-data holds one test picture stored as RGB and as YBR_FULL: after
    # conversion the two differ only by YCbCr rounding (a few 8-bit steps).
    rgb = _quiet_read(get_testdata_file("SC_rgb.dcm"))
    ybr = _quiet_read(get_testdata_file("SC_ybr_full_uncompressed.dcm"))
    assert np.abs(rgb.array - ybr.array).max() <= 6


def test_to_greyscale_is_bt601_luma():
    path = get_testdata_file("US1_UNCR.dcm")
    vol = _quiet_read(path)
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    grey = to_greyscale(vol)
    assert grey.array.shape == vol.shape and grey.channels == 1 and not grey.is_colour
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(grey.array[0], expected, rtol=1e-5, atol=1e-4)
    assert "BT.601" in grey.notes[-1] and grey.photometric == vol.photometric
    np.testing.assert_array_equal(grey.affine, vol.affine)
    ct = read_image(get_testdata_file("CT_small.dcm"))
    assert to_greyscale(ct) is ct


def test_luma_of_a_ybr_file_is_its_stored_y():
    # DICOM's YBR_FULL uses the BT.601 weights, so luma of the converted RGB
    # gives back the stored Y channel (up to the 8-bit rounding of R, G, B).
    path = get_testdata_file("SC_ybr_full_uncompressed.dcm")
    stored_y = pydicom.pixels.pixel_array(path, raw=True)[..., 0]
    grey = to_greyscale(_quiet_read(path))
    assert np.abs(grey.array[0] - stored_y).max() < 2.0


def _rgb_slice(path, rgb, *, z, series_uid, photometric="RGB"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    if photometric == "RGB":
        ds.set_pixel_data(np.asarray(rgb, np.uint8), "RGB", 8)
    else:
        ds.set_pixel_data(np.asarray(rgb, np.uint8)[..., 0], photometric, 8)
    ds.save_as(path, enforce_file_format=True)


def test_colour_series_stacks_by_position(tmp_path, rng):
    uid = generate_uid()
    images = rng.integers(0, 256, size=(3, 4, 5, 3))
    zs = [6.0, 0.0, 3.0]
    for k, (image, z) in enumerate(zip(images, zs)):
        _rgb_slice(tmp_path / f"c{k}.dcm", image, z=z, series_uid=uid)
    vol = read_series(tmp_path)
    assert vol.array.shape == (3, 4, 5, 3) and vol.spacing == pytest.approx((3.0, 0.5, 0.5))
    np.testing.assert_array_equal(vol.array, images[np.argsort(zs)].astype(np.float32))

    _rgb_slice(tmp_path / "grey.dcm", images[0], z=9.0, series_uid=uid, photometric="MONOCHROME2")
    with pytest.raises(ImageReadError, match=r"different photometric interpretation: colour \(RGB\) \(3:"):
        read_series(tmp_path)


def test_describe_shows_colour_and_unknown_spacing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownSpacingWarning)
        d = describe_paths([get_testdata_file("examples_ybr_color.dcm"), RG1_UNCR])
    messages = [str(w.message) for w in caught if w.category is UnknownSpacingWarning]
    assert len(messages) == 2 and "examples_ybr_color.dcm: pixel spacing and slice spacing" in messages[0]
    colour, radiograph = d["items"]
    assert (
        colour["channels"] == 3
        and colour["photometric"] == "YBR_FULL_422"
        and colour["shape"] == [30, 240, 320]
    )
    assert radiograph["channels"] == 1 and radiograph["spacing_known"] == [False, False, False]
    text = format_description(d)
    assert "YBR_FULL_422 -> RGB" in text and "MONOCHROME1" in text and "1? x 1? x 1?" in text


def test_volume_checks_channels():
    with pytest.raises(ValueError, match=r"x\.dcm: Volume.array must be \(z, y, x\) or \(z, y, x, 3\)"):
        Volume(np.zeros((1, 2, 2, 4), np.float32), (1.0, 1.0, 1.0), np.eye(4), "OT", None, (), "x.dcm")


# --------------------------------------------------------------------------- #
# Radiographs: MONOCHROME1, VOI, unknown spacing, JPEG 2000 twin
# --------------------------------------------------------------------------- #
def _stored_range(ds):
    """Values BitsStored/PixelRepresentation allow, through the rescale (PS3.3 C.11.1)."""
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds:
        lo, hi = (
            lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
            hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
        )
    return lo, hi


@pytest.fixture(scope="module")
def radiograph():
    ds = pydicom.dcmread(RG1_UNCR)
    with pytest.warns(UnknownSpacingWarning, match=r"RG1_UNCR\.dcm: pixel spacing"):
        modality = read_image(RG1_UNCR)
    return ds, modality


def test_radiograph_monochrome1_inverted(radiograph):
    ds, vol = radiograph
    assert ds.PhotometricInterpretation == "MONOCHROME1" and vol.photometric == "MONOCHROME1"
    lo, hi = _stored_range(ds)
    assert (lo, hi) == (0, 32767)  # 15 bits stored, no rescale
    np.testing.assert_array_equal(vol.array[0], (lo + hi) - apply_modality_lut(ds.pixel_array, ds))
    assert any("MONOCHROME1 inverted" in n and "32767 - v" in n for n in vol.notes)
    # A PA chest with higher = brighter: the mediastinum is brighter than both lung fields.
    a = vol.array[0]
    h, w = a.shape
    band = slice(h // 3, 2 * h // 3)
    mediastinum = a[band, w // 2 - 100 : w // 2 + 100].mean()
    lungs = [a[band, c - 100 : c + 100].mean() for c in (w // 4, 3 * w // 4)]
    assert mediastinum > max(lungs) + 3000


def test_radiograph_zero_pixel_spacing_is_unknown(radiograph):
    ds, vol = radiograph
    assert [float(v) for v in ds.PixelSpacing] == [0.0, 0.0]
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.spacing_known == (False, False, False)
    assert np.all(np.linalg.norm(vol.affine[:3, :3], axis=0) == 1.0)
    assert any("PixelSpacing is [0.0, 0.0]" in n for n in vol.notes)
    assert any("pixel spacing unknown" in n for n in vol.notes)


def test_radiograph_voi_window(radiograph):
    ds, _ = radiograph
    with pytest.warns(UnknownSpacingWarning):
        vol = read_image(RG1_UNCR, voi=True)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = _stored_range(ds)  # apply_windowing's output range for this file
    np.testing.assert_allclose(vol.array[0], (lo + hi) - windowed, rtol=1e-6)
    assert any("window center 15000, width 30000 (LINEAR)" in n for n in vol.notes)


def test_radiograph_jpeg2000_twin_is_identical(radiograph):
    _, uncompressed = radiograph
    with pytest.warns(UnknownSpacingWarning):
        compressed = read_image(RG1_J2KR)
    assert pydicom.dcmread(RG1_J2KR, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(compressed.array, uncompressed.array)


def test_radiograph_without_jpeg2000_decoder_names_packages(monkeypatch):
    # As on a machine without python-gdcm or Pillow: every plugin is "missing".
    decoder = get_decoder(JPEG2000Lossless)
    needs = {"gdcm": ("gdcm>=3.0.10",), "pillow": ("numpy", "pillow>=10.0")}
    unavailable = {**decoder._unavailable, **{name: needs.get(name, (name,)) for name in decoder._available}}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", unavailable)
    with pytest.raises(ImageReadError) as info:
        read_image(RG1_J2KR)
    assert info.value.path == RG1_J2KR
    problem = info.value.problem
    assert "JPEG 2000" in problem and "no installed package decodes it" in problem
    assert "python-gdcm" in problem and "pylibjpeg + pylibjpeg-openjpeg" in problem


def test_install_hint_reads_pydicoms_dependency_lines():
    class Missing:
        missing_dependencies = [
            "pylibjpeg - requires numpy, pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1",
            "gdcm - requires gdcm>=3.0.10",
        ]

    hint = install_hint(Missing(), "install one of")
    assert hint == "; install one of: pylibjpeg + pylibjpeg-libjpeg, python-gdcm"


def _mono_slice(
    path,
    pixels,
    *,
    photometric,
    signed=False,
    slope=None,
    intercept=None,
    spacing=None,
    imager_spacing=None,
    z=0.0,
    series_uid=None,
):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if spacing is not None:
        ds.PixelSpacing = spacing
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = imager_spacing
    ds.set_pixel_data(np.asarray(pixels, np.int16 if signed else np.uint16), photometric, 12)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_monochrome1_signed_with_rescale(tmp_path, rng):
    pixels = rng.integers(-2048, 2048, size=(3, 4))
    _mono_slice(
        tmp_path / "m1.dcm",
        pixels,
        photometric="MONOCHROME1",
        signed=True,
        slope=2.0,
        intercept=-100.0,
        spacing=[0.2, 0.2],
    )
    vol = read_image(tmp_path / "m1.dcm")
    lo, hi = -2048 * 2.0 - 100.0, 2047 * 2.0 - 100.0  # 12 bits stored, signed, through the rescale
    np.testing.assert_array_equal(vol.array[0], (lo + hi) - (pixels * 2.0 - 100.0))
    assert vol.spacing_known == (False, True, True)


def test_mixed_monochrome1_and_2_series_is_refused(tmp_path, rng):
    uid = generate_uid()
    for k, photometric in enumerate(["MONOCHROME1", "MONOCHROME2", "MONOCHROME2"]):
        _mono_slice(
            tmp_path / f"s{k}.dcm",
            rng.integers(0, 4000, size=(2, 2)),
            photometric=photometric,
            spacing=[1, 1],
            z=float(k),
            series_uid=uid,
        )
    with pytest.raises(
        ImageReadError, match=r"different photometric interpretation: MONOCHROME1 \(1: s0.dcm\)"
    ):
        read_series(tmp_path)


def test_zero_pixel_spacing_falls_back_to_imager_spacing(tmp_path):
    _mono_slice(
        tmp_path / "a.dcm",
        np.zeros((2, 3)),
        photometric="MONOCHROME2",
        spacing=[0, 0],
        imager_spacing=[0.15, 0.2],
    )
    vol = read_image(tmp_path / "a.dcm")
    assert vol.spacing[1:] == pytest.approx((0.15, 0.2)) and vol.spacing_known[1:] == (True, True)
    assert any("from ImagerPixelSpacing" in n for n in vol.notes)


def test_zero_pixel_spacing_warns_with_the_file_name(tmp_path):
    _mono_slice(tmp_path / "zero.dcm", np.zeros((2, 3)), photometric="MONOCHROME2", spacing=[0, 0])
    with pytest.warns(UnknownSpacingWarning, match=r"zero\.dcm: pixel spacing unknown"):
        vol = read_image(tmp_path / "zero.dcm")
    assert vol.spacing[1:] == (1.0, 1.0) and vol.spacing_known[1:] == (False, False)


# --------------------------------------------------------------------------- #
# VOI on greyscale files; CT default stays Hounsfield units
# --------------------------------------------------------------------------- #
def test_voi_lut_sequence_matches_pydicom():
    path = get_testdata_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds
    with pytest.warns(UnknownSpacingWarning):
        vol = read_image(path, voi=True)
    np.testing.assert_array_equal(vol.array[0], apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    assert any("VOI applied: VOI LUT Sequence" in n for n in vol.notes)


def test_voi_without_window_keeps_modality_values():
    path = get_testdata_file("CT_small.dcm")
    vol = read_image(path, voi=True)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(vol.array[0], apply_modality_lut(ds.pixel_array, ds))
    assert any("no VOI LUT or window" in n for n in vol.notes)
    assert read_image(path).notes == ()  # default: modality values, nothing to say


def test_enhanced_ct_per_frame_window():
    # eCT_Supplemental keeps its rescale and window in the shared functional
    # groups; DICOM PS3.3 C.11.2.1.2.1 (LINEAR) written out by hand.
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    window = shared.FrameVOILUTSequence[0]
    c, w = float(window.WindowCenter), float(window.WindowWidth)
    rescale = shared.PixelValueTransformationSequence[0]
    slope, intercept = float(rescale.RescaleSlope), float(rescale.RescaleIntercept)
    y_min, y_max = intercept, (2**ds.BitsStored - 1) * slope + intercept
    x = ds.pixel_array.astype(np.float64) * slope + intercept
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= c - 0.5 - (w - 1) / 2, y_min, np.where(x > c - 0.5 + (w - 1) / 2, y_max, y))
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    depth = [
        np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) @ np.cross(iop[:3], iop[3:])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    vol = read_image(path, voi=True)
    np.testing.assert_allclose(vol.array, y[np.argsort(depth)], rtol=1e-6, atol=1e-3)
    assert any("window center 49, width 102" in n for n in vol.notes)


def test_nifti_voi_is_a_note(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp_path / "a.nii")
    vol = read_image(tmp_path / "a.nii", voi=True)
    np.testing.assert_array_equal(vol.array, 1.0)
    assert vol.notes == ("voi=True ignored: NIfTI files hold no VOI LUT or window",)
    assert os.path.basename(vol.source) == "a.nii" and vol.photometric == ""
