"""Classification metrics: AUROC, average precision, sensitivity at specificity.

Pure functions on arrays, jittable, with stratified bootstrap confidence
intervals. Conventions, as in scikit-learn:

.. note::
   ``labels`` are 1 for the positive (abnormal) class and 0 for the negative
   (normal) class, and a HIGHER score means MORE abnormal. An anomaly score
   built from log p(x), where lower means more abnormal, is passed negated
   (``-log_px``); :func:`jaxmed.tasks.scan_quality.anomaly_scores` does that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.stats import rankdata

Array = jax.Array


def auroc(scores: Array, labels: Array) -> Array:
    """Area under the ROC curve (Mann-Whitney U statistic, ties counted half).

    Args:
      scores: ``[n]`` float, higher = more abnormal.
      labels: ``[n]`` 0/1 or bool, 1 = abnormal.

    Returns:
      Scalar in [0, 1]; NaN when one class is absent.
    """
    scores = jnp.asarray(scores)
    pos = jnp.asarray(labels).astype(bool)
    # Counts in floating point: n_pos * n_neg overflows int32 at a million pixels.
    ranks_dtype = jnp.result_type(float)
    n_pos = pos.sum().astype(ranks_dtype)
    n_neg = pos.size - n_pos
    # Average ranks give ties half credit, as the trapezoidal ROC area does.
    ranks = rankdata(scores, method="average")
    u = jnp.where(pos, ranks, 0.0).sum() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def average_precision(scores: Array, labels: Array) -> Array:
    """Average precision: sum over thresholds of (R_k - R_{k-1}) P_k.

    The step-wise (non-interpolated) definition that
    ``sklearn.metrics.average_precision_score`` uses; tied scores form one
    threshold.

    Args:
      scores: ``[n]`` float, higher = more abnormal.
      labels: ``[n]`` 0/1 or bool, 1 = abnormal.

    Returns:
      Scalar in [0, 1]; NaN when there is no positive.
    """
    tp, fp, is_threshold = _ranked_counts(scores, labels)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    # Only the last index of a run of tied scores is a threshold.
    recall_at_threshold = jnp.where(is_threshold, recall, 0.0)
    previous = jnp.append(0.0, jax.lax.cummax(recall_at_threshold)[:-1])
    return jnp.sum(jnp.where(is_threshold, (recall - previous) * precision, 0.0))


def sensitivity_at_specificity(scores: Array, labels: Array, *, specificity: float) -> Array:
    """Largest true-positive rate reachable with specificity >= ``specificity``.

    A case is called positive when its score is at or above a threshold; the
    ROC points are read at every distinct score, without interpolation.

    Args:
      scores: ``[n]`` float, higher = more abnormal.
      labels: ``[n]`` 0/1 or bool, 1 = abnormal.
      specificity: target specificity in [0, 1].

    Returns:
      Scalar sensitivity in [0, 1].
    """
    tp, fp, is_point = _ranked_counts(scores, labels)
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    allowed = is_point & (fpr <= 1.0 - specificity + 1e-12)
    # The threshold above every score (nothing called positive) is always allowed.
    return jnp.max(jnp.where(allowed, tpr, 0.0))


def roc_curve(scores: Array, labels: Array) -> tuple[Array, Array]:
    """ROC curve points ``(fpr, tpr)``, from (0, 0) to (1, 1).

    One point per distinct score (the threshold is ``score >= s``), in
    descending threshold order, with (0, 0) prepended. Not jittable: the
    number of points depends on the number of distinct scores.

    Args:
      scores: ``[n]`` float, higher = more abnormal.
      labels: ``[n]`` 0/1 or bool, 1 = abnormal.

    Returns:
      ``fpr, tpr``, each ``[m + 1]`` for ``m`` distinct scores.
    """
    tp, fp, is_point = _ranked_counts(scores, labels)
    keep = jnp.flatnonzero(is_point)
    fpr = jnp.concatenate([jnp.zeros(1), fp[keep] / fp[-1]])
    tpr = jnp.concatenate([jnp.zeros(1), tp[keep] / tp[-1]])
    return fpr, tpr


def _ranked_counts(scores: Array, labels: Array) -> tuple[Array, Array, Array]:
    """Cumulative true and false positives, in descending score order.

    Returns ``(tp, fp, is_point)``, each ``[n]``: the counts of positives and
    negatives scoring at or above each score; ``is_point`` marks the last of
    each run of tied scores, the indices where a threshold can fall.
    """
    scores = jnp.asarray(scores)
    order = jnp.argsort(-scores, stable=True)
    s = scores[order]
    y = jnp.asarray(labels).astype(scores.dtype)[order]
    is_point = jnp.append(s[1:] != s[:-1], True)
    return jnp.cumsum(y), jnp.cumsum(1.0 - y), is_point


class Interval(NamedTuple):
    """A point estimate with a bootstrap percentile confidence interval."""

    estimate: Array
    low: Array
    high: Array


def bootstrap(
    key: Array,
    metric: Callable[[Array, Array], Array],
    scores: Array,
    labels: Array,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
) -> Interval:
    """Stratified bootstrap percentile interval of ``metric(scores, labels)``.

    Positives and negatives are resampled separately, each with its own count
    kept, so every replicate has both classes (the metric is defined on all of
    them). Replicates are vmapped.

    Args:
      key: PRNG key.
      metric: ``metric(scores, labels) -> scalar``, e.g. :func:`auroc` or
        ``functools.partial(sensitivity_at_specificity, specificity=0.95)``.
      scores: ``[n]`` float, higher = more abnormal.
      labels: ``[n]`` 0/1 or bool.
      num_resamples: number of bootstrap replicates.
      confidence: coverage of the interval.

    Returns:
      :class:`Interval` with the metric on the full data and the
      ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles.
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels).astype(bool)
    # Sorting positives first keeps the two strata contiguous with static sizes.
    order = jnp.argsort(~labels, stable=True)
    scores, labels = scores[order], labels[order]
    n = labels.size
    n_pos = int(labels.sum())

    def replicate(k):
        k_pos, k_neg = jax.random.split(k)
        idx_pos = jax.random.randint(k_pos, (n_pos,), 0, n_pos)
        idx_neg = jax.random.randint(k_neg, (n - n_pos,), n_pos, n)
        idx = jnp.concatenate([idx_pos, idx_neg])
        return metric(scores[idx], labels[idx])

    values = jax.vmap(replicate)(jax.random.split(key, num_resamples))
    alpha = (1.0 - confidence) / 2
    low, high = jnp.quantile(values, jnp.array([alpha, 1.0 - alpha]))
    return Interval(metric(scores, labels), low, high)
