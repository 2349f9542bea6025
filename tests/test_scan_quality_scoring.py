"""Scoring files with a checkpoint: scores, tables, calibration.

Expected values are computed independently: preprocessing by hand in numpy,
the match score from the encoder's outputs with the closed-form Gaussian KL in
numpy, thresholds and p-values from their definitions.
"""

import json
import math
import os
import shutil

import jax
import nibabel as nib
import numpy as np
import optax
import pytest
from pydicom.data import get_testdata_file

from _helpers import preprocess_by_hand, scan_volume
from jaxmed.data import Preprocessing, preprocess_volume
from jaxmed.likelihood import log_px
from jaxmed.models import PRESETS, VAE, vae_latent_model
from jaxmed.tasks.scan_quality import (
    CALIBRATION_FILE,
    ROW_FIELDS,
    Calibration,
    ScoreSpec,
    calibrate_paths,
    load_calibration,
    load_scorer,
    save_calibration,
    score_images,
    score_paths,
    two_sided_anomaly_scores,
    write_table,
)
from jaxmed.tasks.scan_quality import scores as scores_module
from jaxmed.train import Checkpointer, TrainState, save_config, save_preprocessing
from jaxmed.train.registry import model_config_to_dict

MATCH = ScoreSpec(method="match", batch_size=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint folder of the 8x8 "tiny" VAE at its (random) initial parameters."""
    run_dir = tmp_path_factory.mktemp("run")
    config = PRESETS["tiny"]
    model = VAE(config)
    # Parameters drawn with numpy at the shapes init would make: compiling
    # the initialisers' PRNG code costs more than every test here.
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32), jax.random.key(1))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    save_config(run_dir, {"model": {"name": "vae", "preset": "tiny", "config": model_config_to_dict(config)}})
    with Checkpointer(run_dir) as checkpointer:
        checkpointer.save(TrainState.create(params=params, tx=optax.sgd(0.1), key=jax.random.key(2)))
    return run_dir


def _match_by_hand(model, params, images):
    mean, log_scale = (np.asarray(a, np.float64) for a in model.apply(params, images, method=VAE.encode))
    std = np.exp(log_scale)
    return -0.5 * np.sum(std**2 + mean**2 - 1.0 - 2.0 * np.log(std), axis=-1)


def _write_nifti(path, array_zyx):
    nib.save(nib.Nifti1Image(np.transpose(array_zyx, (2, 1, 0)), np.eye(4)), path)


def test_match_scores_by_hand_and_independent_of_batching(run_dir, rng):
    scorer = load_scorer(run_dir)
    images = rng.uniform(size=(7, 8, 8, 1)).astype(np.float32)
    expected = _match_by_hand(scorer.model, scorer.params, images)
    for batch_size in (1, 3, 32):
        spec = ScoreSpec(method="match", batch_size=batch_size)
        got = score_images(jax.random.key(0), scorer.model, scorer.params, images, spec=spec)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_importance_scores_use_one_key_per_image(run_dir, rng):
    scorer = load_scorer(run_dir)
    images = rng.uniform(size=(5, 8, 8, 1)).astype(np.float32)
    key = jax.random.key(3)
    indices = np.array([4, 9, 0, 7, 2])
    by_two = score_images(key, scorer.model, scorer.params, images, indices=indices,
                          spec=ScoreSpec(num_samples=8, chunk_size=4, batch_size=2))
    # Image i is log_px of a batch of one with key fold_in(key, indices[i]),
    # whatever the batch it was scored in.
    lvm = vae_latent_model(scorer.model, scorer.params)
    direct = jax.jit(jax.vmap(lambda k, x: log_px(k, lvm, x[None], method="importance", num_samples=8)[0]))(
        jax.vmap(lambda i: jax.random.fold_in(key, i))(indices), images)
    np.testing.assert_allclose(by_two, np.asarray(direct), rtol=1e-5)


def test_files_of_many_slice_counts_compile_once(run_dir, tmp_path, rng):
    from jaxmed.data import preprocess

    for num_slices in (2, 4, 6):  # 16x16 slices, resampled to the model's 8x8
        array = np.repeat(np.repeat(scan_volume(rng), 2, axis=1), 2, axis=2)[:num_slices]
        _write_nifti(tmp_path / f"scan{num_slices}.nii.gz", array)
    scorer = load_scorer(run_dir)
    caches = (scores_module._score_batch, preprocess._resize_batch)
    before = [f._cache_size() for f in caches]
    first = score_paths(scorer, [tmp_path], spec=MATCH)
    # Another seed and a second call: the same programs (the seed is no part of them).
    again = score_paths(scorer, [tmp_path], spec=ScoreSpec(method="match", batch_size=4, seed=7))
    grown = [f._cache_size() - b for f, b in zip(caches, before, strict=True)]
    assert max(grown) <= 1, grown  # not one per file or per call
    assert first.num_scored == 3 and first.rows == again.rows


def test_load_scorer_reads_preprocessing_and_checks_its_size(run_dir, tmp_path):
    scorer = load_scorer(run_dir)
    assert scorer.preprocessing == Preprocessing(image_size=(8, 8))  # jaxmed train's file default
    assert scorer.calibrations is None and scorer.calibration_spec is None and scorer.background is None
    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    save_preprocessing(other, Preprocessing(image_size=(16, 16)))
    with pytest.raises(ValueError, match=r"image_size \(16, 16\) does not match the model input \(8, 8, 1\)"):
        load_scorer(other)


def test_calibration_file_round_trip_and_no_overwrite(tmp_path):
    calibration = Calibration(threshold=-3.0, reference_scores=np.array([-1.0, -3.0, 2.0]), target_fpr=0.05)
    bits = Calibration(threshold=7.0, reference_scores=np.array([9.0, 7.0]), target_fpr=0.05)
    spec = ScoreSpec(method="importance", num_samples=12, options={"foo": 1}, score="complexity")
    with pytest.raises(ValueError, match="no calibration of the decision score 'complexity'"):
        save_calibration(tmp_path, {"log_px": calibration}, spec=spec)
    save_calibration(tmp_path, {"log_px": calibration, "complexity": bits}, spec=spec)
    with pytest.raises(FileExistsError, match="calibration.json: exists"):
        save_calibration(tmp_path, {"log_px": calibration, "complexity": bits}, spec=spec)
    loaded, loaded_spec = load_calibration(tmp_path)
    assert sorted(loaded) == ["complexity", "log_px"] and loaded_spec == spec
    assert loaded["log_px"].threshold == -3.0 and loaded["log_px"].target_fpr == 0.05
    np.testing.assert_array_equal(loaded["log_px"].reference_scores, [-3.0, -1.0, 2.0])
    np.testing.assert_array_equal(loaded["complexity"].reference_scores, [7.0, 9.0])
    # A file of jaxmed 0.1.0: one calibration, of log p(x), and a spec without a decision score.
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"calibration": calibration.to_dict(), "score": {
        "method": "importance", "num_samples": 12, "chunk_size": 25, "batch_size": 32, "seed": 0, "options": {}}}))
    loaded, loaded_spec = load_calibration(tmp_path)
    assert list(loaded) == ["log_px"] and loaded_spec.score == "log_px" and loaded["log_px"].threshold == -3.0
    (tmp_path / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not a valid calibration file"):
        load_calibration(tmp_path)


@pytest.fixture
def study(tmp_path, rng):
    folder = tmp_path / "study"
    folder.mkdir()
    array = scan_volume(rng)
    _write_nifti(folder / "brain.nii.gz", array)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "corrupt.dcm")
    return folder, array


def test_score_paths_table_by_hand(run_dir, study):
    folder, array = study
    scorer = load_scorer(run_dir)
    reference = np.array([-30.0, -20.0, -10.0, -5.0, 0.0, 5.0, 10.0])
    calibration = Calibration(threshold=-10.0, reference_scores=reference, target_fpr=0.3)
    table = score_paths(scorer, [folder], spec=MATCH, calibrations={"log_px": calibration})

    assert table.num_scored == 2
    assert [p["path"] for p in table.problems] == [str(folder / "corrupt.dcm")]
    assert "truncated" in table.problems[0]["problem"]
    assert all(set(r) == set(ROW_FIELDS) for r in table.rows)
    errors = [r for r in table.rows if r["level"] == "error"]
    assert [(e["file"], e["problem"]) for e in errors] == [(p["path"], p["problem"]) for p in table.problems]

    nifti = [r for r in table.rows if r["file"] == str(folder / "brain.nii.gz")]
    slices, (volume,) = nifti[:-1], nifti[-1:]
    images, keep = preprocess_by_hand(array)
    expected = _match_by_hand(scorer.model, scorer.params, images.astype(np.float32))
    assert [r["slice"] for r in slices] == keep.tolist()
    np.testing.assert_allclose([r["score"] for r in slices], expected, rtol=1e-4, atol=1e-4)
    for r, s in zip(slices, expected, strict=True):
        assert r["decision"] == ("normal" if s >= -10.0 else "abnormal")
        assert r["p_value"] == pytest.approx((1 + np.sum(reference <= r["score"])) / 8)
        assert r["num_reference"] == 7 and r["input"] == "nifti"
    assert volume["num_slices"] == 5
    assert volume["score"] == min(r["score"] for r in slices)
    assert volume["worst_slice"] == keep[int(np.argmin(expected))]
    assert volume["p_value"] == pytest.approx(min(1.0, 5 * min(r["p_value"] for r in slices)))

    ct = [r for r in table.rows if r["file"] == str(folder / "ct.dcm")]
    assert [r["level"] for r in ct] == ["slice", "volume"] and ct[0]["slice"] == 0


def test_user_threshold_without_calibration(run_dir, study):
    folder, _ = study
    table = score_paths(load_scorer(run_dir), [folder / "ct.dcm"], spec=MATCH, threshold=1e9)
    (slice_row, volume_row) = table.rows
    assert slice_row["decision"] == volume_row["decision"] == "abnormal"
    assert slice_row["p_value"] is None and slice_row["num_reference"] is None
    table = score_paths(load_scorer(run_dir), [folder / "ct.dcm"], spec=MATCH)
    assert table.rows[0]["decision"] is None


def test_calibrate_paths_threshold_is_the_order_statistic(run_dir, study, tmp_path):
    folder, _ = study
    scorer = load_scorer(run_dir)
    calibrations, problems, num_volumes = calibrate_paths(scorer, [folder], spec=MATCH, fpr=0.2)
    assert num_volumes == 2 and len(problems) == 1
    assert list(calibrations) == ["log_px"]  # the match method has no complexity or ratio form
    calibration = calibrations["log_px"]
    table = score_paths(scorer, [folder], spec=MATCH)
    scores = np.sort([r["score"] for r in table.rows if r["level"] == "slice"])
    assert scores.size == 6
    assert calibration.threshold == pytest.approx(scores[math.floor(0.2 * 6)])
    np.testing.assert_allclose(calibration.reference_scores, scores)
    with pytest.raises(ValueError, match="no normal slice could be scored.*corrupt.dcm"):
        calibrate_paths(scorer, [folder / "corrupt.dcm"], spec=MATCH)


def test_write_table_csv_json_and_no_overwrite(run_dir, study, tmp_path):
    import csv

    folder, _ = study
    table = score_paths(load_scorer(run_dir), [folder], spec=MATCH, threshold=0.0)
    csv_path, json_path = write_table(table, csv_path=tmp_path / "t.csv", json_path=tmp_path / "t.json",
                                      meta={"note": "x"})
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(table.rows) and list(rows[0]) == list(ROW_FIELDS)
    assert [float(r["score"]) for r in rows if r["score"]] == pytest.approx(
        [r["score"] for r in table.rows if r["score"] is not None])
    record = json.loads(json_path.read_text())
    assert record["meta"] == {"note": "x"} and record["rows"] == table.rows
    before = csv_path.read_text()
    with pytest.raises(FileExistsError):
        write_table(table, csv_path=csv_path, json_path=tmp_path / "other.json")
    assert csv_path.read_text() == before and not os.path.exists(tmp_path / "other.json")


def test_two_sided_scores_by_hand():
    reference = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |ref - 3| = 2 1 0 1 97 -> MAD 1 -> scale 1.4826.
    got = two_sided_anomaly_scores(np.array([3.0, 0.0, 6.0]), reference)
    np.testing.assert_allclose(got, [0.0, 3 / 1.4826, 3 / 1.4826])
    with pytest.raises(ValueError):
        two_sided_anomaly_scores([1.0], [np.nan])


def test_a_colour_image_is_scored_as_its_luma_and_says_so(run_dir, tmp_path):
    import pydicom
    from pydicom.pixels import convert_color_space

    path = get_testdata_file("SC_rgb.dcm")  # 100x100 RGB secondary capture
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation != "RGB":
        rgb = convert_color_space(ds.pixel_array, ds.PhotometricInterpretation, "RGB").astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    table = score_paths(load_scorer(run_dir), [path], spec=MATCH)
    assert table.num_scored == 1 and not table.problems
    assert table.notes == [{"path": path, "note": "a colour image (RGB); scored as greyscale (BT.601 luma, "
                                                  "jaxmed.io.to_greyscale)"}]
    # The slices scored are those of the luma volume, preprocessed as any greyscale one.
    images, indices = preprocess_volume(luma[None].astype(np.float32), Preprocessing(image_size=(8, 8)))
    slices = [r for r in table.rows if r["level"] == "slice"]
    assert [r["slice"] for r in slices] == indices.tolist()
    scorer = load_scorer(run_dir)
    expected = score_images(jax.random.key(MATCH.seed), scorer.model, scorer.params, images, spec=MATCH,
                            indices=indices)
    np.testing.assert_allclose([r["score"] for r in slices], expected, rtol=1e-5)
    # Preprocessing itself refuses colour: the conversion is the caller's, explicit.
    from jaxmed.io import read_image

    with pytest.raises(ValueError, match=r"a colour image \(RGB, 3 channels\).*jaxmed.io.to_greyscale"):
        preprocess_volume(read_image(path), Preprocessing(image_size=(8, 8)))


def test_complexity_and_likelihood_ratio_scores_by_hand(run_dir, tmp_path, rng):
    import io

    from PIL import Image

    from jaxmed.tasks.scan_quality import BACKGROUND_DIR, normality_scores

    # A background model: the same VAE with other parameters, in DIR/background.
    checkpoint = tmp_path / "run"
    shutil.copytree(run_dir, checkpoint)
    model = load_scorer(run_dir).model
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32), jax.random.key(1))
    bg_params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    save_config(checkpoint / BACKGROUND_DIR, {"model": {"name": "vae", "preset": "tiny",
                                                        "config": model_config_to_dict(PRESETS["tiny"])}})
    with Checkpointer(checkpoint / BACKGROUND_DIR) as checkpointer:
        checkpointer.save(TrainState.create(params=bg_params, tx=optax.sgd(0.1), key=jax.random.key(2)))
    scorer = load_scorer(checkpoint)
    assert scorer.background is not None

    images = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    spec = ScoreSpec(method="importance", num_samples=8, batch_size=2)
    key = jax.random.key(4)
    scores = normality_scores(key, scorer.model, scorer.params, images, spec=spec, background=scorer.background)

    def log_px_of(model, params, i):
        lvm = vae_latent_model(model, params)
        return float(log_px(jax.random.fold_in(key, i), lvm, images[i][None], method="importance",
                            num_samples=8)[0])

    for i in range(3):
        own = log_px_of(scorer.model, scorer.params, i)
        assert scores["log_px"][i] == pytest.approx(own, rel=1e-5)
        # Bits of the PNG of the 8-bit image, and the density turned into a probability at 8-bit bins.
        buffer = io.BytesIO()
        Image.fromarray(np.round(images[i, ..., 0] * 255).astype(np.uint8)).save(buffer, format="PNG",
                                                                                compress_level=9)
        expected = own / math.log(2) - 64 * math.log2(255) + 8 * buffer.tell()
        assert scores["complexity"][i] == pytest.approx(expected, rel=1e-6)
        background = log_px_of(*scorer.background, i)
        assert scores["likelihood_ratio"][i] == pytest.approx(own - background, rel=1e-4, abs=1e-3)
    # The match method is no likelihood: no corrected forms.
    assert list(normality_scores(key, scorer.model, scorer.params, images, spec=MATCH)) == ["log_px"]
    with pytest.raises(ValueError, match="no 'complexity' form"):
        ScoreSpec(method="match", score="complexity")
