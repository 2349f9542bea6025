"""Segmentation metrics against independent computations.

Dice against scikit-learn's per-class F1 (the same quantity); surface
distances against brute force: surface voxels found by looking at each
voxel's face neighbours, and every pairwise distance computed with
``scipy.spatial.distance.cdist`` (no distance transform).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import f1_score

from jaxmed.metrics import dice, surface_distances


def _labels(rng, shape, num_classes):
    # Smooth-ish regions: a coarse random grid, upsampled, so classes form blobs.
    coarse = rng.integers(0, num_classes, [-(-s // 4) for s in shape])
    for axis, s in enumerate(shape):
        coarse = np.repeat(coarse, 4, axis=axis).take(np.arange(s), axis=axis)
    return coarse


@pytest.mark.parametrize("shape", [(24, 20), (6, 12, 16)])
def test_dice_matches_sklearn_f1_under_jit(shape):
    rng = np.random.default_rng(len(shape))
    num_classes = 5
    target = _labels(rng, shape, num_classes - 1)  # class 4 absent from the target ...
    pred = np.where(rng.uniform(size=shape) < 0.2, rng.integers(0, num_classes - 1, shape), target)
    pred[pred == 3] = 2  # ... and class 3 from the prediction
    got = jax.jit(functools.partial(dice, num_classes=num_classes))(pred, target)
    expected = f1_score(target.ravel(), pred.ravel(), labels=range(num_classes), average=None, zero_division=1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[3] == 0.0 and got[4] == 1.0  # absent from one: 0; from both: empty_score


def test_dice_vmap_equals_loop_and_empty_convention():
    rng = np.random.default_rng(0)
    preds = np.stack([_labels(rng, (16, 16), 3) for _ in range(4)])
    targets = np.stack([_labels(rng, (16, 16), 3) for _ in range(4)])
    batched = jax.vmap(functools.partial(dice, num_classes=4, empty_score=jnp.nan))(preds, targets)
    loop = np.stack([dice(p, t, num_classes=4, empty_score=jnp.nan) for p, t in zip(preds, targets)])
    np.testing.assert_allclose(batched, loop, rtol=1e-6)
    assert batched.shape == (4, 4) and np.isnan(batched[:, 3]).all()


def test_dice_by_hand():
    target = np.zeros((4, 4), int)
    target[:2, :2] = 1  # 4 voxels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 voxels, 4 shared
    np.testing.assert_allclose(dice(pred, target, num_classes=2), [2 * 10 / (10 + 12), 2 * 4 / 10], rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        dice(pred[:3], target, num_classes=2)


def _brute_surface(mask):
    """Voxels of ``mask`` with a face neighbour outside it (outside the array counts as outside)."""
    padded = np.pad(mask, 1)
    centre = tuple(slice(1, -1) for _ in mask.shape)
    surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = tuple(
                slice(1 + step, padded.shape[a] - 1 + step) if a == axis else centre[a] for a in range(mask.ndim)
            )
            surface |= mask & ~padded[neighbour]
    return surface


def _brute_distances(pred, target, spacing, percentile=95.0):
    a = np.argwhere(_brute_surface(pred)) * spacing
    b = np.argwhere(_brute_surface(target)) * spacing
    d = cdist(a, b)
    ab, ba = d.min(axis=1), d.min(axis=0)
    both = np.concatenate([ab, ba])
    return both.max(), max(np.percentile(ab, percentile), np.percentile(ba, percentile)), both.mean()


def _blob(rng, shape):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    centre = rng.uniform(0.3, 0.7, len(shape)) * shape
    radii = rng.uniform(0.15, 0.35, len(shape)) * shape
    mask = np.sum(((grid - centre) / radii) ** 2, axis=-1) <= 1
    return mask ^ (rng.uniform(size=shape) < 0.01)  # a few stray voxels and holes


@pytest.mark.parametrize(
    "shape,spacing", [((30, 26), (0.7, 1.3)), ((10, 18, 16), (3.0, 0.5, 0.5)), ((12, 12, 12), None)]
)
def test_surface_distances_match_brute_force(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        pred, target = _blob(rng, shape), _blob(rng, shape)
        got = surface_distances(pred, target, spacing=spacing)
        expected = _brute_distances(pred, target, np.ones(len(shape)) if spacing is None else np.asarray(spacing))
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        # Symmetric, and zero against itself.
        np.testing.assert_allclose(surface_distances(target, pred, spacing=spacing), got, rtol=1e-12)
        assert surface_distances(pred, pred, spacing=spacing) == (0.0, 0.0, 0.0)


def test_surface_distances_by_hand():
    # Two 3x3 squares, the second 4 rows below the first; rows 2 mm apart, columns 1 mm.
    pred = np.zeros((10, 5), bool)
    pred[0:3, 1:4] = True
    target = np.roll(pred, 4, axis=0)
    got = surface_distances(pred, target, spacing=(2.0, 1.0))
    # Surfaces: all 8 voxels but the centre. The nearest target surface voxel of pred's (r, c) is
    # (4, c), (4 - r) rows = 2 (4 - r) mm away: rows 0, 1, 2 (3, 2, 3 voxels) -> 8, 6, 4 mm.
    to_target = [8.0] * 3 + [6.0] * 2 + [4.0] * 3
    assert got.hausdorff == pytest.approx(8.0)
    assert got.mean == pytest.approx(np.mean(to_target))  # the same both ways, by symmetry
    assert got.hausdorff95 == pytest.approx(np.percentile(to_target, 95))


def test_surface_distances_empty_and_bad_input():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert surface_distances(empty, empty) == (0.0, 0.0, 0.0)
    assert surface_distances(full, empty) == (np.inf, np.inf, np.inf)
    with pytest.raises(ValueError, match="shape"):
        surface_distances(full, full[:2])
    with pytest.raises(ValueError, match="binary"):
        surface_distances(full * 2, full)
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(full, full, spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(full, full, spacing=(1.0, 0.0))
