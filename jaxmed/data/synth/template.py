"""The MNI152 template and its tissue maps, cut on the output grid as `load_brain_mri` cuts slices."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxmed.data import brain_mri

__all__ = ["GM_FILE", "WM_FILE", "SynthTemplate", "load_synth_template", "tissue_paths"]

QUANTILE = 0.995  # brain_mri scales by the brain's 99.5th percentile
GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "volume",
        "cumulative",
        "tissue_means",
        "reference_points",
        "reference_values",
        "reference_quantile",
        "boundary_points",
    ],
    meta_fields=["spacing", "rotation_centre", "window_offset", "orientation"],
)
@dataclasses.dataclass(frozen=True)
class SynthTemplate:
    """The template and its tissue maps on the output grid (a pytree).

    Made by `load_synth_template`; pass it to `synth_slices` as an argument
    (not a closure) so its arrays are not baked into the compiled program.

    Attributes:
        volume: float32 ``[Z, H, W, 4]``: the template's slices as
            ``load_brain_mri`` cuts them (every slice, not only the kept
            ones), then the grey- and white-matter probabilities and the
            brain mask cut the same way (anti-aliased: soft at edges).
        cumulative: float32 ``[Z + 1, H, W, 4]``, ``volume`` summed along the
            slices times their spacing: entry ``k`` is the integral up to the
            boundary between slices ``k - 1`` and ``k`` (mm x intensity),
            taking each slice as constant over its thickness. A slab's
            average is the difference of two of its samples over the slab's
            thickness.
        tissue_means: float32 ``[3]``, GM, WM and CSF intensities that best
            explain the template as ``gm w_gm + wm w_wm + csf w_csf`` (least
            squares over the brain; RMS residual about 0.019).
        reference_points: float32 ``[M, 3]``, brain voxels of ``volume``
            (template frame, mm), spread evenly: the subject's 99.5th
            percentile is estimated over them.
        reference_values: float32 ``[M, 4]``, ``volume`` there.
        reference_quantile: float32 ``[]``, the 99.5th percentile of the
            template intensity over the reference points.
        boundary_points: float32 ``[B, 3]``, voxels on the surface of the
            template's brain at 1 mm (template frame, mm): their image under
            a subject's spatial transform gives its field of view.
        spacing: ``(s_z, s_r, s_c)``, mm between slices, rows and columns of
            ``volume``.
        rotation_centre: the template brain's centroid, mm.
        window_offset: ``(side, centre_r, centre_c)``, mm: the field of view
            minus the in-plane extent (largest side) and centre of the
            boundary points, so that a subject's field of view is its
            boundary points' plus these.
        orientation: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    """

    volume: Array
    cumulative: Array
    tissue_means: Array
    reference_points: Array
    reference_values: Array
    reference_quantile: Array
    boundary_points: Array
    spacing: tuple[float, float, float]
    rotation_centre: tuple[float, float, float]
    window_offset: tuple[float, float, float]
    orientation: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, H, W)``: slices, rows, columns."""
        return tuple(int(n) for n in self.volume.shape[:3])


def tissue_paths() -> dict[str, pathlib.Path]:
    """Paths of the template and its tissue maps inside the installed nilearn.

    Found beside `jaxmed.data.brain_mri.template_path` (which locates nilearn
    without importing it).

    Returns:
        ``{"t1": ..., "gm": ..., "wm": ...}``.

    Raises:
        FileNotFoundError: nilearn is not installed, or its wheel lacks a
            file.
    """
    t1 = brain_mri.template_path()
    paths = {"t1": t1, "gm": t1.parent / GM_FILE, "wm": t1.parent / WM_FILE}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file in the installed nilearn; reinstall it with: "
                'pip install --force-reinstall "jaxmed[data]"'
            )
    return paths


@functools.lru_cache(maxsize=4)
def load_synth_template(
    *,
    size: int = 64,
    orientation: str = "axial",
    brain_threshold: float = 0.1,
    margin_mm: float = 4.0,
    num_reference_points: int = 4096,
    num_boundary_points: int = 4096,
) -> SynthTemplate:
    """The MNI152 template and its tissue maps, cut as `load_brain_mri` cuts slices.

    The options mean what they mean for
    :func:`~jaxmed.data.brain_mri.load_brain_mri` (use the same values as the
    data the model is scored on). Cached per process (about 3 s to build).

    Args:
        size: output height and width, pixels.
        orientation: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        brain_threshold: in ``(0, 1)``, scaled intensity above which a voxel
            is brain.
        margin_mm: added around the brain's bounding box, mm.
        num_reference_points: brain points over which a subject's 99.5th
            percentile is estimated.
        num_boundary_points: brain-surface points that fix a subject's field
            of view.

    Returns:
        A `SynthTemplate`; ``volume[load_brain_mri(...).train["slice_index"],
        ..., :1]`` is ``load_brain_mri(...).train["image"]``.

    Raises:
        FileNotFoundError: nilearn is not installed, or lacks a file.
        ValueError: a bad option, or the tissue maps are not on the
            template's grid.
    """
    if orientation not in brain_mri.ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; known: {sorted(brain_mri.ORIENTATIONS)}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if not 0.0 < brain_threshold < 1.0 or margin_mm < 0:
        raise ValueError(f"need 0 < brain_threshold < 1 and margin_mm >= 0, got {brain_threshold}, {margin_mm}")
    if num_reference_points < 16 or num_boundary_points < 16:
        raise ValueError(
            f"need at least 16 reference and boundary points, got {num_reference_points}, {num_boundary_points}"
        )
    paths = tissue_paths()
    volumes = {name: brain_mri.read_cached(str(path)) for name, path in paths.items()}
    for name in ("gm", "wm"):
        if volumes[name].shape != volumes["t1"].shape or not np.allclose(
            volumes[name].affine, volumes["t1"].affine, atol=1e-3
        ):
            raise ValueError(f"{paths[name]}: not on the grid of {paths['t1']}")
    source = str(paths["t1"])
    display = {}
    for name, volume in volumes.items():
        display[name], spacing = brain_mri.display_axes(volume.array, volume.affine, volume.spacing, source)
    scaled = brain_mri.scale_to_brain(display["t1"], source)
    brain = scaled > brain_threshold
    # Probability maps stored as 0..255: scaled by their maximum (1 in the
    # brain's interior), and kept inside the skull-stripped brain.
    tissues = {
        name: np.where(brain, display[name] / max(float(display[name].max()), 1e-12), 0.0).astype(np.float32)
        for name in ("gm", "wm")
    }

    axis, flip_rows = brain_mri.ORIENTATIONS[orientation]
    channels = [scaled, tissues["gm"], tissues["wm"], brain.astype(np.float32)]
    channels = [np.moveaxis(c, axis, 0) for c in channels]
    if flip_rows:
        channels = [c[:, ::-1] for c in channels]
    brain_stack = channels[3] > 0.5
    in_plane_spacing = tuple(s for a, s in enumerate(spacing) if a != axis)
    window, _ = brain_mri.square_window(brain_stack.any(axis=0), in_plane_spacing, margin_mm)
    volume = np.stack([brain_mri.crop_resize(c, window, size) for c in channels], axis=-1)
    (start, length) = window
    spacing_stack = (
        float(spacing[axis]),
        float(length[0] * in_plane_spacing[0] / size),
        float(length[1] * in_plane_spacing[1] / size),
    )
    spacing_np = np.asarray(spacing_stack)

    # Tissue means of the partial-volume model, over every pixel with brain.
    t1, gm, wm, brain_soft = np.moveaxis(volume, -1, 0)
    csf = np.clip(brain_soft - gm - wm, 0.0, None)
    inside = brain_soft > 0
    design = np.stack([gm[inside], wm[inside], csf[inside]], axis=1).astype(np.float64)
    tissue_means, *_ = np.linalg.lstsq(design, t1[inside].astype(np.float64), rcond=None)

    # Reference points: brain pixels in raster order, evenly strided.
    flat = np.flatnonzero(brain_soft >= 0.5)
    chosen = flat[np.linspace(0, len(flat) - 1, min(num_reference_points, len(flat))).round().astype(np.int64)]
    index = np.stack(np.unravel_index(chosen, brain_soft.shape), axis=1)
    reference_points = index * spacing_np
    values = volume[tuple(index.T)]
    reference_quantile = jnp.quantile(jnp.asarray(values[:, 0]), QUANTILE)

    # Boundary points: the 1 mm brain's surface voxels, in the stack's frame.
    interior = brain_stack.copy()
    for a in range(3):
        for step in (1, -1):
            interior &= np.roll(brain_stack, step, axis=a)
    surface = np.flatnonzero(brain_stack & ~interior)
    surface = surface[np.linspace(0, len(surface) - 1, min(num_boundary_points, len(surface))).round().astype(np.int64)]
    voxel = np.stack(np.unravel_index(surface, brain_stack.shape), axis=1).astype(np.float64)
    # 1 mm voxel v -> stack pixel (v - start + 0.5) * size / length - 0.5
    # (jax.image.resize's half-pixel centres), -> mm.
    pixel = (voxel[:, 1:] - start + 0.5) * size / length - 0.5
    boundary_points = np.concatenate([voxel[:, :1], pixel], axis=1) * spacing_np
    extent = boundary_points[:, 1:].max(axis=0) - boundary_points[:, 1:].min(axis=0)
    centre = (boundary_points[:, 1:].max(axis=0) + boundary_points[:, 1:].min(axis=0)) / 2
    window_side = size * spacing_stack[1]
    window_centre = (size - 1) / 2 * spacing_np[1:]
    window_offset = (
        float(window_side - extent.max()),
        float(window_centre[0] - centre[0]),
        float(window_centre[1] - centre[1]),
    )
    cumulative = np.concatenate([np.zeros_like(volume[:1]), np.cumsum(volume, axis=0, dtype=np.float64)])
    return SynthTemplate(
        volume=jnp.asarray(volume, jnp.float32),
        cumulative=jnp.asarray(cumulative * spacing_stack[0], jnp.float32),
        tissue_means=jnp.asarray(tissue_means, jnp.float32),
        reference_points=jnp.asarray(reference_points, jnp.float32),
        reference_values=jnp.asarray(values, jnp.float32),
        reference_quantile=jnp.asarray(reference_quantile, jnp.float32),
        boundary_points=jnp.asarray(boundary_points, jnp.float32),
        spacing=spacing_stack,
        rotation_centre=tuple(float(c) for c in reference_points.mean(axis=0)),
        window_offset=window_offset,
        orientation=orientation,
    )
