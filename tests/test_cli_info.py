"""``jaxmed info``: a folder with a good series and a corrupt file reports both."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from jaxmed.cli import main

CT5N = os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")), "dicomdirtests", "98892001", "CT5N")


@pytest.fixture
def study(tmp_path):
    shutil.copytree(CT5N, tmp_path / "ct")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "ct" / "corrupt.dcm")
    (tmp_path / "ct" / "notes.txt").write_text("scanned on Tuesday\n")
    nib.save(
        nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])),
        tmp_path / "mask.nii.gz",
    )
    return tmp_path


def _identifiers():
    ids = set()
    for path in [os.path.join(CT5N, f) for f in os.listdir(CT5N)] + [get_testdata_file("MR_truncated.dcm")]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ids |= {str(ds.PatientName), str(ds.PatientID)}
    return {i for i in ids if i}


def test_info_table_reports_series_and_corrupt_file(study, capsys):
    series_uid = pydicom.dcmread(os.path.join(CT5N, "2062")).SeriesInstanceUID
    assert main(["info", str(study)]) == 0
    out = capsys.readouterr().out
    table, errors = out.split("Errors (2):")
    assert "nifti" in table and "2 x 3 x 4" in table
    assert (
        "dicom series" in table
        and series_uid in table
        and "5 x 16 x 16" in table
        and "2.5 x 0.4883 x 0.4883" in table
    )
    assert f"{study / 'ct' / 'corrupt.dcm'}: pixel data truncated: 8130 of 8192 bytes" in errors
    assert f"{study / 'ct' / 'notes.txt'}: not a DICOM file" in errors
    assert not any(identifier in out for identifier in _identifiers())


def test_info_json(study, capsys):
    assert main(["info", "--json", str(study), str(study / "missing.nii.gz")]) == 0
    d = json.loads(capsys.readouterr().out)
    series, nifti = d["items"]
    assert series["kind"] == "dicom series" and series["modality"] == "CT" and series["num_files"] == 5
    assert series["shape"] == [5, 16, 16] and series["series_number"] == 5
    assert series["path"] == str(study / "ct") and series["orientation"] == "SPL"
    assert nifti["kind"] == "nifti" and nifti["shape"] == [2, 3, 4] and nifti["spacing"] == [3.0, 2.0, 2.0]
    assert sorted(os.path.basename(e["path"]) for e in d["errors"]) == [
        "corrupt.dcm",
        "missing.nii.gz",
        "notes.txt",
    ]


def test_info_nothing_readable_exits_1(tmp_path, capsys):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    assert main(["info", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "(no readable images)" in out and f"{bad}: not a DICOM file" in out
