"""Tests of jaxmed.data.brain_mri against the template read independently with nibabel."""

import importlib.util
import itertools
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from jaxmed.data import brain_mri
from jaxmed.data.brain_mri import load_brain_mri, split_slices, template_path
from jaxmed.io import ImageReadError

pytest.importorskip("nilearn")  # the template ships in nilearn's wheel ("jaxmed[data]")


@pytest.fixture(scope="module")
def splits():
    return load_brain_mri()


@pytest.fixture(scope="module")
def nifti():
    image = nib.load(template_path())
    return np.asarray(image.get_fdata(dtype=np.float32)), image.affine  # (x, y, z), RAS


def test_template_found_without_importing_nilearn():
    code = (
        "import sys; from jaxmed.data.brain_mri import template_path; p = template_path(); "
        "print(p.name, p.is_file(), 'nilearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "True", "False"]


def test_missing_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r'pip install "jaxmed\[data\]"'):
        template_path()
    with pytest.raises(FileNotFoundError, match="nilearn"):
        load_brain_mri()


def test_default_splits(splits):
    d = splits.description
    assert d["num_slices_with_brain"] == 137
    assert [len(s["image"]) for s in (splits.train, splits.val, splits.test)] == [71, 21, 18]
    for s in (splits.train, splits.val, splits.test):
        n = len(s["slice_index"])
        assert s["image"].shape == (n, 64, 64, 1) and s["image"].dtype == np.float32
        assert s["brain_mask"].shape == (n, 64, 64) and s["brain_mask"].dtype == bool
        assert s["image"].min() >= 0.0 and s["image"].max() <= 1.0
        assert np.all(np.diff(s["slice_index"]) > 0)
        # Every kept slice holds brain, and the brain mask marks bright pixels.
        assert s["brain_mask"].sum(axis=(1, 2)).min() > 0
        assert s["image"][..., 0][s["brain_mask"]].mean() > 5 * s["image"][..., 0][~s["brain_mask"]].mean()
    # No test or validation slice lies within the guard of another split's slice.
    for a, b in itertools.combinations([splits.train, splits.val, splits.test], 2):
        gap = np.abs(a["slice_index"][:, None] - b["slice_index"][None, :]).min()
        assert gap > d["guard"] == 3
    assert d["train_slices"] == splits.train["slice_index"].tolist()
    assert "Louis Collins" in d["attribution"]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_slices_match_nibabel_in_display_orientation(nifti, orientation):
    # At size = field of view (1 mm voxels) the resampling is the identity, so
    # each slice must be the raw voxels, scaled, flipped to display
    # orientation and placed in the square window.
    data, affine = nifti
    assert np.allclose(np.diag(affine)[:3], 1.0)  # RAS, 1 mm: index i -> Right, j -> Anterior, k -> Superior
    fov = int(load_brain_mri(orientation=orientation).description["field_of_view_mm"])
    s = load_brain_mri(orientation=orientation, size=fov)
    split = s.train
    k = int(split["slice_index"][len(split["slice_index"]) // 2])
    nx, ny, _ = data.shape
    raw = {
        # Rows anterior -> posterior, columns patient right -> left.
        "axial": data[:, :, k].T[::-1, ::-1],
        # Rows superior -> inferior, columns right -> left; k counts from anterior.
        "coronal": data[:, ny - 1 - k, :].T[::-1, ::-1],
        # Rows superior -> inferior, columns anterior -> posterior; k counts from the right.
        "sagittal": data[nx - 1 - k, :, :].T[::-1, ::-1],
    }[orientation]
    top = np.percentile(data[data > 0], 99.5)
    expected = np.clip(raw / top, 0, 1)
    got = split["image"][len(split["slice_index"]) // 2, ..., 0]

    def box(image):
        rows, cols = np.flatnonzero((image > 0.1).any(1)), np.flatnonzero((image > 0.1).any(0))
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

    np.testing.assert_allclose(got[box(got)], expected[box(expected)], atol=1e-5)
    # The square window keeps the whole slice: nothing above threshold is lost.
    np.testing.assert_allclose(got.sum(), expected.sum(), rtol=1e-4)


def test_display_axes_follow_the_affine():
    # A volume stored (x, z, y) in index order with the x axis pointing right
    # (-L in LPS): display order is (S, P, L) with the right-left axis flipped.
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    affine = np.zeros((4, 4))
    affine[0, 0] = -2.0  # axis 0 -> towards the patient's right
    affine[2, 1] = 1.0  # axis 1 -> superior
    affine[1, 2] = 0.5  # axis 2 -> posterior
    affine[3, 3] = 1.0
    out, spacing = brain_mri.display_axes(array, affine, (2.0, 1.0, 0.5), "test")
    np.testing.assert_array_equal(out, np.transpose(array[::-1], (1, 2, 0)))
    assert spacing == (1.0, 0.5, 2.0)


def test_split_slices_by_hand():
    t, v, e = "train", "val", "test"
    got = split_slices(np.arange(60), block_size=10, guard=2, pattern=(t, t, v, t, t, e))
    # Guard bands come out of the training runs: 18, 19 | 30, 31 | 48, 49.
    np.testing.assert_array_equal(got[t], np.r_[0:18, 32:48])
    np.testing.assert_array_equal(got[v], np.arange(20, 30))
    np.testing.assert_array_equal(got[e], np.arange(50, 60))
    # A tie takes the guard from the later run.
    got = split_slices(np.arange(9), block_size=3, guard=1, pattern=(v, e))
    np.testing.assert_array_equal(got[v], [0, 1, 2, 7, 8])
    np.testing.assert_array_equal(got[e], [4, 5])


def test_split_slices_guard_holds_for_gappy_indices(rng):
    for _ in range(30):
        index = np.cumsum(rng.integers(1, 4, size=rng.integers(5, 80)))
        guard, block = int(rng.integers(0, 6)), int(rng.integers(1, 12))
        pattern = tuple(rng.choice(["train", "val", "test"], size=rng.integers(1, 6)))
        got = split_slices(index, block_size=block, guard=guard, pattern=pattern)
        for name, positions in got.items():
            # Round-robin blocks: every kept position carries its block's split.
            assert all(pattern[(p // block) % len(pattern)] == name for p in positions)
        for a, b in itertools.combinations(got.values(), 2):
            if len(a) and len(b):
                assert np.abs(index[a][:, None] - index[b][None, :]).min() > guard


def test_volume_is_read_once_and_protected():
    path = str(template_path())
    a, b = brain_mri.read_cached(path), brain_mri.read_cached(path)
    assert a is b
    assert not a.array.flags.writeable


def test_bad_input(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ImageReadError, match="bad.nii.gz"):
        load_brain_mri(path=bad)
    with pytest.raises(ValueError, match="orientation"):
        load_brain_mri(orientation="oblique")
    with pytest.raises(ValueError, match="pattern may only name"):
        load_brain_mri(pattern=("train", "validation"))
    with pytest.raises(ValueError, match="min_brain_fraction"):
        load_brain_mri(min_brain_fraction=2.0)
