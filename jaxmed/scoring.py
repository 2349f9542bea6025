"""Scoring scans with a trained VAE: what ``jaxmed score`` and ``jaxmed calibrate`` run.

A file or folder goes through four steps:

1. read (:func:`jaxmed.io.iter_volumes`: DICOM files, multi-frame files,
   series folders, NIfTI);
2. preprocess exactly as the training images were (:class:`Preprocessing`,
   stored beside the checkpoint as ``preprocess.json``): intensity
   normalisation per volume, 2D slices along one axis, resampling to the
   model's input size;
3. score every slice: an estimate of log p(x) in nats by one of
   :data:`jaxmed.likelihood.ESTIMATORS` (or the match score), one jitted
   program vmapped over a fixed-size batch of slices;
4. decide with the calibration stored as ``calibration.json``
   (:mod:`jaxmed.anomaly`): a slice is normal when its score is at or above
   the threshold; a volume takes its lowest slice score.

Scores are NORMALITY scores: higher = more normal (see :mod:`jaxmed.anomaly`).
Rows of the results table never hold patient-identifying fields: only the
path, the input kind, the DICOM series number and the slice index.

Randomness: slice ``i`` of a volume (its index along the slicing axis) is
scored with ``jax.random.fold_in(key, i)``, so a slice's score does not depend
on the batch it was scored in or on the other files given.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.anomaly import Calibration, calibrate, classify

__all__ = [
    "CALIBRATION_FILE",
    "PREPROCESSING_METHODS",
    "PREPROCESS_FILE",
    "ROW_FIELDS",
    "Preprocessing",
    "ScoreSpec",
    "ScoreTable",
    "Scorer",
    "calibrate_paths",
    "load_brain_slices",
    "load_calibration",
    "load_preprocessing",
    "load_scorer",
    "make_score_fn",
    "preprocess_volume",
    "save_calibration",
    "save_preprocessing",
    "score_images",
    "score_paths",
    "write_table",
]

PREPROCESS_FILE = "preprocess.json"
CALIBRATION_FILE = "calibration.json"

# Columns of the results table, in order. ``level`` is "slice", "volume" or
# "error"; a volume row carries the lowest slice score and, in
# ``worst_slice``, the index of that slice.
ROW_FIELDS = (
    "file", "input", "series", "level", "slice", "num_slices", "worst_slice",
    "score", "decision", "p_value", "num_reference", "problem",
)


# ----------------------------------------------------------------------------
# Preprocessing


PREPROCESSING_METHODS = ("minmax", "brain_mri")


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a volume becomes model inputs; must match the training images.

    Two methods:

    * ``"minmax"`` (the default; what ``jaxmed train --data FILES`` does, see
      :mod:`jaxmed.train.sources`): the whole volume is clipped to two of its
      percentiles and min-max scaled to [0, 1]; 2D slices are cut along
      ``slice_axis``, those with at least ``min_foreground`` of their pixels
      above ``foreground_threshold`` kept, and resampled to ``image_size``.
    * ``"brain_mri"``: the slicing of :func:`jaxmed.data.brain_mri.load_brain_mri`
      (display orientation, scaling by the brain's 99.5th percentile, one
      square field of view around the brain plus ``margin_mm``), with its
      ``orientation``, ``brain_threshold`` and ``min_brain_fraction``; for
      models trained on the brain template (``jaxmed demo``). It works on
      any volume :mod:`jaxmed.io` reads (file or series), through its affine.

    Attributes:
      image_size: ``(H, W)`` of the model's input, pixels.
      method: one of :data:`PREPROCESSING_METHODS`.
      slice_axis: ``"minmax"``: axis of the ``(z, y, x)`` volume to cut 2D
        slices along (0: axial for an axially acquired scan or a NIfTI in RAS
        order).
      clip_percentiles: ``"minmax"``: ``(lower, upper)`` percentiles of the
        volume the intensities are clipped to before scaling; None for plain
        min-max scaling.
      min_foreground: ``"minmax"``: fraction of a slice's pixels that must be
        foreground for the slice to be kept.
      foreground_threshold: ``"minmax"``: in [0, 1] scaled units.
      orientation: ``"brain_mri"``: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
      brain_threshold: ``"brain_mri"``: scaled intensity above which a voxel
        is brain.
      min_brain_fraction: ``"brain_mri"``: slices with less brain area than
        this fraction of the largest slice's are skipped.
      margin_mm: ``"brain_mri"``: margin around the brain's bounding box, mm.
    """

    image_size: tuple[int, int]
    method: str = "minmax"
    slice_axis: int = 0
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    min_foreground: float = 0.05
    foreground_threshold: float = 0.05
    orientation: str = "axial"
    brain_threshold: float = 0.1
    min_brain_fraction: float = 0.1
    margin_mm: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(n) for n in self.image_size))
        if self.method not in PREPROCESSING_METHODS:
            raise ValueError(f"unknown preprocessing method {self.method!r}; known: {PREPROCESSING_METHODS}")
        if self.clip_percentiles is not None:
            object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))
            lo, hi = self.clip_percentiles
            if not 0.0 <= lo < hi <= 100.0:
                raise ValueError(f"clip_percentiles must be (lower, upper) with 0 <= lower < upper <= 100, "
                                 f"got {self.clip_percentiles}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sizes, got {self.image_size}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if not 0.0 <= self.min_foreground <= 1.0 or not 0.0 <= self.min_brain_fraction <= 1.0:
            raise ValueError(f"min_foreground and min_brain_fraction must be in [0, 1], got "
                             f"{self.min_foreground}, {self.min_brain_fraction}")
        if not 0.0 <= self.foreground_threshold < 1.0 or not 0.0 < self.brain_threshold < 1.0:
            raise ValueError(f"foreground_threshold must be in [0, 1) and brain_threshold in (0, 1), got "
                             f"{self.foreground_threshold}, {self.brain_threshold}")
        if self.margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {self.margin_mm}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["clip_percentiles"] = None if self.clip_percentiles is None else list(self.clip_percentiles)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {unknown}")
        return cls(**d)


def _scale_volume(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Whole-volume clip to percentiles and min-max to [0, 1], as ``jaxmed train`` does.

    The formulas of :func:`jaxmed.data.intensity.clip_percentiles` and
    :func:`~jaxmed.data.intensity.minmax` (eps 1e-8), in numpy on the host:
    volumes come in many shapes, and the jnp versions compile once per shape
    (about a second each on CPU, against a millisecond of numpy).
    """
    if prep.clip_percentiles is not None:
        array = np.clip(array, *np.percentile(array, prep.clip_percentiles).astype(array.dtype))
    lo, hi = array.min(), array.max()
    return ((array - lo) * (1.0 / (hi - lo + 1e-8))).astype(np.float32)


# Slices resampled per compiled call: volumes differ in slice count, and a
# fixed batch keeps one compilation per (input, output) slice size.
_RESIZE_BATCH = 16


@functools.partial(jax.jit, static_argnames="shape")
def _resize_batch(stack: jax.Array, *, shape: tuple[int, int]) -> jax.Array:
    from jaxmed.data.spatial import resample_to_shape

    return jax.vmap(lambda s: resample_to_shape(s, shape))(stack)


def _resize(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[N, H, W]`` slices resampled to ``[N, *shape]``, in padded batches of :data:`_RESIZE_BATCH`."""
    n = len(stack)
    padded = np.concatenate([stack, np.zeros((-n % _RESIZE_BATCH, *stack.shape[1:]), stack.dtype)])
    out = [np.asarray(_resize_batch(padded[i : i + _RESIZE_BATCH], shape=shape))
           for i in range(0, len(padded), _RESIZE_BATCH)]
    return np.concatenate(out)[:n]


def preprocess_volume(volume: Any, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """A volume as model inputs: scaled, sliced, resampled 2D images.

    Args:
      volume: a :class:`jaxmed.io.Volume` (or, for ``"minmax"``, any 3D
        array ``(z, y, x)``).
      prep: the preprocessing of the training images.

    Returns:
      ``(images, indices)``: float32 ``[N, H, W, 1]`` in [0, 1] and int64
      ``[N]``, the index of each kept slice. ``N`` is 0 when no slice has
      enough foreground.

    Raises:
      ValueError: the volume is not 3D, holds NaN/Inf, or cannot be
        preprocessed this way (naming its source).
    """
    return _PREPROCESSORS[prep.method](volume, prep)


def _minmax_slices(volume: Any, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    from jaxmed.data.slicing import slice_volume

    source = getattr(volume, "source", None)
    array = np.asarray(getattr(volume, "array", volume), np.float32)
    if array.ndim != 3:
        raise ValueError(f"{source or 'volume'}: expected a 3D volume, got an array of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{source or 'volume'}: holds NaN or infinite values")
    scaled = _scale_volume(array, prep)
    # Shape, values and options are checked above and in Preprocessing: slicing cannot fail.
    slices = slice_volume(scaled, axis=prep.slice_axis, min_foreground=prep.min_foreground,
                          threshold=prep.foreground_threshold)
    stack = slices.images
    h, w = prep.image_size
    if not len(stack):
        return np.zeros((0, h, w, 1), np.float32), slices.indices
    if stack.shape[1:] != (h, w):
        stack = _resize(stack, (h, w))
    images = np.clip(stack, 0.0, 1.0)[..., None].astype(np.float32)
    return images, slices.indices


def load_brain_slices(prep: Preprocessing, **options: Any) -> Any:
    """:func:`jaxmed.data.brain_mri.load_brain_mri` with the slicing of ``prep``.

    The one place where a ``"brain_mri"`` :class:`Preprocessing` becomes
    ``load_brain_mri`` options, for training data and scored volumes alike.

    Args:
      prep: a square ``image_size``; its orientation, thresholds and margin.
      **options: the other ``load_brain_mri`` arguments (``path`` or
        ``volume``, the split's ``pattern``, ``block_size``, ``guard``).

    Returns:
      ``load_brain_mri``'s ``BrainMRISplits``.
    """
    from jaxmed.data.brain_mri import load_brain_mri

    h, w = prep.image_size
    if h != w:
        raise ValueError(f"brain-MRI preprocessing makes square slices, not {prep.image_size}")
    return load_brain_mri(size=h, orientation=prep.orientation, min_brain_fraction=prep.min_brain_fraction,
                          brain_threshold=prep.brain_threshold, margin_mm=prep.margin_mm, **options)


def _brain_slices(volume: Any, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    # One split holding every slice with brain: the same selection and
    # scaling as the training slices, without a train/val/test cut.
    splits = load_brain_slices(prep, volume=volume, pattern=("test",), guard=0)
    return splits.test["image"].astype(np.float32), splits.test["slice_index"].astype(np.int64)


_PREPROCESSORS = {"minmax": _minmax_slices, "brain_mri": _brain_slices}


def save_preprocessing(run_dir: str | os.PathLike, prep: Preprocessing) -> Path:
    """Writes ``run_dir/preprocess.json``."""
    path = Path(run_dir) / PREPROCESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prep.to_dict(), indent=2) + "\n")
    return path


def load_preprocessing(run_dir: str | os.PathLike, *, image_shape: Sequence[int] | None = None) -> Preprocessing:
    """The preprocessing of a run: its ``preprocess.json``, else inferred from ``config.json``.

    Without ``preprocess.json`` (``jaxmed train`` writes one for scan data,
    not for phantoms; runs of earlier versions have none), the data source
    recorded in ``config.json`` decides: ``"brain-mri"`` runs get
    ``method="brain_mri"`` (what :mod:`jaxmed.train.sources` loads), any
    other the ``"minmax"`` default (what ``--data FILES`` does), at the
    model's input size.

    Args:
      run_dir: a checkpoint folder.
      image_shape: the model's ``(H, W, C)``, needed when there is no
        ``preprocess.json``.

    Raises:
      ValueError: a malformed ``preprocess.json``, or a model that does not
        take single-channel 2D images.
    """
    path = Path(run_dir) / PREPROCESS_FILE
    if path.is_file():
        try:
            return Preprocessing.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid preprocessing record ({e})") from None
    if image_shape is None or len(image_shape) != 3 or image_shape[-1] != 1:
        raise ValueError(f"{run_dir}: no {PREPROCESS_FILE}, and the model input {tuple(image_shape or ())} "
                         "is not a single-channel 2D image that files could be scored as")
    source = None
    config_path = Path(run_dir) / "config.json"
    if config_path.is_file():
        try:
            source = (json.loads(config_path.read_text()).get("data") or {}).get("source")
        except (json.JSONDecodeError, AttributeError):
            source = None
    method = "brain_mri" if source == "brain-mri" else "minmax"
    return Preprocessing(image_size=tuple(image_shape[:2]), method=method)


# ----------------------------------------------------------------------------
# Scores


@dataclass(frozen=True, kw_only=True)
class ScoreSpec:
    """How normality scores are computed.

    Attributes:
      method: a key of :data:`jaxmed.likelihood.ESTIMATORS` (``"match"`` is
        the -KL match score, not a log-likelihood).
      num_samples: samples (or chains) per image; ignored by ``"match"``.
      chunk_size: samples evaluated at once per image (bounds memory; the
        result does not depend on it); None for all at once.
      batch_size: images per compiled call (the last batch is padded).
      seed: root of the PRNG keys.
      options: estimator options (e.g. ``{"num_steps": 100}`` for AIS).
    """

    method: str = "importance"
    num_samples: int = 100
    chunk_size: int | None = 25
    batch_size: int = 32
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from jaxmed.likelihood import ESTIMATORS

        if self.method not in ESTIMATORS:
            raise ValueError(f"unknown scoring method {self.method!r}; choose from {sorted(ESTIMATORS)}")
        if self.num_samples < 1 or self.batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {self.num_samples}, {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "num_samples": self.num_samples, "chunk_size": self.chunk_size,
                "batch_size": self.batch_size, "seed": self.seed, "options": dict(self.options)}


def make_score_fn(model: Any, spec: ScoreSpec):
    """A jitted ``score(params, keys [B], images [B, ...]) -> [B]`` normality scores.

    Each image is scored with its own key through
    :func:`jaxmed.likelihood.log_px` (a batch of one, vmapped), so its score
    does not depend on the other images of the batch. Functions made for
    equal models and estimator settings share one compilation per batch
    shape (the spec's seed and batch size are not part of the program).
    """
    sample_free = spec.method == "match"
    return functools.partial(
        _score_batch, model=model, method=spec.method,
        num_samples=None if sample_free else spec.num_samples,
        chunk_size=None if sample_free else spec.chunk_size,
        options=tuple(sorted((k, _hashable(v)) for k, v in spec.options.items())),
    )


def _hashable(value: Any) -> Any:
    """An option value as a static jit argument: arrays and lists (an AIS schedule) as tuples."""
    if isinstance(value, (list, np.ndarray, jax.Array)):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else tuple(array.ravel().tolist())
    return value


@functools.partial(jax.jit, static_argnames=("model", "method", "num_samples", "chunk_size", "options"))
def _score_batch(params, keys, images, *, model, method, num_samples, chunk_size, options):
    from jaxmed.likelihood import log_px
    from jaxmed.models import vae_latent_model

    def one(key, x):
        lvm = vae_latent_model(model, params)
        return log_px(key, lvm, x[None], method=method, num_samples=num_samples, chunk_size=chunk_size,
                      **dict(options))[0]

    return jax.vmap(one)(keys, images)


def score_images(
    key: jax.Array,
    model: Any,
    params: Any,
    images: np.ndarray,
    *,
    spec: ScoreSpec,
    indices: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """Normality scores (log p(x) estimates, nats) of a stack of images.

    Args:
      key: PRNG key; image ``i`` uses ``fold_in(key, indices[i])``.
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      images: ``[N, *image_shape]`` model inputs.
      spec: the estimator and its settings.
      indices: ``[N]`` ints that name each image's key; default ``arange(N)``.
      progress: show a tqdm bar over batches.
      desc: the bar's label.

    Returns:
      float64 ``[N]`` scores; higher = more normal.
    """
    from tqdm.auto import tqdm

    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
        return np.zeros(0)
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if indices.shape != (n,):
        raise ValueError(f"indices must be [{n}], got {indices.shape}")
    score_fn = make_score_fn(model, spec)
    size = min(spec.batch_size, n)
    # One compiled shape: the last batch is padded with image 0, whose extra scores are dropped.
    rows = np.concatenate([np.arange(n), np.zeros(-n % size, np.int64)])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices[rows], jnp.uint32))
    out = [np.asarray(score_fn(params, keys[start : start + size], images[rows[start : start + size]]), np.float64)
           for start in tqdm(range(0, len(rows), size), desc=desc, unit="batch", disable=not progress, leave=False)]
    return np.concatenate(out)[:n]


# ----------------------------------------------------------------------------
# A loaded checkpoint


class Scorer(NamedTuple):
    """A trained VAE and what scoring needs beside it.

    Attributes:
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      preprocessing: how files become model inputs.
      calibration: the stored threshold and normal reference scores, or None.
      calibration_spec: the :class:`ScoreSpec` the calibration was made with,
        or None.
      run_dir: the checkpoint folder.
    """

    model: Any
    params: Any
    preprocessing: Preprocessing
    calibration: Calibration | None
    calibration_spec: ScoreSpec | None
    run_dir: Path


def load_scorer(run_dir: str | os.PathLike, *, step: int | None = None) -> Scorer:
    """Loads a checkpoint folder (``jaxmed train --out`` or ``jaxmed demo``'s ``checkpoint/``).

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      ValueError: not a VAE, or malformed preprocessing/calibration files.
    """
    from jaxmed.models import VAE
    from jaxmed.train.checkpoint import load_model

    run_dir = Path(run_dir)
    model, params, config = load_model(run_dir, step=step)
    if not isinstance(model, VAE):
        raise ValueError(f"{run_dir}: holds a {type(model).__name__}; only a VAE gives likelihood scores")
    prep = load_preprocessing(run_dir, image_shape=config.image_shape)
    if tuple(prep.image_size) + (1,) != tuple(config.image_shape):
        raise ValueError(f"{run_dir / PREPROCESS_FILE}: image_size {prep.image_size} does not match the model "
                         f"input {config.image_shape}")
    calibration, spec = load_calibration(run_dir)
    return Scorer(model, params, prep, calibration, spec, run_dir)


def save_calibration(
    run_dir: str | os.PathLike,
    calibration: Calibration,
    *,
    spec: ScoreSpec,
    info: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Writes ``run_dir/calibration.json`` (the threshold, reference scores and score spec).

    Raises:
      FileExistsError: the file exists and ``force`` is False.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; refusing to overwrite it (pass --force to replace it)")
    record = {"calibration": calibration.to_dict(), "score": spec.to_dict(), **dict(info or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_calibration(run_dir: str | os.PathLike) -> tuple[Calibration | None, ScoreSpec | None]:
    """``(calibration, spec)`` from ``run_dir/calibration.json``, or ``(None, None)``.

    Raises:
      ValueError: the file exists but is malformed.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text())
        return Calibration.from_dict(record["calibration"]), ScoreSpec(**record["score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid calibration file ({e})") from None


# ----------------------------------------------------------------------------
# Files -> table


class _Item(NamedTuple):
    file: str
    input: str
    series: int | None
    images: np.ndarray
    indices: np.ndarray


class ScoreTable(NamedTuple):
    """Results of :func:`score_paths`.

    Attributes:
      rows: one dict per slice, per volume and per bad input, keys
        :data:`ROW_FIELDS` (JSON values; None where not applicable).
      problems: ``{"path", "problem"}`` for each input that could not be
        scored, in the order met.
      num_scored: number of volumes scored.
    """

    rows: list[dict[str, Any]]
    problems: list[dict[str, str]]
    num_scored: int


def _read_items(paths: Iterable, prep: Preprocessing, *, progress: bool) -> tuple[list[_Item], list[dict]]:
    from tqdm.auto import tqdm

    from jaxmed.io import ReadProblem, iter_volumes

    items, problems = [], []
    bar = tqdm(desc="reading", unit="volume", disable=not progress, leave=False)
    for found in iter_volumes(paths):
        bar.update(1)
        if isinstance(found, ReadProblem):
            problems.append(found.as_dict())
            continue
        source = found.volume.source
        try:
            images, indices = preprocess_volume(found.volume, prep)
        except ValueError as e:
            problems.append({"path": source, "problem": str(e).removeprefix(f"{source}: ")})
            continue
        if not len(images):
            problems.append({"path": source, "problem": (
                f"no slice along axis {prep.slice_axis} has {prep.min_foreground:.0%} of its pixels "
                f"above {prep.foreground_threshold} after scaling to [0, 1] (empty or constant image?)")})
            continue
        items.append(_Item(source, found.kind, found.series_number, images, indices))
    bar.close()
    return items, problems


def _float_or_none(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def score_paths(
    scorer: Scorer,
    paths: Sequence,
    *,
    spec: ScoreSpec,
    calibration: Calibration | None = None,
    threshold: float | None = None,
    progress: bool = False,
) -> ScoreTable:
    """Scores every slice of every volume under ``paths``; bad inputs become rows too.

    Args:
      scorer: from :func:`load_scorer`.
      paths: DICOM/NIfTI files and folders (searched recursively, DICOM
        grouped by series).
      spec: how to score.
      calibration: the threshold and the normal reference scores; None
        leaves ``p_value`` and ``num_reference`` empty.
      threshold: decide with this threshold instead of the calibration's;
        with neither, ``decision`` is empty too.
      progress: tqdm bars while reading and scoring.

    Returns:
      A :class:`ScoreTable`. A volume row's score is its lowest slice score;
      its decision applies the (per-slice) threshold to it, and its
      ``p_value`` is the Bonferroni-adjusted smallest slice p-value,
      ``min(1, n * min_i p_i)`` for ``n`` slices: a valid p-value for "all
      slices are normal". Note that a per-slice threshold at false-positive
      rate ``fpr`` flags a normal volume of ``n`` slices with probability up
      to ``n * fpr``.
    """
    items, problems = _read_items(paths, scorer.preprocessing, progress=progress)
    # All slices in one stream of fixed-size batches: one compilation, full batches.
    images = np.concatenate([it.images for it in items]) if items else np.zeros((0,))
    indices = np.concatenate([it.indices for it in items]) if items else np.zeros((0,), np.int64)
    scores = score_images(jax.random.key(spec.seed), scorer.model, scorer.params, images, spec=spec,
                          indices=indices, progress=progress)
    decisions = None if calibration is None else classify(scores, calibration)
    p_values = np.full(len(scores), np.nan) if decisions is None else decisions.p_value
    num_reference = None if decisions is None else decisions.num_reference
    cut = threshold if threshold is not None else (calibration.threshold if calibration is not None else None)
    bounds = np.cumsum([0] + [len(it.images) for it in items])
    rows = []
    for it, start, stop in zip(items, bounds[:-1], bounds[1:]):
        s, p = scores[start:stop], p_values[start:stop]
        common = {"file": it.file, "input": it.input, "series": it.series, "threshold": cut,
                  "num_reference": num_reference}
        for index, value, p_slice in zip(it.indices, s, p, strict=True):
            rows.append(_row(**common, level="slice", slice=int(index), num_slices=None, worst_slice=None,
                             score=value, p_value=p_slice))
        worst = int(np.nanargmin(s)) if np.isfinite(s).any() else 0
        # Bonferroni over the volume's slices: a valid p-value for "every slice is normal".
        p_volume = None if np.isnan(p).all() else min(1.0, len(s) * float(np.nanmin(p)))
        rows.append(_row(**common, level="volume", slice=None, num_slices=len(s),
                         worst_slice=int(it.indices[worst]), score=s[worst], p_value=p_volume))
    for problem in problems:
        rows.append({**{k: None for k in ROW_FIELDS}, "file": problem["path"], "level": "error",
                     "problem": problem["problem"]})
    return ScoreTable(rows, problems, len(items))


def _row(*, file, input, series, level, slice, num_slices, worst_slice, score, threshold, p_value,
         num_reference) -> dict[str, Any]:
    value = _float_or_none(score)
    decision = None
    if threshold is not None:
        # NaN compares False: a non-finite score is called abnormal, as classify does.
        decision = "normal" if value is not None and value >= threshold else "abnormal"
    return {"file": file, "input": input, "series": series, "level": level, "slice": slice,
            "num_slices": num_slices, "worst_slice": worst_slice, "score": value, "decision": decision,
            "p_value": _float_or_none(p_value), "num_reference": num_reference,
            "problem": None if value is not None else "the score is NaN or infinite"}


def calibrate_paths(
    scorer: Scorer,
    paths: Sequence,
    *,
    spec: ScoreSpec,
    fpr: float = 0.05,
    progress: bool = False,
) -> tuple[Calibration, list[dict[str, str]], int]:
    """Calibrates the per-slice threshold on the slices of normal scans.

    Args:
      scorer: from :func:`load_scorer`.
      paths: files/folders of NORMAL scans (not the training images).
      spec: how to score (the same spec must be used when scoring).
      fpr: target false-positive rate per slice.
      progress: tqdm bars.

    Returns:
      ``(calibration, problems, num_volumes)``.

    Raises:
      ValueError: no slice could be scored, or some scores are not finite.
    """
    table = score_paths(scorer, paths, spec=spec, progress=progress)
    slice_rows = [r for r in table.rows if r["level"] == "slice"]
    scores = np.asarray([np.nan if r["score"] is None else r["score"] for r in slice_rows], np.float64)
    if not scores.size:
        listing = "; ".join(f"{p['path']}: {p['problem']}" for p in table.problems) or "no image files found"
        raise ValueError(f"no normal slice could be scored ({listing})")
    if not np.all(np.isfinite(scores)):
        bad = sorted({r["file"] for r in slice_rows if r["score"] is None})
        raise ValueError(f"non-finite scores for {', '.join(bad)}")
    return calibrate(scores, fpr=fpr), table.problems, table.num_scored


def write_table(
    table: ScoreTable,
    *,
    csv_path: str | os.PathLike,
    json_path: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Writes the rows as CSV (one row each) and JSON (``{"meta", "rows", "problems"}``).

    Raises:
      FileExistsError: an output exists and ``force`` is False (nothing is
        written then).
    """
    csv_path, json_path = Path(csv_path), Path(json_path)
    existing = [str(p) for p in (csv_path, json_path) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: exists; refusing to overwrite (pass --force)")
    for p in (csv_path, json_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in table.rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_FIELDS})
    json_path.write_text(json.dumps({"meta": dict(meta or {}), "rows": table.rows, "problems": table.problems},
                                    indent=2) + "\n")
    return csv_path, json_path
