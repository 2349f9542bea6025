"""Lesions on multi-parametric prostate MRI: localise, classify, train over sites (``shared/seeds/001_*``).

An exam (T2, ADC, high-b DWI) is put on one grid and normalised per
modality; a localiser (:class:`jaxmed.models.MultiModalLocaliser`) makes a
lesion map per modality image and fuses them; a classifier
(:class:`jaxmed.models.MapClassifier`) on the images and the fused map gives
P(clinically significant) and the grade group. Training is in phases: the
localiser on a reference site, continued on a second site's exams ordered by
similarity to the reference, fine-tuned on deployment exams ranked by
uncertainty; then the classifier from the localiser's encoder, frozen and end
to end. A synthesis-based anomaly map (inpainting by a network trained on
normal exams) is the patent's second way to find abnormalities. Detection is
scored as PI-CAI does (:mod:`jaxmed.metrics.detection`).

Modules, one idea each:

* ``preprocess``: exams -> co-registered, normalised channels on a canonical grid;
* ``data``: phantom exams of a site as inputs and targets;
* ``augment``: random acquisition changes of training exams;
* ``models``: the joint network (`LesionNet`) and batched prediction;
* ``ordering``: embeddings, MMD similarity order, MC-dropout BALD and entropy;
* ``training``: the phases through the engine, the model folder;
* ``synthesis``: the inpainting anomaly map;
* ``evaluation``: PI-CAI scores, Dice, classification figures;
* ``figures``: FROC, overlays, learning curves;
* ``predict``: DICOM exam folders -> detection maps and a table;
* ``config``, ``study``: settings and the multi-site study (``jaxmed demo lesions``).
"""

from jaxmed.tasks.lesions.augment import ExamAugment, augment_batch, augment_exam
from jaxmed.tasks.lesions.config import (
    ORDERS,
    UNCERTAINTIES,
    PhaseConfig,
    StudyConfig,
    TrainConfig,
    config_from_json,
    config_to_json,
    demo_config,
    train_config_from_json,
    with_width,
)
from jaxmed.tasks.lesions.data import grade_class, site_exams, subset
from jaxmed.tasks.lesions.evaluation import (
    classification_metrics,
    detection_summary,
    evaluate_maps,
    median_class,
    pixel_auroc,
    quadratic_weighted_kappa,
)
from jaxmed.tasks.lesions.figures import plot_froc, plot_learning_curves, plot_overlays
from jaxmed.tasks.lesions.models import LesionNet, predict_lesions, predict_localiser
from jaxmed.tasks.lesions.ordering import (
    bald,
    exam_embeddings,
    mc_dropout_probs,
    mmd2,
    predictive_entropy,
    similarity_order,
    uncertainty_order,
)
from jaxmed.tasks.lesions.predict import ExamError, find_series, predict_folders, read_exam
from jaxmed.tasks.lesions.preprocess import GeometryMismatch, PreprocessConfig, preprocess_exams, to_native
from jaxmed.tasks.lesions.study import load_study_data, run_study, study_data_key
from jaxmed.tasks.lesions.synthesis import InpaintConfig, anomaly_maps, patch_masks
from jaxmed.tasks.lesions.training import (
    LesionModel,
    continue_localiser,
    deploy_localiser,
    load_lesion_model,
    train_classifier,
    train_lesion_model,
    train_localiser,
)

__all__ = [
    "ORDERS",
    "UNCERTAINTIES",
    "ExamAugment",
    "ExamError",
    "GeometryMismatch",
    "InpaintConfig",
    "LesionModel",
    "LesionNet",
    "PhaseConfig",
    "PreprocessConfig",
    "StudyConfig",
    "TrainConfig",
    "anomaly_maps",
    "augment_batch",
    "augment_exam",
    "bald",
    "classification_metrics",
    "config_from_json",
    "config_to_json",
    "train_config_from_json",
    "continue_localiser",
    "demo_config",
    "deploy_localiser",
    "detection_summary",
    "evaluate_maps",
    "exam_embeddings",
    "find_series",
    "grade_class",
    "load_lesion_model",
    "load_study_data",
    "mc_dropout_probs",
    "median_class",
    "mmd2",
    "patch_masks",
    "pixel_auroc",
    "plot_froc",
    "plot_learning_curves",
    "plot_overlays",
    "predict_folders",
    "predict_lesions",
    "predict_localiser",
    "predictive_entropy",
    "preprocess_exams",
    "quadratic_weighted_kappa",
    "read_exam",
    "run_study",
    "similarity_order",
    "site_exams",
    "study_data_key",
    "subset",
    "to_native",
    "train_classifier",
    "train_lesion_model",
    "train_localiser",
    "uncertainty_order",
    "with_width",
]
