"""Orders of exams: MMD similarity, BALD and predictive entropy, paced batches; checked by hand (numpy, scipy)."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from jaxmed.tasks.lesions.ordering import bald, median_bandwidth, mmd2, predictive_entropy, similarity_order
from jaxmed.tasks.lesions.training import paced_batches


def _k(x, y, h):
    return np.exp(-cdist(x, y, "sqeuclidean") / (2 * h**2))


def test_mmd2_is_the_unbiased_estimate(rng):
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1.0, size=(9, 3))
    h = 1.3
    kxx, kyy, kxy = _k(x, x, h), _k(y, y, h), _k(x, y, h)
    expected = ((kxx.sum() - np.trace(kxx)) / (12 * 11) + (kyy.sum() - np.trace(kyy)) / (9 * 8)
                - 2 * kxy.mean())
    assert mmd2(x, y, bandwidth=h) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_median_bandwidth_is_scipys_median_distance(rng):
    x = rng.normal(size=(20, 4))
    assert median_bandwidth(x) == pytest.approx(np.median(pdist(x)), rel=1e-9)


def test_similarity_order_by_hand(rng):
    ref = rng.normal(size=(40, 5))
    near, far = rng.normal(size=(6, 5)), rng.normal(3.0, 1.0, size=(6, 5))
    cand = np.concatenate([far[:3], near, far[3:]])
    order, scores = similarity_order(cand, ref)
    # By hand: MMD^2 between the point mass at b and the reference sample (biased V-statistic).
    mean, std = ref.mean(0), ref.std(0) + 1e-6
    a, b = (ref - mean) / std, (cand - mean) / std
    h = np.median(pdist(np.concatenate([a, b])))
    expected = 1.0 - 2.0 * _k(b, a, h).mean(1) + _k(a, a, h).mean()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    assert set(order[:6]) == set(range(3, 9))  # the reference-like exams come first


def _entropy(p):
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_bald_and_entropy_by_hand(rng):
    probs = rng.uniform(0.01, 0.99, size=(5, 3, 4, 4))
    mean = probs.mean(0)
    np.testing.assert_allclose(predictive_entropy(probs), _entropy(mean).sum((1, 2)), rtol=1e-4)
    np.testing.assert_allclose(bald(probs), (_entropy(mean) - _entropy(probs).mean(0)).sum((1, 2)), rtol=1e-3,
                               atol=1e-5)
    agree = np.broadcast_to(probs[:1], probs.shape)  # every sample the same: no mutual information
    np.testing.assert_allclose(bald(agree), 0.0, atol=1e-5)
    assert np.all(bald(probs) > 0)


def test_paced_batches_let_exams_in_by_order():
    new = {"image": np.arange(20)[:, None].astype(np.float32), "lesion_mask": np.zeros((20, 1), np.float32)}
    old = {"image": -1.0 - np.arange(5)[:, None].astype(np.float32), "lesion_mask": np.zeros((5, 1), np.float32)}
    order = np.arange(20)[::-1]  # exam 19 first
    fn = paced_batches(new, order, old, batch_size=8, steps=10, pacing=0.5, replay=0.25, seed=3,
                       keys=("image", "lesion_mask"))
    for step in range(10):
        batch = fn(step)["image"][:, 0]
        fresh, replayed = batch[:6], batch[6:]
        assert np.all(replayed < 0) and np.all(fresh >= 0)
        available = min(20, max(6, int(np.ceil(20 * (step + 1) / 5))))  # all in by step 5 of 10
        assert set(fresh.astype(int)) <= set(order[:available])
    np.testing.assert_array_equal(fn(4)["image"], fn(4)["image"])  # a pure function of the step
