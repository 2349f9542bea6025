"""The synthesis anomaly map (sliding masks, vmapped) against a Python loop, and the exam augmentation by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.tasks.lesions.augment import ExamAugment, augment_exam
from jaxmed.tasks.lesions.synthesis import InpaintConfig, anomaly_maps, init_inpainter, patch_masks


def test_patch_masks_cover_the_grid():
    masks = patch_masks((48, 40), patch=12)
    # Starts 0, 6, ..., 36 along 48 (7); 0, 6, ..., 24 and a last at 28 along 40 (6).
    assert masks.shape == (42, 48, 40)
    assert np.all(masks.sum(axis=(1, 2)) == 144)
    assert masks.any(axis=0).all()
    assert patch_masks((8, 8), patch=12).shape == (1, 8, 8)  # capped at the grid


def test_anomaly_map_equals_a_loop_over_masks(rng):
    config = InpaintConfig(patch=8, features=4, depth=1)
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    # Weights drawn with numpy in init_inpainter's layout (the map is checked for any weights; compiling the
    # initialiser costs seconds on CPU).
    layout = jax.eval_shape(functools.partial(init_inpainter, config=config, image_shape=(16, 16, 3)),
                            jax.random.key(0))
    params = numpy_params(config.make_module(3), rng, jax.ShapeDtypeStruct((1, 16, 16, 4), jnp.float32))
    assert jax.tree.structure(params) == jax.tree.structure(layout)
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, layout)
    got = anomaly_maps(params, config, images)
    apply = jax.jit(config.make_module(3).apply)
    masks = patch_masks((16, 16), patch=8)
    total, count = np.zeros((3, 16, 16)), np.zeros((16, 16))
    for m in masks:
        inputs = np.concatenate([images * (1 - m[None, ..., None]), np.broadcast_to(m[None, ..., None], (3, 16, 16, 1))],
                                axis=-1)
        pred = np.asarray(apply(params, jnp.asarray(inputs, jnp.float32)))
        total += m * np.mean((pred - images) ** 2, axis=-1)
        count += m
    error = total / count
    padded = np.pad(error, ((0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((16, 16)), 1)
    window = sum(padded[:, i : i + 16, j : j + 16] for i in range(3) for j in range(3))
    norm = sum(ones[i : i + 16, j : j + 16] for i in range(3) for j in range(3))
    np.testing.assert_allclose(got, window / norm, rtol=1e-4, atol=1e-6)


def _exam(rng, shape=(16, 16)):
    x = rng.normal(size=(*shape, 3)).astype(np.float32)
    x[..., 1] = rng.uniform(0.5, 2.5, shape)  # ADC, 1e-3 mm^2/s
    x[:2] = 0.0  # rows no series covers
    target = (rng.uniform(size=shape) < 0.1).astype(np.float32)
    return x, target


def test_augment_keeps_coverage_and_zscores(rng):
    x, target = _exam(rng)
    config = ExamAugment(flip_probability=0.0)
    y, t = jax.jit(lambda k, x, t: augment_exam(k, x, t, config))(jax.random.key(3), x, target)
    y = np.asarray(y)
    np.testing.assert_array_equal(y[:2], 0.0)
    for c in (0, 2):  # T2 and DWI: z-scored again over the covered voxels
        assert y[2:, :, c].mean() == pytest.approx(0.0, abs=1e-4)
        assert y[2:, :, c].std() == pytest.approx(1.0, abs=1e-3)
        assert not np.allclose(y[..., c], x[..., c])
    ratio = y[2:, :, 1] / x[2:, :, 1]  # ADC: a factor within 1 +- 0.08, plus noise of std <= 0.04
    assert abs(np.median(ratio) - 1) <= 0.08 + 0.05
    np.testing.assert_array_equal(t, target)


def test_augment_flips_images_and_target_together(rng):
    x, target = _exam(rng)
    config = ExamAugment(flip_probability=1.0, gamma_range=(1.0, 1.0), bias=0.0, noise_std=0.0, adc_scale=0.0)
    y, t = jax.jit(lambda k, x, t: augment_exam(k, x, t, config))(jax.random.key(0), x, target)
    np.testing.assert_array_equal(t, target[:, ::-1])
    np.testing.assert_allclose(np.asarray(y)[..., 1], x[:, ::-1, 1], rtol=1e-6)
    # With every change off, T2 is only re-z-scored: the same ranks, mirrored.
    np.testing.assert_array_equal(np.argsort(np.asarray(y)[2:, :, 0], axis=None),
                                  np.argsort(x[2:, ::-1, 0], axis=None))
    off = ExamAugment(enabled=False)
    y, t = augment_exam(jax.random.key(0), x, target, off)
    np.testing.assert_array_equal(y, x)
