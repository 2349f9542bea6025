"""Scan-quality decisions: threshold calibration and classification with a confidence.

A normality score is any quantity where HIGHER means MORE NORMAL: an estimate
of log p(x) (nats) from :func:`jaxmed.likelihood.log_px`, or the match
likelihood -KL(q(z|x) || N(0, I)). An image is normal when its score is at or
above the threshold, abnormal below it.

The confidence of a decision is the empirical (conformal) p-value of the score
under the normal reference scores: the fraction of normal validation images
that scored as low or lower,
``p = (1 + #{reference <= score}) / (n + 1)``.
A small p-value means the image is unusual for a normal scan. With ``n``
reference images the smallest possible p-value is ``1 / (n + 1)``, so ``n`` is
reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """A decision threshold and the normal scores it was calibrated on.

    Attributes:
      threshold: scores ``>= threshold`` are normal.
      reference_scores: ``[n]`` sorted normality scores of normal validation
        images (used for p-values).
      target_fpr: the false-positive rate asked for at calibration, or None
        when the threshold was given by the user.
    """

    threshold: float
    reference_scores: np.ndarray
    target_fpr: float | None = None

    def __post_init__(self):
        ref = np.sort(np.asarray(self.reference_scores, dtype=np.float64).ravel())
        if ref.size == 0:
            raise ValueError("Calibration needs at least one normal reference score")
        if not np.all(np.isfinite(ref)):
            raise ValueError("normal reference scores contain NaN or Inf")
        object.__setattr__(self, "reference_scores", ref)

    def to_dict(self) -> dict:
        """JSON-serialisable form (see :meth:`from_dict`)."""
        return {
            "threshold": float(self.threshold),
            "target_fpr": self.target_fpr,
            "reference_scores": self.reference_scores.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(
            threshold=float(d["threshold"]),
            reference_scores=np.asarray(d["reference_scores"]),
            target_fpr=d.get("target_fpr"),
        )


def calibrate(normal_scores, *, fpr: float = 0.05) -> Calibration:
    """Threshold that calls at most a fraction ``fpr`` of normal images abnormal.

    With the reference scores sorted ascending, ``s_(0) <= ... <= s_(n-1)``,
    the threshold is ``s_(k)`` with ``k = floor(fpr * n)``: at most ``k``
    normal images score strictly below it, so the empirical false-positive
    rate on the reference set is at most ``fpr``.

    Args:
      normal_scores: ``[n]`` normality scores of normal validation images.
      fpr: target false-positive rate in [0, 1).

    Returns:
      A :class:`Calibration`.
    """
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    ref = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if ref.size == 0:
        raise ValueError("calibrate needs at least one normal score")
    k = int(np.floor(fpr * ref.size))
    return Calibration(threshold=float(ref[k]), reference_scores=ref, target_fpr=fpr)


@dataclass(frozen=True)
class Decisions:
    """Decisions for a batch of scores.

    Attributes:
      normal: ``[b]`` bool, True where score >= threshold.
      p_value: ``[b]`` empirical p-value of each score under the normal
        reference scores (small = unusual for a normal scan).
      num_reference: number of normal reference scores the p-values rest on.
    """

    normal: np.ndarray
    p_value: np.ndarray
    num_reference: int


def classify(scores, calibration: Calibration) -> Decisions:
    """Normal/abnormal decision and its p-value for each normality score.

    Args:
      scores: ``[b]`` normality scores (higher = more normal).
      calibration: from :func:`calibrate` or built with a user threshold.

    Returns:
      :class:`Decisions`. A NaN score is called abnormal with p-value NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    ref = calibration.reference_scores
    count_at_or_below = np.searchsorted(ref, scores, side="right")
    p_value = (1.0 + count_at_or_below) / (ref.size + 1.0)
    p_value = np.where(np.isnan(scores), np.nan, p_value)
    return Decisions(
        normal=scores >= calibration.threshold,
        p_value=p_value,
        num_reference=int(ref.size),
    )


def anomaly_scores(normality_scores) -> np.ndarray:
    """Convert normality scores (higher = normal) to anomaly scores for metrics.

    :mod:`jaxmed.metrics` follows scikit-learn: higher = more abnormal.
    """
    return -np.asarray(normality_scores)


def two_sided_anomaly_scores(normality_scores, reference_scores) -> np.ndarray:
    """Distance from the normal scores, either way: a robust |z|, higher = more abnormal.

    ``|s - median(ref)| / (1.4826 * MAD(ref))`` (the MAD scaled to a standard
    deviation for Gaussian scores). Useful where an artefact makes images
    unusually LIKELY rather than unlikely: a blurred image is smoother than
    any normal one, so a low-pass model reconstructs it better and its
    log p(x) rises above the normal range; a one-sided threshold misses it.

    Args:
      normality_scores: ``[b]`` scores (higher = more normal).
      reference_scores: ``[n]`` scores of normal validation images.

    Returns:
      ``[b]`` float64 anomaly scores >= 0, for :mod:`jaxmed.metrics`.
    """
    ref = np.asarray(reference_scores, dtype=np.float64).ravel()
    if ref.size == 0 or not np.all(np.isfinite(ref)):
        raise ValueError("two-sided scores need finite normal reference scores")
    median = np.median(ref)
    # A floor keeps the scale positive when most references tie.
    scale = max(1.4826 * np.median(np.abs(ref - median)), 1e-12 * max(1.0, abs(median)))
    return np.abs(np.asarray(normality_scores, dtype=np.float64) - median) / scale
