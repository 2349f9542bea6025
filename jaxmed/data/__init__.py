"""jaxmed.data: phantoms, real brain MRI, transforms, artefacts, slicing, batching.

Modules by kind: `intensity` (normalisation, windowing), `spatial`
(resampling, crop/pad), `slicing` (3D -> 2D), `preprocess` (how a scanned
volume becomes model inputs, for training and scoring alike), `augmentation`
(random per-step transforms of training images), `artefacts` (scan-quality
artefacts simulated in k-space), `phantoms` (synthetic scans with known truth,
one module per kind), `brain_mri` (the MNI152 template, no download),
`batching` (deterministic, per-process batches), `regions` (disjoint region
sets and modality blanking), `merge` (windows cut at dynamic corners and merged back).
"""

from jaxmed.data.artefacts import ARTEFACTS, DEFAULT_SEVERITY
from jaxmed.data.augmentation import AugmentConfig, augment_batch, augment_image
from jaxmed.data.batching import batch_indices, iterate_batches, steps_per_epoch
from jaxmed.data.brain_mri import BrainMRISplits, load_brain_mri, split_slices, template_path
from jaxmed.data.intensity import clip_percentiles, minmax, window, zscore
from jaxmed.data.merge import clamp_corners, extract_windows, merge_windows
from jaxmed.data.phantoms import PHANTOMS, MRIPhantomConfig, make_dataset, sample_mri
from jaxmed.data.preprocess import PREPROCESSING_METHODS, Preprocessing, load_brain_slices, preprocess_volume
from jaxmed.data.regions import (
    block_regions,
    checkerboard_regions,
    one_modality_per_view,
    organ_regions,
    random_blanking,
    random_partition_regions,
    single_modality_drops,
)
from jaxmed.data.registration import RigidParams, RigidResult, apply_rigid, co_register, register_rigid, rigid_matrix
from jaxmed.data.slicing import Slices, slice_volume
from jaxmed.data.spatial import (
    center_crop_or_pad,
    resample_to,
    resample_to_shape,
    resample_to_spacing,
    scaled_grid,
)

__all__ = [
    "clamp_corners",
    "extract_windows",
    "merge_windows",
    "block_regions",
    "checkerboard_regions",
    "one_modality_per_view",
    "organ_regions",
    "random_blanking",
    "random_partition_regions",
    "single_modality_drops",
    "ARTEFACTS",
    "DEFAULT_SEVERITY",
    "PHANTOMS",
    "PREPROCESSING_METHODS",
    "AugmentConfig",
    "BrainMRISplits",
    "MRIPhantomConfig",
    "Preprocessing",
    "RigidParams",
    "RigidResult",
    "Slices",
    "apply_rigid",
    "augment_batch",
    "augment_image",
    "batch_indices",
    "center_crop_or_pad",
    "clip_percentiles",
    "co_register",
    "iterate_batches",
    "load_brain_mri",
    "load_brain_slices",
    "make_dataset",
    "minmax",
    "preprocess_volume",
    "register_rigid",
    "resample_to",
    "resample_to_shape",
    "resample_to_spacing",
    "rigid_matrix",
    "sample_mri",
    "scaled_grid",
    "slice_volume",
    "split_slices",
    "steps_per_epoch",
    "template_path",
    "window",
    "zscore",
]
