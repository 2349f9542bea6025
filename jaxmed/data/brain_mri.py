"""Real brain MRI without a download: slices of the MNI152 2009 template.

nilearn's wheel ships the MNI ICBM152 2009a nonlinear symmetric T1 template
(``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels of 1 mm, skull-stripped, 8-bit). This module finds the
file without importing nilearn, reads it with `jaxmed.io.read_image` (cached
per process), and cuts it into normalised 2D slices split into training,
validation and test sets that do not neighbour each other.

Display orientation (radiological convention), whatever the file's axis order:
axial slices have anterior at the top (row 0) and the patient's right on the
left (column 0); coronal slices superior at the top, patient's right on the
left; sagittal slices superior at the top, anterior on the left. Slice indices
count from inferior (axial), anterior (coronal) or the patient's right
(sagittal); for the template's axial slices that is the file's ``z`` index.

Split (`split_slices`): the kept slices, in index order, are cut into blocks of
``block_size`` neighbouring slices; block ``b`` goes to split
``pattern[b % len(pattern)]`` (round-robin); then, walking up the slices, a
slice is dropped when it lies within ``guard`` slices of an already kept slice
of another split. Slices of different splits are therefore more than
``guard`` slices apart.

Licence and attribution of the template (the notice that must accompany it)::

    Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
    Montreal Neurological Institute, McGill University. Permission to use,
    copy, modify, and distribute this software and its documentation for any
    purpose and without fee is hereby granted, provided that the above
    copyright notice appear in all copies. The authors and McGill University
    make no representations about the suitability of this software for any
    purpose. It is provided "as is" without express or implied warranty. The
    authors are not responsible for any data loss, equipment damage, property
    loss, or injury to subjects or patients resulting from the use or misuse
    of this software package.

References:
    Fonov V., Evans A. C., Botteron K., Almli C. R., McKinstry R. C.,
    Collins D. L. and the Brain Development Cooperative Group. Unbiased average
    age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327,
    2011.

    Fonov V. S., Evans A. C., McKinstry R. C., Almli C. R., Collins D. L.
    Unbiased nonlinear average age-appropriate brain templates from birth to
    adulthood. NeuroImage 47(Suppl 1):S102, 2009.

    Collins D. L., Zijdenbos A. P., Baare W. F. C., Evans A. C. ANIMAL+INSECT:
    improved cortical structure segmentation. IPMI 1999, LNCS 1613:210-223.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ATTRIBUTION",
    "ORIENTATIONS",
    "TEMPLATE_FILE",
    "BrainMRISplits",
    "crop_resize",
    "display_axes",
    "load_brain_mri",
    "read_cached",
    "scale_to_brain",
    "split_slices",
    "square_window",
    "template_path",
]

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ATTRIBUTION = (
    "MNI ICBM152 2009a nonlinear symmetric template, Copyright (C) 1993-2009 Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; "
    "Fonov et al., NeuroImage 54:313-327 (2011) and 47:S102 (2009)"
)

# Orientation -> axis of the display-ordered volume (see `display_axes`)
# and whether the slice's rows are flipped to put superior at the top.
ORIENTATIONS: dict[str, tuple[int, bool]] = {
    "axial": (0, False),
    "coronal": (1, True),
    "sagittal": (2, True),
}


class BrainMRISplits(NamedTuple):
    """Slices of one brain volume, split three ways.

    Each split is a dict of numpy arrays with a leading axis of ``N`` slices
    (``N`` may be 0), in increasing slice index:

    * ``"image"``: float32 ``[N, size, size, 1]`` in ``[0, 1]``;
    * ``"brain_mask"``: bool ``[N, size, size]``;
    * ``"slice_index"``: int64 ``[N]``, the slice's index (module docstring).

    Attributes:
        train: training slices.
        val: validation slices.
        test: test slices.
        description: JSON-ready record of the source, options, slice indices
            of each split and the template's attribution.
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    description: dict[str, Any]


def template_path() -> pathlib.Path:
    """Path of the MNI152 2009 T1 template inside the installed nilearn.

    nilearn is located with `importlib.util.find_spec`, which does not import
    it (importing nilearn takes seconds).

    Raises:
        FileNotFoundError: nilearn is not installed, or its wheel lacks the
            file.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MNI152 brain template ships inside the nilearn package, which is not installed; "
            'install it with: pip install "jaxmed[data]"'
        )
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root) / "datasets" / "data" / TEMPLATE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{pathlib.Path(spec.submodule_search_locations[0]) / 'datasets' / 'data' / TEMPLATE_FILE}: "
        'no such file in the installed nilearn; reinstall it with: pip install --force-reinstall "jaxmed[data]"'
    )


@functools.lru_cache(maxsize=4)
def read_cached(path: str):
    """The decoded volume, once per process (decompressing takes a second)."""
    from jaxmed.io import read_image

    volume = read_image(path)
    volume.array.setflags(write=False)  # shared by every caller of the cache
    return volume


def display_axes(array: np.ndarray, affine: np.ndarray, spacing, source: str):
    """Permutes and flips ``(z, y, x)`` to (inferior->superior, anterior->posterior, right->left).

    Each array axis goes to the patient axis its affine column points along
    most (LPS components L, P, S), flipped if it points the other way.

    Returns:
        (array ``[n_is, n_ap, n_rl]``, spacing in mm along those axes).
    """
    # Display axis of each LPS component: S -> 0, P -> 1, L -> 2.
    display_of_component = {2: 0, 1: 1, 0: 2}
    order, flips = [None] * 3, []
    for axis in range(3):
        direction = np.asarray(affine, dtype=np.float64)[:3, axis]
        component = int(np.argmax(np.abs(direction)))
        display = display_of_component[component]
        if order[display] is not None:
            raise ValueError(f"{source}: voxel axes are too oblique to tell axial, coronal and sagittal apart")
        order[display] = axis
        if direction[component] < 0:
            flips.append(axis)
    array = np.flip(array, axis=flips) if flips else array
    return np.transpose(array, order), tuple(float(spacing[a]) for a in order)


def split_slices(
    slice_index: np.ndarray,
    *,
    block_size: int,
    guard: int,
    pattern: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Splits slices into sets of neighbouring blocks separated by guard bands.

    Block ``b`` (positions ``[b * block_size, (b + 1) * block_size)`` of
    ``slice_index``) goes to ``pattern[b % len(pattern)]``. Where two runs of
    different splits meet, the slices within ``guard`` of the other run are
    dropped from the run of the split named most often in ``pattern`` (the
    training set, usually), or from the later run on a tie. A final pass up
    the slices drops any slice still within ``guard`` of a kept slice of
    another split, so slices of different splits end up more than ``guard``
    apart whatever the indices.

    Args:
        slice_index: int ``[N]``, increasing slice indices.
        block_size: slices per block.
        guard: slices of different splits are more than ``guard`` apart.
        pattern: split name of each block, round-robin.

    Returns:
        For each distinct name in ``pattern``, in first-appearance order, the
        int64 positions (into ``slice_index``) of its kept slices, increasing.
    """
    slice_index = np.asarray(slice_index)
    if slice_index.ndim != 1 or np.any(np.diff(slice_index) <= 0):
        raise ValueError("slice_index must be a 1D increasing array")
    if block_size < 1 or guard < 0 or not pattern:
        raise ValueError(f"need block_size >= 1, guard >= 0 and a pattern, got {block_size}, {guard}, {pattern}")
    names = list(dict.fromkeys(pattern))
    n = len(slice_index)
    split = [pattern[(p // block_size) % len(pattern)] for p in range(n)]
    keep = np.ones(n, dtype=bool)

    # Guard bands, cut from the bigger split at each boundary.
    for p in range(n - 1):
        before, after = split[p], split[p + 1]
        if before == after:
            continue
        if pattern.count(after) >= pattern.count(before):
            q = p + 1
            while q < n and split[q] == after and slice_index[q] - slice_index[p] <= guard:
                keep[q], q = False, q + 1
        else:
            q = p
            while q >= 0 and split[q] == before and slice_index[p + 1] - slice_index[q] <= guard:
                keep[q], q = False, q - 1

    # Guarantee: walking up, the closest kept slice of another split is the
    # latest one kept, so one comparison per slice suffices.
    last = {name: -math.inf for name in names}
    for p in range(n):
        if not keep[p]:
            continue
        nearest_other = max((last[o] for o in names if o != split[p]), default=-math.inf)
        if slice_index[p] - nearest_other <= guard:
            keep[p] = False
        else:
            last[split[p]] = slice_index[p]
    return {name: np.flatnonzero(keep & (np.asarray(split) == name)).astype(np.int64) for name in names}


def load_brain_mri(
    *,
    size: int = 64,
    orientation: str = "axial",
    min_brain_fraction: float = 0.1,
    brain_threshold: float = 0.1,
    margin_mm: float = 4.0,
    block_size: int = 8,
    guard: int = 3,
    pattern: tuple[str, ...] = ("train", "train", "train", "val", "test", "train", "train", "train", "test", "val"),
    path: str | os.PathLike | None = None,
    volume: Any = None,
) -> BrainMRISplits:
    """Normalised 2D slices of a brain MRI volume, split without neighbours.

    Steps: the volume is put in display orientation (module docstring) and
    scaled to ``[0, 1]`` by its 99.5th percentile over the brain (clipped);
    the brain is where the scaled intensity exceeds ``brain_threshold`` (the
    template is skull-stripped: background is 0). Slices whose brain area is
    below ``min_brain_fraction`` of the largest slice's are skipped. One
    square field of view (in mm), the brain's bounding box over the whole
    volume plus ``margin_mm``, is cut from every slice, so all slices share
    one scale, and resampled to ``size x size`` (linear, anti-aliased). The
    kept slices are split by `split_slices`.

    Args:
        size: output height and width, pixels.
        orientation: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        min_brain_fraction: in ``[0, 1]``, see above.
        brain_threshold: in ``(0, 1)``, scaled intensity above which a voxel
            is brain.
        margin_mm: added around the brain's bounding box, mm.
        block_size: neighbouring slices per block of the split.
        guard: slices of different splits are more than ``guard`` apart.
        pattern: round-robin assignment of blocks to split names, each of
            ``"train"``, ``"val"``, ``"test"``.
        path: a NIfTI or DICOM volume; None reads the template
            (`template_path`).
        volume: instead of ``path``, a volume already read
            (a :class:`jaxmed.io.Volume`: its affine gives the orientation).

    Returns:
        `BrainMRISplits`. For the template with the defaults (axial, 64):
        137 slices hold brain, of which 71 train, 21 val and 18 test are
        kept (27 fall in guard bands); ``description`` lists them. The
        default pattern puts validation and test blocks in neighbouring
        pairs (guarded), so both sets cover the same levels of the brain and
        a threshold calibrated on one holds on the other; with validation
        and test far apart (e.g. test near the vertex only) it does not.

    Raises:
        FileNotFoundError: no path given and nilearn is not installed.
        jaxmed.io.ImageReadError: the file cannot be read.
        ValueError: a bad option, or the volume has no brain voxels.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; known: {sorted(ORIENTATIONS)}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if not 0.0 <= min_brain_fraction <= 1.0 or not 0.0 < brain_threshold < 1.0 or margin_mm < 0:
        raise ValueError(
            "need 0 <= min_brain_fraction <= 1, 0 < brain_threshold < 1 and margin_mm >= 0, got "
            f"{min_brain_fraction}, {brain_threshold}, {margin_mm}"
        )
    pattern = tuple(pattern)
    unknown = set(pattern) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"pattern may only name 'train', 'val' and 'test', got {sorted(unknown)}")
    if volume is None:
        path = os.fspath(template_path() if path is None else path)
        volume = read_cached(path)
    elif path is not None:
        raise ValueError("give a path or a volume, not both")
    else:
        if not all(hasattr(volume, a) for a in ("array", "affine", "spacing")):
            raise ValueError(f"volume must be a jaxmed.io.Volume (with an affine), got {type(volume).__name__}")
        path = str(getattr(volume, "source", None) or "volume")
    array, spacing = display_axes(volume.array, volume.affine, volume.spacing, path)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: volume holds NaN or infinite values")
    scaled = scale_to_brain(array, path)
    brain = scaled > brain_threshold

    axis, flip_rows = ORIENTATIONS[orientation]
    stack, brain_stack = np.moveaxis(scaled, axis, 0), np.moveaxis(brain, axis, 0)
    in_plane_spacing = tuple(s for a, s in enumerate(spacing) if a != axis)
    if flip_rows:
        stack, brain_stack = stack[:, ::-1], brain_stack[:, ::-1]
    area = brain_stack.sum(axis=(1, 2))
    if area.max() == 0:
        raise ValueError(f"{path}: no voxel above brain_threshold={brain_threshold}, no brain to slice")
    slice_index = np.flatnonzero(area >= min_brain_fraction * area.max()).astype(np.int64)

    window, side_mm = square_window(brain_stack.any(axis=0), in_plane_spacing, margin_mm)
    images = crop_resize(stack[slice_index], window, size)
    masks = crop_resize(brain_stack[slice_index].astype(np.float32), window, size) >= 0.5

    positions = split_slices(slice_index, block_size=block_size, guard=guard, pattern=pattern)
    splits = {}
    for name in ("train", "val", "test"):
        chosen = positions.get(name, np.zeros(0, np.int64))
        splits[name] = {
            "image": images[chosen][..., None],
            "brain_mask": masks[chosen],
            "slice_index": slice_index[chosen],
        }
    description = {
        "path": path,
        "orientation": orientation,
        "size": size,
        "field_of_view_mm": side_mm,
        "pixel_spacing_mm": side_mm / size,
        "num_slices_with_brain": int(len(slice_index)),
        "block_size": block_size,
        "guard": guard,
        "pattern": list(pattern),
        **{f"{name}_slices": splits[name]["slice_index"].tolist() for name in ("train", "val", "test")},
        "attribution": ATTRIBUTION if os.path.basename(path) == TEMPLATE_FILE else None,
    }
    return BrainMRISplits(train=splits["train"], val=splits["val"], test=splits["test"], description=description)


def scale_to_brain(array: np.ndarray, source: str) -> np.ndarray:
    """Maps 0 -> 0 and the 99.5th percentile of the nonzero voxels -> 1, clipped to ``[0, 1]``."""
    foreground = array[array > 0]
    if foreground.size == 0:
        raise ValueError(f"{source}: volume has no positive voxels, no brain to slice")
    top = float(np.percentile(foreground, 99.5))
    return np.clip(array / np.float32(top), 0.0, 1.0).astype(np.float32)


def square_window(brain: np.ndarray, spacing, margin_mm: float):
    """A window square in mm around the brain's 2D bounding box.

    Returns:
        ((start, length) in voxels, int64 ``[2]`` each, per axis; side in mm).
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    lo = np.array([np.flatnonzero(brain.any(axis=1 - a)).min() for a in (0, 1)], dtype=np.float64)
    hi = np.array([np.flatnonzero(brain.any(axis=1 - a)).max() for a in (0, 1)], dtype=np.float64) + 1
    centre = (lo + hi) / 2
    side_mm = np.max((hi - lo) * spacing) + 2 * margin_mm
    length = np.maximum(np.round(side_mm / spacing), 1).astype(np.int64)
    start = np.round(centre - length / 2).astype(np.int64)
    return (start, length), float(side_mm)


def crop_resize(stack: np.ndarray, window, size: int) -> np.ndarray:
    """Crops ``[N, H, W]`` to the window (zero outside the array) and resizes to ``[N, size, size]``."""
    (start_h, start_w), (length_h, length_w) = window
    n, h, w = stack.shape
    # Zero padding lets the window reach past the array's edge.
    pad_h = (max(0, -start_h), max(0, start_h + length_h - h))
    pad_w = (max(0, -start_w), max(0, start_w + length_w - w))
    padded = np.pad(stack, ((0, 0), pad_h, pad_w))
    top, left = start_h + pad_h[0], start_w + pad_w[0]
    crop = padded[:, top : top + length_h, left : left + length_w]
    # Anti-aliased linear resampling: the crop shrinks about three-fold.
    out = jax.image.resize(jnp.asarray(crop, jnp.float32), (n, size, size), method="linear", antialias=True)
    return np.clip(np.asarray(out), 0.0, 1.0)
