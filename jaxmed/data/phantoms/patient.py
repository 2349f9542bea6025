"""The physical-space patient of the MRI phantoms: anatomy in LPS millimetres, lesions with grades.

A patient (`PatientConfig`, `sample_patient`) is drawn in LPS millimetres,
independent of any grid, and rendered at voxel centres (`render_patient`), so
one anatomy sampled on two grids is the same anatomy. Each lesion has drawn
properties (size, ADC, T2 darkening, diffusion kurtosis, zone) and a grade 1-5
computed from them by a fixed rule (`lesion_score`, `lesion_grade`); grade >= 2
is clinically significant. BPH nodules in the transition zone are mimics: dark
on T2, only mildly low ADC. Per-lesion truth comes in fixed-size padded arrays
(`lesion_records`) so that samples vmap. `sample_physical_mri` is the physical
mode of `jaxmed.data.phantoms.mri.sample_mri`; acquisition sites (scanner grids
per modality, misregistration, noise, bias) are in
:mod:`jaxmed.data.phantoms.exams`.

References:
    Turkbey B. et al. Prostate Imaging Reporting and Data System version 2.1.
    Eur Urol 76(3):340-351, 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms._draw import (
    grid_ellipsoid_form,
    irwin_hall_normal,
    random_words,
    rician,
    rotated_ellipsoid_form,
    rotation_matrix,
    uniform,
    wave_field_grid,
)
from jaxmed.data.phantoms.tissues import EXAM_TISSUES

if TYPE_CHECKING:
    from jaxmed.data.phantoms.mri import MRIPhantomConfig

__all__ = [
    "ADC_POINTS",
    "DWI_POINTS",
    "GRADE_SCORES",
    "REFERENCE_B",
    "REFERENCE_TE_MS",
    "SIGNIFICANT_GRADE",
    "VOLUME_POINTS_MM3",
    "PatientConfig",
    "axial_affine",
    "diffusion_signal",
    "lesion_dwi_contrast",
    "lesion_grade",
    "lesion_records",
    "lesion_score",
    "render_patient",
    "sample_patient",
    "sample_physical_mri",
]


# The grade rule (`lesion_score`, `lesion_grade`). Points: one for each ADC
# threshold the lesion's ADC is below (1e-3 mm^2/s), one for each volume
# threshold its volume reaches (mm^3), one for each DWI-contrast threshold
# it reaches; the grade is 1 plus the number of score thresholds reached.
ADC_POINTS = (1.2, 1.0, 0.85, 0.7)
VOLUME_POINTS_MM3 = (100.0, 500.0, 1500.0)
DWI_POINTS = (1.5, 2.5)
GRADE_SCORES = (4, 6, 7, 8)
SIGNIFICANT_GRADE = 2
# b-value (s/mm^2) at which `lesion_dwi_contrast` is defined, whatever the site.
REFERENCE_B = 1400.0
# s0 is the T2-weighted signal at this echo time (ms), unit proton density.
REFERENCE_TE_MS = 90.0

_LESION_WORDS = 12
_NODULE_WORDS = 13
_CANDIDATES = 12
_LESION_ADC = (0.6, 1.4)  # drawn range, 1e-3 mm^2/s, before the cap below the host zone
# T2: s0 = host s0 * (1 - darkening); the TZ is darker already, its cancers less so relative to it.
_LESION_DARKENING = {"peripheral_zone": (0.25, 0.6), "transition_zone": (0.1, 0.35)}
_LESION_KURTOSIS = (0.1, 1.0)
_NODULE_RADIUS_MM = (3.0, 8.0)
_NODULE_ADC = (0.95, 1.15)
_NODULE_S0 = (0.3, 0.45)


def lesion_score(adc: jax.Array, volume_mm3: jax.Array, dwi_contrast: jax.Array) -> jax.Array:
    """The suspicion score of a lesion, 0..9 (int32), elementwise.

    ``score = #{t in ADC_POINTS: adc < t} + #{t in VOLUME_POINTS_MM3:
    volume_mm3 >= t} + #{t in DWI_POINTS: dwi_contrast >= t}``, with
    ``ADC_POINTS = (1.2, 1.0, 0.85, 0.7)`` (1e-3 mm^2/s), ``VOLUME_POINTS_MM3
    = (100, 500, 1500)`` and ``DWI_POINTS = (1.5, 2.5)``.
    """
    adc, volume_mm3, dwi_contrast = (jnp.asarray(v, jnp.float32) for v in (adc, volume_mm3, dwi_contrast))
    score = sum((adc < t).astype(jnp.int32) for t in ADC_POINTS)
    score += sum((volume_mm3 >= t).astype(jnp.int32) for t in VOLUME_POINTS_MM3)
    score += sum((dwi_contrast >= t).astype(jnp.int32) for t in DWI_POINTS)
    return score


def lesion_grade(adc: jax.Array, volume_mm3: jax.Array, dwi_contrast: jax.Array) -> jax.Array:
    """The ISUP-like grade group of a lesion, 1..5 (int32), from its properties, elementwise.

    The rule: ``grade = 1 + #{t in (4, 6, 7, 8): score >= t}`` with ``score
    = lesion_score(adc, volume_mm3, dwi_contrast)`` (0..9). Lower ADC, a
    larger volume and a brighter DWI all raise it. A lesion is clinically
    significant at grade >= 2 (`SIGNIFICANT_GRADE`, as csPCa is ISUP >= 2 in
    PI-CAI). Examples: ADC 1.3, 80 mm^3, DWI contrast 1.2 -> score 0, grade
    1; ADC 1.1, 600 mm^3, contrast 1.6 -> 1 + 2 + 1 = 4, grade 2; ADC 0.9,
    600 mm^3, contrast 2.0 -> 2 + 2 + 1 = 5, grade 2; ADC 0.8, 1000 mm^3,
    contrast 2.6 -> 3 + 2 + 2 = 7, grade 4; ADC 0.65, 2000 mm^3, contrast
    3.0 -> 4 + 3 + 2 = 9, grade 5. With the default `PatientConfig` about a
    third of the lesions are grade 1, a third grade 2, and 12%, 13%, 7%
    grades 3-5; 40% of patients have no lesion, 14% only grade 1 lesions.

    Args:
        adc: apparent diffusion coefficient of the lesion, 1e-3 mm^2/s.
        volume_mm3: lesion volume, mm^3.
        dwi_contrast: lesion high-b signal over its host zone's, at b =
            `REFERENCE_B` (see `lesion_dwi_contrast`).
    """
    score = lesion_score(adc, volume_mm3, dwi_contrast)
    return 1 + sum((score >= t).astype(jnp.int32) for t in GRADE_SCORES)


def diffusion_signal(s0: jax.Array, adc: jax.Array, kurtosis: jax.Array, *, b_value) -> jax.Array:
    """Diffusion-weighted signal ``s0 exp(-b D + (b D)^2 K / 6)`` (kurtosis model), elementwise.

    ``b`` in s/mm^2, ``D = adc`` in 1e-3 mm^2/s, ``K`` dimensionless (0 for
    the normal tissues: mono-exponential). Lesions have ``K > 0``: restricted
    diffusion keeps them brighter at high b than their ADC alone predicts.
    Monotone in b while ``b D K < 3``, which holds for every drawn lesion up
    to b = 2000 s/mm^2.
    """
    bd = 1e-3 * b_value * adc
    return s0 * jnp.exp(-bd + jnp.square(bd) * kurtosis / 6.0)


def lesion_dwi_contrast(s0, adc, kurtosis, host_s0, host_adc) -> jax.Array:
    """High-b signal of a lesion over its host zone's, noise-free, at b = `REFERENCE_B` and TE = `REFERENCE_TE_MS`."""
    return diffusion_signal(s0, adc, kurtosis, b_value=REFERENCE_B) / diffusion_signal(
        host_s0, host_adc, 0.0, b_value=REFERENCE_B
    )


def _pair(name: str, value, *, lo: float = 0.0) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not lo < pair[0] <= pair[1]:
        raise ValueError(f"{name} must be (min, max) with {lo:g} < min <= max, got {value}")
    return pair


@dataclass(frozen=True, kw_only=True)
class PatientConfig:
    """A patient of the physical-space pelvic phantom (`sample_patient`): anatomy in mm, lesions, mimics.

    Anatomy, in LPS millimetres around the scanner's isocentre (+x Left, +y
    Posterior, +z Superior): the prostate, an ellipsoid tilted by up to 15
    degrees about the left-right axis (and 5 and 8 about the others),
    centred within ``position_jitter_mm`` of the isocentre; its transition
    zone (TZ) an ellipsoid shifted anteriorly, the rest peripheral zone (PZ);
    the rectum behind it (gas: no signal); the bladder above it; pelvic soft
    tissue around.

    Lesions: with probability ``lesion_probability`` a patient has 1 to
    ``max_lesions`` lesion candidates (uniform), kept where they do not
    overlap an earlier one. Each draws a latent aggressiveness ``a ~ U(0,
    1)`` and, from ``a`` and its own noise: ADC ``1.4 - 0.8 (0.7 a + 0.3
    u)`` (capped at 0.95 of the host zone's ADC), mean semi-axis
    ``lesion_radius_mm`` interpolated at ``0.6 a + 0.4 u``, T2 darkening
    (s0 = host s0 times 0.75..0.4 in the PZ, 0.9..0.65 in the TZ, which is
    darker already), diffusion kurtosis 0.1..1.0, a random
    orientation; it lies in the PZ with probability ``pz_fraction``, else in
    the TZ. Its grade is then computed from its properties by `lesion_grade`
    (never drawn), so that grade 1 lesions are lesions too, only less marked.
    Lesions may reach beyond the prostate (extraprostatic extension).

    Mimics: 0 to ``max_nodules`` BPH nodules (uniform) inside the TZ, dark on
    T2 (s0 0.30-0.45) with only a mildly reduced ADC (0.95-1.15 against the
    TZ's 1.25), radius 3-8 mm. They have no grade and are not lesions.

    Attributes:
        lesion_probability: probability that a patient has lesions (0: a
            benign cohort).
        max_lesions: lesion slots (a static shape), >= 1.
        lesion_radius_mm: ``(min, max)`` mean semi-axis of a lesion, mm.
        pz_fraction: probability that a lesion arises in the PZ.
        max_nodules: BPH nodule slots, >= 0.
        organ_semi_axes_mm: prostate semi-axes (left-right, anterior-
            posterior, cranio-caudal), mm, each varied by +-15%.
        position_jitter_mm: largest offset of the prostate from the
            isocentre along each axis, mm.
        texture_strength: relative std of the smooth multiplicative texture
            of s0 and ADC.
        texture_length_mm: correlation length of the texture, mm.
        texture_waves: plane waves summed for each texture field (random
            Fourier features).
    """

    lesion_probability: float = 0.6
    max_lesions: int = 3
    lesion_radius_mm: tuple[float, float] = (2.5, 10.5)
    pz_fraction: float = 0.7
    max_nodules: int = 3
    organ_semi_axes_mm: tuple[float, float, float] = (22.0, 16.0, 19.0)
    position_jitter_mm: float = 4.0
    texture_strength: float = 0.08
    texture_length_mm: float = 5.0
    texture_waves: int = 16

    def __post_init__(self):
        object.__setattr__(self, "lesion_radius_mm", _pair("lesion_radius_mm", self.lesion_radius_mm))
        object.__setattr__(self, "organ_semi_axes_mm", tuple(float(v) for v in self.organ_semi_axes_mm))
        if not 0.0 <= self.lesion_probability <= 1.0:
            raise ValueError(f"lesion_probability must be in [0, 1], got {self.lesion_probability}")
        if not 0.0 <= self.pz_fraction <= 1.0:
            raise ValueError(f"pz_fraction must be in [0, 1], got {self.pz_fraction}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {self.max_lesions}")
        if self.max_nodules < 0:
            raise ValueError(f"max_nodules must be >= 0, got {self.max_nodules}")
        if len(self.organ_semi_axes_mm) != 3 or min(self.organ_semi_axes_mm) <= 0:
            raise ValueError(f"organ_semi_axes_mm must be 3 positive lengths, got {self.organ_semi_axes_mm}")
        if self.lesion_radius_mm[1] > 0.8 * min(self.organ_semi_axes_mm):
            raise ValueError(
                f"lesion_radius_mm max {self.lesion_radius_mm[1]} mm must be <= 0.8 of the smallest "
                f"organ semi-axis ({min(self.organ_semi_axes_mm)} mm)"
            )
        if self.position_jitter_mm < 0 or self.texture_strength < 0:
            raise ValueError("position_jitter_mm and texture_strength must be >= 0")
        if self.texture_length_mm <= 0 or self.texture_waves < 1:
            raise ValueError("texture_length_mm must be > 0 and texture_waves >= 1")


def _lerp(u, bounds):
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _ball(direction_words, radius_u, radius):
    """Points uniform in a ball of ``radius`` (unit-free) from words ``[..., 2]`` and uniforms ``[...]``: ``[..., 3]``."""
    # Uniform on the sphere: cos(polar angle) and azimuth uniform (Archimedes).
    u = uniform(direction_words)
    cos_polar = 2.0 * u[..., 0] - 1.0
    sin_polar = jnp.sqrt(jnp.maximum(1.0 - jnp.square(cos_polar), 0.0))
    azimuth = 2.0 * jnp.pi * u[..., 1]
    direction = jnp.stack([sin_polar * jnp.cos(azimuth), sin_polar * jnp.sin(azimuth), cos_polar], axis=-1)
    return direction * (radius * radius_u[..., None] ** (1.0 / 3.0))


def sample_patient(key: jax.Array, config: PatientConfig) -> dict[str, jax.Array]:
    """Draws one patient: anatomy in LPS mm and lesions with their truth, independent of any scanner.

    Pure and jittable (``config`` static). Render it on any grid with
    `render_patient`; `sample_mri` (physical mode) and
    `jaxmed.data.phantoms.exams.sample_exam` do.

    Returns:
        A dict of arrays (``L = config.max_lesions``, ``N =
        config.max_nodules``), positions in LPS mm, rotations ``[3, 3]``
        with the axes of an ellipsoid as columns:

        * ``organ_centre, organ_semi_axes [3]``, ``organ_rotation [3, 3]``;
          ``tz_centre, tz_semi_axes [3]`` (TZ shares the organ's rotation);
          ``rectum_centre, rectum_semi_axes, bladder_centre,
          bladder_semi_axes, body_centre, body_semi_axes [3]``;
        * ``lesion_exists`` bool ``[L]``; ``lesion_centre_mm,
          lesion_semi_axes_mm [L, 3]``; ``lesion_rotation [L, 3, 3]``;
          ``lesion_s0, lesion_adc`` (1e-3 mm^2/s), ``lesion_kurtosis``,
          ``lesion_volume_mm3`` (of the ellipsoid), ``lesion_dwi_contrast``
          (`lesion_dwi_contrast`) float32 ``[L]``; ``lesion_zone`` int32
          ``[L]`` (label of the host zone at the centre: 2 PZ, 3 TZ);
          ``lesion_grade`` int32 ``[L]`` (`lesion_grade`; 0 where no lesion);
          ``lesion_significant`` bool ``[L]`` (grade >= 2);
        * ``nodule_exists [N]``, ``nodule_centre_mm, nodule_semi_axes_mm
          [N, 3]``, ``nodule_rotation [N, 3, 3]``, ``nodule_s0, nodule_adc,
          nodule_volume_mm3 [N]``;
        * ``texture_frequencies [2, K, 3]`` (radians / mm),
          ``texture_phases [2, K]``: the s0 and ADC texture fields.
    """
    num_l, num_n, k = config.max_lesions, config.max_nodules, config.texture_waves
    words = random_words(
        key,
        {
            "geometry": (20,),
            "lesion": (num_l, _LESION_WORDS),
            "candidates": (num_l, _CANDIDATES, 3),
            "nodule": (max(num_n, 1), _NODULE_WORDS),
            "texture_frequencies": (k, 3),
            "texture_phases": (2, k),
        },
    )
    g = uniform(words["geometry"])
    pm = 2.0 * g - 1.0  # in [-1, 1)

    organ_centre = config.position_jitter_mm * pm[0:3]
    organ_semi = jnp.asarray(config.organ_semi_axes_mm) * (1.0 + 0.15 * pm[3:6])
    organ_rotation = rotation_matrix(jnp.deg2rad(jnp.asarray([15.0, 5.0, 8.0]) * pm[6:9]))
    # TZ: smaller, shifted anteriorly (-y) along the organ's own AP axis.
    tz_semi = organ_semi * (0.5 + 0.15 * g[9])
    tz_centre = organ_centre - organ_rotation[:, 1] * (0.15 + 0.15 * g[10]) * organ_semi[1]
    # Rectum: a gas-filled tube behind the prostate's posterior edge (3-5 mm of wall between).
    rectum_semi = jnp.stack([14.0 + 6.0 * g[11], 8.0 + 6.0 * g[12], jnp.float32(1e4)])
    rectum_centre = organ_centre + jnp.stack([0.0, organ_semi[1] + 3.0 + 2.0 * g[13] + rectum_semi[1], 0.0])
    # Bladder: above the base, which it indents a little.
    bladder_semi = jnp.stack([30.0 + 10.0 * g[14], 25.0 + 5.0 * g[15], 20.0 + 10.0 * g[16]])
    bladder_centre = organ_centre + jnp.stack([0.0, -8.0, organ_semi[2] + 0.85 * bladder_semi[2]])
    body_semi = jnp.asarray([170.0, 120.0, 1e4], jnp.float32)
    body_centre = organ_centre + jnp.asarray([0.0, -30.0, 0.0], jnp.float32)

    # Lesions.
    has_lesion = g[17] < config.lesion_probability
    count = jnp.minimum(jnp.floor(g[18] * num_l), num_l - 1) + 1
    exists = has_lesion & (jnp.arange(num_l) < count)
    u = uniform(words["lesion"])
    a = u[:, 0]
    # Candidate centres uniform in the inner 75% of the organ; the first in
    # the wanted zone is taken (the first of all if none is).
    cand_local = _ball(words["candidates"][..., :2], uniform(words["candidates"][..., 2]), 0.75)
    cand = organ_centre[None, None] + (cand_local * organ_semi[None, None]) @ organ_rotation.T  # [L, C, 3]
    in_tz = rotated_ellipsoid_form(cand, tz_centre, tz_semi, organ_rotation) <= 1.0
    want_tz = u[:, 11] >= config.pz_fraction
    match = in_tz == want_tz[:, None]
    pick = jnp.where(match.any(axis=1), jnp.argmax(match, axis=1), 0)
    centre = jnp.take_along_axis(cand, pick[:, None, None], axis=1)[:, 0]
    zone_is_tz = jnp.take_along_axis(in_tz, pick[:, None], axis=1)[:, 0]
    tissues = EXAM_TISSUES
    zone = jnp.where(zone_is_tz, tissues["transition_zone"].label, tissues["peripheral_zone"].label)
    host_s0 = jnp.where(zone_is_tz, tissues["transition_zone"].s0, tissues["peripheral_zone"].s0)
    host_adc = jnp.where(zone_is_tz, tissues["transition_zone"].adc, tissues["peripheral_zone"].adc)

    adc = _LESION_ADC[1] - (_LESION_ADC[1] - _LESION_ADC[0]) * (0.7 * a + 0.3 * u[:, 1])
    adc = jnp.minimum(adc, 0.95 * host_adc)
    radius = _lerp(0.6 * a + 0.4 * u[:, 2], config.lesion_radius_mm)
    semi = radius[:, None] * (1.0 + 0.25 * (2.0 * u[:, 3:6] - 1.0))
    rotation = jax.vmap(rotation_matrix)(jnp.pi * (2.0 * u[:, 6:9] - 1.0))
    darkening = 0.5 * a + 0.5 * u[:, 9]
    pz_dark, tz_dark = _LESION_DARKENING["peripheral_zone"], _LESION_DARKENING["transition_zone"]
    s0 = host_s0 * (1.0 - jnp.where(zone_is_tz, _lerp(darkening, tz_dark), _lerp(darkening, pz_dark)))
    kurtosis = _lerp(0.6 * a + 0.4 * u[:, 10], _LESION_KURTOSIS)
    volume = (4.0 / 3.0) * jnp.pi * jnp.prod(semi, axis=1)
    contrast = lesion_dwi_contrast(s0, adc, kurtosis, host_s0, host_adc)

    # No overlap: a lesion is dropped if its bounding ball meets an earlier kept one's.
    reach = jnp.max(semi, axis=1)
    kept = []
    for i in range(num_l):
        ok = exists[i]
        for j in range(i):
            apart = jnp.linalg.norm(centre[i] - centre[j]) > reach[i] + reach[j] + 1.0
            ok = ok & (~kept[j] | apart)
        kept.append(ok)
    exists = jnp.stack(kept)
    grade = jnp.where(exists, lesion_grade(adc, volume, contrast), 0)

    # BPH nodules, inside the inner 70% of the TZ.
    nu = uniform(words["nodule"])[:num_n]
    n_count = jnp.minimum(jnp.floor(g[19] * (num_n + 1)), num_n)
    n_exists = jnp.arange(num_n) < n_count
    n_local = _ball(words["nodule"][:num_n, :2], nu[:, 3], 0.7)
    n_centre = tz_centre[None] + (n_local * tz_semi[None]) @ organ_rotation.T
    n_semi = _lerp(nu[:, 4], _NODULE_RADIUS_MM)[:, None] * (1.0 + 0.2 * (2.0 * nu[:, 5:8] - 1.0))
    n_rotation = jax.vmap(rotation_matrix)(jnp.pi * (2.0 * nu[:, 8:11] - 1.0))

    return {
        "organ_centre": organ_centre,
        "organ_semi_axes": organ_semi,
        "organ_rotation": organ_rotation,
        "tz_centre": tz_centre,
        "tz_semi_axes": tz_semi,
        "rectum_centre": rectum_centre,
        "rectum_semi_axes": rectum_semi,
        "bladder_centre": bladder_centre,
        "bladder_semi_axes": bladder_semi,
        "body_centre": body_centre,
        "body_semi_axes": body_semi,
        "lesion_exists": exists,
        "lesion_centre_mm": centre,
        "lesion_semi_axes_mm": semi,
        "lesion_rotation": rotation,
        "lesion_s0": s0,
        "lesion_adc": adc,
        "lesion_kurtosis": kurtosis,
        "lesion_volume_mm3": volume,
        "lesion_dwi_contrast": contrast,
        "lesion_zone": zone.astype(jnp.int32),
        "lesion_grade": grade.astype(jnp.int32),
        "lesion_significant": grade >= SIGNIFICANT_GRADE,
        "nodule_exists": n_exists,
        "nodule_centre_mm": n_centre,
        "nodule_semi_axes_mm": n_semi,
        "nodule_rotation": n_rotation,
        "nodule_s0": _lerp(nu[:, 11], _NODULE_S0),
        "nodule_adc": _lerp(nu[:, 12], _NODULE_ADC),
        "nodule_volume_mm3": (4.0 / 3.0) * jnp.pi * jnp.prod(n_semi, axis=1),
        # Irwin-Hall numbers (two per word, one per field): near-Gaussian and cheap to compile, unlike erf_inv.
        "texture_frequencies": irwin_hall_normal(words["texture_frequencies"]) / config.texture_length_mm,
        "texture_phases": 2.0 * jnp.pi * uniform(words["texture_phases"]),
    }


def render_patient(
    patient: dict[str, jax.Array], shape: tuple[int, int, int], affine: jax.Array, *, texture_strength: float
) -> dict[str, jax.Array]:
    """Tissue properties of a patient at the voxel centres of a grid (point-sampled).

    Args:
        patient: from `sample_patient`.
        shape: ``(z, y, x)`` grid size.
        affine: ``[4, 4]`` voxel ``(z, y, x, 1)`` -> LPS mm (any position and
            orientation: the anatomy is defined everywhere).
        texture_strength: relative std of the texture of s0 and ADC.

    Returns:
        ``"tissue"`` int32 labels of `EXAM_TISSUES`; ``"lesion"`` int32
        (0 outside lesions, ``k + 1`` in lesion slot ``k``); ``"organ"``
        bool (inside the prostate ellipsoid); ``"s0"`` (T2-weighted signal
        at `REFERENCE_TE_MS`), ``"adc"`` (1e-3 mm^2/s), ``"kurtosis"``:
        float32; all ``[*shape]``.
    """
    t = EXAM_TISSUES
    eye = jnp.eye(3, dtype=jnp.float32)
    affine = jnp.asarray(affine, jnp.float32)

    def inside(centre, semi, rotation=eye):
        return grid_ellipsoid_form(shape, affine, centre, semi, rotation) <= 1.0

    zeros = jnp.zeros(shape, jnp.float32)
    label, s0, adc, kurtosis = jnp.zeros(shape, jnp.int32), zeros, zeros, zeros

    def paint(hit, tissue, s0_value=None, adc_value=None):
        nonlocal label, s0, adc
        label = jnp.where(hit, tissue.label, label)
        s0 = jnp.where(hit, tissue.s0 if s0_value is None else s0_value, s0)
        adc = jnp.where(hit, tissue.adc if adc_value is None else adc_value, adc)

    # Later tissues are drawn over earlier ones.
    in_organ = inside(patient["organ_centre"], patient["organ_semi_axes"], patient["organ_rotation"])
    in_tz = inside(patient["tz_centre"], patient["tz_semi_axes"], patient["organ_rotation"]) & in_organ
    paint(inside(patient["body_centre"], patient["body_semi_axes"]), t["body"])
    paint(inside(patient["rectum_centre"], patient["rectum_semi_axes"]), t["rectum"])
    paint(inside(patient["bladder_centre"], patient["bladder_semi_axes"]), t["bladder"])
    paint(in_organ, t["peripheral_zone"])
    paint(in_tz, t["transition_zone"])
    for i in range(patient["nodule_exists"].shape[0]):
        hit = patient["nodule_exists"][i] & in_tz & inside(
            patient["nodule_centre_mm"][i], patient["nodule_semi_axes_mm"][i], patient["nodule_rotation"][i]
        )
        paint(hit, t["nodule"], patient["nodule_s0"][i], patient["nodule_adc"][i])
    lesion = jnp.zeros(shape, jnp.int32)
    for i in range(patient["lesion_exists"].shape[0]):
        hit = patient["lesion_exists"][i] & inside(
            patient["lesion_centre_mm"][i], patient["lesion_semi_axes_mm"][i], patient["lesion_rotation"][i]
        )
        paint(hit, t["lesion"], patient["lesion_s0"][i], patient["lesion_adc"][i])
        lesion = jnp.where(hit, i + 1, lesion)
        kurtosis = jnp.where(hit, patient["lesion_kurtosis"][i], kurtosis)
    if texture_strength > 0:
        freq, phase = patient["texture_frequencies"], patient["texture_phases"]
        s0 = s0 * jnp.maximum(1.0 + texture_strength * wave_field_grid(shape, affine, freq[0], phase[0]), 0.0)
        adc = adc * jnp.maximum(1.0 + texture_strength * wave_field_grid(shape, affine, freq[1], phase[1]), 0.0)
    return {"tissue": label, "lesion": lesion, "organ": in_organ, "s0": s0, "adc": adc, "kurtosis": kurtosis}


def lesion_records(patient: dict[str, jax.Array], lesion_labels: jax.Array) -> dict[str, jax.Array]:
    """Per-lesion truth in fixed-size arrays, for the lesions seen in a label map, and the exam-level truth.

    A record is valid when its lesion exists and covers at least one voxel
    of ``lesion_labels`` (label ``k + 1`` for slot ``k``); invalid slots have
    grade 0 and are not significant.

    Returns:
        ``lesion_valid`` bool ``[L]``, ``lesion_voxels`` int32 ``[L]``,
        ``lesion_grade``, ``lesion_significant``, ``lesion_volume_mm3``,
        ``lesion_centre_mm``, ``lesion_semi_axes_mm``, ``lesion_zone``,
        ``lesion_adc``, ``lesion_kurtosis``, ``lesion_s0``,
        ``lesion_dwi_contrast`` (from the patient); ``nodule_valid``,
        ``nodule_centre_mm``, ``nodule_volume_mm3``; exam level:
        ``num_lesions`` int32, ``max_grade`` int32 (0: no lesion),
        ``significant`` bool (any valid lesion of grade >= 2),
        ``has_lesion`` bool.
    """
    num_l = patient["lesion_exists"].shape[0]
    slots = jnp.reshape(jnp.arange(1, num_l + 1), (1,) * lesion_labels.ndim + (num_l,))
    voxels = jnp.sum(lesion_labels[..., None] == slots, axis=tuple(range(lesion_labels.ndim)))
    valid = patient["lesion_exists"] & (voxels > 0)
    grade = jnp.where(valid, patient["lesion_grade"], 0).astype(jnp.int32)
    keys = ["lesion_volume_mm3", "lesion_centre_mm", "lesion_semi_axes_mm", "lesion_zone", "lesion_adc",
            "lesion_kurtosis", "lesion_s0", "lesion_dwi_contrast"]  # fmt: skip
    return {
        "lesion_valid": valid,
        "lesion_voxels": voxels.astype(jnp.int32),
        "lesion_grade": grade,
        "lesion_significant": grade >= SIGNIFICANT_GRADE,
        **{k: patient[k] for k in keys},
        "nodule_valid": patient["nodule_exists"],
        "nodule_centre_mm": patient["nodule_centre_mm"],
        "nodule_volume_mm3": patient["nodule_volume_mm3"],
        "num_lesions": jnp.sum(valid).astype(jnp.int32),
        "max_grade": jnp.max(grade, initial=0).astype(jnp.int32),
        "significant": jnp.any(grade >= SIGNIFICANT_GRADE),
        "has_lesion": jnp.any(valid),
    }


def axial_affine(shape: tuple[int, ...], spacing_mm: tuple[float, ...]) -> np.ndarray:
    """The affine of an axial grid centred on the isocentre: voxel ``(z, y, x, 1)`` -> LPS mm, ``[4, 4]``.

    Axes ``(z, y, x)`` run towards Superior, Posterior, Left (codes
    ``"SPL"``, a DICOM axial stack). A 2D ``(h, w)`` grid is the slice z = 0
    with a nominal 1 mm slice axis.
    """
    if len(shape) == 2:
        shape, spacing_mm = (1, *shape), (1.0, *spacing_mm)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = spacing_mm[2], spacing_mm[1], spacing_mm[0], 1.0
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, float) - 1.0) / 2.0)
    return affine


def _physical_scales(config: MRIPhantomConfig) -> np.ndarray:
    """Per-contrast factor mapping the brightest possible noise-free tissue to 0.8: ``[M]``."""
    b = config.b_value
    peaks = []
    # Constants of the config, evaluated eagerly even inside jit (as `_scales`).
    with jax.ensure_compile_time_eval():
        for m in config.modalities:
            values = [_physical_contrast(m, x.s0, x.adc, 0.0, b) for x in EXAM_TISSUES.values()]
            # The brightest lesion the sampler can draw: least darkened PZ lesion, lowest ADC, highest kurtosis.
            pz = EXAM_TISSUES["peripheral_zone"]
            least_dark = 1 - _LESION_DARKENING["peripheral_zone"][0]
            brightest = _physical_contrast(m, pz.s0 * least_dark, _LESION_ADC[0], _LESION_KURTOSIS[1], b)
            peaks.append(max(float(v) for v in [*values, brightest]))
    return np.asarray([0.8 / p for p in peaks], dtype=np.float32)


def _physical_contrast(modality, s0, adc, kurtosis, b_value):
    if modality == "t2":
        return s0
    if modality == "adc":
        return adc
    return diffusion_signal(s0, adc, kurtosis, b_value=b_value)


def sample_physical_mri(key: jax.Array, config: MRIPhantomConfig) -> dict[str, jax.Array]:
    """`jaxmed.data.phantoms.mri.sample_mri` in physical mode (``config.spacing_mm`` set): one patient rendered on the config's grid."""
    patient_config = config.patient or PatientConfig()
    patient = sample_patient(jax.random.fold_in(key, 0), patient_config)
    shape = config.shape
    grid = (1, *shape) if len(shape) == 2 else shape
    affine = axial_affine(shape, config.spacing_mm)
    tissue = render_patient(patient, grid, affine, texture_strength=patient_config.texture_strength)
    tissue = {k: jnp.reshape(v, shape) for k, v in tissue.items()}
    clean = jnp.stack(
        [_physical_contrast(m, tissue["s0"], tissue["adc"], tissue["kurtosis"], config.b_value) for m in config.modalities],
        axis=-1,
    )
    clean = clean * jnp.reshape(jnp.asarray(_physical_scales(config)), (1,) * len(shape) + (-1,))
    noise = random_words(jax.random.fold_in(key, 1), {"noise": (*shape, len(config.modalities))})["noise"]
    image = rician(noise, clean, noise_std=config.noise_std)
    records = lesion_records(patient, tissue["lesion"])
    return {
        "image": jnp.clip(image, 0.0, 1.0).astype(jnp.float32),
        "lesion_mask": tissue["lesion"] > 0,
        "organ_mask": tissue["organ"],
        "tissue": tissue["tissue"],
        "lesion_labels": tissue["lesion"],
        "affine": jnp.asarray(affine, jnp.float32),
        **records,
    }
