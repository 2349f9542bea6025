"""``jaxmed train``: the command end to end, and its data sources."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.cli import main

STEPS = 300


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vae"
    argv = ["train", "--data", "phantoms", "--model", "vae", "--preset", "tiny", "--steps", str(STEPS),
            "--batch-size", "32", "--devices", "2", "--seed", "3", "--lr", "1e-2", "--num-train", "256",
            "--num-val", "64", "--log-every", "25", "--eval-every", "50", "--checkpoint-every", "150",
            "--keep", "2", "--no-progress", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(argv)
    return out, status, printed.getvalue()


@pytest.mark.slow
def test_train_on_phantoms_lowers_the_validation_negative_elbo(phantom_run):
    from jaxmed.losses import negative_elbo
    from jaxmed.models import PRESETS
    from jaxmed.train import Checkpointer, read_metrics
    from jaxmed.train.checkpoint import load_model
    from jaxmed.train.sources import load_image_splits

    out, status, printed = phantom_run
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "loss_curve.png", "metrics.jsonl"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(25, STEPS + 1, 25))
    assert all(math.isfinite(r["loss"]) for r in records)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == STEPS // 50
    assert Checkpointer(out, create=False).all_steps() == [150, 300]
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["train"]["steps"] == STEPS and config["model"]["name"] == "vae"

    # Independent reference numbers on the validation images (numpy).
    data = load_image_splits("phantoms", image_shape=(8, 8, 1), seed=3, num_train=256, num_val=64)
    train_images, val_images = data.train["image"], data.val["image"]
    d = 8 * 8
    const = 0.5 * d * math.log(2 * math.pi)  # -log N(x | mu, 1) = const + |x - mu|^2 / 2
    untrained = 0.5 * np.mean(np.sum((val_images - 0.5) ** 2, axis=(1, 2, 3)))  # sigmoid(0) = 0.5 everywhere
    mean_image = 0.5 * np.mean(np.sum((val_images - train_images.mean(axis=0)) ** 2, axis=(1, 2, 3)))
    final = val[-1] - const
    # Measured: untrained 4.04, mean image 0.223, final 0.236 nats above const.
    assert final < 0.2 * untrained  # clearly lower than a model that knows nothing
    assert final < mean_image + 0.1  # about as good as the mean image (+ a small KL)

    # The loaded model reproduces the logged validation loss (many samples).
    model, params, model_config = load_model(out)
    assert model_config == PRESETS["tiny"]
    keys = jax.random.split(jax.random.key(9), (len(val_images), 32))

    @jax.jit
    def mean_neg_elbo(params, images, keys):
        per_sample = jax.vmap(jax.vmap(lambda x, k: negative_elbo(params, x, k, model=model)[0],
                                       in_axes=(None, 0)))
        return jnp.mean(per_sample(images, keys))

    assert float(mean_neg_elbo(params, val_images, keys)) == pytest.approx(val[-1], abs=0.05)
    assert "steps 0 -> 300" in printed and "2 device(s)" in printed
    assert "data: 256 training / 64 validation images\n" in printed


def test_refuses_a_non_empty_out_without_resume_or_force(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    status = main(["train", "--data", "phantoms", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" in err and "--force" in err and "notes.txt" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    status = main(["train", "--data", "phantoms", "--out", str(tmp_path), "--resume", "--no-progress"])
    assert status == 2 and "no run to resume" in capsys.readouterr().err


def test_resume_refuses_changed_settings(phantom_run, capsys):
    out, status, _ = phantom_run
    assert status == 0
    status = main(["train", "--out", str(out), "--resume", "--preset", "small32", "--lr", "0.5", "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "preset: 'tiny' in the run, 'small32' asked for" in err
    assert "optim.learning_rate" in err


def test_force_deletes_only_the_run_files(tmp_path, capsys):
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "preprocess.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("keep me")
    # A missing data path fails after the folder is cleared and before training.
    status = main(["train", "--data", str(tmp_path / "missing"), "--preset", "tiny", "--out", str(tmp_path),
                   "--force", "--no-progress"])
    assert status == 2 and "no such file or folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_dicom_folder_source_normalises_and_slices(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from jaxmed.train.sources import load_image_splits

    mri = get_testdata_file("emri_small.dcm")  # 10 frames of 64x64 MR
    if mri is None:
        pytest.skip("pydicom-data's emri_small.dcm is not installed")
    shutil.copy(mri, tmp_path / "mr.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")  # no pixel data
    (tmp_path / "notes.dcm").write_text("not dicom")
    data = load_image_splits(str(tmp_path), image_shape=(32, 32, 1), seed=0, num_val=2)

    assert sorted(p.split(":")[0] for p in data.problems) == sorted(
        [str(tmp_path / "notes.dcm"), str(tmp_path / "plan.dcm")]
    )
    assert data.val["image"].shape[1:] == (32, 32, 1)
    # The same pipeline in numpy/pydicom: rescale, clip to percentiles, min-max,
    # linear resize; every image returned is one of these slices.
    ds = pydicom.dcmread(mri)
    volume = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    lo, hi = np.percentile(volume, [0.5, 99.5])
    scaled = (np.clip(volume, lo, hi) - lo) / (hi - lo + 1e-8)
    expected = np.asarray(jax.image.resize(jnp.asarray(scaled, jnp.float32), (len(scaled), 32, 32),
                                           method="linear", antialias=False))
    kept = [s for s in expected if np.mean(s > 0.05) >= 0.05]
    assert len(kept) == 10
    # One scan of 10 slices: blocks of 2, every fifth (positions 8, 9) for
    # validation; the training slice next to them (7) is dropped.
    for split, positions in ((data.train, [0, 1, 2, 3, 4, 5, 6]), (data.val, [8, 9])):
        assert len(split["image"]) == len(positions)
        for image, p in zip(split["image"][..., 0], positions):
            assert np.abs(image - kept[p]).max() < 1e-4
    # What `jaxmed score` will apply to files scored against this run.
    assert data.preprocessing.method == "minmax" and data.preprocessing.image_size == (32, 32)


def test_files_split_by_whole_scans(tmp_path):
    import nibabel as nib

    from jaxmed.train.sources import load_image_splits

    # Five scans of 8 slices; scan v has a bright band at rows 2v..2v+4, which
    # survives normalisation and resizing, so every image names its scan.
    for v in range(5):
        volume = np.zeros((8, 16, 16), np.float32)
        volume[:, 2 * v:2 * v + 4] = 1.0
        volume += np.linspace(0, 0.2, 16)[None, None, :]
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)), tmp_path / f"scan{v}.nii.gz")
    data = load_image_splits(str(tmp_path), image_shape=(16, 16, 1), seed=0, num_val=100)

    def scans(images):
        return [int(np.argmax(image[:, :, 0].mean(axis=1))) // 2 for image in images]

    train, val = scans(data.train["image"]), scans(data.val["image"])
    # Target min(100, 40 // 5) = 8 slices: exactly one whole scan.
    assert len(val) == 8 and len(set(val)) == 1 and val[0] not in train
    assert sorted(set(train)) == sorted(set(range(5)) - set(val)) and len(train) == 32
    assert data.description["split"] == "by scan: 1 of 5 scans for validation"
    # The seed chooses which scan.
    chosen = {scans(load_image_splits(str(tmp_path), image_shape=(16, 16, 1), seed=s, num_val=100).val["image"])[0]
              for s in range(6)}
    assert len(chosen) > 1


def test_split_scans_by_hand():
    from jaxmed.train.sources import split_scans

    # Scans of 3, 10 and 4 slices, target 17 // 5 = 3: only the 3-slice scan fits.
    train, val, how = split_scans([np.arange(3), np.arange(10), np.arange(4)], seed=0, num_val=50)
    assert val.tolist() == [0, 1, 2] and train.tolist() == list(range(3, 17))
    # Two scans, neither fits a target of 4: the smaller goes to validation.
    train, val, _ = split_scans([np.arange(12), np.arange(9)], seed=0, num_val=50)
    assert val.tolist() == list(range(12, 21)) and train.tolist() == list(range(12))
    # One scan of 40 slices: blocks of 2, blocks 4, 9, 14, 19 for validation.
    train, val, how = split_scans([np.arange(40)], seed=0, num_val=50)
    assert val.tolist() == [8, 9, 18, 19, 28, 29, 38, 39]
    assert train.tolist() == [0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25, 26, 31, 32, 33, 34,
                              35, 36]
    assert how.startswith("one scan: blocks of 2")
    # At most num_val, evenly spaced.
    assert split_scans([np.arange(40)], seed=0, num_val=3)[1].tolist() == [8, 28, 39]
    # 20 slices: still blocks of 2; 7 slices: blocks of 1 (validation 4; 3 and 5
    # dropped); 4 slices: no validation slice at all.
    train, val, _ = split_scans([np.arange(20)], seed=0, num_val=50)
    assert val.tolist() == [8, 9, 18, 19] and train.tolist() == [0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]
    train, val, _ = split_scans([np.arange(7)], seed=0, num_val=50)
    assert val.tolist() == [4] and train.tolist() == [0, 1, 2, 6]
    assert split_scans([np.arange(4)], seed=0, num_val=50)[1].tolist() == []


@pytest.mark.parametrize(
    "source, shape, message",
    [
        ("phantoms", (16, 16, 4), "at most 3 channels"),
        ("brain-mri", (32, 16, 1), "square and single-channel"),
        ("phantoms", (16, 16, 16, 1), "must be 2D"),
        ("/no/such/folder", (16, 16, 1), "no such file or folder"),
    ],
)
def test_sources_reject_shapes_they_cannot_give(source, shape, message):
    from jaxmed.train.sources import load_image_splits

    with pytest.raises(ValueError, match=message):
        load_image_splits(source, image_shape=shape, seed=0)


def test_training_on_files_records_how_jaxmed_score_must_preprocess(tmp_path):
    from pydicom.data import get_testdata_file

    from jaxmed.data import Preprocessing
    from jaxmed.train import load_preprocessing

    mri = get_testdata_file("emri_small.dcm")  # 10 frames of 64x64 MR
    if mri is None:
        pytest.skip("pydicom-data's emri_small.dcm is not installed")
    (tmp_path / "data").mkdir()
    shutil.copy(mri, tmp_path / "data" / "mr.dcm")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--preset", "tiny", "--steps", "2", "--batch-size", "4",
                 "--num-val", "2", "--eval-every", "0", "--devices", "1", "--no-progress", "--out", str(out)]) == 0
    stored = json.loads((out / "preprocess.json").read_text())
    assert load_preprocessing(out) == Preprocessing(image_size=(8, 8)) and stored["method"] == "minmax"


@pytest.mark.parametrize("masked", [False, True])
def test_train_a_lesion_unet_plainly_and_with_masked_regions(tmp_path, masked):
    from jaxmed.models import UNET_PRESETS, UNet
    from jaxmed.train import read_metrics
    from jaxmed.train.checkpoint import load_model
    from jaxmed.train.sources import load_image_splits

    out = tmp_path / "unet"
    argv = ["train", "--model", "unet", "--preset", "tiny", "--steps", "40", "--batch-size", "8", "--lr", "3e-3",
            "--num-train", "64", "--num-val", "16", "--log-every", "10", "--eval-every", "20", "--devices", "1",
            "--seed", "1", "--no-progress", "--out", str(out)]
    assert main(argv + (["--masked-regions"] if masked else [])) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "unet" and "masked_regions" not in config["run"]
    assert config["model"]["loss"] == {"masked": masked, "cell": 8, "include_none": True, "blank_value": 0.0,
                                       "pos_weight": 5.0}
    records = read_metrics(out / "metrics.jsonl")
    # One loss per (region, blanked modality) view: one per modality plus one with
    # nothing blanked when masked; one when plain.
    assert sum(k.startswith("view_loss_") for k in records[-1]) == (4 if masked else 1)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)

    model, params, model_config = load_model(out)
    assert isinstance(model, UNet) and model_config == UNET_PRESETS["tiny"]
    data = load_image_splits("phantoms", image_shape=(16, 16, 3), seed=1, num_train=64, num_val=16,
                             targets=("lesion_mask",))
    assert 0 < data.val["lesion_mask"].sum() < data.val["lesion_mask"].size
    if not masked:
        # The plain loss, in numpy: lesion-weighted (5x) sigmoid cross-entropy, mean over all pixels.
        logits = np.asarray(model.apply(params, data.val["image"])[..., 0], np.float64)
        t = data.val["lesion_mask"]
        bce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
        assert val[-1] == pytest.approx(np.mean((1 + 4 * t) * bce), rel=1e-4)


def test_training_options_belong_to_the_model(tmp_path, capsys):
    from jaxmed.losses import LesionLossConfig, VAELossConfig
    from jaxmed.train.run import RunConfig

    assert RunConfig(model="unet").preset == "lesion64" and RunConfig().preset == "reference64"
    assert RunConfig().loss == VAELossConfig(beta=1.0)
    assert RunConfig(model="unet").loss == LesionLossConfig(masked=False, pos_weight=5.0)
    assert RunConfig(model="unet", loss={"masked": True}).loss.masked is True
    with pytest.raises(ValueError, match="trains with a LesionLossConfig"):
        RunConfig(model="unet", loss=VAELossConfig())
    with pytest.raises(ValueError, match=r"no field\(s\) \['masked'\]"):
        RunConfig(model="vae", loss={"masked": True})
    with pytest.raises(ValueError, match=r"VAEConfig has no field\(s\) \['depth'\]"):
        RunConfig(model="vae", model_options=(("depth", 3),))
    # The run config has no field of any model: a model's options are its loss config.
    assert not {"beta", "masked_regions", "region_cell", "pos_weight"} & {f.name for f in dataclasses.fields(RunConfig)}
    # A flag of another model's loss is refused by name, before anything is written.
    out = tmp_path / "run"
    assert main(["train", "--masked-regions", "--preset", "tiny", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model 'vae'" in err and "['masked']" in err and "'beta'" in err and not out.exists()


def test_lr_factor_flag_reaches_the_optimiser(tmp_path, capsys):
    from jaxmed.train import load_config
    from jaxmed.train.checkpoint import load_model

    def train(name, *extra):
        return main(["train", "--preset", "tiny", "--steps", "1", "--batch-size", "8", "--num-train", "16",
                     "--num-val", "8", "--eval-every", "0", "--devices", "1", "--no-progress",
                     "--out", str(tmp_path / name), *extra])

    assert train("plain") == 0
    assert train("slow_decoder", "--lr-factor", "params/decoder/*=0.25") == 0
    assert load_config(tmp_path / "slow_decoder")["run"]["optim"]["lr_factors"] == [["params/decoder/*", 0.25]]
    assert train("half_decoder", "--lr-factor", "params/decoder/*=0.5") == 0
    plain, slow, half = (load_model(tmp_path / name)[1]["params"] for name in ("plain", "slow_decoder", "half_decoder"))
    # Same init, batch and gradient: the encoder takes the same first Adam step
    # u; the decoder u/4 or u/2, so plain - slow = 3u/4 = 1.5 (plain - half).
    for a, b in zip(jax.tree.leaves(plain["encoder"]), jax.tree.leaves(slow["encoder"])):
        np.testing.assert_array_equal(a, b)
    for a, b, c in zip(*(jax.tree.leaves(p["decoder"]) for p in (plain, slow, half))):
        assert np.abs(a - b).max() > 5e-4  # 3/4 of Adam's first step, about the rate (1e-3)
        np.testing.assert_allclose(a - b, 1.5 * (a - c), rtol=1e-2, atol=1e-6)
    # A pattern matching no parameter, and a malformed flag, are clear errors.
    assert train("typo", "--lr-factor", "params/decodr/*=2") == 2
    assert "['params/decodr/*'] match no parameter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train("bad", "--lr-factor", "params/decoder")
    assert "expected PATTERN=FACTOR" in capsys.readouterr().err


def test_resume_refuses_data_whose_split_changed(tmp_path, capsys):
    import nibabel as nib

    data = tmp_path / "scans"
    data.mkdir()
    rng = np.random.default_rng(0)

    def add_scan(name):
        volume = rng.uniform(size=(12, 8, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), data / f"{name}.nii.gz")

    for name in ("a", "b", "c"):
        add_scan(name)
    argv = ["train", "--data", str(data), "--preset", "tiny", "--steps", "2", "--batch-size", "4",
            "--eval-every", "0", "--devices", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert main([*argv[:-2], "--steps", "3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    add_scan("d")  # a new scan changes the split: validation might now hold training slices
    assert main([*argv[:-2], "--steps", "4", "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "num_train" in err and "num_volumes" in err


def test_a_run_of_jaxmed_0_1_0_resumes_with_its_training_options(tmp_path):
    """config.json of jaxmed 0.1.0 kept the model's options (beta, masked_regions, ...) in "run"."""
    from jaxmed.train import load_config
    from jaxmed.train.checkpoint import load_model

    argv = ["train", "--preset", "tiny", "--batch-size", "8", "--num-train", "16", "--num-val", "8",
            "--eval-every", "0", "--checkpoint-every", "2", "--devices", "1", "--no-progress", "--beta", "0.5"]
    assert main([*argv, "--steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main([*argv, "--steps", "2", "--out", str(tmp_path / "old")]) == 0
    config = load_config(tmp_path / "old")
    assert config["model"]["loss"] == {"beta": 0.5}
    # Rewrite it as jaxmed 0.1.0 wrote it.
    run = {k: v for k, v in config["run"].items() if k not in ("model_options", "augment")}
    run.update(beta=0.5, masked_regions=False, region_cell=8, pos_weight=5.0)
    old = {"jaxmed_version": "0.1.0", "run": run, "data": config["data"],
           "model": {k: v for k, v in config["model"].items() if k != "loss"}}
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    load_model(tmp_path / "old")  # loads as it is
    assert main([*argv[:-2], "--steps", "4", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert load_config(tmp_path / "old")["model"]["loss"] == {"beta": 0.5}
    # Resumed from the old record, the run is the one trained straight through, bit for bit.
    a, b = (load_model(tmp_path / name)[1] for name in ("straight", "old"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
