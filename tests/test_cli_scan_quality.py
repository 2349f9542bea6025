"""``jaxmed calibrate`` and ``jaxmed score`` on real DICOM test files, a NIfTI and corrupt files.

The checkpoint is trained in the test by ``jaxmed train`` (the 8x8 "tiny"
VAE, a few steps on phantoms). Expected numbers come from definitions: the
threshold is an order statistic of the normal slices' scores, a volume's
score is its lowest slice score, its p-value the Bonferroni-adjusted
smallest slice p-value.
"""

import csv
import json
import math
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from jaxmed.cli import main

FAST = ["--num-samples", "8", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    rc = main(["train", "--out", str(out), "--data", "phantoms", "--preset", "tiny", "--steps", "5",
               "--batch-size", "8", "--num-train", "16", "--num-val", "8", "--eval-every", "0",
               "--devices", "1", "--no-progress", "--force"])
    assert rc == 0
    return out


def _nifti(path, seed, num_slices=6):
    rng = np.random.default_rng(seed)
    array = np.zeros((8, 8, num_slices), np.float32)  # (i, j, k): 8x8 slices along k
    array[1:7, 2:6] = rng.uniform(0.2, 1.0, size=(6, 4, num_slices))
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "corrupt.dcm")
    (folder / "notes.txt").write_text("not an image\n")
    _nifti(folder / "scan.nii.gz", seed=1)
    normal = _nifti(tmp_path / "normal.nii.gz", seed=2, num_slices=10)
    return folder, normal


def _identifiers():
    ids = set()
    for name in ("CT_small.dcm", "MR_truncated.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
        ids |= {str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", ""))}
    return {i for i in ids if i}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_calibrate_then_score_a_folder(checkpoint, study, tmp_path, monkeypatch, capsys):
    folder, normal = study
    monkeypatch.chdir(tmp_path)
    calibration_file = checkpoint / "calibration.json"
    calibration_file.unlink(missing_ok=True)

    assert main(["calibrate", "--checkpoint", str(checkpoint), "--normal", str(normal), "--fpr", "0.2",
                 "--method", "importance", "--score", "log-px", *FAST]) == 0
    calibration = json.loads(calibration_file.read_text())
    assert calibration["score"]["method"] == "importance" and calibration["score"]["num_samples"] == 8
    assert sorted(calibration["calibrations"]) == ["complexity", "log_px"]  # no background model
    assert calibration["score"]["score"] == "log_px"
    reference = np.asarray(calibration["calibrations"]["log_px"]["reference_scores"])
    threshold = calibration["calibrations"]["log_px"]["threshold"]
    assert reference.size == 10 and calibration["num_volumes"] == 1

    # Refuses to overwrite the calibration without --force.
    before = calibration_file.read_text()
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--normal", str(normal), *FAST]) == 2
    assert "calibration.json: exists" in capsys.readouterr().err
    assert calibration_file.read_text() == before

    # Scoring the normal scan again gives the same slice scores (same keys),
    # and the threshold is their order statistic k = floor(0.2 * 10).
    assert main(["score", "--checkpoint", str(checkpoint), "--out", "normal", str(normal), *FAST]) == 0
    rows = _read_csv(tmp_path / "normal.csv")
    scores = np.sort([float(r["score"]) for r in rows if r["level"] == "slice"])
    np.testing.assert_allclose(scores, reference, rtol=1e-6)
    assert threshold == pytest.approx(scores[math.floor(0.2 * 10)])
    capsys.readouterr()

    assert main(["score", "--checkpoint", str(checkpoint), str(folder), *FAST]) == 0
    out, err = capsys.readouterr()
    assert "could not score 2 input(s)" in err
    assert f"{folder / 'corrupt.dcm'}: pixel data truncated" in err
    assert f"{folder / 'notes.txt'}: not a DICOM file" in err
    assert "scored 2 volume(s)" in out

    record = json.loads((tmp_path / "jaxmed-scores.json").read_text())
    assert record["meta"]["score"]["method"] == "importance" and record["meta"]["threshold"] == threshold
    rows = _read_csv(tmp_path / "jaxmed-scores.csv")
    assert len(rows) == len(record["rows"])
    errors = {r["file"]: r["problem"] for r in rows if r["level"] == "error"}
    assert set(errors) == {str(folder / "corrupt.dcm"), str(folder / "notes.txt")}
    for file, num_slices in ((folder / "ct.dcm", 1), (folder / "scan.nii.gz", 6)):
        mine = [r for r in record["rows"] if r["file"] == str(file)]
        slices = [r for r in mine if r["level"] == "slice"]
        (volume,) = [r for r in mine if r["level"] == "volume"]
        assert len(slices) == volume["num_slices"] == num_slices
        for r in slices:
            assert r["decision"] == ("normal" if r["score"] >= threshold else "abnormal")
            assert r["p_value"] == pytest.approx((1 + np.sum(reference <= r["score"])) / 11)
            assert r["num_reference"] == 10
        assert volume["score"] == min(r["score"] for r in slices)
        assert volume["decision"] == ("normal" if volume["score"] >= threshold else "abnormal")
        assert volume["p_value"] == pytest.approx(min(1.0, num_slices * min(r["p_value"] for r in slices)))
    assert rows[0]["input"] in ("dicom file", "nifti")

    # No patient-identifying field anywhere.
    texts = [out, err, (tmp_path / "jaxmed-scores.csv").read_text(), (tmp_path / "jaxmed-scores.json").read_text()]
    assert not any(identifier in text for identifier in _identifiers() for text in texts)

    # Existing outputs are kept unless --force.
    before = (tmp_path / "jaxmed-scores.csv").read_text()
    assert main(["score", "--checkpoint", str(checkpoint), str(folder / "ct.dcm"), *FAST]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "jaxmed-scores.csv").read_text() == before
    assert main(["score", "--checkpoint", str(checkpoint), "--force", str(folder / "ct.dcm"), *FAST]) == 0
    assert len(_read_csv(tmp_path / "jaxmed-scores.csv")) == 2


def test_score_exits_1_when_nothing_can_be_scored(checkpoint, study, tmp_path, capsys):
    folder, _ = study
    prefix = str(tmp_path / "bad")
    assert main(["score", "--checkpoint", str(checkpoint), "--out", prefix, str(folder / "corrupt.dcm"),
                 str(tmp_path / "missing.nii.gz"), *FAST]) == 1
    rows = _read_csv(prefix + ".csv")
    assert [r["level"] for r in rows] == ["error", "error"]
    assert "no such file" in rows[1]["problem"]
    assert "could not score 2 input(s)" in capsys.readouterr().err


def test_score_with_another_method_ignores_the_calibration(checkpoint, study, tmp_path, capsys):
    folder, normal = study
    if not (checkpoint / "calibration.json").exists():
        assert main(["calibrate", "--checkpoint", str(checkpoint), "--normal", str(normal), *FAST]) == 0
    prefix = str(tmp_path / "match")
    assert main(["score", "--checkpoint", str(checkpoint), "--method", "match", "--out", prefix,
                 "--threshold=-1e9", str(folder / "ct.dcm"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "calibration was made with importance" in err
    rows = _read_csv(prefix + ".csv")
    assert [r["decision"] for r in rows] == ["normal", "normal"] and rows[0]["p_value"] == ""
    assert float(rows[0]["score"]) <= 0.0  # -KL


def test_score_reports_a_bad_checkpoint(tmp_path, capsys):
    assert main(["score", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"),
                 get_testdata_file("CT_small.dcm")]) == 2
    assert "config.json: not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.csv")


def test_the_complexity_score_decides_when_asked_and_a_shift_is_reported(checkpoint, study, tmp_path, capsys):
    folder, normal = study
    checkpoint_copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, checkpoint_copy)
    (checkpoint_copy / "calibration.json").unlink(missing_ok=True)
    # The default decision score is the complexity-corrected one.
    assert main(["calibrate", "--checkpoint", str(checkpoint_copy), "--normal", str(normal), "--fpr", "0.2",
                 *FAST]) == 0
    assert "complexity: " in capsys.readouterr().out
    stored = json.loads((checkpoint_copy / "calibration.json").read_text())
    assert stored["score"]["score"] == "complexity"
    # A recalibration keeps the decision score of the calibration it replaces.
    assert main(["calibrate", "--checkpoint", str(checkpoint_copy), "--normal", str(normal), "--fpr", "0.2",
                 "--score", "log-px", "--force", *FAST]) == 0
    assert main(["calibrate", "--checkpoint", str(checkpoint_copy), "--normal", str(normal), "--fpr", "0.2",
                 "--force", *FAST]) == 0
    assert json.loads((checkpoint_copy / "calibration.json").read_text())["score"]["score"] == "log_px"
    assert main(["calibrate", "--checkpoint", str(checkpoint_copy), "--normal", str(normal), "--fpr", "0.2",
                 "--score", "complexity", "--force", *FAST]) == 0
    capsys.readouterr()
    stored = json.loads((checkpoint_copy / "calibration.json").read_text())
    bits = stored["calibrations"]["complexity"]
    prefix = str(tmp_path / "scores")
    assert main(["score", "--checkpoint", str(checkpoint_copy), "--out", prefix, str(folder / "scan.nii.gz"),
                 *FAST]) == 0
    rows = [r for r in json.loads(open(prefix + ".json").read())["rows"] if r["level"] == "slice"]
    for r in rows:
        # The decision score is the complexity one, and the stored reference gives its p-value.
        assert r["score"] == r["complexity"] and r["log_px"] is not None and r["likelihood_ratio"] is None
        assert r["decision"] == ("normal" if r["complexity"] >= bits["threshold"] else "abnormal")
        assert r["p_value"] == pytest.approx((1 + np.sum(np.asarray(bits["reference_scores"]) <= r["score"])) / 11)
    # The likelihood ratio needs a background model: a clear error, nothing written.
    assert main(["score", "--checkpoint", str(checkpoint_copy), "--score", "likelihood-ratio", "--out",
                 str(tmp_path / "lr"), str(folder / "scan.nii.gz"), *FAST]) == 2
    assert "needs a background model" in capsys.readouterr().err and not (tmp_path / "lr.csv").exists()

    # Scans far from the calibration's normal slices (here: the calibration's threshold raised far
    # above every score) are reported as a shift of the whole batch, with what to do.
    stored["calibrations"]["complexity"]["reference_scores"] = [1e9] * 10
    stored["calibrations"]["complexity"]["threshold"] = 1e9
    (checkpoint_copy / "calibration.json").write_text(json.dumps(stored))
    assert main(["score", "--checkpoint", str(checkpoint_copy), "--out", prefix, "--force",
                 str(folder / "scan.nii.gz"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "lie outside the calibration's normal range as a whole" in err and "100% of all slices" in err
    assert f"jaxmed calibrate --checkpoint {checkpoint_copy} --normal" in err
    check = json.loads(open(prefix + ".json").read())["calibration_check"]
    assert check["outside"] and check["below_calibration_min"] == 1.0
    assert check["outside_groups"] == [str(folder / "scan.nii.gz")]
