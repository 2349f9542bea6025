"""Intensity transforms against numpy by hand and pydicom's windowing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from jaxmed.data.intensity import clip_percentiles, minmax, window, zscore


@pytest.fixture
def image(rng):
    return rng.gamma(2.0, 50.0, size=(24, 20)).astype(np.float32)


@pytest.fixture
def mask(rng):
    m = np.zeros((24, 20), bool)
    m[4:18, 3:15] = True
    return m


@pytest.mark.parametrize("masked", [False, True])
def test_clip_percentiles_matches_np_percentile(image, mask, masked):
    values = image[mask] if masked else image
    lo, hi = np.percentile(values, [2.0, 97.0])
    f = jax.jit(lambda x, m: clip_percentiles(x, lower=2.0, upper=97.0, mask=m if masked else None))
    out = np.asarray(f(image, mask))
    assert_allclose(out, np.clip(image, lo, hi), rtol=1e-6)
    # The bounds are reached: the clip is not a no-op.
    assert out.min() == pytest.approx(lo, rel=1e-6) and out.max() == pytest.approx(hi, rel=1e-6)


def test_zscore_masked_by_hand(image, mask):
    mean, std = image[mask].mean(), image[mask].std()
    out = np.asarray(jax.jit(lambda x, m: zscore(x, mask=m, background=-3.0))(image, mask))
    assert_allclose(out[mask], (image[mask] - mean) / std, rtol=1e-4, atol=1e-5)
    assert np.all(out[~mask] == -3.0)
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[mask].std() == pytest.approx(1.0, rel=1e-4)


def test_zscore_unmasked_and_constant(image):
    out = np.asarray(jax.jit(zscore)(image))
    assert_allclose(out, (image - image.mean()) / image.std(), rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(zscore(jnp.full((3, 3), 7.0))) == 0.0)


def test_minmax_by_hand(image, mask):
    out = np.asarray(jax.jit(lambda x: minmax(x, lower=-1.0, upper=2.0))(image))
    expected = -1.0 + 3.0 * (image - image.min()) / (image.max() - image.min())
    assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    masked = np.asarray(jax.jit(lambda x, m: minmax(x, mask=m))(image, mask))
    lo, hi = image[mask].min(), image[mask].max()
    # Outside the mask the same map applies (no clipping, no background given).
    assert_allclose(masked, (image - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def _pydicom_window(values, center, width, function):
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0  # unsigned: output range [0, 65535]
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.VOILUTFunction = function
    return apply_windowing(values.astype(np.float64), ds) / 65535.0


@pytest.mark.parametrize("function", ["linear", "linear_exact"])
@pytest.mark.parametrize(("level", "width"), [(40.0, 400.0), (-600.0, 1500.0), (10.0, 5.0)])
def test_window_matches_pydicom(function, level, width):
    hu = np.linspace(-1100.0, 1100.0, 2201).astype(np.float32)  # 1 HU steps, hits the edges
    hu = np.concatenate([hu, np.array([level - 0.5 - (width - 1) / 2, level + width / 2], np.float32)])
    expected = _pydicom_window(hu, level, width, function.upper())
    out = jax.jit(lambda x: window(x, level=level, width=width, function=function))(hu)
    assert_allclose(np.asarray(out), expected, atol=2e-6)


def test_window_output_range_and_step():
    out = np.asarray(window(jnp.array([-5.0, 0.0, 0.5, 1.0, 10.0]), level=0.5, width=1.0, lower=-1.0, upper=1.0))
    # LINEAR with width 1 is a step at level - 0.5 (values <= it -> lower).
    assert_allclose(out, [-1.0, -1.0, 1.0, 1.0, 1.0])


def test_vmap_equals_loop(image, mask, rng):
    images = np.stack([image, image * 2 + 1, rng.normal(size=image.shape).astype(np.float32)])
    masks = np.stack([mask, ~mask, mask])
    f = lambda x, m: zscore(clip_percentiles(x, mask=m), mask=m, background=0.0)  # noqa: E731
    batched = np.asarray(jax.jit(jax.vmap(f))(images, masks))
    looped = np.stack([np.asarray(f(x, m)) for x, m in zip(images, masks)])
    assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)


def test_bad_arguments(image, mask):
    with pytest.raises(ValueError, match="lower <= upper"):
        clip_percentiles(image, lower=90.0, upper=10.0)
    with pytest.raises(ValueError, match="mask shape"):
        zscore(image, mask=mask[:5])
    with pytest.raises(ValueError, match="width must be >= 1"):
        window(image, level=0.0, width=0.5)
    with pytest.raises(ValueError, match="function must be one of"):
        window(image, level=0.0, width=10.0, function="sigmoid")
