"""The synthesis anomaly map (sliding masks, vmapped) against a Python loop, and the exam augmentation by hand
and against scipy.ndimage."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from _helpers import numpy_params

from jaxmed.tasks.lesions.augment import ExamAugment, _blur_inplane, _shift_inplane, augment_exam
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
    config = ExamAugment(flip_probability=1.0, gamma_range=(1.0, 1.0), bias=0.0, noise_std=0.0, adc_scale=0.0,
                         blur_sigma=(0.0, 0.0), shift_voxels=0.0)
    y, t = jax.jit(lambda k, x, t: augment_exam(k, x, t, config))(jax.random.key(0), x, target)
    np.testing.assert_array_equal(t, target[:, ::-1])
    np.testing.assert_allclose(np.asarray(y)[..., 1], x[:, ::-1, 1], rtol=1e-6)
    # With every change off, T2 is only re-z-scored: the same ranks, mirrored.
    np.testing.assert_array_equal(np.argsort(np.asarray(y)[2:, :, 0], axis=None),
                                  np.argsort(x[2:, ::-1, 0], axis=None))
    off = ExamAugment(enabled=False)
    y, t = augment_exam(jax.random.key(0), x, target, off)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("shape", [(20, 24), (3, 20, 24)])
def test_blur_is_scipys_gaussian_normalised_by_coverage(rng, shape):
    v = rng.normal(size=shape).astype(np.float32)
    covered = np.ones(shape, bool)
    covered[..., :3, :] = False  # rows no series covers
    v[~covered] = 0.0
    sigma, radius = 0.8, 3
    got = np.asarray(jax.jit(_blur_inplane, static_argnums=3)(v, covered, sigma, radius))
    # scipy's kernel at this radius: truncate * sigma + 0.5 rounds down to 3; in-plane axes only.
    blur = functools.partial(scipy.ndimage.gaussian_filter, sigma=[0.0] * (len(shape) - 2) + [sigma, sigma],
                             truncate=radius / sigma, mode="constant")
    want = np.where(covered, blur(v * covered) / blur(covered.astype(np.float64)), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Sigma 0 changes nothing.
    np.testing.assert_array_equal(np.asarray(_blur_inplane(v, covered, 0.0, radius)), v)


def test_shift_is_scipys_linear_shift(rng):
    v = rng.normal(size=(3, 20, 24)).astype(np.float32)
    covered = np.ones(v.shape, bool)
    offset = np.array([0.6, -1.3], np.float32)
    got = np.asarray(jax.jit(_shift_inplane)(v, covered, offset))
    want = scipy.ndimage.shift(v, (0.0, *offset), order=1, mode="constant")
    inner = (slice(None), slice(2, -2), slice(2, -2))  # scipy and JAX treat the samples beyond the edge differently
    np.testing.assert_allclose(got[inner], want[inner], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(_shift_inplane(v, covered, np.zeros(2, np.float32))), v)


def test_augment_blurs_and_shifts_only_within_its_amounts(rng):
    x, target = _exam(rng, shape=(24, 24))
    x[..., 1] = rng.normal(size=(24, 24))  # a rough ADC, so that the blur shows
    config = ExamAugment(flip_probability=0.0, gamma_range=(1.0, 1.0), bias=0.0, noise_std=0.0, adc_scale=0.0,
                         blur_sigma=(1.0, 1.0), shift_voxels=0.0)
    y = np.asarray(augment_exam(jax.random.key(1), x, target, config)[0])
    covered = x[..., 1] != 0
    blur = functools.partial(scipy.ndimage.gaussian_filter, sigma=1.0, truncate=3.0, mode="constant")
    want = np.where(covered, blur(x[..., 1] * covered) / blur(covered.astype(np.float64)), 0.0)
    np.testing.assert_allclose(y[..., 1], want, rtol=1e-4, atol=1e-5)
    # A shift of at most 1 voxel along each axis: on a smooth ADC, some offset within +-1 explains the interior.
    config = ExamAugment(flip_probability=0.0, gamma_range=(1.0, 1.0), bias=0.0, noise_std=0.0, adc_scale=0.0,
                         blur_sigma=(0.0, 0.0), shift_voxels=1.0)
    x[..., 1] = np.where(covered, 1.5 + 10 * scipy.ndimage.gaussian_filter(rng.normal(size=(24, 24)), 2.0), 0.0)
    grid = np.linspace(-1, 1, 41)
    found = []
    for seed in range(4):
        y = np.asarray(augment_exam(jax.random.key(seed), x, target, config)[0])
        np.testing.assert_array_equal(y[..., 0] == 0, x[..., 0] == 0)  # coverage kept
        inner = (slice(4, -4), slice(4, -4))
        errors = {(dy, dx): np.abs(y[..., 1][inner] - scipy.ndimage.shift(x[..., 1], (dy, dx), order=1)[inner]).max()
                  for dy in grid for dx in grid}
        best = min(errors, key=errors.get)
        assert errors[best] < 0.02 * np.ptp(x[4:-4, 4:-4, 1])
        found.append(np.hypot(*best))
    assert max(found) > 0.2  # it did move


def test_lesion_contrast_fades_lesions_towards_their_surroundings():
    # A flat ADC of 1.6 with a 9x9 lesion at 0.7: the lesion moves to 1.6 + f (0.7 - 1.6) throughout, and the
    # tissue around (at its surroundings' value already) does not move.
    # DWI: 0 on the left, 1 from column 36 (beyond the background's reach), the lesion at 4 fading to 0.4 * 4,
    # z-scored again: (lesion - left) / (right - left) is 1.6.
    shape = (32, 48)
    x = np.ones((*shape, 3), np.float32)
    x[..., 0] = np.random.default_rng(0).normal(size=shape)
    x[..., 1] = 1.6
    x[..., 2] = np.where(np.arange(48) >= 36, 1.0, 1e-3)  # 1e-3: covered
    lesion = np.zeros(shape, np.float32)
    lesion[10:19, 12:21] = 1.0
    x[..., 1][lesion > 0] = 0.7
    x[..., 2][lesion > 0] = 4.0
    config = ExamAugment(flip_probability=0.0, gamma_range=(1.0, 1.0), bias=0.0, noise_std=0.0, adc_scale=0.0,
                         blur_sigma=(0.0, 0.0), shift_voxels=0.0, lesion_contrast=(0.4, 0.4))
    y, t = augment_exam(jax.random.key(0), x, lesion, config, lesion)
    adc = np.asarray(y)[..., 1]
    np.testing.assert_allclose(adc[10:19, 12:21], 1.6 + 0.4 * (0.7 - 1.6), rtol=1e-5)
    np.testing.assert_allclose(adc[lesion == 0], 1.6, rtol=1e-6)
    dwi = np.asarray(y)[..., 2]
    assert (dwi[14, 16] - dwi[14, 2]) / (dwi[14, 40] - dwi[14, 2]) == pytest.approx(1.6, rel=1e-3)
    np.testing.assert_array_equal(t, lesion)
    # A partial-volume voxel just outside the mask fades by its blurred-mask weight (scipy's Gaussians).
    x[9, 15, 1] = 1.15
    adc = np.asarray(augment_exam(jax.random.key(0), x, lesion, config, lesion)[0])[..., 1]
    gauss = functools.partial(scipy.ndimage.gaussian_filter, mode="constant")
    weight = (lesion == 0).astype(np.float64)
    background = gauss(x[..., 1] * weight, 3.0, truncate=3.0) / gauss(weight, 3.0, truncate=3.0)
    soft = gauss(lesion.astype(np.float64), 1.0, truncate=3.0)
    want = 1.15 + 0.6 * soft[9, 15] * (background[9, 15] - 1.15)
    assert adc[9, 15] == pytest.approx(want, rel=1e-5) and 1.15 < adc[9, 15] < 1.6
    # Without the mask nothing fades.
    y, _ = augment_exam(jax.random.key(0), x, lesion, config)
    np.testing.assert_allclose(np.asarray(y)[..., 1], x[..., 1], rtol=1e-6)
