"""Where ``jaxmed train`` gets its images: phantoms, the brain-MRI template, or files.

Every source gives float32 images ``(N, H, W, C)`` in ``[0, 1]``, split into
train and validation sets (and, for studies, a held-out test set), and a JSON
description of what was loaded (stored in ``config.json``). Reading files
goes through :mod:`jaxmed.io`; scans become images by
:mod:`jaxmed.data.preprocess`, as they do when scored. Phantoms can also give
lesion masks, the targets of a lesion-map network.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmed.data.preprocess import Preprocessing, load_brain_slices, preprocess_volume
from jaxmed.data.synth import SynthSource

# Named sources; anything else is taken as a path to DICOM/NIfTI files.
SOURCES = ("phantoms", "brain-mri")

# Streams of the run seed: the data never share a key with the model.
_PHANTOM_STREAM = 101
_SYNTH_STREAM = 102


class ImageSplits(NamedTuple):
    """Training, validation and test samples, as batches: dicts of arrays.

    Attributes:
      train: ``"image"``: float32 ``(N_train, H, W, C)`` in ``[0, 1]``, and
        the targets asked for (``"lesion_mask"``: float32 ``(N_train, H, W)``,
        1 on lesion pixels).
      val: the same for ``N_val`` samples.
      test: the same for held-out test samples (empty dict unless asked for).
      description: JSON-serialisable record of the source.
      problems: ``"path: problem"`` for each file that could not be read.
      preprocessing: how a scanned volume becomes model inputs like these
        (a :class:`jaxmed.data.Preprocessing`; ``jaxmed train`` stores it as
        ``preprocess.json`` for ``jaxmed score``), or None for sources that
        are not scans (phantoms).
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    description: dict[str, Any]
    problems: list[str]
    preprocessing: Preprocessing | None = None


def load_image_splits(
    source: str,
    *,
    image_shape: tuple[int, ...],
    seed: int,
    num_train: int = 2048,
    num_val: int = 256,
    num_test: int | None = None,
    targets: tuple[str, ...] = (),
    synth: SynthSource | None = None,
) -> ImageSplits:
    """Loads the training images of a source at the model's image shape.

    Args:
      source: ``"phantoms"`` (normal synthetic MRI, :mod:`jaxmed.data.phantoms`),
        ``"brain-mri"`` (slices of the MNI152 template,
        ``jaxmed.data.brain_mri``) or a file/folder of DICOM or NIfTI images.
      image_shape: ``(H, W, C)`` the model takes.
      seed: seeds the phantoms and the train/validation split of files.
      num_train: phantoms only: number of training images.
      num_val: number of validation images (phantoms); for files, a target
        (capped at a fifth of the slices) met as closely as whole scans or
        blocks of slices allow, which may mean more (:func:`split_scans`).
      num_test: held-out test images for a study, besides the training
        and validation ones (which do not depend on it): phantoms: that many
        more samples of the same stream; ``"brain-mri"``: the template's test
        slices (any value but None). None: no test set. Files have none.
      targets: per-pixel targets to load beside the images: ``()`` (normal
        images only, for a VAE or autoencoder) or ``("lesion_mask",)``
        (phantoms with lesions in about half of the samples).
      synth: ``"brain-mri"`` only: synthetic subjects added to the training
        slices (:class:`jaxmed.data.synth.SynthSource`; drawn from the seed's
        own stream, at the template's training slice positions).

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
        return _phantoms(image_shape, seed=seed, num_train=num_train, num_val=num_val, num_test=num_test or 0,
                         lesions=bool(targets))
    if targets:
        raise ValueError(f"--data {source}: lesion masks come only with --data phantoms")
    if synth is not None and synth.num_subjects and source != "brain-mri":
        raise ValueError(f"--data {source}: synthetic subjects come only with --data brain-mri")
    if source == "brain-mri":
        return _brain_mri(image_shape, test=num_test is not None, synth=synth, seed=seed)
    if not os.path.exists(source):
        raise ValueError(f"--data {source!r}: not one of {SOURCES} and no such file or folder")
    if num_test is not None:
        raise ValueError(f"--data {source}: files give training and validation images only, no test set")
    return _files(source, image_shape, seed=seed, num_val=num_val)


def _phantoms(image_shape, *, seed, num_train, num_val, num_test, lesions) -> ImageSplits:
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
    # Sample i comes from fold_in(key, i): the test samples extend the stream
    # without changing the training and validation ones.
    data = make_dataset(key, num_train + num_val + num_test, config=config)
    samples = {"image": np.asarray(data["image"], np.float32)}
    if lesions:
        samples["lesion_mask"] = np.asarray(data["lesion_mask"], np.float32)
    description = {"source": "phantoms", "modalities": list(modalities),
                   "lesion_probability": config.lesion_probability, "num_train": num_train, "num_val": num_val,
                   "seed": seed}
    if num_test:
        description["num_test"] = num_test
    split = num_train + num_val
    test = {k: v[split:] for k, v in samples.items()} if num_test else {}
    return ImageSplits({k: v[:num_train] for k, v in samples.items()},
                       {k: v[num_train:split] for k, v in samples.items()}, test, description, [])


def _brain_mri(image_shape, *, test: bool, synth: SynthSource | None, seed: int) -> ImageSplits:
    h, w, c = image_shape
    if h != w or c != 1:
        raise ValueError(f"brain-mri slices are square and single-channel; the model takes {tuple(image_shape)}")
    prep = Preprocessing(image_size=(h, w), method="brain_mri")
    splits = load_brain_slices(prep)
    train, val, held_out = (np.asarray(split["image"], np.float32) for split in (splits.train, splits.val, splits.test))
    description = {"source": "brain-mri", "num_train": len(train), "num_val": len(val),
                   "details": splits.description}
    if synth is not None and synth.num_subjects:
        from jaxmed.data.synth import load_synth_template, synth_pool

        template = load_synth_template(size=h, orientation=prep.orientation, brain_threshold=prep.brain_threshold,
                                       margin_mm=prep.margin_mm)
        key = jax.random.fold_in(jax.random.key(seed), _SYNTH_STREAM)
        pool = synth_pool(key, template, splits.train["slice_index"], num_subjects=synth.num_subjects,
                          config=synth.config)
        train = np.concatenate([train, pool])
        description.update(num_train=len(train), num_template_train=len(splits.train["image"]),
                           synth_subjects=synth.num_subjects, synth=dataclasses.asdict(synth.config))
    if test:
        description["num_test"] = len(held_out)
    return ImageSplits({"image": train}, {"image": val}, {"image": held_out} if test else {}, description, [], prep)


def _files(source, image_shape, *, seed, num_val) -> ImageSplits:
    from jaxmed.io import load_volumes, to_greyscale

    h, w, c = image_shape
    if c != 1:
        raise ValueError(f"images read from files are single-channel; the model takes {tuple(image_shape)}")
    # The preprocessing `jaxmed score` applies to the files it scores: per
    # volume, robust range -> [0, 1], then foreground slices along z, resampled.
    prep = Preprocessing(image_size=(h, w))
    volumes, problems = load_volumes([source])
    problems = [f"{p.path}: {p.problem}" for p in problems]
    stacks, slice_indices, notes = [], [], []
    for volume in volumes:
        if volume.is_colour:
            # The model takes one channel: say so, then train on the luma.
            notes.append(f"{volume.source}: a colour image ({volume.photometric}), read as greyscale (BT.601 luma)")
            volume = to_greyscale(volume)
        try:
            images, indices = preprocess_volume(volume, prep)
        except ValueError as e:  # e.g. NaN voxels; the message names the file
            problems.append(str(e))
            continue
        if len(images):
            stacks.append(images)
            slice_indices.append(indices)
    if not stacks:
        listing = "; ".join(problems) or "no image files found"
        raise ValueError(f"--data {source}: no usable 2D slices ({listing})")
    train, val, split = split_scans(slice_indices, seed=seed, num_val=num_val)
    if not len(train) or not len(val):
        total = sum(map(len, stacks))
        raise ValueError(f"--data {source}: only {total} slices; too few to split")
    images = np.concatenate(stacks)
    description = {"source": str(Path(source).absolute()), "num_volumes": len(volumes),
                   "num_train": int(len(train)), "num_val": int(len(val)), "split": split,
                   "normalisation": "per-volume clip to 0.5-99.5 percentiles, min-max to [0, 1]",
                   "slicing": "axis 0 (z), slices with >= 5% of pixels above 0.05"}
    if notes:
        description["notes"] = notes
    return ImageSplits({"image": images[train]}, {"image": images[val]}, {}, description, problems, prep)


def split_scans(
    slice_indices: list[np.ndarray], *, seed: int, num_val: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Train/validation positions that keep neighbouring slices of a scan apart.

    Neighbouring slices of one scan are nearly the same image, so a random
    split of slices would validate on near-copies of training images. With
    two or more scans, whole scans go to validation: scans in a seeded random
    order, each taken while the validation set stays within its target of
    ``min(num_val, total // 5)`` slices (at least 1) and one scan is left for
    training; if none fits, the smallest scan (then validation holds more
    than the target: with two equal scans, half the slices). A single scan
    of N slices is cut into blocks of neighbouring slices (1 slice for N <
    10, else ``max(2, N // 20)``), every fifth block for validation
    (:func:`jaxmed.data.brain_mri.split_slices`, guard of 1 slice: training
    slices next to a validation block are dropped); at most ``num_val`` of
    them, evenly spaced, are kept. A scan of fewer than 5 slices gets no
    validation slice.

    Args:
      slice_indices: per scan, the increasing slice indices of its images;
        the images are numbered scan after scan, in this order.
      seed: seeds the order of the scans.
      num_val: the most validation images wanted.

    Returns:
      ``(train, val, how)``: int64 positions into the concatenated images,
      increasing, and a one-line description of the split.
    """
    from jaxmed.data.brain_mri import split_slices

    counts = [len(s) for s in slice_indices]
    starts = np.cumsum([0, *counts])
    if len(counts) == 1:
        block = 1 if counts[0] < 10 else max(2, counts[0] // 20)
        parts = split_slices(np.asarray(slice_indices[0]), block_size=block, guard=1,
                             pattern=("train",) * 4 + ("val",))
        train, val = parts["train"], parts.get("val", np.zeros(0, np.int64))
        if len(val) > num_val:
            val = val[np.unique(np.linspace(0, len(val) - 1, max(num_val, 1)).round().astype(int))]
        return train.astype(np.int64), val.astype(np.int64), (
            f"one scan: blocks of {block} slices, every fifth for validation, 1-slice guard")
    target = max(1, min(num_val, starts[-1] // 5))
    order = np.random.default_rng(seed).permutation(len(counts))
    chosen, size = [], 0
    for scan in order:
        if len(chosen) < len(counts) - 1 and size + counts[scan] <= target:
            chosen.append(int(scan))
            size += counts[scan]
    if not chosen:
        chosen = [int(min(order, key=lambda scan: counts[scan]))]
    is_val = np.zeros(starts[-1], bool)
    for scan in chosen:
        is_val[starts[scan]:starts[scan + 1]] = True
    return (np.flatnonzero(~is_val), np.flatnonzero(is_val),
            f"by scan: {len(chosen)} of {len(counts)} scans for validation")
