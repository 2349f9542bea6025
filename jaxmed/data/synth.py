"""Synthetic brain subjects from the MNI152 2009 template and its tissue maps.

The MNI152 T1 template (:mod:`jaxmed.data.brain_mri`) is one brain; a model of
its slices is a model of that brain. This module makes new subjects from what
ships in nilearn's wheel (the T1 template and its grey- and white-matter
probability maps), by domain randomisation in the spirit of SynthSeg: a
random diffeomorphic deformation and an affine placement (spatial), new
grey/white-matter/CSF intensities and a gamma (contrast), a smooth
multiplicative bias field, slice thickness and in-plane resolution, and Rician
noise. Every family can be switched off on its own (:class:`SynthConfig`,
:data:`FAMILIES`), and each family draws from its own stream of the key, so
ablating one family leaves the others' draws unchanged.

Design:

* **One 3D subject per key, evaluated only where the output needs it.** The
  deformation is 3D, so the slices drawn with one key are slices of one
  consistent brain (anatomy varies smoothly through the slices). The
  stationary velocity field lives on a coarse grid (``svf_grid_mm``, 20 x 20
  x 20 nodes by default) where scaling and squaring is cheap; the pull-back
  map is then evaluated only at the ``N x H x W`` output pixels and the
  template is sampled there. No full-resolution volume is ever warped. A
  thick slice is the difference of two samples of the template's cumulative
  integral along the slice axis, so it costs the same whatever its
  thickness.
* **The template is pre-sampled on the output grid.** `load_synth_template`
  cuts *every* slice of the template exactly as
  :func:`~jaxmed.data.brain_mri.load_brain_mri` cuts the kept ones (display
  orientation, 99.5th-percentile scaling, brain-centred square window,
  anti-aliased resize to ``size``), and the tissue maps the same way, into one
  ``[Z, H, W, 4]`` array. With every family off, `synth_slices` at the
  template's slice indices returns exactly ``load_brain_mri``'s slices.
* **Outputs end like the training slices.** The subject's field of view is
  recomputed as ``load_brain_mri`` would compute it for that subject (the
  brain's in-plane bounding box over the whole volume plus the margin,
  square, centred), and its intensities are scaled so that its brain's 99.5th
  percentile lands where the template's does, then clipped to ``[0, 1]``.
* **Fresh subjects every step.** Measured on 2 vCPUs (AVX-512 Xeon, jax
  0.10.2) shared with other jobs (load 1.6-5.3, so figures spread 2-4x),
  default config, one jitted call for 32 slices of 64 x 64: 8 subjects x 4
  slices in 33-160 ms (200-960 slices/s), 32 subjects x 1 slice in
  100-320 ms (each subject costs a few ms of its own: two velocity
  integrations, its field of view, its percentile), 1 subject x 32 slices
  in 60-170 ms; every family off, 1 ms. A whole 189-slice subject
  (`synth_subject`) takes ~0.34 s, so a pool of K subjects costs about
  K / 3 s where per-step generation is too slow. Compiling one config takes
  5-15 s.

Conventions. Arrays of the template and of the outputs are in the display
orientation of :mod:`jaxmed.data.brain_mri` (for axial slices: slice index
from inferior, rows anterior -> posterior, columns patient right -> left).
Spatial quantities are in millimetres in the *template frame*: a point
``(z, r, c)`` in mm is the template volume's voxel ``(z / s_z, r / s_r,
c / s_c)`` (index of voxel centres, ``SynthTemplate.spacing = (s_z, s_r,
s_c)``); the scanner frame of a synthetic subject coincides with it before the
subject's field of view is recentred. A slice position is a (possibly
fractional) slice index in that frame, so the template's own slice indices
(``load_brain_mri(...).train["slice_index"]``) can be passed directly.
Intensities before the final scaling are in the template's scaled units
(1 = the template brain's 99.5th percentile): the template's own tissue means
(least squares over the partial-volume model) are about 0.72 (GM), 0.96 (WM)
and 0.32 (CSF).

CSF is not shipped as a map: inside the skull-stripped brain it is what grey
and white matter leave, ``csf = brain - gm - wm`` (clipped at 0).

References:
    Billot B. et al. SynthSeg: segmentation of brain MRI scans of any
    contrast and resolution without retraining. Medical Image Analysis 86,
    102789 (2023) (domain randomisation: deformations, GMM contrast, gamma,
    bias field, resolution).

    Arsigny V., Commowick O., Pennec X., Ayache N. A Log-Euclidean framework
    for statistics on diffeomorphisms. MICCAI 2006, LNCS 4190:924-931
    (stationary velocity fields, scaling and squaring).

    Ashburner J. A fast diffeomorphic image registration algorithm.
    NeuroImage 38(1):95-113 (2007) (DARTEL: scaling and squaring on a grid).

    Gudbjartsson H., Patz S. The Rician distribution of noisy MRI data.
    Magnetic Resonance in Medicine 34(6):910-914 (1995).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

from jaxmed.data import brain_mri
from jaxmed.data.artefacts import gaussian_blur, rician_noise

__all__ = [
    "FAMILIES",
    "GM_FILE",
    "WM_FILE",
    "SynthConfig",
    "SynthTemplate",
    "integrate_velocity",
    "jacobian_determinant",
    "load_synth_template",
    "sample_velocity",
    "synth_slices",
    "synth_subject",
    "tissue_paths",
]

GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"

FAMILIES = ("deformation", "affine", "contrast", "bias", "resolution", "noise")
"""Augmentation families, each switched off by :meth:`SynthConfig.without`."""

# The field values that switch each family off (see SynthConfig).
_OFF: dict[str, dict[str, Any]] = {
    "deformation": {"svf_std_mm": 0.0},
    "affine": {"scale_range": (1.0, 1.0), "rotation_degrees": 0.0, "translation_mm": 0.0},
    "contrast": {"gm_intensity": None, "wm_intensity": None, "csf_intensity": None, "gamma_range": (1.0, 1.0)},
    "bias": {"bias_amplitude": (0.0, 0.0)},
    "resolution": {"slice_thickness_mm": (0.0, 0.0), "inplane_fwhm_mm": (0.0, 0.0)},
    "noise": {"noise_std": (0.0, 0.0)},
}

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_QUANTILE = 0.995  # brain_mri scales by the brain's 99.5th percentile


# ----------------------------------------------------------------------------
# Configuration


def _range(name: str, value, *, low: float, high: float, low_open: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")
    if lo < low or (low_open and lo == low) or hi > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What varies between synthetic subjects, and by how much.

    Every range ``(low, high)`` is drawn uniformly per subject (per key);
    ``low == high`` fixes the value. Hashable: pass it as a static argument
    (``jax.jit(synth_slices, static_argnames="config")``). Families and
    their "off" settings (:meth:`without` applies them):

    **deformation** (off: ``svf_std_mm=0``). A stationary velocity field,
    white Gaussian noise on a grid of ``svf_grid_mm`` smoothed by a Gaussian
    of ``svf_smoothness_mm`` and scaled so each component has standard
    deviation ``svf_std_mm`` everywhere, integrated by scaling and squaring in
    ``svf_steps`` steps (`integrate_velocity`). Displacements are about
    ``svf_std_mm`` (per component, RMS) and vary over ``svf_smoothness_mm``;
    at the defaults the local volume change (Jacobian determinant) spans
    about 0.7-1.4, and stays positive (no folding) up to 4x ``svf_std_mm``.

    **affine** (off: ``scale_range=(1, 1)``, ``rotation_degrees=0``,
    ``translation_mm=0``). The subject's brain is the template's scaled by a
    factor drawn from ``scale_range`` along each axis independently
    (anisotropic), rotated by an angle drawn from
    ``[-rotation_degrees, rotation_degrees]`` about each axis (about the
    template brain's centroid), and shifted by up to ``translation_mm`` along
    each axis. With ``recentre`` (the default) the field of view is then
    fitted to the subject's brain as preprocessing does, which undoes the
    in-plane shift and the overall in-plane size: what remains is the shape
    (aspect ratio, rotation) and the through-plane shift and scale (which
    anatomy a slice index shows).

    **contrast** (off: the three tissue intensities None and
    ``gamma_range=(1, 1)``). The intensity of a point with tissue
    probabilities ``p = (gm, wm, csf)`` and template intensity ``t`` becomes
    ``m t (p . w) / (p . w0) + (1 - m) (p . w)``, then ``** gamma``, where
    ``w`` are the drawn tissue intensities, ``w0`` the template's own
    (`SynthTemplate.tissue_means`) and ``m`` drawn from ``template_mix``: at
    ``m = 1`` the template's texture is kept and each tissue re-weighted; at
    ``m = 0`` the image is the partial-volume tissue model alone (as
    SynthSeg's). A tissue intensity of None keeps the template's mean for
    that tissue; all three None switch the re-weighting off (``t`` is kept).
    Intensities are in the template's scaled units (module docstring).

    **bias** (off: ``bias_amplitude=(0, 0)``). The image is multiplied by
    ``1 + a g``, ``a`` drawn from ``bias_amplitude`` and ``g`` a cubic
    B-spline over the template's box (scanner frame) with
    ``bias_control_points`` control points per axis and coefficients uniform
    in ``[-1, 1]``, scaled so that ``max |g|`` over the subject's brain is 1
    (estimated over `SynthTemplate.reference_points`: within about 1% for
    so smooth a field) and clipped to ``[-1, 1]`` outside it. So the field
    lies in ``[1 - a, 1 + a]`` and reaches one of the bounds in the brain,
    as the ``bias_field`` anomaly of :mod:`jaxmed.data.artefacts` is scaled
    by its peak over the object (there ``exp(+-severity log 3)``, a factor
    1.73 at the default severity). Keep ``a`` within about 0.15 for a
    normal-looking scan.

    **resolution** (off: ``slice_thickness_mm=(0, 0)`` and
    ``inplane_fwhm_mm=(0, 0)``). Each slice averages the subject over a slab
    of the drawn thickness along the template's slice axis (a boxcar slice
    profile, exact for the template's 1 mm voxels taken as constant; the
    slab follows the subject's deformation at its centre, not its tilt, and
    the contrast is applied to the slab's average tissue content), and is
    blurred in-plane by a Gaussian of the drawn full width at half maximum.
    Both are in mm; thicknesses start at 1 mm, the template's own voxels.
    The output pixels are about 3 mm at size 64, so only in-plane FWHMs of
    that order show.

    **noise** (off: ``noise_std=(0, 0)``). Rician noise
    (:func:`jaxmed.data.artefacts.rician_noise`) of per-channel standard
    deviation drawn from ``noise_std``, in output units (1 = the brain's
    99.5th percentile), added after the scaling: the background then has
    mean ``sigma sqrt(pi / 2)``. The ``noise`` anomaly at its default
    severity is ``sigma = 0.075``.

    Attributes (default, unit):
        svf_std_mm: standard deviation of each velocity component (2.0, mm).
        svf_smoothness_mm: Gaussian sigma of the velocity's smoothing, at
            least ``svf_grid_mm`` (20.0, mm).
        svf_grid_mm: spacing of the velocity's grid (10.0, mm).
        svf_steps: scaling-and-squaring steps: the field is divided by
            ``2 ** svf_steps`` and composed with itself that many times (5).
        scale_range: size factor of the subject along each axis
            ((0.93, 1.07)).
        rotation_degrees: largest rotation about each axis, at most 45
            (8.0, degrees).
        translation_mm: largest shift along each axis (5.0, mm).
        recentre: fit the field of view to each subject's brain, as
            ``load_brain_mri`` does for a scanned volume (True).
        gm_intensity: grey-matter intensity range, or None ((0.58, 0.82),
            template units).
        wm_intensity: white-matter intensity range, or None ((0.85, 1.0)).
        csf_intensity: CSF intensity range, or None ((0.12, 0.45)).
        template_mix: range of ``m`` above, in ``[0, 1]`` ((0.5, 1.0)).
        gamma_range: exponent applied to the intensities, drawn
            log-uniformly, positive ((0.8, 1.25)).
        bias_amplitude: range of the bias field's bound ``a``, in
            ``[0, 1)`` ((0.0, 0.1), fraction).
        bias_control_points: B-spline control points per axis, ``>= 4``
            (5).
        slice_thickness_mm: slab thickness range, from 1, or ``(0, 0)``
            ((1.0, 4.0), mm).
        inplane_fwhm_mm: in-plane Gaussian blur range, FWHM ((0.0, 3.0),
            mm).
        noise_std: Rician noise sigma range, output units ((0.0, 0.02)).
    """

    # deformation
    svf_std_mm: float = 2.0
    svf_smoothness_mm: float = 20.0
    svf_grid_mm: float = 10.0
    svf_steps: int = 5
    # affine
    scale_range: tuple[float, float] = (0.93, 1.07)
    rotation_degrees: float = 8.0
    translation_mm: float = 5.0
    recentre: bool = True
    # contrast
    gm_intensity: tuple[float, float] | None = (0.58, 0.82)
    wm_intensity: tuple[float, float] | None = (0.85, 1.0)
    csf_intensity: tuple[float, float] | None = (0.12, 0.45)
    template_mix: tuple[float, float] = (0.5, 1.0)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    # bias
    bias_amplitude: tuple[float, float] = (0.0, 0.1)
    bias_control_points: int = 5
    # resolution
    slice_thickness_mm: tuple[float, float] = (1.0, 4.0)
    inplane_fwhm_mm: tuple[float, float] = (0.0, 3.0)
    # noise
    noise_std: tuple[float, float] = (0.0, 0.02)

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        def number(name, *, low, high=math.inf, low_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
                raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
            put(name, value)

        def integer(name, *, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            put(name, int(value))

        number("svf_std_mm", low=0.0)
        number("svf_grid_mm", low=0.0, low_open=True)
        number("svf_smoothness_mm", low=0.0, low_open=True)
        if self.svf_smoothness_mm < self.svf_grid_mm:
            raise ValueError(
                f"svf_smoothness_mm ({self.svf_smoothness_mm}) must be >= svf_grid_mm ({self.svf_grid_mm}): "
                "a field rougher than its grid is neither resolved nor diffeomorphic"
            )
        integer("svf_steps", low=1)
        put("scale_range", _range("scale_range", self.scale_range, low=0.0, high=math.inf, low_open=True))
        number("rotation_degrees", low=0.0, high=45.0)
        number("translation_mm", low=0.0)
        if not isinstance(self.recentre, bool):
            raise ValueError(f"recentre must be True or False, got {self.recentre!r}")
        for name in ("gm_intensity", "wm_intensity", "csf_intensity"):
            if getattr(self, name) is not None:
                put(name, _range(name, getattr(self, name), low=0.0, high=10.0))
        put("template_mix", _range("template_mix", self.template_mix, low=0.0, high=1.0))
        put("gamma_range", _range("gamma_range", self.gamma_range, low=0.0, high=10.0, low_open=True))
        put("bias_amplitude", _range("bias_amplitude", self.bias_amplitude, low=0.0, high=1.0))
        if self.bias_amplitude[1] >= 1.0:
            raise ValueError(
                f"bias_amplitude must stay below 1 (the field must stay positive), got {self.bias_amplitude}"
            )
        integer("bias_control_points", low=4)
        put("slice_thickness_mm", _range("slice_thickness_mm", self.slice_thickness_mm, low=0.0, high=50.0))
        if self.slice_thickness_mm != (0.0, 0.0) and self.slice_thickness_mm[0] < 1.0:
            raise ValueError(
                f"slice_thickness_mm must be (0, 0) (off) or start at 1 mm, the template's voxel size; "
                f"got {self.slice_thickness_mm}"
            )
        put("inplane_fwhm_mm", _range("inplane_fwhm_mm", self.inplane_fwhm_mm, low=0.0, high=50.0))
        put("noise_std", _range("noise_std", self.noise_std, low=0.0, high=1.0))

    # Which families act: decided from the config alone (static under jit).
    @property
    def enabled(self) -> tuple[str, ...]:
        """The families that are on, in :data:`FAMILIES` order."""
        on = {
            "deformation": self.svf_std_mm > 0,
            "affine": self.scale_range != (1.0, 1.0) or self.rotation_degrees > 0 or self.translation_mm > 0,
            "contrast": self._tissue_on or self.gamma_range != (1.0, 1.0),
            "bias": self.bias_amplitude[1] > 0,
            "resolution": self.slice_thickness_mm[1] > 0 or self.inplane_fwhm_mm[1] > 0,
            "noise": self.noise_std[1] > 0,
        }
        return tuple(f for f in FAMILIES if on[f])

    @property
    def _tissue_on(self) -> bool:
        return any(getattr(self, n) is not None for n in ("gm_intensity", "wm_intensity", "csf_intensity"))

    def without(self, *families: str) -> SynthConfig:
        """This config with the named families switched off."""
        return dataclasses.replace(self, **off_fields(*families))

    @classmethod
    def only(cls, *families: str) -> SynthConfig:
        """The default config with every family but the named ones off (``only()``: all off)."""
        _check_families(families)
        return cls().without(*(f for f in FAMILIES if f not in families))


def off_fields(*families: str) -> dict[str, Any]:
    """The `SynthConfig` fields (and values) that switch the named families off."""
    _check_families(families)
    return {k: v for f in families for k, v in _OFF[f].items()}


def _check_families(families) -> None:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown augmentation families {unknown}; known: {list(FAMILIES)}")


# ----------------------------------------------------------------------------
# The template, sampled on the output grid


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
    volumes = {name: brain_mri._read_volume(str(path)) for name, path in paths.items()}
    for name in ("gm", "wm"):
        if volumes[name].shape != volumes["t1"].shape or not np.allclose(
            volumes[name].affine, volumes["t1"].affine, atol=1e-3
        ):
            raise ValueError(f"{paths[name]}: not on the grid of {paths['t1']}")
    source = str(paths["t1"])
    display = {}
    for name, volume in volumes.items():
        display[name], spacing = brain_mri._display_axes(volume.array, volume.affine, volume.spacing, source)
    scaled = brain_mri._scale(display["t1"], source)
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
    window, _ = brain_mri._square_window(brain_stack.any(axis=0), in_plane_spacing, margin_mm)
    volume = np.stack([brain_mri._crop_resize(c, window, size) for c in channels], axis=-1)
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
    reference_quantile = jnp.quantile(jnp.asarray(values[:, 0]), _QUANTILE)

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

# ----------------------------------------------------------------------------
# Fields: interpolation, velocity, scaling and squaring


def _sample(field: Array, points: Array, *, mode: str, cval: float = 0.0) -> Array:
    """Linear interpolation of ``field [*S, C]`` at ``points [..., D]`` (index units): ``[..., C]``."""
    coords = [points[..., d] for d in range(points.shape[-1])]
    return jax.vmap(
        lambda f: map_coordinates(f, coords, order=1, mode=mode, cval=cval), in_axes=-1, out_axes=-1
    )(field)


def _lead(vector: ArrayLike, ndim: int) -> Array:
    """A ``[C]`` vector shaped to broadcast against a ``[..., C]`` array of rank ``ndim``."""
    vector = jnp.asarray(vector)
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def sample_velocity(key: Array, shape, *, std: ArrayLike, smoothness: float, dtype=jnp.float32) -> Array:
    """A random smooth velocity field: Gaussian-smoothed white noise.

    White noise ``N(0, 1)`` on the grid is convolved along each axis with a
    Gaussian of ``smoothness`` nodes (weights renormalised near the edges)
    and divided by its pointwise standard deviation, so every component is
    ``N(0, std^2)`` at every node and correlated over about ``smoothness``.

    Args:
        key: PRNG key.
        shape: the grid, ``D`` ints.
        std: standard deviation of each component, in nodes.
        smoothness: Gaussian sigma of the smoothing, in nodes (> 0).
        dtype: float dtype.

    Returns:
        ``[*shape, D]`` velocity in nodes (component ``d`` along axis ``d``).
    """
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1 or not smoothness > 0:
        raise ValueError(f"need a non-empty grid and smoothness > 0, got {shape}, {smoothness}")
    ndim = len(shape)
    field = jax.random.normal(key, (*shape, ndim), dtype)
    norm = np.ones(shape)
    for axis, n in enumerate(shape):
        d = np.arange(n, dtype=np.float64)
        kernel = np.exp(-0.5 * ((d[:, None] - d[None, :]) / smoothness) ** 2)
        kernel /= kernel.sum(axis=1, keepdims=True)
        moved = jnp.tensordot(jnp.asarray(kernel, dtype), jnp.moveaxis(field, axis, 0), axes=(1, 0))
        field = jnp.moveaxis(moved, 0, axis)
        norm = norm * np.sqrt((kernel**2).sum(axis=1)).reshape([n if b == axis else 1 for b in range(ndim)])
    return field * jnp.asarray(1.0 / norm, dtype)[..., None] * std


def integrate_velocity(velocity: ArrayLike, *, steps: int) -> Array:
    """Integrates a stationary velocity field by scaling and squaring.

    The flow of ``v`` for unit time is ``exp(v) = (exp(v / 2^T))^(2^T)``:
    starting from the small displacement ``u = v / 2^T``, the map
    ``x -> x + u(x)`` is composed with itself ``T`` times,
    ``u <- u + u o (id + u)`` (linear interpolation, edge values extended
    beyond the grid). The result is a diffeomorphism when ``v / 2^T`` is
    small against the grid (positive Jacobian, `jacobian_determinant`), and
    ``exp(-v)`` is its inverse up to interpolation error.

    Args:
        velocity: ``[*S, D]``, in grid nodes (component ``d`` along axis
            ``d``).
        steps: ``T >= 0``, a Python int.

    Returns:
        ``[*S, D]`` displacement in nodes: the map is ``x -> x + u(x)``.

    References:
        Arsigny et al., MICCAI 2006; Ashburner, NeuroImage 38 (2007).
    """
    velocity = jnp.asarray(velocity)
    if not jnp.issubdtype(velocity.dtype, jnp.floating):
        velocity = velocity.astype(jnp.float32)
    *shape, ndim = velocity.shape
    if ndim != len(shape):
        raise ValueError(f"velocity must be [*S, D] with D = len(S), got shape {velocity.shape}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    grid = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=velocity.dtype) for n in shape), indexing="ij"), axis=-1)

    def square(_, u):
        return u + _sample(u, grid + u, mode="nearest")

    return jax.lax.fori_loop(0, int(steps), square, velocity / 2.0 ** int(steps))


def jacobian_determinant(displacement: ArrayLike) -> Array:
    """Determinant of the Jacobian of ``x -> x + u(x)`` on its grid.

    Derivatives by central differences (one-sided at the edges), in nodes.

    Args:
        displacement: ``[*S, D]`` in nodes, each of the ``D`` axes of
            length >= 2.

    Returns:
        ``[*S]``: > 0 where the map preserves orientation (no folding).
    """
    u = jnp.asarray(displacement)
    *shape, ndim = u.shape
    rows = []
    for i in range(ndim):
        grads = jnp.gradient(u[..., i])
        grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
        rows.append(jnp.stack(grads, axis=-1))
    jacobian = jnp.stack(rows, axis=-2)  # [*S, D, D]: d u_i / d x_j
    eye = jnp.eye(ndim, dtype=u.dtype).reshape((1,) * len(shape) + (ndim, ndim))
    return jnp.linalg.det(eye + jacobian)


# ----------------------------------------------------------------------------
# One subject's parameters


class _Spatial(NamedTuple):
    linear: Array  # [3, 3], scanner -> template: S^-1 R^T
    forward: Array  # [3, 3], template -> scanner: R S
    shift: Array  # [3], mm
    displacement: Array | None  # [*G, 3], mm, the pull-back's nonlinear part (exp(v))
    inverse: Array | None  # [*G, 3], mm, exp(-v)
    scale: Array  # [3]
    degrees: Array  # [3]


def _grid_shape(template: SynthTemplate, config: SynthConfig) -> tuple[int, ...]:
    extent = [(n - 1) * s for n, s in zip(template.shape, template.spacing, strict=True)]
    return tuple(int(math.ceil(e / config.svf_grid_mm)) + 1 for e in extent)


def _rotation(radians: Array) -> Array:
    """``R_0 R_1 R_2``, ``R_a`` the rotation by ``radians[a]`` about axis ``a``."""
    out = jnp.eye(3, dtype=radians.dtype)
    for axis in range(3):
        i, j = (k for k in range(3) if k != axis)
        c, s = jnp.cos(radians[axis]), jnp.sin(radians[axis])
        r = jnp.eye(3, dtype=radians.dtype).at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)
        out = out @ r
    return out


def _draw_spatial(keys, template: SynthTemplate, config: SynthConfig) -> _Spatial:
    dtype = template.volume.dtype
    k_scale, k_angle, k_shift = jax.random.split(keys["affine"], 3)
    scale = jax.random.uniform(k_scale, (3,), dtype, *config.scale_range)
    degrees = jax.random.uniform(k_angle, (3,), dtype, -config.rotation_degrees, config.rotation_degrees)
    shift = jax.random.uniform(k_shift, (3,), dtype, -config.translation_mm, config.translation_mm)
    rotation = _rotation(jnp.deg2rad(degrees))
    linear = (rotation / _lead(scale, 2)).T  # S^-1 R^T
    forward = rotation * _lead(scale, 2)  # R S
    displacement = inverse = None
    if "deformation" in config.enabled:
        g = config.svf_grid_mm
        velocity = sample_velocity(
            keys["deformation"],
            _grid_shape(template, config),
            std=config.svf_std_mm / g,
            smoothness=config.svf_smoothness_mm / g,
            dtype=dtype,
        )
        displacement = integrate_velocity(velocity, steps=config.svf_steps) * g
        inverse = integrate_velocity(-velocity, steps=config.svf_steps) * g
    return _Spatial(linear, forward, shift, displacement, inverse, scale, degrees)


def _pull_back(x: Array, spatial: _Spatial, template: SynthTemplate, config: SynthConfig) -> Array:
    """Scanner point ``x [..., 3]`` (mm) -> template point: ``phi(c + S^-1 R^T (x - c - t))``."""
    centre = _lead(jnp.asarray(template.rotation_centre, x.dtype), x.ndim)
    y = centre + jnp.einsum("...j,ij->...i", x - centre - _lead(spatial.shift, x.ndim), spatial.linear)
    if spatial.displacement is not None:
        y = y + _sample(spatial.displacement, y / config.svf_grid_mm, mode="nearest")
    return y


def _push_forward(y: Array, spatial: _Spatial, template: SynthTemplate, config: SynthConfig) -> Array:
    """Template point ``y [..., 3]`` (mm) -> scanner point (the inverse of `_pull_back`)."""
    if spatial.inverse is not None:
        y = y + _sample(spatial.inverse, y / config.svf_grid_mm, mode="nearest")
    centre = _lead(jnp.asarray(template.rotation_centre, y.dtype), y.ndim)
    return centre + _lead(spatial.shift, y.ndim) + jnp.einsum("...j,ij->...i", y - centre, spatial.forward)


def _window(spatial: _Spatial | None, template: SynthTemplate, config: SynthConfig):
    """The subject's square field of view: (side / template side, centre ``[2]`` in mm)."""
    _, h, w = template.shape
    _, s_r, s_c = template.spacing
    dtype = template.volume.dtype
    centre = jnp.asarray([(h - 1) / 2 * s_r, (w - 1) / 2 * s_c], dtype)
    if spatial is None or not config.recentre:
        return jnp.ones((), dtype), centre
    # As load_brain_mri: the brain's in-plane bounding box over the whole
    # volume, its larger side plus the margin, centred.
    points = _push_forward(template.boundary_points, spatial, template, config)[:, 1:]
    lo, hi = points.min(axis=0), points.max(axis=0)
    side_offset, *centre_offset = template.window_offset
    side = jnp.max(hi - lo) + side_offset
    return side / (h * s_r), (lo + hi) / 2 + jnp.asarray(centre_offset, dtype)


class _Contrast(NamedTuple):
    weights: Array  # [3], GM, WM, CSF
    mix: Array
    gamma: Array


def _draw_contrast(key: Array, template: SynthTemplate, config: SynthConfig) -> _Contrast:
    dtype = template.volume.dtype
    keys = jax.random.split(key, 5)
    weights = []
    for i, name in enumerate(("gm_intensity", "wm_intensity", "csf_intensity")):
        bounds = getattr(config, name)
        weights.append(template.tissue_means[i] if bounds is None else jax.random.uniform(keys[i], (), dtype, *bounds))
    mix = jax.random.uniform(keys[3], (), dtype, *config.template_mix)
    # Log-uniform: gamma and 1 / gamma equally likely.
    lo, hi = config.gamma_range
    gamma = jnp.exp(jax.random.uniform(keys[4], (), dtype, math.log(lo), math.log(hi)))
    return _Contrast(jnp.stack(weights), mix, gamma)


def _intensity(values: Array, contrast: _Contrast, template: SynthTemplate, config: SynthConfig) -> Array:
    """Template channels ``[..., 4]`` (t1, gm, wm, brain) -> the subject's intensity ``[...]``."""
    t1 = values[..., 0]
    if "contrast" not in config.enabled:
        return t1
    x = t1
    if config._tissue_on:
        gm, wm, brain = values[..., 1], values[..., 2], values[..., 3]
        csf = jnp.clip(brain - gm - wm, 0.0, None)
        w, w0 = contrast.weights, template.tissue_means
        model = gm * w[0] + wm * w[1] + csf * w[2]
        reference = gm * w0[0] + wm * w0[1] + csf * w0[2]
        # Inside the brain reference >= min(w0) ~ 0.3; outside, t1 is 0.
        ratio = jnp.where(reference > 1e-3, model / jnp.maximum(reference, 1e-3), 1.0)
        x = contrast.mix * t1 * ratio + (1.0 - contrast.mix) * model
    if config.gamma_range != (1.0, 1.0):
        x = jnp.maximum(x, 0.0) ** contrast.gamma
    return x


def _bspline_basis(x: Array, extent: float, n: int) -> Array:
    """Uniform cubic B-splines on ``[0, extent]`` (``n`` of them, knots beyond both ends): ``[..., n]``.

    Non-negative and summing to 1 at every point of ``[0, extent]``
    (points outside are clamped to it).
    """
    h = max(extent, 1e-6) / (n - 3)
    # Control point i sits at (i - 1) h.
    t = jnp.clip(x, 0.0, extent)[..., None] / h + 1.0 - _lead(jnp.arange(n, dtype=x.dtype), x.ndim + 1)
    a = jnp.abs(t)
    return jnp.where(a < 1.0, 2.0 / 3.0 - a**2 + a**3 / 2.0, jnp.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


# ----------------------------------------------------------------------------
# Synthesis


def synth_slices(
    key: Array,
    template: SynthTemplate,
    slice_positions: ArrayLike,
    *,
    config: SynthConfig = SynthConfig(),
) -> dict[str, Any]:
    """Slices of one synthetic subject, drop-in replacements for template slices.

    Pure and jittable (``config`` static); vmap over keys and positions for
    a batch of subjects: ``jax.vmap(lambda k, p: synth_slices(k, template, p,
    config=config))(keys, positions)``. One key is one subject: its slices
    share one deformation, contrast, bias field and acquisition.

    Steps, for each output pixel (scanner frame, mm): the subject's field of
    view (recentred on its brain, see `SynthConfig`) gives its position; the
    spatial transform gives the template point it shows, where the template
    and tissue maps are interpolated (linear; zero outside), averaged over
    the slab (slice thickness) and turned into the subject's intensity
    (contrast); the image is multiplied by the bias field, blurred in-plane,
    scaled so that the subject brain's 99.5th percentile (estimated over
    `SynthTemplate.reference_points`, pushed into the scanner frame for the
    bias field) lands where the template's does, given Rician noise and
    clipped to ``[0, 1]``.

    Args:
        key: PRNG key, one subject.
        template: from `load_synth_template`.
        slice_positions: ``[N]`` slice indices in the template frame (module
            docstring), fractional allowed.
        config: what varies (static).

    Returns:
        A dict of

        * ``"image"``: float32 ``[N, H, W, 1]`` in ``[0, 1]``;
        * ``"brain_mask"``: bool ``[N, H, W]``;
        * ``"gm"``, ``"wm"``, ``"csf"``: float32 ``[N, H, W]``, the deformed
          tissue probabilities (slab-averaged);
        * ``"bias_field"``: float32 ``[N, H, W]``, the multiplicative field
          (ones when off);
        * ``"params"``: the subject's drawn parameters (scalars or ``[3]``):
          ``scale``, ``rotation_degrees``, ``translation_mm`` (per axis),
          ``field_of_view_mm``, ``tissue_intensity`` (GM, WM, CSF),
          ``template_mix``, ``gamma``, ``bias_amplitude``,
          ``slice_thickness_mm``, ``inplane_fwhm_mm``, ``noise_std``,
          ``intensity_scale`` (the factor of the final scaling).
    """
    positions = jnp.asarray(slice_positions)
    if positions.ndim != 1:
        raise ValueError(f"slice_positions must be 1D [N] (vmap for a batch of subjects), got {positions.shape}")
    dtype = template.volume.dtype
    positions = positions.astype(dtype)
    enabled = config.enabled
    keys = dict(zip(FAMILIES, jax.random.split(key, len(FAMILIES)), strict=True))
    nz, h, w = template.shape
    s_z, s_r, s_c = template.spacing
    n = positions.shape[0]

    # Acquisition parameters (drawn whatever is on, so streams stay fixed).
    k_thick, k_fwhm = jax.random.split(keys["resolution"])
    thickness = jax.random.uniform(k_thick, (), dtype, *config.slice_thickness_mm)
    fwhm = jax.random.uniform(k_fwhm, (), dtype, *config.inplane_fwhm_mm)

    # Geometry: the template index each output pixel shows.
    spatial = _draw_spatial(keys, template, config) if {"deformation", "affine"} & set(enabled) else None
    scale, centre = _window(spatial, template, config)
    rows_mm = centre[0] + (jnp.arange(h, dtype=dtype) - (h - 1) / 2) * (s_r * scale)
    cols_mm = centre[1] + (jnp.arange(w, dtype=dtype) - (w - 1) / 2) * (s_c * scale)
    shape = (n, h, w)
    if spatial is None:
        # Exact template indices: every family off returns template pixels.
        index = jnp.stack(
            [
                jnp.broadcast_to(positions[:, None, None], shape),
                jnp.broadcast_to(jnp.arange(h, dtype=dtype)[None, :, None], shape),
                jnp.broadcast_to(jnp.arange(w, dtype=dtype)[None, None, :], shape),
            ],
            axis=-1,
        )
    else:
        x = jnp.stack(
            [
                jnp.broadcast_to((positions * s_z)[:, None, None], shape),
                jnp.broadcast_to(rows_mm[None, :, None], shape),
                jnp.broadcast_to(cols_mm[None, None, :], shape),
            ],
            axis=-1,
        )
        index = _pull_back(x, spatial, template, config) / _lead(jnp.asarray(template.spacing, dtype), 4)
    if config.slice_thickness_mm[1] > 0:
        # Slab average = (integral to its top - integral to its bottom) / thickness;
        # cumulative entry k sits at slice coordinate k - 1/2, constant beyond the ends.
        half = 0.5 * jnp.maximum(thickness, s_z) / s_z  # slices
        ends = []
        for sign in (1.0, -1.0):
            z = jnp.clip(index[..., 0] + 0.5 + sign * half, 0.0, float(nz))
            at = jnp.stack([z, index[..., 1], index[..., 2]], axis=-1)
            ends.append(_sample(template.cumulative, at, mode="constant"))
        values = (ends[0] - ends[1]) / (2.0 * half * s_z)
    else:
        values = _sample(template.volume, index, mode="constant")  # [N, H, W, 4]

    contrast = _draw_contrast(keys["contrast"], template, config)
    image = _intensity(values, contrast, template, config)

    # Bias field, in the scanner frame over the template's box.
    k_coef, k_amp = jax.random.split(keys["bias"])
    amplitude = jax.random.uniform(k_amp, (), dtype, *config.bias_amplitude)
    nc = config.bias_control_points
    coefficients = jax.random.uniform(k_coef, (nc, nc, nc), dtype, -1.0, 1.0)
    coefficients = coefficients / jnp.max(jnp.abs(coefficients))
    extent = [(m - 1) * s for m, s in zip(template.shape, template.spacing, strict=True)]
    bias_on = "bias" in enabled
    if bias_on:
        # The field's peak over the brain (the reference points, in the
        # scanner frame) is scaled to 1, as the bias_field anomaly scales its
        # own over the object; clipping keeps it in [-1, 1] elsewhere.
        p = template.reference_points
        if spatial is not None:
            p = _push_forward(p, spatial, template, config)
        g_reference = jnp.einsum(
            "ijk,mi,mj,mk->m", coefficients, *(_bspline_basis(p[:, a], extent[a], nc) for a in range(3))
        )
        peak = jnp.maximum(jnp.max(jnp.abs(g_reference)), 1e-6)
        g = jnp.einsum(
            "ijk,ni,hj,wk->nhw",
            coefficients,
            _bspline_basis(positions * s_z, extent[0], nc),
            _bspline_basis(rows_mm, extent[1], nc),
            _bspline_basis(cols_mm, extent[2], nc),
        )
        bias = 1.0 + amplitude * jnp.clip(g / peak, -1.0, 1.0)
        image = image * bias
    else:
        bias = jnp.ones((n, h, w), dtype)

    if config.inplane_fwhm_mm[1] > 0:
        sigma = fwhm / _FWHM_PER_SIGMA / (0.5 * (s_r + s_c) * scale)  # pixels
        image = jax.vmap(lambda im: gaussian_blur(im, sigma=sigma))(image)

    # Scale as brain_mri does: the brain's 99.5th percentile to the template's.
    intensity_scale = jnp.ones((), dtype)
    if "contrast" in enabled or bias_on:
        reference = _intensity(template.reference_values, contrast, template, config)
        if bias_on:
            reference = reference * (1.0 + amplitude * g_reference / peak)
        intensity_scale = template.reference_quantile / jnp.maximum(jnp.quantile(reference, _QUANTILE), 1e-6)
        image = image * intensity_scale

    k_sigma, k_noise = jax.random.split(keys["noise"])
    sigma_noise = jax.random.uniform(k_sigma, (), dtype, *config.noise_std)
    if "noise" in enabled:
        # One draw for the stack: rician_noise is per pixel, the slices can be rows of one image.
        image = rician_noise(k_noise, image.reshape(n * h, w), sigma=sigma_noise).reshape(n, h, w)

    identity3 = jnp.ones((3,), dtype)
    params = {
        "scale": identity3 if spatial is None else spatial.scale,
        "rotation_degrees": 0 * identity3 if spatial is None else spatial.degrees,
        "translation_mm": 0 * identity3 if spatial is None else spatial.shift,
        "field_of_view_mm": h * s_r * scale,
        "tissue_intensity": contrast.weights if config._tissue_on else template.tissue_means,
        "template_mix": contrast.mix if config._tissue_on else jnp.ones((), dtype),
        "gamma": contrast.gamma if config.gamma_range != (1.0, 1.0) else jnp.ones((), dtype),
        "bias_amplitude": amplitude if bias_on else jnp.zeros((), dtype),
        "slice_thickness_mm": thickness,
        "inplane_fwhm_mm": fwhm,
        "noise_std": sigma_noise,
        "intensity_scale": intensity_scale,
    }
    gm, wm, brain = values[..., 1], values[..., 2], values[..., 3]
    return {
        "image": jnp.clip(image, 0.0, 1.0)[..., None].astype(jnp.float32),
        "brain_mask": brain >= 0.5,
        "gm": gm,
        "wm": wm,
        "csf": jnp.clip(brain - gm - wm, 0.0, None),
        "bias_field": bias,
        "params": params,
    }


def synth_subject(key: Array, template: SynthTemplate, *, config: SynthConfig = SynthConfig()) -> dict[str, Any]:
    """Every slice of one synthetic subject: `synth_slices` at ``0, ..., Z - 1``.

    Returns:
        As `synth_slices` with ``N = Z``: a ``[Z, H, W, 1]`` display-oriented
        volume (slices at the template's spacing) and its maps.
    """
    return synth_slices(key, template, jnp.arange(template.shape[0]), config=config)


# ----------------------------------------------------------------------------
# A pool of synthetic subjects for training


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthSource:
    """Synthetic subjects added to the brain template's training slices (a data-source option).

    ``num_subjects`` subjects are drawn once, each at the template's training
    slice positions (never its validation or test ones), by
    :func:`synth_pool`; the training set is the template's slices and
    theirs. ``jaxmed train --data brain-mri --synth-subjects K`` and the demo
    use it alike.

    Attributes:
        num_subjects: synthetic subjects; 0 = none (the template alone).
        config: what varies between them.
    """

    num_subjects: int = 0
    config: SynthConfig = SynthConfig()

    def __post_init__(self):
        if isinstance(self.num_subjects, bool) or not isinstance(self.num_subjects, (int, np.integer)) or (
                self.num_subjects < 0):
            raise ValueError(f"SynthSource.num_subjects must be an integer >= 0, got {self.num_subjects!r}")
        if isinstance(self.config, dict):
            object.__setattr__(self, "config", SynthConfig(**self.config))
        object.__setattr__(self, "num_subjects", int(self.num_subjects))


def synth_pool(
    key: Array,
    template: SynthTemplate,
    slice_positions: ArrayLike,
    *,
    num_subjects: int,
    config: SynthConfig = SynthConfig(),
    subjects_per_call: int = 4,
) -> np.ndarray:
    """Slices of ``num_subjects`` synthetic subjects at the given positions, as host arrays.

    Subject ``s`` is ``synth_slices(fold_in(key, s), ...)``, so a pool of
    ``K`` subjects is a prefix of one of ``K + m``. Subjects are made
    ``subjects_per_call`` at a time (vmapped; one compilation).

    Args:
        key: PRNG key.
        template: from `load_synth_template`.
        slice_positions: ``[N]`` template slice indices.
        num_subjects: ``K >= 0``.
        config: what varies.
        subjects_per_call: subjects per compiled call.

    Returns:
        float32 ``[K * N, H, W, 1]``, subject after subject.
    """
    positions = jnp.asarray(slice_positions, template.volume.dtype)
    h, w = template.shape[1:]
    if num_subjects == 0:
        return np.zeros((0, h, w, 1), np.float32)
    size = min(subjects_per_call, num_subjects)
    out = []
    for start in range(0, num_subjects, size):
        images = _pool_chunk(key, start + jnp.arange(size), template, positions, config=config)
        out.append(np.asarray(images)[: num_subjects - start].reshape(-1, h, w, 1))
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames="config")
def _pool_chunk(key, subjects, template, positions, *, config):
    return jax.vmap(lambda s: synth_slices(jax.random.fold_in(key, s), template, positions, config=config)["image"])(
        subjects)
