"""Where ``jaxmed train`` gets its images: phantoms, the brain-MRI template, or files.

Every source gives float32 images ``(N, H, W, C)`` in ``[0, 1]``, split into
train and validation sets, and a JSON description of what was loaded (stored
in ``config.json``). Reading files goes through :mod:`jaxmed.io`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

# Named sources; anything else is taken as a path to DICOM/NIfTI files.
SOURCES = ("phantoms", "brain-mri")

# Streams of the run seed: the data never share a key with the model.
_PHANTOM_STREAM = 101


class ImageSplits(NamedTuple):
    """Training and validation images.

    Attributes:
      train: float32 ``(N_train, H, W, C)`` in ``[0, 1]``.
      val: float32 ``(N_val, H, W, C)`` in ``[0, 1]``.
      description: JSON-serialisable record of the source.
      problems: ``"path: problem"`` for each file that could not be read.
    """

    train: np.ndarray
    val: np.ndarray
    description: dict[str, Any]
    problems: list[str]


def load_image_splits(
    source: str,
    *,
    image_shape: tuple[int, ...],
    seed: int,
    num_train: int = 2048,
    num_val: int = 256,
) -> ImageSplits:
    """Loads the training images of a source at the model's image shape.

    Args:
      source: ``"phantoms"`` (normal synthetic MRI, :mod:`jaxmed.data.phantoms`),
        ``"brain-mri"`` (slices of the MNI152 template,
        ``jaxmed.data.brain_mri``) or a file/folder of DICOM or NIfTI images.
      image_shape: ``(H, W, C)`` the model takes.
      seed: seeds the phantoms and the train/validation split of files.
      num_train: phantoms only: number of training images.
      num_val: number of validation images (phantoms), or at most this many
        (files: also at most a fifth of the slices).

    Returns:
      An :class:`ImageSplits`.

    Raises:
      ValueError: the image shape does not suit the source, or no image could
        be read (the message names the files).
    """
    if len(image_shape) != 3:
        raise ValueError(f"training images must be 2D (H, W, C); the model takes {tuple(image_shape)}")
    if source == "phantoms":
        return _phantoms(image_shape, seed=seed, num_train=num_train, num_val=num_val)
    if source == "brain-mri":
        return _brain_mri(image_shape)
    if not os.path.exists(source):
        raise ValueError(f"--data {source!r}: not one of {SOURCES} and no such file or folder")
    return _files(source, image_shape, seed=seed, num_val=num_val)


def _phantoms(image_shape, *, seed, num_train, num_val) -> ImageSplits:
    from jaxmed.data.phantoms import CONTRASTS, MRIPhantomConfig, make_dataset

    h, w, c = image_shape
    modalities = tuple(CONTRASTS)[:c]
    if len(modalities) != c:
        raise ValueError(f"phantoms have at most {len(CONTRASTS)} channels; the model takes {c}")
    # Normal scans only: the model learns what normal looks like.
    config = MRIPhantomConfig(shape=(h, w), modalities=modalities, lesion_probability=0.0)
    key = jax.random.fold_in(jax.random.key(seed), _PHANTOM_STREAM)
    images = make_dataset(key, num_train + num_val, config=config)["image"].astype(np.float32)
    description = {"source": "phantoms", "modalities": list(modalities), "lesion_probability": 0.0,
                   "num_train": num_train, "num_val": num_val, "seed": seed}
    return ImageSplits(images[:num_train], images[num_train:], description, [])


def _brain_mri(image_shape) -> ImageSplits:
    try:
        from jaxmed.data.brain_mri import load_brain_mri
    except ImportError as e:
        raise ValueError(f"--data brain-mri needs jaxmed.data.brain_mri ({e})") from None
    h, w, c = image_shape
    if h != w or c != 1:
        raise ValueError(f"brain-mri slices are square and single-channel; the model takes {tuple(image_shape)}")
    splits = load_brain_mri(size=h)
    train, val = (np.asarray(split["image"], np.float32) for split in (splits.train, splits.val))
    description = {"source": "brain-mri", "num_train": len(train), "num_val": len(val),
                   "details": splits.description}
    return ImageSplits(train, val, description, [])


def _files(source, image_shape, *, seed, num_val) -> ImageSplits:
    from jaxmed.data.intensity import clip_percentiles, minmax
    from jaxmed.data.slicing import slice_volume
    from jaxmed.data.spatial import resample_to_shape
    from jaxmed.io import load_volumes

    h, w, c = image_shape
    if c != 1:
        raise ValueError(f"images read from files are single-channel; the model takes {tuple(image_shape)}")
    volumes, problems = load_volumes([source])
    resize = jax.jit(jax.vmap(lambda s: resample_to_shape(s, (h, w))))
    stacks = []
    for volume in volumes:
        # Normalise per volume (robust range -> [0, 1]) before slicing, so all
        # slices of a scan share one intensity scale.
        scaled = np.asarray(minmax(clip_percentiles(volume.array, lower=0.5, upper=99.5)))
        slices = slice_volume(scaled, axis=0, min_foreground=0.05, threshold=0.05)
        if len(slices.images):
            stacks.append(np.asarray(resize(slices.images)))
    if not stacks:
        listing = "; ".join(f"{p.path}: {p.problem}" for p in problems) or "no image files found"
        raise ValueError(f"--data {source}: no usable 2D slices ({listing})")
    images = np.clip(np.concatenate(stacks), 0.0, 1.0)[..., None].astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, min(num_val, len(images) // 5))
    if len(images) - n_val < 1:
        raise ValueError(f"--data {source}: only {len(images)} slices; too few to split")
    description = {"source": str(Path(source).absolute()), "num_volumes": len(volumes),
                   "num_train": int(len(images) - n_val), "num_val": int(n_val),
                   "normalisation": "per-volume clip to 0.5-99.5 percentiles, min-max to [0, 1]",
                   "slicing": "axis 0 (z), slices with >= 5% of pixels above 0.05"}
    return ImageSplits(images[order[n_val:]], images[order[:n_val]], description,
                       [f"{p.path}: {p.problem}" for p in problems])
