"""Scoring lesion maps and exam classifications, as PI-CAI scores detection maps.

Detection: each exam's fused probability map becomes a detection map by
PI-CAI's dynamic lesion-candidate extraction
(:func:`jaxmed.metrics.extract_lesion_candidates`, ``threshold="dynamic"``),
and the maps are scored against the clinically significant lesions
(:func:`jaxmed.metrics.evaluate_detections`, equal to ``picai_eval``): case
AUROC (case score = the map's maximum), lesion-level AP, the ranking score
``(AUROC + AP) / 2``, FROC. Dice is the candidates' (detection map > 0)
against the lesion mask, averaged over the exams that have a significant
lesion. Classification: AUROC and AP of the significance probability
against the exam's truth; grade accuracy, mean absolute error in grade
groups and quadratic weighted kappa (Cohen 1968) of the predicted class,
the median of the ordinal distribution (`median_class`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxmed.metrics import auroc, average_precision, dice, evaluate_detections, extract_lesion_candidates

__all__ = ["EXTRACT", "classification_metrics", "detection_summary", "evaluate_maps", "median_class", "pixel_auroc",
           "quadratic_weighted_kappa"]

# PI-CAI's dynamic candidate extraction, the same for every model compared.
EXTRACT = functools.partial(extract_lesion_candidates, threshold="dynamic")


def evaluate_maps(probs: np.ndarray, lesion_mask: np.ndarray):
    """PI-CAI scoring of probability maps: a :class:`jaxmed.metrics.DetectionResult` and the detection maps.

    Args:
      probs: ``[n, *S]`` lesion probabilities in [0, 1].
      lesion_mask: ``[n, *S]`` significant-lesion masks.

    Returns:
      ``(result, detection_maps [n, *S])``.
    """
    probs = np.clip(np.asarray(probs, np.float32), 0.0, 1.0)
    detections = np.stack([EXTRACT(p).detection_map for p in probs])
    result = evaluate_detections(list(detections), list(np.asarray(lesion_mask) > 0.5))
    return result, detections


def _mean_dice(detections: np.ndarray, lesion_mask: np.ndarray) -> float:
    positive = np.flatnonzero(np.asarray(lesion_mask).reshape(len(lesion_mask), -1).max(1) > 0.5)
    if positive.size == 0:
        return float("nan")
    scores = [float(dice(jnp.asarray(detections[i] > 0), jnp.asarray(lesion_mask[i] > 0.5), num_classes=2)[1])
              for i in positive]
    return float(np.mean(scores))


def detection_summary(probs: np.ndarray, lesion_mask: np.ndarray) -> dict[str, Any]:
    """Ranking score, AUROC, AP, Dice, sensitivity at 0.5 and 1 false positive per case (JSON-ready)."""
    result, detections = evaluate_maps(probs, lesion_mask)
    return {"score": result.score, "auroc": result.auroc, "ap": result.ap,
            "dice": _mean_dice(detections, lesion_mask),
            "sensitivity_at_0.5_fp": result.froc.sensitivity_at(0.5),
            "sensitivity_at_1_fp": result.froc.sensitivity_at(1.0),
            "num_exams": int(len(probs)), "num_positive": int(result.case_targets.sum()),
            "num_lesions": int(result.num_lesions)}


def pixel_auroc(scores: np.ndarray, lesion_mask: np.ndarray) -> float:
    """AUROC of per-pixel scores against the lesion mask, every pixel of every exam pooled."""
    return float(auroc(jnp.asarray(np.ravel(scores), jnp.float32), jnp.asarray(np.ravel(lesion_mask) > 0.5)))


def quadratic_weighted_kappa(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Cohen's weighted kappa with weights ``(i - j)^2 / (K - 1)^2``: ``1 - sum w O / sum w E``."""
    truth, pred = np.asarray(truth, int), np.asarray(pred, int)
    observed = np.zeros((num_classes, num_classes))
    np.add.at(observed, (truth, pred), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1.0)
    i, j = np.meshgrid(np.arange(num_classes), np.arange(num_classes), indexing="ij")
    w = (i - j) ** 2 / (num_classes - 1) ** 2
    denominator = float(np.sum(w * expected))
    return 1.0 - float(np.sum(w * observed)) / denominator if denominator > 0 else float("nan")


def median_class(class_probs: np.ndarray) -> np.ndarray:
    """The median of each ordinal distribution: the smallest ``k`` with ``P(y <= k) >= 1/2``: ``[n, K] -> [n]``.

    .. note::
       Not the most probable class: with ``K - 1`` classes above "no
       significant cancer", each of them is often less probable than class 0
       even when ``P(y >= 1) > 1/2``; the median minimises the expected
       absolute error in grade groups.
    """
    cumulative = np.cumsum(np.asarray(class_probs), axis=-1)
    return np.argmax(cumulative >= 0.5, axis=-1).astype(np.int32)


def classification_metrics(significant_prob: np.ndarray, grade_probs: np.ndarray, significant: np.ndarray,
                           grade: np.ndarray) -> dict[str, float]:
    """Exam-level figures of the classifier (JSON-ready).

    Args:
      significant_prob: ``[n]`` P(clinically significant).
      grade_probs: ``[n, K]`` class probabilities (class ``k`` = grade group ``k + 1``).
      significant: ``[n]`` bool truth.
      grade: ``[n]`` int true class.
    """
    pred = median_class(grade_probs)
    s = jnp.asarray(significant_prob, jnp.float32)
    y = jnp.asarray(np.asarray(significant, bool))
    both = 0 < int(np.sum(significant)) < len(significant)
    return {"significance_auroc": float(auroc(s, y)) if both else float("nan"),
            "significance_ap": float(average_precision(s, y)) if both else float("nan"),
            "grade_accuracy": float(np.mean(pred == grade)),
            "grade_mae": float(np.mean(np.abs(pred - grade))),
            "grade_kappa": quadratic_weighted_kappa(grade, pred, grade_probs.shape[-1])}
