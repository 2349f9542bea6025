"""Metrics against scikit-learn (an independent implementation) and by hand."""

import functools

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from jaxmed.metrics import (
    auroc,
    average_precision,
    bootstrap,
    sensitivity_at_specificity,
)


def _data(seed, n=60, decimals=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # Rounding makes ties, which the ranking formulas must handle.
    scores = np.round(rng.normal(size=n) + labels, decimals).astype(np.float32)
    return scores, labels


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_ap_match_sklearn(seed):
    scores, labels = _data(seed)
    np.testing.assert_allclose(jax.jit(auroc)(scores, labels), roc_auc_score(labels, scores), rtol=1e-5)
    np.testing.assert_allclose(
        jax.jit(average_precision)(scores, labels), average_precision_score(labels, scores), rtol=1e-5
    )


def test_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8], np.float32)
    labels = np.array([0, 0, 1, 1])
    # Pairs (pos, neg): (.35>.1) (.35<.4) (.8>.1) (.8>.4) -> 3 of 4.
    assert float(auroc(scores, labels)) == pytest.approx(0.75)
    # Ranked: .8(+) .4(-) .35(+) .1(-): AP = 0.5 * 1 + 0.5 * 2/3.
    assert float(average_precision(scores, labels)) == pytest.approx(0.5 + 1 / 3)
    # Specificity 1 allows no false positive: only .8 is called -> sensitivity .5.
    assert float(sensitivity_at_specificity(scores, labels, specificity=1.0)) == pytest.approx(0.5)
    assert float(sensitivity_at_specificity(scores, labels, specificity=0.5)) == pytest.approx(1.0)


@pytest.mark.parametrize("specificity", [0.8, 0.9, 0.95])
def test_sensitivity_at_specificity_matches_sklearn_roc(specificity):
    scores, labels = _data(7, n=80, decimals=2)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = tpr[fpr <= 1 - specificity + 1e-12].max()
    got = jax.jit(functools.partial(sensitivity_at_specificity, specificity=specificity))(scores, labels)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bootstrap_interval_covers_estimate_and_matches_numpy_resampling():
    scores, labels = _data(3, n=100)
    interval = bootstrap(jax.random.key(1), auroc, scores, labels, num_resamples=400)
    assert interval.low <= interval.estimate <= interval.high
    np.testing.assert_allclose(interval.estimate, roc_auc_score(labels, scores), rtol=1e-5)
    # An independent stratified bootstrap with numpy + sklearn gives a similar width.
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = []
    for _ in range(400):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        values.append(roc_auc_score(labels[idx], scores[idx]))
    low, high = np.quantile(values, [0.025, 0.975])
    assert abs(float(interval.low) - low) < 0.03
    assert abs(float(interval.high) - high) < 0.03


def test_roc_curve_matches_sklearn():
    from jaxmed.metrics import roc_curve as jax_roc_curve

    scores, labels = _data(11, n=50)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    got_fpr, got_tpr = jax_roc_curve(scores, labels)
    np.testing.assert_allclose(got_fpr, fpr, atol=1e-6)
    np.testing.assert_allclose(got_tpr, tpr, atol=1e-6)


def test_auroc_on_a_million_pixels_does_not_overflow():
    rng = np.random.default_rng(5)
    labels = rng.random(1_200_000) < 0.4
    scores = (rng.normal(size=labels.size) + labels).astype(np.float32)
    np.testing.assert_allclose(auroc(scores, labels), roc_auc_score(labels, scores), rtol=1e-3)
