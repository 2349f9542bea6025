"""Scan-quality classification: is an MRI slice normal, judged by a VAE's marginal likelihood log p(x)?

The method (``shared/seeds/004_*``): a VAE trained on normal images only
gives log p(x) by Monte-Carlo, importance sampling, MCMC or AIS
(:mod:`jaxmed.likelihood`); an image is normal when its score is at or above
a threshold calibrated on normal scans, with a conformal p-value as the
confidence.

Modules, each one idea:

* ``scores``: :class:`ScoreSpec` and :func:`score_images` (estimates over a
  stack of model inputs);
* ``decision``: :func:`calibrate`, :func:`classify` with p-values, anomaly
  scores for metrics;
* ``scorer``: a checkpoint folder as scoring needs it (:func:`load_scorer`,
  ``calibration.json``);
* ``files``: scoring and calibrating DICOM/NIfTI files into a table
  (``jaxmed score``, ``jaxmed calibrate``);
* ``config``, ``subjects``, ``test_set``, ``evaluation``, ``outputs``,
  ``study``: the study that ``jaxmed demo`` runs (:func:`run_demo`).
"""

from jaxmed.tasks.scan_quality.config import (
    DATA_SOURCES,
    QUICK,
    DemoConfig,
    background_run_config,
    demo_config,
    run_config,
)
from jaxmed.tasks.scan_quality.decision import (
    Calibration,
    Decisions,
    anomaly_scores,
    calibrate,
    calibration_shift,
    classify,
    two_sided_anomaly_scores,
)
from jaxmed.tasks.scan_quality.evaluation import (
    TrainedVAE,
    auroc_table,
    calibrate_on_validation,
    format_auroc_table,
    learned_noise_scale,
    locally_calibrated_flagged,
    mean_auroc_table,
    pca_scores,
    reconstruct,
    score_all,
    score_specs,
    score_test_set,
)
from jaxmed.tasks.scan_quality.files import ROW_FIELDS, ScoreTable, calibrate_paths, score_paths, write_table
from jaxmed.tasks.scan_quality.outputs import write_figures, write_results
from jaxmed.tasks.scan_quality.scorer import (
    BACKGROUND_DIR,
    CALIBRATION_FILE,
    Scorer,
    load_calibration,
    load_scorer,
    save_calibration,
)
from jaxmed.tasks.scan_quality.scores import (
    DEFAULT_SCORE,
    SCORE_MEANINGS,
    SCORES,
    ScoreSpec,
    make_score_fn,
    normality_scores,
    score_images,
)
from jaxmed.tasks.scan_quality.study import (
    CHECKPOINT_DIR,
    COLUMNS,
    DemoData,
    load_demo_data,
    run_demo,
    train_background,
    train_vae,
)
from jaxmed.tasks.scan_quality.subjects import HeldOutSubjects, held_out_subjects
from jaxmed.tasks.scan_quality.test_set import TestSet, make_test_set, subset_indices

__all__ = [
    "BACKGROUND_DIR",
    "CALIBRATION_FILE",
    "CHECKPOINT_DIR",
    "COLUMNS",
    "DEFAULT_SCORE",
    "DATA_SOURCES",
    "QUICK",
    "ROW_FIELDS",
    "SCORES",
    "SCORE_MEANINGS",
    "Calibration",
    "Decisions",
    "DemoConfig",
    "DemoData",
    "HeldOutSubjects",
    "ScoreSpec",
    "ScoreTable",
    "Scorer",
    "TestSet",
    "TrainedVAE",
    "anomaly_scores",
    "auroc_table",
    "background_run_config",
    "calibrate",
    "calibrate_on_validation",
    "calibrate_paths",
    "calibration_shift",
    "classify",
    "demo_config",
    "format_auroc_table",
    "held_out_subjects",
    "learned_noise_scale",
    "locally_calibrated_flagged",
    "load_calibration",
    "load_demo_data",
    "load_scorer",
    "make_score_fn",
    "make_test_set",
    "mean_auroc_table",
    "normality_scores",
    "pca_scores",
    "reconstruct",
    "run_config",
    "run_demo",
    "save_calibration",
    "score_images",
    "score_all",
    "score_paths",
    "score_specs",
    "score_test_set",
    "subset_indices",
    "train_background",
    "train_vae",
    "two_sided_anomaly_scores",
    "write_figures",
    "write_results",
    "write_table",
]
