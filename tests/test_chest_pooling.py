"""Image-level pooling (jaxmed.models.pooling), window extraction and merging (jaxmed.data.merge), on hand-made inputs.

Expected values are computed by hand or with numpy: max and noisy-OR of a
few probabilities; Ilse et al.'s attention formula with the module's
parameters; MONAI's AvgMerger definition (sum of weighted patch values over
the sum of weights, per pixel) as a numpy loop over patches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.data import extract_windows, merge_windows
from jaxmed.models import AttentionPooling, max_pooling, noisy_or_pooling

PROBS = jnp.asarray([0.1, 0.7, 0.3, 0.2])
MASK = jnp.asarray([True, False, True, True])


def test_max_pooling_by_hand():
    assert float(jax.jit(max_pooling)(PROBS, MASK)) == pytest.approx(0.3)
    assert float(max_pooling(PROBS, jnp.ones(4, bool))) == pytest.approx(0.7)
    assert float(max_pooling(PROBS, jnp.zeros(4, bool))) == 0.0


def test_noisy_or_by_hand():
    # 1 - (1 - 0.1)(1 - 0.3)(1 - 0.2) = 1 - 0.504
    assert float(jax.jit(noisy_or_pooling)(PROBS, MASK)) == pytest.approx(0.496, abs=1e-6)
    assert float(noisy_or_pooling(jnp.asarray([1e-6] * 4), jnp.ones(4, bool))) == pytest.approx(4e-6, rel=1e-5)
    assert float(noisy_or_pooling(PROBS, jnp.zeros(4, bool))) == 0.0
    assert float(noisy_or_pooling(jnp.asarray([0.5, 1.0]), jnp.ones(2, bool))) == 1.0


@pytest.mark.parametrize("gated", [False, True])
def test_attention_pooling_matches_the_formula(gated, rng):
    k, d = 5, 6
    h = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
    mask = jnp.asarray([True, True, False, True, True])
    module = AttentionPooling(hidden=4, gated=gated)
    params = numpy_params(module, rng, h, mask)  # any weights (an eager init compiles each initialiser)
    logit, weights = jax.jit(module.apply)(params, h, mask)
    p = jax.tree.map(np.asarray, params["params"])
    hn = np.asarray(h, np.float64)
    hidden = np.tanh(hn @ p["V"]["kernel"] + p["V"]["bias"])
    if gated:
        hidden = hidden / (1 + np.exp(-(hn @ p["U"]["kernel"] + p["U"]["bias"])))
    score = (hidden @ p["w"]["kernel"])[:, 0]
    e = np.where(np.asarray(mask), np.exp(score - score.max()), 0.0)
    a = e / e.sum()
    z = (a[:, None] * hn).sum(0)
    expected = z @ p["classifier"]["kernel"][:, 0] + p["classifier"]["bias"][0]
    np.testing.assert_allclose(np.asarray(weights), a, atol=1e-6)
    assert float(logit) == pytest.approx(expected, abs=1e-5)
    assert float(weights[2]) == 0.0


def test_extract_windows_equals_slicing(rng):
    image = rng.normal(size=(20, 24, 2)).astype(np.float32)
    corners = np.asarray([[0, 0], [5, 7], [12, 16], [30, -4]])  # the last one is clamped into the image
    out = np.asarray(jax.jit(lambda x, c: extract_windows(x, c, window=(8, 8)))(image, corners))
    expected_corners = [(0, 0), (5, 7), (12, 16), (12, 0)]
    for k, (r, c) in enumerate(expected_corners):
        np.testing.assert_array_equal(out[k], image[r:r + 8, c:c + 8])


def _avg_merger(values, weights, corners, shape):
    """MONAI AvgMerger (with an importance map as weights): accumulate, then divide."""
    total, count = np.zeros(shape), np.zeros(shape)
    h, w = values.shape[1:3]
    for v, wt, (r, c) in zip(values, weights, corners):
        r = min(max(r, 0), shape[0] - h)
        c = min(max(c, 0), shape[1] - w)
        total[r:r + h, c:c + w] += wt * v
        count[r:r + h, c:c + w] += wt
    merged = np.where(count > 0, total / np.where(count > 0, count, 1), -1.0)
    return merged, count


def test_merge_windows_matches_avg_merger(rng):
    shape = (30, 26)
    corners = np.asarray([[0, 0], [4, 6], [10, 10], [22, 18], [-3, 40]])
    values = rng.uniform(size=(5, 9, 9)).astype(np.float32)
    weights = (rng.uniform(size=(5, 9, 9)) > 0.3).astype(np.float32) * rng.uniform(0.5, 2.0, size=(5, 1, 1))
    merged, count = jax.jit(lambda v, c, w: merge_windows(v, c, image_shape=shape, weights=w, fill=-1.0))(
        values, corners, weights.astype(np.float32))
    expected, expected_count = _avg_merger(values, weights, corners, shape)
    np.testing.assert_allclose(np.asarray(count), expected_count, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(merged), expected, rtol=1e-5, atol=1e-6)
    # Uniform weights: the count map is the number of windows covering each pixel.
    _, plain = merge_windows(values, corners, image_shape=shape)
    assert float(plain[5, 7]) == 2.0 and float(plain[29, 0]) == 0.0


def test_merge_windows_constant_values_give_the_constant():
    values = jnp.full((3, 4, 4), 0.25)
    merged, count = merge_windows(values, jnp.asarray([[0, 0], [2, 2], [4, 4]]), image_shape=(8, 8))
    covered = np.asarray(count) > 0
    np.testing.assert_allclose(np.asarray(merged)[covered], 0.25)
    assert np.asarray(merged)[~covered].max() == 0.0
