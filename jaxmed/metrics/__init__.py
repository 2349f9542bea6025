"""jaxmed.metrics: how well scores and maps agree with the truth.

One module per kind of output:

* ``classification``: scores of whole images or cases (AUROC, average
  precision, sensitivity at a specificity, ROC curve) and stratified
  bootstrap intervals.
* ``detection``: lesion detection maps scored as the PI-CAI challenge does
  (lesion candidates from probability maps, lesion-level AP, case-level
  AUROC, ranking score, FROC, case bootstrap), matching ``picai_eval``.
* ``segmentation``: Dice per class, surface distances in millimetres.

Conventions, as in scikit-learn: labels 1 = positive (abnormal), and a
HIGHER score means MORE abnormal.
"""

from jaxmed.metrics.classification import (
    Interval,
    auroc,
    average_precision,
    bootstrap,
    roc_curve,
    sensitivity_at_specificity,
)
from jaxmed.metrics.detection import (
    CaseEvaluation,
    DetectionIntervals,
    DetectionResult,
    Froc,
    LesionCandidates,
    bootstrap_detection,
    detection_metrics,
    evaluate_case,
    evaluate_detections,
    extract_lesion_candidates,
)
from jaxmed.metrics.segmentation import SurfaceDistances, dice, surface_distances

__all__ = [
    "CaseEvaluation",
    "DetectionIntervals",
    "DetectionResult",
    "Froc",
    "Interval",
    "LesionCandidates",
    "SurfaceDistances",
    "auroc",
    "average_precision",
    "bootstrap",
    "bootstrap_detection",
    "detection_metrics",
    "dice",
    "evaluate_case",
    "evaluate_detections",
    "extract_lesion_candidates",
    "roc_curve",
    "sensitivity_at_specificity",
    "surface_distances",
]
