"""``jaxmed demo chest --quick`` and ``jaxmed chest predict`` end to end, with the bad inputs of issue #13.

One quick study (a 256-pixel grid, small networks, a few steps) trains the
model the predict tests use; their numbers are not judged here (the quick
networks barely train), only the files, the table, the bad-input handling
and that no patient field leaks.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.tasks.chest import load_chest_model, lung_problem, predict_paths

pydicom_data = pytest.importorskip("pydicom.data")
get = pydicom_data.get_testdata_file


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("chest") / "demo"
    rc = main(["demo", "chest", "--quick", "--out", str(out), "--no-progress"])
    return rc, out


def test_demo_writes_the_study(demo):
    rc, out = demo
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("regions_phantom.png", "heatmap_phantom.png", "segments_phantom.png", "rg1_heatmap.png",
                 "rg1_regions.png", "rg1_prediction.json"):
        assert (out / name).stat().st_size > 0, name
        assert name in summary["files"]
    evaluation = summary["evaluation"]
    assert set(evaluation["dice"]) == {"right_lung", "left_lung", "heart"}
    assert evaluation["num_radiographs"] == 6
    assert summary["real_radiograph"]["file"] == "RG1_UNCR.dcm"
    assert "region Dice at full resolution" in summary["table"]
    assert summary["training"]["finding_whole_in_training"]["findings_drawn"] > 0
    model = load_chest_model(out / "model")
    assert model.config.grid == 256


def test_demo_refuses_a_non_empty_folder(demo, capsys):
    _, out = demo
    assert main(["demo", "chest", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lateral(tmp_path_factory):
    """A copy of RG1 whose header says it is a left lateral view."""
    import pydicom

    ds = pydicom.dcmread(get("RG1_UNCR.dcm"))
    ds.ViewPosition = "LL"
    path = tmp_path_factory.mktemp("lateral") / "lateral.dcm"
    ds.save_as(path)
    return path


def test_predict_reports_bad_files_and_goes_on(demo, lateral, tmp_path, capsys):
    _, out = demo
    files = [get("RG1_UNCR.dcm"), get("RG3_UNCR.dcm"), get("6154"), get("6247"), get("SC_rgb_rle.dcm"),
             get("emri_small.dcm"), str(lateral), str(tmp_path / "missing.dcm")]
    target = tmp_path / "pred"
    rc = main(["chest", "predict", *files, "--model", str(out / "model"), "--out", str(target), "--no-progress"])
    assert rc == 0
    result = json.loads((target / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in result["rows"]] == ["RG1_UNCR.dcm", "RG3_UNCR.dcm"]
    problems = {Path(p["path"]).name: p["problem"] for p in result["problems"]}
    assert "lateral view" in problems["6154"] and "lateral view" in problems["lateral.dcm"]
    assert "too small" in problems["6247"] and "16x16" in problems["6247"]
    assert "colour" in problems["SC_rgb_rle.dcm"]
    assert "frames" in problems["emri_small.dcm"]
    assert "no such file" in problems["missing.dcm"]
    err = capsys.readouterr().err
    assert "could not predict 6 file(s)" in err
    for row in result["rows"]:
        assert Path(row["overlay"]).is_file() and Path(row["regions_overlay"]).is_file()
        assert row["status"] in ("ok", "no lungs found")
    # No patient field reaches the outputs.
    import pydicom

    header = pydicom.dcmread(get("RG1_UNCR.dcm"), stop_before_pixels=True)
    text = (target / "predictions.csv").read_text() + (target / "predictions.json").read_text()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(header.get(keyword, "") or "")
        assert keyword not in text and (not value or value not in text)
    # Nothing is overwritten without --force.
    assert main(["chest", "predict", files[0], "--model", str(out / "model"), "--out", str(target),
                 "--no-progress"]) == 2


def test_lung_problem_by_hand():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:30, 4:14], labels[5:30, 24:34] = 1, 2
    assert lung_problem(labels) is None
    assert "wrong way round" in lung_problem(np.where(labels == 1, 2, np.where(labels == 2, 1, 0)))
    small = labels.copy()
    small[5:30, 24:34] = 0
    small[5:10, 24:30] = 2  # 30 of 1600 pixels: 1.9%, under a third of the right lung's 250
    assert "not a pair" in lung_problem(small)
    assert "no left lung" in lung_problem(np.where(labels == 2, 0, labels))


def test_a_radiograph_without_lungs_is_a_result(demo):
    """A region net that finds only background (every class but background pushed down) gives 'no lungs found'."""
    _, out = demo
    model = load_chest_model(out / "model")
    params = jax.tree.map(np.asarray, model.regions)
    last = max((k for k in params["params"] if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))  # the U-Net's 1x1 output convolution
    bias = params["params"][last]["bias"].copy()
    bias[0] += 100.0
    params["params"][last]["bias"] = bias
    table = predict_paths(model._replace(regions=params), [get("RG3_UNCR.dcm")], progress=False)
    (row,) = table.rows
    assert row["status"] == "no lungs found" and row["probability"] is None and row["findings"] == []
