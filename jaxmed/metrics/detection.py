"""Lesion detection metrics, scored as the PI-CAI challenge scores detection maps.

A model gives a probability map per case; lesion candidates are extracted
from it (:func:`extract_lesion_candidates`) into a *detection map*, where
every candidate is a connected blob of voxels set to the candidate's
confidence. Each case's candidates are matched to its ground-truth lesions
(:func:`evaluate_case`), and the cases together give lesion-level average
precision, case-level AUROC, the PI-CAI ranking score ``(AUROC + AP) / 2``
and the FROC curve (:func:`detection_metrics`; :func:`evaluate_detections`
does all three steps). :func:`bootstrap_detection` resamples cases.

Every figure follows the reference implementations, ``picai_eval`` 1.4.13
(``eval.py``, ``metrics.py``, ``analysis_utils.py``) and
``report_guided_annotation`` 0.3.4 (``extract_lesion_candidates.py``), and
the tests check them against those packages to 1e-6. The conventions:

.. note::
   * Connectivity is full (26 neighbours in 3D, 8 in 2D), for candidates,
     detection-map blobs and ground-truth lesions alike; a 2D map is scored
     as a one-slice volume would be.
   * A candidate hits a lesion when their IoU is at least ``min_overlap``
     (0.1). Candidates and lesions are paired one-to-one by the Hungarian
     algorithm on ``1 + IoU`` for each pair that hits (0 otherwise), which
     favours more hits before more overlap. A lesion without a candidate is a
     false negative ``(1, 0.0, 0.0)``; a candidate that hits no lesion is a
     false positive ``(0, confidence, 0.0)``; a candidate that hits a lesion
     but lost it to another candidate counts as neither.
   * The case score is the maximum of the detection map (0 when empty); a
     case is positive when its label has any lesion voxel.
   * :func:`evaluate_case` and :func:`evaluate_detections` cast maps to
     float32 before anything else (before extraction, too), as
     ``picai_eval`` does.

This module runs on the host in numpy and scipy: extraction and matching are
sequential and data-dependent, and JAX has no connected-component labelling.

References:
  Saha, Bosma, Twilt et al., "Artificial intelligence and radiologists in
  prostate cancer detection on MRI (PI-CAI): an international, paired,
  non-inferiority, confirmatory study", Lancet Oncology 25 (2024).
  Bosma, Saha, Hosseinzadeh et al., "Semisupervised learning with
  report-guided pseudo labels for deep learning-based prostate cancer
  detection using biparametric MRI", Radiology: AI 5 (2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import jax
import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from jaxmed.metrics.classification import Interval

# picai_eval's overlap functions add this to numerator and denominator.
_OVERLAP_EPS = 1e-8
# picai_eval keeps at most about this many FROC thresholds.
_MAX_FROC_THRESHOLDS = 10_000


# --------------------------------------------------------------------------
# Lesion candidates from a probability map
# --------------------------------------------------------------------------


class LesionCandidates(NamedTuple):
    """Lesion candidates extracted from one probability map.

    Attributes:
      detection_map: same shape and float dtype as the probability map; each
        candidate's voxels hold its confidence, every other voxel is 0.
      confidences: ``[k]`` float64, the candidates' confidences in the order
        they were extracted.
      labels: same shape, int32; 0 off the candidates, ``i`` on the ``i``-th
        candidate (1-based, the order of ``confidences``).
    """

    detection_map: np.ndarray
    confidences: np.ndarray
    labels: np.ndarray


def extract_lesion_candidates(
    prob_map: ArrayLike,
    *,
    threshold: Literal["dynamic", "dynamic-fast"] | float = "dynamic",
    num_lesions_to_retain: int = 5,
    min_voxels: int = 10,
    dynamic_threshold_factor: float = 2.5,
    stop_below: float = 0.01,
    remove_adjacent: bool = True,
) -> LesionCandidates:
    """Lesion candidates from a probability map, as ``report_guided_annotation``.

    With ``threshold="dynamic"`` candidates are taken one at a time: let ``p``
    be the maximum of what is left of the map; stop when ``p < stop_below``.
    Threshold what is left at ``p / dynamic_threshold_factor``, split it into
    connected blobs and drop those of ``min_voxels`` voxels or fewer. The blob
    with the highest maximum (the first in raster order on a tie) becomes a
    candidate of that confidence, unless ``remove_adjacent`` and it touches an
    earlier candidate; either way it is removed from the map. Stop after
    ``num_lesions_to_retain`` candidates, or when every blob was dropped.

    ``threshold="dynamic-fast"`` thresholds the map once, at its maximum over
    ``dynamic_threshold_factor``; a float thresholds it once at that value.
    Each of their blobs of more than ``min_voxels`` voxels is a candidate of
    confidence its maximum, with no limit on their number.

    .. note::
       ``min_voxels`` is exclusive: a blob needs MORE than ``min_voxels``
       voxels (``min_voxels_detection`` in ``report_guided_annotation``).
       That package's own default is ``"dynamic-fast"``; the default here is
       the dynamic extraction PI-CAI describes. The candidate is not always
       the blob holding ``p``: a blob too small to keep is skipped (and stays
       in the map). When every blob
       is dropped, ``report_guided_annotation`` (its version 1, the one
       ``"dynamic"`` runs) may also list a phantom candidate of confidence 0
       and add its index to the whole index map; here nothing is added. The
       detection maps agree.

    Args:
      prob_map: ``[h, w]`` or ``[d, h, w]`` probabilities in [0, 1].
      threshold: ``"dynamic"``, ``"dynamic-fast"`` or a fixed threshold.
      num_lesions_to_retain: most candidates kept (``"dynamic"`` only).
      min_voxels: blobs of at most this many voxels are dropped.
      dynamic_threshold_factor: ratio of a candidate's maximum to the
        threshold that bounds it; larger means larger candidates.
      stop_below: ``"dynamic"`` stops when the map's maximum falls below this.
      remove_adjacent: drop a ``"dynamic"`` candidate that touches (in full
        connectivity) an earlier one.

    Returns:
      :class:`LesionCandidates`.

    Raises:
      ValueError: the map is not 2D or 3D, holds NaN or values outside [0, 1],
        or ``threshold`` is not one of the above.
    """
    prob_map = _probabilities(prob_map, "prob_map")
    structure = _structure(prob_map.ndim)
    if isinstance(threshold, str):
        if threshold == "dynamic":
            return _extract_dynamic(
                prob_map,
                structure=structure,
                num_lesions_to_retain=num_lesions_to_retain,
                min_voxels=min_voxels,
                factor=dynamic_threshold_factor,
                stop_below=stop_below,
                remove_adjacent=remove_adjacent,
            )
        if threshold != "dynamic-fast":
            raise ValueError(f"threshold must be 'dynamic', 'dynamic-fast' or a float, got {threshold!r}")
        # As report_guided_annotation: a Python float, compared in the map's dtype.
        threshold = float(np.max(prob_map) / dynamic_threshold_factor)
    blobs, maxima, keep = _blobs(prob_map, float(threshold), structure=structure, min_voxels=min_voxels)
    kept = np.flatnonzero(keep)
    # Relabel the kept blobs 1..k in raster order of their first voxel.
    relabel = np.zeros(maxima.size + 1, np.int32)
    relabel[kept + 1] = np.arange(1, kept.size + 1, dtype=np.int32)
    values = np.zeros(maxima.size + 1, prob_map.dtype)
    values[kept + 1] = maxima[kept]
    return LesionCandidates(values[blobs], maxima[kept].astype(np.float64), relabel[blobs])


def _extract_dynamic(prob_map, *, structure, num_lesions_to_retain, min_voxels, factor, stop_below, remove_adjacent):
    work = prob_map.copy()
    detection_map = np.zeros_like(prob_map)
    labels = np.zeros(prob_map.shape, np.int32)
    confidences: list[float] = []
    while len(confidences) < num_lesions_to_retain:
        p = np.max(work)
        if p < stop_below:
            break
        # p / factor stays in the map's dtype, as in report_guided_annotation.
        blobs, maxima, keep = _blobs(work, p / factor, structure=structure, min_voxels=min_voxels)
        if not keep.any():
            break
        confidence = np.max(maxima[keep])
        index = np.flatnonzero(keep & (maxima == confidence))[0] + 1
        region = ndimage.find_objects(blobs, max_label=index)[index - 1]
        # One voxel of margin: the blob's dilation fits in the grown box.
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in region)
        mask = blobs[grown] == index
        touches = remove_adjacent and bool(
            (ndimage.binary_dilation(mask, structure=structure) & (detection_map[grown] > 0)).any()
        )
        if not touches:
            detection_map[grown][mask] = confidence
            confidences.append(float(confidence))
            labels[grown][mask] = len(confidences)
        work[grown][mask] = 0
    return LesionCandidates(detection_map, np.asarray(confidences, np.float64), labels)


def _blobs(prob_map, threshold, *, structure, min_voxels):
    """Blobs of ``prob_map >= threshold``: labels, per-blob maxima, and which are large enough."""
    # report_guided_annotation zeroes values below the threshold and labels the non-zero rest.
    blobs, num_blobs = ndimage.label((prob_map >= threshold) & (prob_map != 0), structure=structure)
    sizes = np.bincount(blobs.ravel(), minlength=num_blobs + 1)[1:]
    maxima = np.asarray(ndimage.maximum(prob_map, blobs, np.arange(1, num_blobs + 1)), prob_map.dtype)
    return blobs, maxima.reshape(num_blobs), sizes > min_voxels


# --------------------------------------------------------------------------
# One case: candidates against lesions
# --------------------------------------------------------------------------


class CaseEvaluation(NamedTuple):
    """The candidates and lesions of one case, as ``picai_eval.evaluate_case``.

    One entry per true positive (matched pairs, in lesion order), then per
    false negative, then per false positive (in candidate order).

    Attributes:
      is_lesion: ``[m]`` bool; True for a true positive or a false negative.
      confidence: ``[m]`` float64; the candidate's confidence, 0 for a false
        negative.
      overlap: ``[m]`` float64; the IoU (or Dice) of a true positive, else 0.
      case_score: the case's score, the maximum of its detection map.
      has_lesion: whether the label holds any lesion.
    """

    is_lesion: np.ndarray
    confidence: np.ndarray
    overlap: np.ndarray
    case_score: float
    has_lesion: bool

    def records(self) -> list[tuple[int, float, float]]:
        """``[(is_lesion, confidence, overlap), ...]``, the form of ``picai_eval``'s ``y_list``."""
        return [(int(a), float(b), float(c)) for a, b, c in zip(self.is_lesion, self.confidence, self.overlap)]


def evaluate_case(
    detection_map: ArrayLike,
    label: ArrayLike,
    *,
    min_overlap: float = 0.1,
    overlap: Literal["iou", "dice"] = "iou",
) -> CaseEvaluation:
    """Match one case's candidates to its lesions (true/false positives, false negatives).

    Candidates are the connected blobs of the detection map (confidence: the
    blob's maximum); lesions are the connected components of the label. A
    pair hits when its overlap is at least ``min_overlap``; the pairing is
    ``picai_eval``'s (module docstring).

    Args:
      detection_map: ``[h, w]`` or ``[d, h, w]``, non-negative; each blob one
        candidate (e.g. :attr:`LesionCandidates.detection_map`).
      label: same shape, binary (1 = lesion).
      min_overlap: least overlap of a hit.
      overlap: ``"iou"`` (intersection over union, PI-CAI's) or ``"dice"``.

    Returns:
      :class:`CaseEvaluation`.

    Raises:
      ValueError: shapes differ, the map holds NaN or negative values or looks
        like a probability map (fewer blobs than distinct values), or the
        label is not binary.
    """
    detection_map = _detection_map(detection_map, "detection_map")
    label = _binary_label(label, "label", detection_map.shape)
    if overlap not in ("iou", "dice"):
        raise ValueError(f"overlap must be 'iou' or 'dice', got {overlap!r}")
    return _evaluate_case(detection_map, label, min_overlap=min_overlap, overlap=overlap)


def _evaluate_case(detection_map, label, *, min_overlap, overlap):
    structure = _structure(detection_map.ndim)
    candidates, num_candidates = ndimage.label(detection_map, structure=structure)
    if num_candidates < np.unique(detection_map[detection_map != 0]).size:
        raise ValueError(
            "detection_map has fewer connected blobs than distinct non-zero values: it looks like a "
            "probability map; extract lesion candidates first (extract_lesion_candidates)"
        )
    confidences = np.asarray(
        ndimage.maximum(detection_map, candidates, np.arange(1, num_candidates + 1)), np.float64
    ).reshape(num_candidates)
    case_score = float(np.max(detection_map)) if detection_map.size else 0.0
    has_lesion = bool(label.any())
    if not has_lesion:
        return _case(np.zeros(num_candidates, bool), confidences, np.zeros(num_candidates), case_score, False)

    lesions, num_lesions = ndimage.label(label, structure=structure)
    # All pairwise intersections at once: a 2D histogram of (lesion, candidate) labels.
    joint = np.bincount(
        (lesions.astype(np.int64) * (num_candidates + 1) + candidates).ravel(),
        minlength=(num_lesions + 1) * (num_candidates + 1),
    ).reshape(num_lesions + 1, num_candidates + 1)
    intersection = joint[1:, 1:]
    lesion_size = joint[1:, :].sum(axis=1, keepdims=True)
    candidate_size = joint[:, 1:].sum(axis=0, keepdims=True)
    if overlap == "iou":
        score = (intersection + _OVERLAP_EPS) / (candidate_size + lesion_size - intersection + _OVERLAP_EPS)
    else:
        score = (2.0 * intersection + _OVERLAP_EPS) / (candidate_size + lesion_size + _OVERLAP_EPS)
    # picai_eval's matrix, value for value, so the assignment (and its tie-breaks) is the same.
    score[score < min_overlap] = 0
    score[score > 0] += 1
    rows, cols = linear_sum_assignment(score, maximize=True)
    matched = score[rows, cols] > 0
    rows, cols = rows[matched], cols[matched]
    num_missed = num_lesions - rows.size
    false_positive = np.flatnonzero(~(score > 0).any(axis=0))
    return _case(
        np.concatenate([np.ones(rows.size + num_missed, bool), np.zeros(false_positive.size, bool)]),
        np.concatenate([confidences[cols], np.zeros(num_missed), confidences[false_positive]]),
        np.concatenate([score[rows, cols] - 1, np.zeros(num_missed + false_positive.size)]),
        case_score,
        True,
    )


def _case(is_lesion, confidence, overlap, case_score, has_lesion):
    return CaseEvaluation(
        np.asarray(is_lesion, bool),
        np.asarray(confidence, np.float64),
        np.asarray(overlap, np.float64),
        case_score,
        has_lesion,
    )


# --------------------------------------------------------------------------
# All cases: AP, AUROC, ranking score, FROC
# --------------------------------------------------------------------------


class Froc(NamedTuple):
    """FROC curve: lesion sensitivity against mean false positives per case.

    One point per distinct candidate confidence (threshold), in descending
    threshold order, as ``picai_eval.Metrics``: a candidate counts when its
    confidence is at or above the threshold.

    .. note::
       As in ``picai_eval``, the last point (the lowest threshold, usually
       the 0 of the false negatives) is replaced by the previous point's
       sensitivity at ``fp_per_case = inf``; with fewer than two thresholds
       the curve is ``(0, 0), (inf, 0)``. Above 10,000 thresholds it keeps
       ``picai_eval``'s subset (all above 0.8, about 10,000 evenly spaced,
       the lowest 20).

    Attributes:
      thresholds: ``[t]`` descending confidences.
      sensitivity: ``[t]`` true positives over ground-truth lesions (NaN when
        there is no lesion).
      fp_per_case: ``[t]`` false positives over cases.
    """

    thresholds: np.ndarray
    sensitivity: np.ndarray
    fp_per_case: np.ndarray

    def sensitivity_at(self, fp_per_case: float) -> float:
        """Sensitivity at the lowest threshold with at most ``fp_per_case`` (0 if none), as ``lesion_TPR_at_FPR``."""
        allowed = self.fp_per_case <= fp_per_case
        return float(self.sensitivity[allowed][-1]) if allowed.any() else 0.0


class DetectionResult(NamedTuple):
    """Detection figures of a set of cases.

    Attributes:
      auroc: case-level area under the ROC curve (case score: maximum of the
        detection map; case label: any lesion).
      ap: lesion-level average precision.
      score: the PI-CAI ranking score, ``(auroc + ap) / 2``.
      froc: :class:`Froc`.
      precision: lesion-level precision curve, ``picai_eval``'s order
        (ascending thresholds, then a final 1); 0 at the threshold 0.
      recall: the matching recall (descending, then a final 0).
      case_scores: ``[n]`` float64.
      case_targets: ``[n]`` bool.
      num_lesions: ground-truth lesions over all cases.
      cases: the :class:`CaseEvaluation` of each case, in input order.
    """

    auroc: float
    ap: float
    score: float
    froc: Froc
    precision: np.ndarray
    recall: np.ndarray
    case_scores: np.ndarray
    case_targets: np.ndarray
    num_lesions: int
    cases: tuple[CaseEvaluation, ...]


def detection_metrics(cases: Sequence[CaseEvaluation]) -> DetectionResult:
    """AP, AUROC, ranking score and FROC of evaluated cases, as ``picai_eval.Metrics``.

    Average precision is the step integral ``sum_k (R_k - R_{k-1}) P_k`` over
    the distinct lesion confidences in descending order (tied confidences
    are one threshold, as in ``sklearn.metrics.precision_recall_curve``),
    where recall counts every ground-truth lesion and the false negatives'
    threshold 0 has precision 0 (they add recall only where nothing is
    called). AUROC is the trapezoidal area under the case-level ROC curve
    (ties count half).

    Args:
      cases: :class:`CaseEvaluation` of each case (e.g. from
        :func:`evaluate_case`).

    Returns:
      :class:`DetectionResult`; ``auroc`` is NaN when all cases are of one
      class, ``ap`` NaN when no case has a candidate or lesion.
    """
    cases = tuple(cases)
    is_lesion, confidence, _ = _flatten(cases)
    case_scores = np.array([c.case_score for c in cases], np.float64)
    case_targets = np.array([c.has_lesion for c in cases], bool)
    ap, precision, recall = _average_precision(is_lesion, confidence, np.ones((1, is_lesion.size)))
    auroc = float(_auroc(case_scores, case_targets, np.ones((1, len(cases))))[0])
    ap = float(ap[0])
    num_lesions = int(is_lesion.sum())
    return DetectionResult(
        auroc=auroc,
        ap=ap,
        score=(auroc + ap) / 2,
        froc=_froc(is_lesion, confidence, num_lesions=num_lesions, num_cases=len(cases)),
        precision=np.append(precision[0, ::-1], 1.0),
        recall=np.append(recall[0, ::-1], 0.0),
        case_scores=case_scores,
        case_targets=case_targets,
        num_lesions=num_lesions,
        cases=cases,
    )


def evaluate_detections(
    maps: Sequence[ArrayLike] | ArrayLike,
    labels: Sequence[ArrayLike] | ArrayLike,
    *,
    extract: Callable[[np.ndarray], LesionCandidates] | None = None,
    min_overlap: float = 0.1,
    overlap: Literal["iou", "dice"] = "iou",
) -> DetectionResult:
    """Score detection (or probability) maps against lesion labels, as PI-CAI.

    ``picai_eval.evaluate(maps, labels)`` with its defaults, or, given
    ``extract``, ``evaluate(maps, labels, y_det_postprocess_func=...)``.

    Args:
      maps: one map per case, ``[h, w]`` or ``[d, h, w]`` (cases may differ in
        shape); detection maps, or probability maps when ``extract`` is given.
      labels: one binary label per case, shaped as its map.
      extract: turns a probability map (cast to float32 first, as
        ``picai_eval`` does) into candidates, e.g.
        :func:`extract_lesion_candidates` or a ``functools.partial`` of it;
        None: ``maps`` are detection maps already.
      min_overlap: least IoU (or Dice) of a hit.
      overlap: ``"iou"`` or ``"dice"``.

    Returns:
      :class:`DetectionResult`.

    Raises:
      ValueError: naming the case: the numbers of maps and labels differ, or a
        map or label is bad (see :func:`evaluate_case`; probability maps must
        lie in [0, 1]).
    """
    maps, labels = list(maps), list(labels)
    if len(maps) != len(labels):
        raise ValueError(f"got {len(maps)} maps but {len(labels)} labels")
    if overlap not in ("iou", "dice"):
        raise ValueError(f"overlap must be 'iou' or 'dice', got {overlap!r}")
    cases = []
    for i, (m, y) in enumerate(zip(maps, labels)):
        if extract is None:
            m = _detection_map(m, f"case {i}: detection map")
        else:
            m = extract(_probabilities(m, f"case {i}: probability map")).detection_map
            m = _detection_map(m, f"case {i}: extracted detection map")
        y = _binary_label(y, f"case {i}: label", m.shape)
        try:
            cases.append(_evaluate_case(m, y, min_overlap=min_overlap, overlap=overlap))
        except ValueError as e:
            raise ValueError(f"case {i}: {e}") from None
    return detection_metrics(cases)


class DetectionIntervals(NamedTuple):
    """Bootstrap intervals of the PI-CAI figures (each an :class:`Interval`)."""

    auroc: Interval
    ap: Interval
    score: Interval


def bootstrap_detection(
    key: jax.Array,
    cases: Sequence[CaseEvaluation],
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    chunk_size: int = 100,
) -> DetectionIntervals:
    """Percentile bootstrap intervals of AUROC, AP and ranking score over cases.

    As ``picai_eval.Metrics.bootstrap_score_ci``: each replicate draws as many
    cases as there are, with replacement (not stratified), and scores them
    (a case drawn twice counts twice, lesions included). Replicate ``b`` draws
    the cases ``jax.random.randint(key, (num_resamples, n), 0, n)[b]``.
    Replicates are computed together, ``chunk_size`` at a time.

    .. note::
       A replicate without a positive or without a negative case has no
       AUROC; such replicates are left out of the AUROC and score intervals
       (``picai_eval`` returns NaN intervals then). The bounds are
       ``numpy.percentile`` (linear) at ``(1 - confidence) / 2`` and
       ``(1 + confidence) / 2``.

    Args:
      key: PRNG key.
      cases: :class:`CaseEvaluation` of each case (``DetectionResult.cases``).
      num_resamples: number of replicates.
      confidence: coverage of the intervals.
      chunk_size: replicates per vectorised block (bounds memory).

    Returns:
      :class:`DetectionIntervals`; each estimate is the figure on all cases.
    """
    cases = tuple(cases)
    n = len(cases)
    is_lesion, conf, case_of_record = _flatten(cases, with_case_index=True)
    case_scores = np.array([c.case_score for c in cases], np.float64)
    case_targets = np.array([c.has_lesion for c in cases], bool)
    draws = np.asarray(jax.random.randint(key, (num_resamples, n), 0, n))
    aurocs, aps = [], []
    for start in range(0, num_resamples, chunk_size):
        block = draws[start : start + chunk_size]
        # A replicate is the full data with each case weighted by how often it was drawn.
        rows = np.arange(block.shape[0])[:, None]
        counts = np.bincount((rows * n + block).ravel(), minlength=block.size).reshape(block.shape).astype(np.float64)
        aurocs.append(_auroc(case_scores, case_targets, counts))
        aps.append(_average_precision(is_lesion, conf, counts[:, case_of_record])[0])
    aurocs, aps = np.concatenate(aurocs), np.concatenate(aps)
    full = detection_metrics(cases)
    percents = [50 * (1 - confidence), 50 * (1 + confidence)]

    def interval(estimate, values):
        values = values[~np.isnan(values)]
        low, high = np.percentile(values, percents) if values.size else (np.nan, np.nan)
        return Interval(estimate, float(low), float(high))

    return DetectionIntervals(
        auroc=interval(full.auroc, aurocs),
        ap=interval(full.ap, aps),
        score=interval(full.score, (aurocs + aps) / 2),
    )


def _flatten(cases, *, with_case_index=False):
    is_lesion = np.concatenate([np.zeros(0, bool)] + [c.is_lesion for c in cases])
    confidence = np.concatenate([np.zeros(0)] + [c.confidence for c in cases])
    if with_case_index:
        index = np.repeat(np.arange(len(cases)), [c.is_lesion.size for c in cases])
        return is_lesion, confidence, index
    return is_lesion, confidence, None


def _ranked(scores, weights, targets):
    """Weighted cumulative positives and negatives at each distinct score, descending.

    ``weights`` is ``[b, n]`` (one row per replicate); returns ``(thresholds
    [t], tp [b, t], fp [b, t])``, counting the items scoring at or above each
    threshold, as ``sklearn``'s ``confusion_matrix_at_thresholds``.
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1).astype(np.int64)
    w, y = weights[:, order], targets[order].astype(np.float64)
    tp = np.cumsum(w * y, axis=1)[:, last] if s.size else np.zeros((weights.shape[0], 0))
    fp = np.cumsum(w * (1.0 - y), axis=1)[:, last] if s.size else np.zeros((weights.shape[0], 0))
    return s[last] if s.size else s, tp, fp


def _average_precision(is_lesion, confidence, weights):
    """Lesion-level AP per weight row, as ``picai_eval``; also precision and recall, ``[b, t]``, descending thresholds."""
    thresholds, tp, fp = _ranked(confidence, weights, is_lesion)
    called = tp + fp
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called != 0)
    # The false negatives' confidence 0 marks lesions never found, not a real threshold.
    precision[:, thresholds == 0] = 0.0
    total = tp[:, -1:] if tp.shape[1] else np.zeros((tp.shape[0], 1))
    # sklearn sets recall to 1 when there is no positive at all.
    recall = np.divide(tp, total, out=np.ones_like(tp), where=total != 0)
    ap = np.sum(np.diff(recall, axis=1, prepend=0.0) * precision, axis=1)
    ap = np.where(weights.sum(axis=1) > 0, ap, np.nan)
    return ap, precision, recall


def _auroc(scores, targets, weights):
    """Case-level AUROC per weight row: trapezoids under the ROC curve (``sklearn.metrics.auc``)."""
    _, tp, fp = _ranked(scores, weights, targets)
    tp = np.concatenate([np.zeros((tp.shape[0], 1)), tp], axis=1)
    fp = np.concatenate([np.zeros((fp.shape[0], 1)), fp], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    area = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    return np.where((tp[:, -1] > 0) & (fp[:, -1] > 0), area, np.nan)


def _froc(is_lesion, confidence, *, num_lesions, num_cases):
    thresholds = np.unique(confidence)[::-1]
    if thresholds.size > _MAX_FROC_THRESHOLDS:
        # picai_eval's subset, with its arange (an integer dtype makes the step an integer).
        index = np.arange(1, thresholds.size, thresholds.size / _MAX_FROC_THRESHOLDS, dtype=np.int32)
        keep = (thresholds > 0.8) | np.isin(np.arange(thresholds.size), index)
        keep[-20:] = True
        thresholds = thresholds[keep]
    called = np.sort(confidence)
    found = np.sort(confidence[is_lesion])
    n_called = called.size - np.searchsorted(called, thresholds, side="left")
    tp = (found.size - np.searchsorted(found, thresholds, side="left")).astype(np.float64)
    fp = (n_called - tp).astype(np.float64)
    if tp.size >= 2:
        tp[-1], fp[-1] = tp[-2], np.inf
    else:
        tp, fp = np.zeros(2), np.array([0.0, np.inf])
    sensitivity = tp / num_lesions if num_lesions else np.full(tp.shape, np.nan)
    return Froc(thresholds, sensitivity, fp / num_cases)


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _structure(ndim):
    if ndim not in (2, 3):
        raise ValueError(f"maps must be 2D or 3D, got {ndim}D")
    return np.ones((3,) * ndim, bool)


def _float_map(x, name):
    x = np.asarray(x)
    if x.dtype.kind == "c":
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if x.dtype.kind != "f" or x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype.itemsize > 8:
        x = x.astype(np.float64)
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D or 3D, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def _probabilities(x, name):
    x = _float_map(x, name)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{x.min()}, {x.max()}]")
    return x


def _detection_map(x, name):
    x = _float_map(x, name).astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0):
        raise ValueError(f"{name} must be finite and non-negative, got values in [{x.min()}, {x.max()}]")
    return x


def _binary_label(y, name, shape):
    y = np.asarray(y)
    if y.shape != shape:
        raise ValueError(f"{name} has shape {y.shape}, its map {shape}")
    if not ((y == 0) | (y == 1)).all():
        values = np.unique(y)
        raise ValueError(f"{name} must be binary (0 = background, 1 = lesion), got values {values[:10]}")
    return y.astype(bool)
