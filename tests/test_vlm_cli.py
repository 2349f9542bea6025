"""``jaxmed vlm train`` and ``jaxmed vlm ask`` end to end on a tiny model, and their errors.

What is checked is the files against what was printed and asked (the saved
mask and NIfTI are the printed pixel count; the model folder reads back);
what the tiny model answers is not judged here.
"""

import json

import jax
import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.tasks.vlm import load_vlm
from jaxmed.tasks.vlm.data import chest_samples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    out = root / "model"
    status = main(["vlm", "train", "--preset", "quick", "--num-train", "6", "--epochs", "1", "--out", str(out),
                   "--no-progress"])
    assert status == 0
    images, _, _ = chest_samples(jax.random.key(5), 1, image_size=64)
    image = root / "phantom.npy"
    np.save(image, images[0, ..., 0])
    return root, out, image


def test_train_writes_a_model_folder_that_loads(trained):
    _, out, _ = trained
    meta = json.loads((out / "vlm.json").read_text())
    assert meta["task"]["num_train"] == 6 and meta["training"]["steps"] > 0
    for name in ("tokenizer.json", "model/metrics.jsonl", "model/loss_curve.png", "autoencoder/metrics.jsonl"):
        assert (out / name).is_file(), name
    model = load_vlm(out)
    assert model.config.image_size == 64 and model.tokenizer.vocab_size == meta["model"]["vocab_size"]
    assert main(["vlm", "train", "--preset", "quick", "--out", str(out), "--no-progress"]) == 2  # not empty


def test_ask_writes_the_mask_it_reports(trained, capsys):
    root, out, image = trained
    answers = root / "answers"
    assert main(["vlm", "ask", str(image), "Segment the left lung.", "--model", str(out), "--out", str(answers)]) == 0
    printed = capsys.readouterr().out
    mask = np.load(answers / "phantom_mask.npy")
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert f"{int(mask.sum())} pixels" in printed
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(answers / "phantom_mask.nii.gz").dataobj)[..., 0].T, mask)
    assert (answers / "phantom_mask.png").is_file()
    # Nothing is overwritten without --force.
    assert main(["vlm", "ask", str(image), "Segment the left lung.", "--model", str(out), "--out",
                 str(answers)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["vlm", "ask", str(image), "Is there a nodule in the left lung?", "--model", str(out)]) == 0


@pytest.mark.parametrize("instruction, message", [
    ("Segment the spleen.", "right lung"),  # the known structures are listed
    ("Segment the left lung " + "and the left lung " * 20, "context"),
])
def test_ask_refuses_bad_instructions(trained, capsys, instruction, message):
    _, out, image = trained
    assert main(["vlm", "ask", str(image), instruction, "--model", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err


def test_ask_refuses_bad_images(trained, tmp_path, capsys):
    _, out, _ = trained
    constant = tmp_path / "flat.npy"
    np.save(constant, np.full((64, 64), 0.3, np.float32))
    volume = tmp_path / "volume.npy"
    np.save(volume, np.zeros((4, 64, 64), np.float32))
    for path, message in ((constant, "constant"), (volume, "2-D"), (tmp_path / "missing.dcm", "missing.dcm")):
        assert main(["vlm", "ask", str(path), "Segment the heart.", "--model", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["vlm", "ask", str(constant), "Segment the heart.", "--model", str(tmp_path)]) == 2
    assert "not a vlm model folder" in capsys.readouterr().err


class _Stop(Exception):
    pass


def test_a_stopped_run_resumes_bit_for_bit(trained, tmp_path, monkeypatch, capsys):
    from jaxmed.tasks.vlm import train as vlm_train
    from jaxmed.train import Checkpointer, read_metrics

    _, out, _ = trained
    steps = json.loads((out / "vlm.json").read_text())["training"]["steps"]
    gather, calls = vlm_train.gather_batch, {"n": 0}

    def stopping(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps // 2 + 2:  # past a checkpoint of the model's run (8 in the run)
            raise _Stop
        return gather(*args, **kwargs)

    monkeypatch.setattr(vlm_train, "gather_batch", stopping)
    argv = ["vlm", "train", "--preset", "quick", "--num-train", "6", "--epochs", "1", "--no-progress"]
    stopped = tmp_path / "stopped"
    with pytest.raises(_Stop):
        main([*argv, "--out", str(stopped)])
    with Checkpointer(stopped / "model", keep=None, create=False) as c:
        assert 0 < c.latest_step() < steps
    assert main([*argv, "--out", str(stopped)]) == 2 and "not empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did not finish"):
        load_vlm(stopped)
    # The settings come back from the folder: no option but --out is needed.
    assert main(["vlm", "train", "--no-progress", "--out", str(stopped), "--resume"]) == 0
    jax.tree.map(np.testing.assert_array_equal, load_vlm(stopped).params, load_vlm(out).params)
    assert ([r["loss"] for r in read_metrics(stopped / "model" / "metrics.jsonl")]
            == [r["loss"] for r in read_metrics(out / "model" / "metrics.jsonl")])
    status = main(["vlm", "train", "--epochs", "2", "--no-progress", "--out", str(stopped), "--resume"])
    err = capsys.readouterr().err
    assert status == 2 and "another run" in err and "differs in epochs" in err
