"""``jaxmed lesions`` end to end: a tiny masked-region model trained in phases through the engine (one model
folder, phases in metrics.jsonl, the frozen encoder, a bit-exact resume), predict on DICOM folders the phantom
writer wrote (good and bad ones), evaluate on a site; what is written is checked by reading it back.

One module-scoped model and one set of exams keep the compilations (the cost of these tests) few: the
localiser's initial variables are computed once per seed and config for the module (`init_localiser` is a pure
jitted function whose compilation takes seconds, and each call compiles it anew), and the exams are registered on
one pyramid level (the registration's quality is checked in test_lesions_preprocess; here only the plumbing)."""

import contextlib
import dataclasses
import io
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.data.phantoms import ExamConfig, make_dataset, write_exam
from jaxmed.io import read_nifti, read_series, write_dicom_series
from jaxmed.losses import LocaliserLossConfig
from jaxmed.models import LocaliserConfig, MapClassifierConfig, encoder_params_from_unet
from jaxmed.tasks.lesions import ExamError, PhaseConfig, PreprocessConfig, TrainConfig, find_series
from jaxmed.tasks.lesions import training
from jaxmed.tasks.lesions.training import load_lesion_model, train_lesion_model, train_localiser, uniform_batches
from jaxmed.train import Checkpointer

SHAPE = (16, 16)
CONFIG = TrainConfig(
    localiser=LocaliserConfig(image_shape=(*SHAPE, 3), features=4, depth=1, norm_groups=4, feature_channels=4,
                              fusion_hidden=4),
    classifier=MapClassifierConfig(features=4, depth=1, norm_groups=4, hidden=8),
    loss=LocaliserLossConfig(masked=True, cell=4),
    preprocess=PreprocessConfig(shape=SHAPE, spacing_mm=(4.0, 4.0), num_steps=15, levels=(1.0,)),
    second="", deploy="", deploy_k=0, mc_samples=2,
    reference_phase=PhaseConfig(steps=3, batch_size=4), continue_phase=PhaseConfig(steps=0),
    deploy_phase=PhaseConfig(steps=0), frozen_phase=PhaseConfig(steps=2, batch_size=4),
    joint_phase=PhaseConfig(steps=2, batch_size=4),
)


@pytest.fixture(scope="module", autouse=True)
def init_localiser_once():
    """`training.init_localiser`, memoised on (key, config) for this module: the same values, one compilation.

    Each call returns fresh device arrays (the train step donates its state)."""
    real, cache = training.init_localiser, {}

    def init(key, config):
        entry = (np.asarray(jax.random.key_data(key)).tobytes(), config)
        if entry not in cache:
            cache[entry] = jax.device_get(real(key, config))
        return jax.tree.map(jnp.asarray, cache[entry])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "init_localiser", init)
        yield cache


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesions_cli")
    rng = np.random.default_rng(0)
    n = 8
    image = rng.normal(size=(n, *SHAPE, 3)).astype(np.float32)
    mask = np.zeros((n, *SHAPE), np.float32)
    mask[::2, 6:10, 6:10] = 1
    data = {"reference": {"image": image, "lesion_mask": mask, "grade": (mask.max((1, 2)) > 0).astype(np.int32),
                          "significant": mask.max((1, 2)) > 0}}
    model = train_lesion_model(CONFIG, data, root / "model", progress=False)
    data = data["reference"]
    # Site-D exams as a scanner's files (16 drawn: the chunk `jaxmed lesions evaluate` draws, one compilation).
    exams = make_dataset(jax.random.key(5), 16, kind="mri_exam", config=ExamConfig(site="D", slices=1))
    folders = {}
    for i in range(2):
        one = {k: v[i] for k, v in exams.items()}
        write_exam(root / f"exam{i}", one, "D", uid_seed=f"exam{i}")
        folders[f"exam{i}"] = root / f"exam{i}"
    return {"root": root, "model": model, "folders": folders, "data": data}


def test_phases_make_one_model_folder(workspace):
    root, model = workspace["root"] / "model", workspace["model"]
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "phase1_reference" and phases[-1] == "phase2_joint" and "phase2_frozen" in phases
    assert [r["step"] for r in records] == sorted(r["step"] for r in records) and records[-1]["step"] == 3 + 2 + 2
    assert {"view_loss_0", "view_loss_3"} <= set(records[0])  # masked regions: none blanked, then T2, ADC, DWI
    assert set(json.loads((root / "lesions.json").read_text())["phases"]) == {
        "phase1_reference", "phase2_frozen", "phase2_joint"}
    loaded = load_lesion_model(root)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, jax.device_get(model.params))
    # Phase 2, frozen: the classifier's encoder is still the localiser's U-Net encoder.
    with Checkpointer(root / "phase2_frozen", create=False) as c:
        frozen = c.restore_params()
    with Checkpointer(root / "phase1_reference", create=False) as c:
        localiser = c.restore_params()
    expected = encoder_params_from_unet(localiser["params"]["unet"], frozen["params"]["encoder"])
    jax.tree.map(np.testing.assert_array_equal, frozen["params"]["encoder"], jax.device_get(expected))
    with pytest.raises(FileNotFoundError, match="lesions.json"):
        load_lesion_model(root / "phase1_reference")


class _Stop(Exception):
    pass


def test_a_stopped_phase_resumes_bit_for_bit(workspace, tmp_path):
    data = workspace["data"]
    with Checkpointer(workspace["root"] / "model" / "phase1_reference", create=False) as c:
        whole = c.restore_params()
    whole_records = [json.loads(line) for line in
                     (workspace["root"] / "model" / "phase1_reference" / "metrics.jsonl").read_text().splitlines()]
    batches = uniform_batches(data, batch_size=4, seed=CONFIG.seed * 100, keys=("image", "lesion_mask"))
    calls = {"n": 0}

    def stopping(step):
        calls["n"] += 1
        if step == 2 and calls["n"] < 20:
            raise _Stop  # after the checkpoint of step 2 (one per step in a 3-step run)
        return batches(step)

    with pytest.raises(_Stop):
        train_localiser(CONFIG, data, tmp_path / "stopped", progress=False, batch_fn=stopping)
    calls["n"] = 100
    resumed, records = train_localiser(CONFIG, data, tmp_path / "stopped", progress=False, batch_fn=stopping)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(whole))
    assert [r["loss"] for r in records] == [r["loss"] for r in whole_records]
    other = dataclasses.replace(CONFIG, reference_phase=PhaseConfig(steps=4, batch_size=4))
    with pytest.raises(FileExistsError, match=r"another run \(its config.json differs in optim.steps\)"):
        train_localiser(other, data, tmp_path / "stopped", progress=False)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _bad_folders(root, folders):
    bad = {}
    # A missing DWI: predicted (the model was trained with masked regions), with a note.
    bad["no_dwi"] = root / "no_dwi"
    shutil.copytree(folders["exam0"], bad["no_dwi"])
    shutil.rmtree(bad["no_dwi"] / "DWI")
    # Two exams in one folder.
    bad["two"] = root / "two"
    shutil.copytree(folders["exam0"], bad["two"] / "a")
    shutil.copytree(folders["exam1"], bad["two"] / "b")
    # A CT series with the MR ones.
    bad["ct"] = root / "ct"
    shutil.copytree(folders["exam0"], bad["ct"])
    write_dicom_series(bad["ct"] / "CT", np.zeros((1, 8, 8), np.float32), np.eye(4), modality="CT", uid_seed="ct")
    # ADC in another frame of reference.
    bad["frame"] = root / "frame"
    shutil.copytree(folders["exam1"], bad["frame"])
    adc = read_series(bad["frame"] / "ADC")
    truth = json.loads((bad["frame"] / "truth.json").read_text())
    write_dicom_series(bad["frame"] / "ADC", adc.array, adc.affine, series_description="ep2d_diff_ADC",
                       series_number=2, study_uid=truth["dicom"]["study_uid"], uid_seed="other frame",
                       attributes={"ImageType": ["DERIVED", "PRIMARY", "ADC"]}, overwrite=True)
    return bad


def test_predict_on_exam_folders(workspace):
    root, folders = workspace["root"], workspace["folders"]
    bad = _bad_folders(root, folders)
    out = root / "pred"
    args = ["lesions", "predict", str(folders["exam0"]), str(folders["exam1"]), *map(str, bad.values()),
            "--model", str(root / "model"), "--out", str(out), "--no-progress"]
    code, stdout, stderr = _run(args)
    assert code == 0, stderr
    table = json.loads((out / "predictions.json").read_text())
    rows = {r["exam"]: r for r in table["rows"]}
    assert set(rows) == {"exam0", "exam1", "no_dwi"}
    assert rows["no_dwi"]["missing"] == ["DWI"] and "blanked" in " ".join(rows["no_dwi"]["notes"])
    problems = {p["folder"]: p["problem"] for p in table["problems"]}
    assert "two exams in one folder" in problems[str(bad["two"])]
    assert "not an MR exam" in problems[str(bad["ct"])] and "CT" in problems[str(bad["ct"])]
    assert "frames of reference" in problems[str(bad["frame"])]
    assert all(str(f) in stderr for f in (bad["two"], bad["ct"], bad["frame"]))
    assert "PHANTOM^SYNTHETIC" not in stdout + stderr and "PHANTOM-0000" not in stdout + stderr
    for name in ("exam0", "exam1"):
        r = rows[name]
        assert 0 <= r["significant_probability"] <= 1 and 1 <= r["grade_group"] <= 5
        assert abs(sum(r["grade_probabilities"]) - 1) < 1e-3
        det = read_nifti(r["detection_map"])
        t2 = read_series(folders[name] / "T2")
        assert det.shape == t2.shape == (1, 64, 64)
        np.testing.assert_allclose(det.affine, t2.affine, atol=1e-4)  # the T2 geometry
        assert (out / name / "overlay.png").stat().st_size > 0
        assert det.array.min() >= 0 and det.array.max() <= 1
    # Outputs are not overwritten without --force; --register-anyway lets the other frame through.
    code, _, stderr = _run(args)
    assert code == 2 and "--force" in stderr
    code, _, _ = _run(["lesions", "predict", str(bad["frame"]), "--register-anyway", "--model", str(root / "model"),
                       "--out", str(root / "pred_frame"), "--no-progress"])
    assert code == 0
    row = json.loads((root / "pred_frame" / "predictions.json").read_text())["rows"][0]
    assert "registered from the header geometry anyway" in " ".join(row["notes"])


def test_a_model_without_masked_regions_names_the_missing_modality(workspace):
    root, folders = workspace["root"], workspace["folders"]
    missing = root / "no_adc"
    shutil.copytree(folders["exam0"], missing)
    shutil.rmtree(missing / "ADC")
    with pytest.raises(ExamError, match="missing ADC.*masked regions") as e:
        find_series(missing, allow_missing=False)
    assert str(missing) in str(e.value)
    series, notes = find_series(folders["exam0"])
    assert set(series) == {"t2", "adc", "dwi"} and not any("missing" in n for n in notes)


def test_evaluate_writes_metrics_and_curves(workspace):
    root = workspace["root"]
    out = root / "eval"
    code, stdout, stderr = _run(["lesions", "evaluate", "--model", str(root / "model"), "--site", "D",
                                 "--num-exams", "16", "--out", str(out), "--no-progress"])
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["detection"]
    assert d["num_exams"] == 16 and 0 <= d["auroc"] <= 1 and d["score"] == pytest.approx((d["auroc"] + d["ap"]) / 2)
    assert all((out / f).stat().st_size > 0 for f in ("roc.png", "froc.png", "overlays.png"))
    assert "ranking score" in stdout


def test_train_flags_reach_the_config():
    from jaxmed.cli import build_parser
    from jaxmed.cli.lesions import _train_config

    args = build_parser().parse_args(["lesions", "train", "--out", "unused", "--augment", "--fusion", "max",
                                      "--masked-regions", "--steps", "continue=7", "--deploy-k", "5",
                                      "--mirror-tta"])
    config = _train_config(args)
    assert config.augment.enabled and config.localiser.fusion == "max" and config.loss.masked
    assert config.continue_phase.steps == 7 and config.deploy_k == 5 and config.mirror_tta
    default = _train_config(build_parser().parse_args(["lesions", "train", "--out", "unused"]))
    assert not default.augment.enabled and default.localiser.fusion == "mean" and not default.loss.masked
    assert not default.mirror_tta
    quick = _train_config(build_parser().parse_args(["lesions", "train", "--out", "unused", "--quick"]))
    assert quick.localiser.fusion == "learned" and quick.localiser.features == 4
