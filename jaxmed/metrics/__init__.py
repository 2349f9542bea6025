"""jaxmed.metrics: how well scores and maps agree with the truth.

One module per kind of output:

* ``classification``: scores of whole images or cases (AUROC, average
  precision, sensitivity at a specificity, ROC curve) and stratified
  bootstrap intervals.

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

__all__ = [
    "Interval",
    "auroc",
    "average_precision",
    "bootstrap",
    "roc_curve",
    "sensitivity_at_specificity",
]
