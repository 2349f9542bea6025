"""What varies between synthetic subjects: `SynthConfig` and its six families."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["FAMILIES", "SynthConfig", "off_fields"]

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
