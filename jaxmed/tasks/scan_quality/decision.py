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


def calibration_shift(scores, calibration: Calibration, *, groups=None, outside_fraction: float = 0.5) -> dict:
    """How a batch of normality scores sits against the calibration's normal scores, as a whole.

    A per-slice threshold is only as good as the calibration set is like the
    scans scored: another scanner, protocol or population shifts every
    slice's score, and then most slices fall below the lowest normal score
    the calibration saw, artefact or not. That is a statement about the batch
    (or a volume), not about one slice: calibrate on the site's own normal
    scans (``jaxmed calibrate``) before trusting the decisions.

    Args:
      scores: ``[n]`` normality scores (higher = more normal).
      calibration: the calibration they are decided with.
      groups: optional ``{name: [m] scores}`` (e.g. per volume), checked one
        by one as well.
      outside_fraction: a batch (or group) lies outside the calibration when
        more than this fraction of its scores is below the lowest reference
        score.

    Returns:
      ``{"num_scores", "below_calibration_min", "flagged", "target_fpr",
      "median_quantile", "outside", "outside_groups"}``: the fractions of
      scores below the lowest reference score and below the threshold, the
      calibration's target false-positive rate, the fraction of reference
      scores at or below the batch's median score, whether the batch lies
      outside, and the names of the groups that do.
    """
    ref = calibration.reference_scores

    def below_min(values):
        values = np.asarray(values, np.float64).ravel()
        # NaN scores count as outside: they are not in any normal range.
        return float(np.mean(~(values >= ref[0]))) if values.size else 0.0

    scores = np.asarray(scores, np.float64).ravel()
    fraction = below_min(scores)
    outside_groups = sorted(name for name, values in (groups or {}).items() if below_min(values) > outside_fraction)
    finite = scores[np.isfinite(scores)]
    return {
        "num_scores": int(scores.size),
        "below_calibration_min": fraction,
        "flagged": float(np.mean(~(scores >= calibration.threshold))) if scores.size else 0.0,
        "target_fpr": calibration.target_fpr,
        "median_quantile": float(np.mean(ref <= np.median(finite))) if finite.size else None,
        "outside": fraction > outside_fraction or bool(outside_groups),
        "outside_groups": outside_groups,
    }
