"""Chest radiographs: body regions, overlapping full-resolution segments, a segment classifier, image decisions.

The method (``shared/seeds/003_*``): the body regions of a PA radiograph
(each lung, the heart) are identified; image segments are defined inside
them at (near) full resolution (reduced by at most 20%), overlapping, each
lung in at least two, no segment holding more than one lung, a finding whole
in at least one; information outside a segment's region is replaced; a
classifier is trained on the segments and its segment predictions decide
for the image.

Modules, each one idea:

* ``regions``: the region U-Net at a reduced size, its soft targets, its
  masks back at full resolution;
* ``segments``: the segment layout from region masks, training draws,
  extraction (vmapped ``lax.dynamic_slice``), segment targets;
* ``classifier``: the segment classifier's loss (presence, type and a dense
  finding map), segments drawn inside the step;
* ``pipeline``: a trained model (:class:`ChestModel`) and :func:`analyse`,
  the whole method as one jitted function (regions, segments, pooling, heat map);
* ``data``: phantom training and test sets; ``config``: :class:`ChestConfig`
  and its presets; ``train``: training all three networks
  (``jaxmed chest train``);
* ``evaluation``: Dice, the segment checks and image scores on phantoms;
* ``predict``: DICOM radiographs to a table and overlays (``jaxmed chest predict``);
* ``figures``, ``study``: the study ``jaxmed demo chest`` runs.
"""

from jaxmed.tasks.chest.classifier import draw_training_segments, make_segment_loss
from jaxmed.tasks.chest.config import PRESETS, ChestConfig, chest_config, config_from_json, config_to_json
from jaxmed.tasks.chest.data import pack_findings, radiograph_set, region_set, unpack_findings
from jaxmed.tasks.chest.evaluation import evaluate_radiographs, summarise_evaluation
from jaxmed.tasks.chest.pipeline import POOLINGS, ChestModel, analyse, image_scores
from jaxmed.tasks.chest.predict import (
    MIN_PIXELS,
    ROW_FIELDS,
    Prediction,
    PredictionTable,
    Prepared,
    lung_problem,
    predict_image,
    predict_paths,
    prepare_radiograph,
    write_overlays,
    write_predictions,
)
from jaxmed.tasks.chest.regions import (
    NUM_CLASSES,
    RegionNetConfig,
    downsample,
    make_region_loss,
    normalise_radiograph,
    region_probabilities,
    region_targets,
    regions_from_probabilities,
)
from jaxmed.tasks.chest.segments import (
    REGION_LABELS,
    SEGMENT_KINDS,
    Layout,
    SegmentConfig,
    extract_segments,
    kind_masks,
    region_labels,
    segment_layout,
    segment_targets,
    training_windows,
)
from jaxmed.tasks.chest.study import run_demo
from jaxmed.tasks.chest.train import (
    CHEST_FILE,
    MODEL_PARTS,
    layout_embeddings,
    load_chest_model,
    train_attention,
    train_chest,
    train_classifier,
    train_regions,
    training_set_key,
)

__all__ = [
    "CHEST_FILE",
    "MIN_PIXELS",
    "MODEL_PARTS",
    "NUM_CLASSES",
    "POOLINGS",
    "PRESETS",
    "REGION_LABELS",
    "ROW_FIELDS",
    "SEGMENT_KINDS",
    "ChestConfig",
    "ChestModel",
    "Layout",
    "Prediction",
    "PredictionTable",
    "Prepared",
    "RegionNetConfig",
    "SegmentConfig",
    "analyse",
    "chest_config",
    "config_from_json",
    "config_to_json",
    "downsample",
    "draw_training_segments",
    "evaluate_radiographs",
    "extract_segments",
    "image_scores",
    "kind_masks",
    "layout_embeddings",
    "load_chest_model",
    "lung_problem",
    "make_region_loss",
    "make_segment_loss",
    "normalise_radiograph",
    "pack_findings",
    "predict_image",
    "predict_paths",
    "prepare_radiograph",
    "radiograph_set",
    "region_labels",
    "region_probabilities",
    "region_set",
    "region_targets",
    "regions_from_probabilities",
    "run_demo",
    "segment_layout",
    "segment_targets",
    "summarise_evaluation",
    "train_attention",
    "train_chest",
    "train_classifier",
    "train_regions",
    "training_set_key",
    "training_windows",
    "unpack_findings",
    "write_overlays",
    "write_predictions",
]
