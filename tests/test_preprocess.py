"""How a scanned volume becomes model inputs (jaxmed.data.preprocess), and a run's record of it.

Expected values are computed independently: min-max preprocessing by hand in
numpy; brain-MRI preprocessing against the template slices that
``load_brain_mri`` cuts for training.
"""

import dataclasses
import json

import numpy as np
import pytest

from _helpers import preprocess_by_hand, scan_volume
from jaxmed.data import Preprocessing, preprocess_volume
from jaxmed.train import load_preprocessing


def test_minmax_preprocessing_by_hand(rng):
    array = scan_volume(rng)
    images, indices = preprocess_volume(array, Preprocessing(image_size=(8, 8)))
    expected, keep = preprocess_by_hand(array)
    np.testing.assert_array_equal(indices, [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(indices, keep)
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_minmax_preprocessing_resamples_to_the_model_size(rng):
    array = np.repeat(np.repeat(scan_volume(rng), 2, axis=1), 2, axis=2)  # 16x16 slices of 2x2 blocks
    images, _ = preprocess_volume(array, Preprocessing(image_size=(8, 8)))
    expected, _ = preprocess_by_hand(array)
    # Halving a 2x2-block image samples between the block's pixels: one value.
    np.testing.assert_allclose(images, expected[:, ::2, ::2], atol=1e-5)


def test_preprocessing_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown preprocessing method"):
        Preprocessing(image_size=(8, 8), method="zscore")
    with pytest.raises(ValueError, match="scan.nii: holds NaN"):
        preprocess_volume(_Named(np.full((2, 8, 8), np.nan, np.float32), "scan.nii"), Preprocessing(image_size=(8, 8)))
    prep = Preprocessing(image_size=(8, 8), method="brain_mri", margin_mm=2.0)
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        Preprocessing.from_dict({**prep.to_dict(), "size": 3})


class _Named:
    def __init__(self, array, source):
        self.array, self.source = array, source


def test_brain_preprocessing_reproduces_the_training_slices():
    from jaxmed.data.brain_mri import load_brain_mri, template_path
    from jaxmed.io import read_image

    volume = read_image(template_path())
    images, indices = preprocess_volume(volume, Preprocessing(image_size=(32, 32), method="brain_mri"))
    splits = load_brain_mri(size=32)
    for split in (splits.train, splits.val, splits.test):
        rows = np.searchsorted(indices, split["slice_index"])
        np.testing.assert_array_equal(indices[rows], split["slice_index"])
        np.testing.assert_allclose(images[rows], split["image"], atol=1e-6)
    # The volume given is the one used: no second read of its source.
    moved = dataclasses.replace(volume, source="/nowhere/template.nii.gz")
    again, _ = preprocess_volume(moved, Preprocessing(image_size=(32, 32), method="brain_mri"))
    np.testing.assert_array_equal(again, images)
    with pytest.raises(ValueError, match="must be a jaxmed.io.Volume"):
        preprocess_volume(np.zeros((3, 8, 8)), Preprocessing(image_size=(8, 8), method="brain_mri"))


def test_preprocessing_of_a_run_without_preprocess_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": {"source": "brain-mri"}}))
    assert load_preprocessing(tmp_path, image_shape=(64, 64, 1)) == Preprocessing(image_size=(64, 64),
                                                                                   method="brain_mri")
    (tmp_path / "config.json").write_text(json.dumps({"data": {"source": "/data/scans"}}))
    assert load_preprocessing(tmp_path, image_shape=(64, 64, 1)).method == "minmax"
    with pytest.raises(ValueError, match="not a single-channel 2D image"):
        load_preprocessing(tmp_path, image_shape=(16, 16, 16, 1))
