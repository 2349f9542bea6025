"""How a scanned volume becomes model inputs: one :class:`Preprocessing`, used for training and scoring alike.

``jaxmed train`` on scans (the brain template or DICOM/NIfTI files) records
the :class:`Preprocessing` of its training images beside the checkpoint
(``preprocess.json``, :func:`jaxmed.train.save_preprocessing`), and scoring a
new scan applies exactly the same steps (:func:`preprocess_volume`), so that a
scored slice looks like a training slice: same intensity scaling, same
slicing, same size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
import numpy as np

__all__ = [
    "PREPROCESSING_METHODS",
    "Preprocessing",
    "load_brain_slices",
    "preprocess_volume",
]

PREPROCESSING_METHODS = ("minmax", "brain_mri")


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a volume becomes model inputs; must match the training images.

    Two methods:

    * ``"minmax"`` (the default; what ``jaxmed train --data FILES`` does, see
      :func:`jaxmed.train.load_image_splits`): the whole volume is clipped to two of its
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
      ValueError: the volume is not 3D, holds NaN/Inf, is a colour image
        (convert it explicitly, :func:`jaxmed.io.to_greyscale`), or cannot
        be preprocessed this way (naming its source).
    """
    if getattr(volume, "is_colour", False):
        raise ValueError(f"{volume.source}: a colour image ({volume.photometric}, {volume.channels} channels) and the "
                         "model takes one channel; convert it explicitly with jaxmed.io.to_greyscale (BT.601 luma)")
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
