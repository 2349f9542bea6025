"""Every file pydicom and pydicom-data ship: read by `read_image`, or refused by name.

A file is either read into a `Volume` whose values agree with pydicom's own
decoding, or refused with an `ImageReadError` whose ``.path`` is the file and
whose problem is one of the known kinds below; nothing else escapes. Each file
is read once (cached), so the parametrised tests and the summary share the
work; the whole sweep takes about 15 s on 2 cores.

The folders are listed on disk: ``pydicom.data.get_testdata_files`` would try
to download, and hangs without a network.
"""

import functools
import os
import re
import warnings
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut

from jaxmed.io import ImageReadError, read_image

ROOTS = {
    "pydicom": os.path.dirname(get_testdata_file("CT_small.dcm")),  # pydicom's own test files
    "pydicom-data": os.path.dirname(get_testdata_file("RG1_UNCR.dcm")),
}
# Reads at or above this many: 79 before colour images, python-gdcm and the
# badVR fix, 155 with them (pydicom 3.0.2, pydicom-data 1.0.0).
MIN_READ = 155
# Pixel values are compared with pydicom's for arrays up to this size; the
# one bigger file (a 120-frame colour cine, 110 M samples) is only read.
MAX_CHECKED_SAMPLES = 20_000_000

# Why a file may be refused: (label, pattern of ImageReadError.problem).
REFUSALS = (
    ("not a DICOM file", r"^not a DICOM file"),
    ("not an image (no pixel data)", r"^no pixel data: not an image"),
    ("image object without pixel data", r"^no pixel data although it is a"),
    ("pixel data truncated", r"^pixel data truncated"),
    ("no transfer syntax", r"no Transfer Syntax UID"),
    (
        "malformed header",
        r"^NumberOfFrames \(0028,0008\) is .*not a positive integer|^malformed DICOM header",
    ),
    ("installed decoders fail", r"could not be decoded by the installed decoder"),
)
# Compressed files the installed decoders cannot decode: two are malformed
# (pydicom's own tests expect them to fail), one is 12-bit JPEG Extended,
# which only GPL-licensed pylibjpeg-libjpeg decodes (the message says so).
UNDECODABLE = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "JPGExtended.dcm"}


def _shipped_files() -> list[str]:
    files = []
    for root in ROOTS.values():
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.join(folder, n) for n in sorted(names) if not n.endswith((".py", ".pyc"))]
    return files


FILES = _shipped_files()


def _file_id(path: str) -> str:
    name, root = next((n, r) for n, r in ROOTS.items() if path.startswith(r + os.sep))
    return f"{name}/{os.path.relpath(path, root)}"


class Outcome(NamedTuple):
    kind: str  # "read", "refused" or "crash"
    reason: str  # refusal label, or what was checked
    detail: str  # the problem, or a mismatch; "" when all is well


def _refusal(err: ImageReadError, path: str) -> Outcome:
    if err.path != path:
        return Outcome("crash", "wrong path", f"ImageReadError names {err.path!r}, not the file")
    for label, pattern in REFUSALS:
        if re.search(pattern, err.problem):
            return Outcome("refused", label, err.problem)
    return Outcome("refused", "unexpected", err.problem)


def _expected_values(path: str) -> np.ndarray | None:
    """pydicom's decoding with the convention of jaxmed.io.volume, or None where it does not apply.

    Enhanced multi-frame files keep their rescale in functional groups, which
    ``apply_modality_lut`` does not read: those have their own tests.
    """
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # a raw data set (no meta): as pydicom parsed it
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else pydicom.uid.ExplicitVRLittleEndian
            if little
            else pydicom.uid.ExplicitVRBigEndian
        )
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        return None
    pixels = ds.pixel_array  # YBR_FULL(_422) converted to RGB by pydicom
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        return apply_color_lut(pixels, ds)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return pixels
    values = apply_modality_lut(pixels, ds)
    if photometric == "MONOCHROME1":  # inverted over the range the modality LUT can output
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
        else:
            bits = int(ds.BitsStored)
            lo, hi = (
                (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            )
            if "RescaleSlope" in ds and "RescaleIntercept" in ds:
                slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
                lo, hi = lo * slope + intercept, hi * slope + intercept
        values = (lo + hi) - np.asarray(values, np.float64)
    return values


def _check_values(path: str, array: np.ndarray) -> Outcome:
    if array.dtype != np.float32 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        return Outcome("read", "values", f"array {array.dtype} {array.shape} breaks the Volume convention")
    if array.size > MAX_CHECKED_SAMPLES:
        return Outcome("read", "read only (large)", "")
    expected = _expected_values(path)
    if expected is None:
        return Outcome("read", "enhanced multi-frame (own tests)", "")
    expected = np.asarray(expected, np.float32)
    if expected.size != array.size:
        return Outcome("read", "values", f"{array.shape} values, pydicom gives {expected.shape}")
    # Frames may be re-sorted by position (RT dose, legacy multi-frame): compare as sets.
    got, want = (
        (array, expected.reshape(array.shape))
        if array.shape[0] == 1
        else (np.sort(array, None), np.sort(expected, None))
    )
    if not np.allclose(got, want, rtol=1e-6, atol=0, equal_nan=True):
        worst = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
        return Outcome("read", "values", f"values differ from pydicom's by up to {worst:g}")
    return Outcome("read", "values match pydicom", "")


@functools.cache
def outcome(path: str) -> Outcome:
    """What reading `path` gives; computed once per file."""
    with warnings.catch_warnings():
        # pydicom warns about invalid VRs in these deliberately odd files, and
        # most of them have no pixel spacing (UnknownSpacingWarning).
        warnings.simplefilter("ignore")
        try:
            volume = read_image(path)
        except ImageReadError as err:
            return _refusal(err, path)
        except Exception as err:  # the bug this sweep exists to catch
            return Outcome("crash", type(err).__name__, f"{type(err).__name__}: {err}")
        return _check_values(path, volume.array)


def test_the_shipped_files_are_found():
    # pydicom 3.0.2 ships 108 files on disk, pydicom-data 1.0.0 136.
    assert len(FILES) >= 239, ROOTS


@pytest.mark.parametrize("path", FILES, ids=[_file_id(p) for p in FILES])
def test_file_is_read_or_refused_by_name(path):
    result = outcome(path)
    assert result.kind != "crash", f"{path}: {result.detail}"
    if result.kind == "refused":
        assert result.reason != "unexpected", f"{path}: refused for an unknown reason: {result.detail}"
        if result.reason == "installed decoders fail":
            assert os.path.basename(path) in UNDECODABLE, f"{path}: {result.detail}"
    else:
        assert result.detail == "", f"{path}: {result.detail}"


def test_sweep_summary(record_property):
    results = {p: outcome(p) for p in FILES}
    read = [p for p, r in results.items() if r.kind == "read"]
    by_reason: dict[str, list[str]] = {}
    for p, r in results.items():
        if r.kind == "refused":
            by_reason.setdefault(r.reason, []).append(_file_id(p))
    summary = "\n".join(
        [f"{len(read)} read, {len(results) - len(read)} refused of {len(results)} shipped files"]
        + [
            f"  refused, {reason}: {len(files)} ({', '.join(files[:4])}{', ...' if len(files) > 4 else ''})"
            for reason, files in sorted(by_reason.items())
        ]
    )
    print(summary)
    record_property("io_sweep", summary)
    assert not [p for p, r in results.items() if r.kind == "crash"], summary
    assert len(read) >= MIN_READ, summary
    # Every colour image and every common compressed syntax is read now.
    assert "unexpected" not in by_reason, summary
    assert len(by_reason.get("installed decoders fail", [])) <= len(UNDECODABLE), summary
