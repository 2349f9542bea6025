"""``jaxmed demo --quick`` end to end, and the study's building blocks by hand.

The AUROCs of the demo are recomputed from its results table with
scikit-learn; the test set and subset are checked against their definitions.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxmed.cli import main
from jaxmed.data.artefacts import ARTEFACTS
from jaxmed.tasks.scan_quality import (
    DemoConfig,
    TestSet,
    auroc_table,
    demo_config,
    format_auroc_table,
    locally_calibrated_flagged,
    make_test_set,
    subset_indices,
)

FILES = ("results.csv", "results.json", "summary.json", "roc_template.png", "roc_new_subjects.png", "roc_pca.png",
         "score_histograms_new_subjects.png",
         "score_histograms.png", "image_grid.png", "loss_curve.png")
CHECKPOINT_FILES = ("config.json", "preprocess.json", "calibration.json", "metrics.jsonl",
                    "background/config.json", "background/metrics.jsonl")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, stdout.getvalue()


def test_demo_writes_its_outputs(demo_run):
    out, printed = demo_run
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in CHECKPOINT_FILES:
        assert (out / "checkpoint" / name).is_file(), name
    assert list((out / "checkpoint" / "checkpoints").iterdir())
    for name in FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"] in printed
    for artefact in DemoConfig().artefacts:
        assert artefact in printed
    # The training set: the template's slices and the synthetic subjects' at the same levels.
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["data"]["synth_subjects"] == 4 and config["data"]["num_train"] == 5 * 71
    assert json.loads((out / "checkpoint" / "background" / "config.json").read_text())["run"]["augment"][
        "mutation_rate"] == 0.2


def _rows(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_demo_aurocs_match_sklearn_and_beat_chance(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out)
    assert {r["set"] for r in rows} == {"template", "new subject 1", "new subject 2"}

    def columns(rows):
        return {"log p(x)": -np.array([float(r["log_px"]) for r in rows]),
                "complexity": -np.array([float(r["complexity"]) for r in rows]),
                "LR": -np.array([float(r["likelihood_ratio"]) for r in rows]),
                "PCA(20)": np.array([float(r["pca_error"]) for r in rows])}

    def check(rows, table):
        groups = np.array([r["group"] for r in rows])
        labels = np.array([int(r["label"]) for r in rows])
        assert np.array_equal(labels, groups != "normal")
        out = {}
        for method, scores in columns(rows).items():
            out[method] = {}
            for artefact in DemoConfig().artefacts:
                rows_in = (groups == "normal") | (groups == artefact)
                out[method][artefact] = roc_auc_score(labels[rows_in], scores[rows_in])
                if table is not None:
                    entry = table[method][artefact]
                    assert entry["auroc"] == pytest.approx(out[method][artefact], abs=1e-6)
                    assert entry["low"] <= entry["auroc"] <= entry["high"]
        return out

    check([r for r in rows if r["set"] == "template"], summary["auroc"])
    # New subjects: each subject's corrupted slices against its own clean ones, then the mean.
    per_subject = [check([r for r in rows if r["set"] == f"new subject {s}"], None) for s in (1, 2)]
    for method, entries in summary["auroc_new_subjects"].items():
        if method in per_subject[0]:
            for artefact, entry in entries.items():
                values = [p[method][artefact] for p in per_subject]
                assert entry["auroc"] == pytest.approx(np.mean(values), abs=1e-6)
                assert entry["low"] == pytest.approx(min(values)) and entry["high"] == pytest.approx(max(values))
    # Even the quick run tells strong artefacts from normal slices.
    for artefact in ("noise", "spike"):
        assert summary["auroc"]["log p(x)"][artefact]["auroc"] > 0.5
        assert summary["auroc"]["PCA(20)"][artefact]["auroc"] > 0.5


def test_demo_decisions_follow_the_stored_threshold(demo_run):
    out, _ = demo_run
    calibration = json.loads((out / "checkpoint" / "calibration.json").read_text())
    decide = calibration["score"]["score"]
    assert decide == DemoConfig().decision_score
    assert sorted(calibration["calibrations"]) == ["complexity", "likelihood_ratio", "log_px"]
    threshold = calibration["calibrations"][decide]["threshold"]
    reference = np.asarray(calibration["calibrations"][decide]["reference_scores"])
    # 21 template validation slices and 2 held-out synthetic subjects at those levels; the
    # threshold is the floor(fpr * n)-th smallest of their scores.
    assert reference.size == 3 * 21
    assert threshold == reference[int(np.floor(0.05 * reference.size))]
    for r in _rows(out):
        score = float(r[decide])
        assert r["decision"] == ("normal" if score >= threshold else "abnormal")
        assert float(r["p_value"]) == pytest.approx((1 + np.sum(reference <= score)) / (reference.size + 1))


def test_demo_refuses_a_non_empty_folder(demo_run, capsys):
    out, _ = demo_run
    before = (out / "summary.json").read_text()
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_make_test_set_by_hand(rng):
    normal = rng.uniform(size=(3, 16, 16, 1)).astype(np.float32)
    key = jax.random.key(5)
    test = make_test_set(key, normal, artefacts=("blur", "noise"), severity=0.5, copies=2)
    assert test.images.shape == (3 + 3 * 2 * 2, 16, 16, 1)
    assert test.groups.tolist() == ["normal"] * 3 + ["blur"] * 6 + ["noise"] * 6
    assert test.labels.tolist() == [0] * 3 + [1] * 12
    assert test.source.tolist() == [0, 1, 2] + [0, 1, 2] * 4
    np.testing.assert_array_equal(test.images[:3], normal)
    # Copy c of slice i with artefact a: key fold_in(fold_in(fold_in(key, a), c), i), clipped to [0, 1].
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 1), 1), 2)
    expected = np.clip(np.asarray(ARTEFACTS["noise"](k, jnp.asarray(normal[2, ..., 0]), severity=0.5)), 0, 1)
    np.testing.assert_allclose(test.images[3 + 6 + 3 + 2, ..., 0], expected, atol=1e-6)
    assert test.images.min() >= 0.0 and test.images.max() <= 1.0


def test_local_calibration_by_hand():
    # Six clean slices, one corrupted copy of each. Blocks of 2 by slice index: folds 0 0 1 1 0 0.
    clean = [5.0, 6.0, 4.0, 7.0, 3.0, 8.0]
    corrupted = [4.5, 2.0, 3.5, 3.9, 10.0, 1.0]
    order = [2, 0, 5, 1, 4, 3]  # rows in any order: the blocks follow `source`
    source = np.asarray(order + order)
    test = TestSet(np.zeros((12, 1, 1, 1), np.float32), np.asarray([0] * 6 + [1] * 6),
                   np.asarray(["normal"] * 6 + ["motion"] * 6), source)
    scores = np.asarray([clean[i] for i in order] + [corrupted[i] for i in order])
    # fpr 0: each threshold is its fold's lowest clean score: fold 0 -> 3 (slice 4), fold 1 -> 4 (slice 2).
    # Fold 1's threshold (4) judges fold 0: clean slice 4 (3) is flagged; copies of slices 1 (2) and 5 (1) are.
    # Fold 0's threshold (3) judges fold 1: nothing below 3 there.
    rates = locally_calibrated_flagged(test, scores, fpr=0.0, block=2)
    assert rates == {"normal": pytest.approx(1 / 6), "motion": pytest.approx(2 / 6)}


def test_subset_takes_the_first_copies_of_the_same_slices():
    groups = np.array(["normal"] * 3 + ["a"] * 6)
    test = TestSet(np.zeros((9, 2, 2, 1)), (groups != "normal").astype(int), groups,
                   np.array([0, 1, 2, 0, 1, 2, 0, 1, 2]))
    np.testing.assert_array_equal(subset_indices(test, per_group=2), [0, 1, 3, 4])
    assert subset_indices(test, per_group=0).size == 0


def test_auroc_table_matches_sklearn_and_formats(rng):
    groups = np.array(["normal"] * 20 + ["noise"] * 10 + ["blur"] * 10)
    test = TestSet(np.zeros((40, 1)), (groups != "normal").astype(int), groups, np.arange(40) % 20)
    scores = rng.normal(size=40) + (groups == "noise") * 1.5 - (groups == "blur")
    table = auroc_table(jax.random.key(0), {"m": scores}, test, num_resamples=50)
    for artefact in ("noise", "blur"):
        rows = (groups == "normal") | (groups == artefact)
        assert table["m"][artefact]["auroc"] == pytest.approx(roc_auc_score(test.labels[rows], scores[rows]))
        assert table["m"][artefact]["num_normal"] == 20 and table["m"][artefact]["num_corrupted"] == 10
    lines = format_auroc_table(table).splitlines()
    assert lines[0].split() == ["artefact", "m"] and lines[2].split()[0] == "noise"
    assert lines[2].split()[1] == f"{table['m']['noise']['auroc']:.3f}"


def test_demo_config_validates():
    assert demo_config(quick=True).preset == "small32"
    assert demo_config(quick=True, steps=70).steps == 70
    with pytest.raises(ValueError, match="unknown artefacts"):
        DemoConfig(artefacts=("noise", "zipper"))
    with pytest.raises(ValueError, match="data must be one of"):
        DemoConfig(data="ct")
    with pytest.raises(ValueError, match="square single-channel 2D preset"):
        DemoConfig(preset="small3d")


def test_noise_scale_learns_faster_and_the_model_keeps_its_floor(demo_run):
    import dataclasses

    from jaxmed.tasks.scan_quality import run_config
    from jaxmed.train import OptimConfig, config_from_dict, load_config, make_optimizer

    config = demo_config(steps=100, warmup_steps=0, noise_scale_lr_factor=30.0, min_noise_std=0.01)
    assert run_config(config).model_config.min_scale == 0.01
    # The optimiser the demo trained with, rebuilt from its config.json, at a constant rate.
    out, _ = demo_run
    optim = config_from_dict(OptimConfig, load_config(out / "checkpoint")["run"]["optim"])
    assert optim.lr_factors == (("params/log_scale", DemoConfig().noise_scale_lr_factor),)
    tx = make_optimizer(dataclasses.replace(optim, schedule="constant", lr_factors=(("params/log_scale", 30),)),
                        total_steps=100)
    params = {"params": {"log_scale": jnp.full((2,), -4.0), "Dense_0": {"kernel": jnp.zeros((2,))}}}
    state = tx.init(params)
    grads = {"params": {"log_scale": jnp.ones((2,)), "Dense_0": {"kernel": jnp.ones((2,))}}}
    updates, state = tx.update(grads, state, params)
    # Adam's first step is -lr * sign(g): lr for the network, 30 times that for log sigma.
    np.testing.assert_allclose(updates["params"]["Dense_0"]["kernel"], -optim.learning_rate, rtol=1e-4)
    np.testing.assert_allclose(updates["params"]["log_scale"], -30 * optim.learning_rate, rtol=1e-4)
