"""Where ``jaxmed train`` gets its images: phantoms, the brain-MRI template, or files.

Every source gives float32 images ``(N, H, W, C)`` in ``[0, 1]``, split into
train and validation sets, and a JSON description of what was loaded (stored
in ``config.json``). Reading files goes through :mod:`jaxmed.io`. Phantoms can
also give lesion masks, the targets of a lesion-map network.
"""

from __future__ import annotations

import dataclasses
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
    """Training and validation samples, as batches: dicts of arrays.

    Attributes:
      train: ``"image"``: float32 ``(N_train, H, W, C)`` in ``[0, 1]``, and
        the targets asked for (``"lesion_mask"``: float32 ``(N_train, H, W)``,
        1 on lesion pixels).
      val: the same for ``N_val`` samples.
      description: JSON-serialisable record of the source.
      problems: ``"path: problem"`` for each file that could not be read.
      preprocessing: how a scanned volume becomes model inputs like these
        (a :class:`jaxmed.scoring.Preprocessing`; ``jaxmed train`` stores it
        as ``preprocess.json`` for ``jaxmed score``), or None for sources that
        are not scans (phantoms).
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    description: dict[str, Any]
    problems: list[str]
    preprocessing: Any = None


def load_image_splits(
    source: str,
    *,
    image_shape: tuple[int, ...],
    seed: int,
    num_train: int = 2048,
    num_val: int = 256,
    targets: tuple[str, ...] = (),
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
      targets: per-pixel targets to load beside the images: ``()`` (normal
        images only, for a VAE or autoencoder) or ``("lesion_mask",)``
        (phantoms with lesions in about half of the samples).

    Returns:
      An :class:`ImageSplits`.

    Raises:
      ValueError: the image shape does not suit the source, or no image could
        be read (the message names the files).
    """
    if len(image_shape) != 3:
        raise ValueError(f"training images must be 2D (H, W, C); the model takes {tuple(image_shape)}")
    if tuple(targets) not in ((), ("lesion_mask",)):
        raise ValueError(f"unknown targets {tuple(targets)}; known: ('lesion_mask',)")
    if source == "phantoms":
        return _phantoms(image_shape, seed=seed, num_train=num_train, num_val=num_val, lesions=bool(targets))
    if targets:
        raise ValueError(f"--data {source}: lesion masks come only with --data phantoms")
    if source == "brain-mri":
        return _brain_mri(image_shape)
    if not os.path.exists(source):
        raise ValueError(f"--data {source!r}: not one of {SOURCES} and no such file or folder")
    return _files(source, image_shape, seed=seed, num_val=num_val)


def _phantoms(image_shape, *, seed, num_train, num_val, lesions) -> ImageSplits:
    from jaxmed.data.phantoms import CONTRASTS, MRIPhantomConfig, make_dataset

    h, w, c = image_shape
    modalities = tuple(CONTRASTS)[:c]
    if len(modalities) != c:
        raise ValueError(f"phantoms have at most {len(CONTRASTS)} channels; the model takes {c}")
    # Without targets, normal scans only: the model learns what normal looks like.
    config = MRIPhantomConfig(shape=(h, w), modalities=modalities)
    if not lesions:
        config = dataclasses.replace(config, lesion_probability=0.0)
    key = jax.random.fold_in(jax.random.key(seed), _PHANTOM_STREAM)
    data = make_dataset(key, num_train + num_val, config=config)
    samples = {"image": np.asarray(data["image"], np.float32)}
    if lesions:
        samples["lesion_mask"] = np.asarray(data["lesion_mask"], np.float32)
    description = {"source": "phantoms", "modalities": list(modalities),
                   "lesion_probability": config.lesion_probability, "num_train": num_train, "num_val": num_val,
                   "seed": seed}
    return ImageSplits({k: v[:num_train] for k, v in samples.items()},
                       {k: v[num_train:] for k, v in samples.items()}, description, [])


def _brain_mri(image_shape) -> ImageSplits:
    try:
        from jaxmed.data.brain_mri import load_brain_mri
    except ImportError as e:
        raise ValueError(f"--data brain-mri needs jaxmed.data.brain_mri ({e})") from None
    h, w, c = image_shape
    if h != w or c != 1:
        raise ValueError(f"brain-mri slices are square and single-channel; the model takes {tuple(image_shape)}")
    from jaxmed.scoring import Preprocessing

    splits = load_brain_mri(size=h)
    train, val = (np.asarray(split["image"], np.float32) for split in (splits.train, splits.val))
    description = {"source": "brain-mri", "num_train": len(train), "num_val": len(val),
                   "details": splits.description}
    # load_brain_mri's defaults, as above.
    return ImageSplits({"image": train}, {"image": val}, description, [],
                       Preprocessing(image_size=(h, w), method="brain_mri"))


def _files(source, image_shape, *, seed, num_val) -> ImageSplits:
    from jaxmed.io import load_volumes
    from jaxmed.scoring import Preprocessing, preprocess_volume

    h, w, c = image_shape
    if c != 1:
        raise ValueError(f"images read from files are single-channel; the model takes {tuple(image_shape)}")
    # The preprocessing `jaxmed score` applies to the files it scores: per
    # volume, robust range -> [0, 1], then foreground slices along z, resampled.
    prep = Preprocessing(image_size=(h, w))
    volumes, problems = load_volumes([source])
    problems = [f"{p.path}: {p.problem}" for p in problems]
    stacks = []
    for volume in volumes:
        try:
            images, _ = preprocess_volume(volume, prep)
        except ValueError as e:  # e.g. NaN voxels; the message names the file
            problems.append(str(e))
            continue
        if len(images):
            stacks.append(images)
    if not stacks:
        listing = "; ".join(problems) or "no image files found"
        raise ValueError(f"--data {source}: no usable 2D slices ({listing})")
    images = np.concatenate(stacks)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, min(num_val, len(images) // 5))
    if len(images) - n_val < 1:
        raise ValueError(f"--data {source}: only {len(images)} slices; too few to split")
    description = {"source": str(Path(source).absolute()), "num_volumes": len(volumes),
                   "num_train": int(len(images) - n_val), "num_val": int(n_val),
                   "normalisation": "per-volume clip to 0.5-99.5 percentiles, min-max to [0, 1]",
                   "slicing": "axis 0 (z), slices with >= 5% of pixels above 0.05"}
    return ImageSplits({"image": images[order[n_val:]]}, {"image": images[order[:n_val]]}, description,
                       problems, prep)
