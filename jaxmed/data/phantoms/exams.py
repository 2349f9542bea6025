"""mpMRI exams of the pelvic phantom as acquired at a site: one grid per modality, misregistered, with truth.

Kind ``"mri_exam"`` of :data:`jaxmed.data.phantoms.PHANTOMS` (`ExamConfig`,
`sample_exam`). An exam is a patient (`jaxmed.data.phantoms.patient.sample_patient`,
drawn in LPS mm and independent of the site) imaged at a site (`SiteProfile`,
`SITES`) by `acquire_exam`:

* **Planning.** The T2 stack is centred within ``plan_jitter_mm`` of the
  prostate centre and tilted about the left-right axis by up to
  ``obliquity_deg`` (axial oblique, as prostate T2 is planned); DWI/ADC are
  planned with the same orientation and centre, on their own coarser grid.
  Every affine is the scanner's: voxel ``(z, y, x, 1)`` -> LPS mm, the
  `jaxmed.io.volume` convention.
* **Misregistration.** Between the T2 and the diffusion series the patient
  moves: a rigid motion ``M`` (rotation up to ``misregistration_deg`` about
  each axis, around the prostate centre, then a translation up to
  ``misregistration_mm`` along each axis) that the affines do not record, as
  in real mpMRI. The DWI voxel at scanner position ``q`` images the anatomy
  at ``M^-1 q``; a structure at ``p`` in the T2 series appears at ``M p`` in
  the DWI and ADC series. ``M`` is returned for tests (``"misregistration"``).
* **Contrast.** ``s0`` of a tissue is its T2-weighted signal at TE = 90 ms
  with unit proton density, so at echo time ``TE`` it is ``s0 ** (TE / 90)``
  (mono-exponential T2 decay). The T2 series is that signal; DWI adds
  ``diffusion_signal`` (kurtosis model) at ``b_low`` and ``b_high``; the ADC
  map is computed from the two noisy magnitude images as a scanner does,
  ``ln(S_low / S_high) / (b_high - b_low)``, set to 0 where ``S_low`` is below
  5 noise standard deviations (air), and stored in 1e-6 mm^2/s.
* **Partial volume.** Each slice is the mean of ``slice_samples`` points
  across its thickness (signals are averaged before noise and before the
  ADC fit); labels are taken at the voxel centre.
* **Bias field.** One receive-coil sensitivity per exam in scanner
  coordinates, ``exp(bias_strength * F(q) + bias_gradient * q_y' / 30 mm)``
  with ``F`` a smooth unit-variance random field (correlation length
  ``bias_length_mm``) and ``q_y'`` the posterior offset from the stack
  centre (an endorectal or surface coil). It multiplies T2 and both DWI
  images; it cancels in the ADC.
* **Noise and units.** Rician magnitude noise of std ``t2_noise`` (T2) or
  ``dwi_noise`` (both b-values) relative to the peripheral zone's signal at
  that TE (and ``b_low``). Stored values: T2 ``gain * x ** t2_gamma`` with ``x``
  the noisy signal over the peripheral zone's (the vendor's intensity
  curve), DWI ``gain * x``; the gains are drawn per exam, log-uniform in the
  site's range, as MR intensities are arbitrary from exam to exam.

`write_exam` saves an exam as the files a user would have: one DICOM series
per modality and the lesion labels as NIfTI on the T2 grid, with a JSON truth
record (`exam_truth`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms._draw import irwin_hall_normal, random_words, rician, rotation_matrix, uniform, wave_field_grid
from jaxmed.data.phantoms.patient import (
    ADC_POINTS,
    DWI_POINTS,
    GRADE_SCORES,
    REFERENCE_B,
    REFERENCE_TE_MS,
    SIGNIFICANT_GRADE,
    VOLUME_POINTS_MM3,
    PatientConfig,
    diffusion_signal,
    lesion_records,
    render_patient,
    sample_patient,
)
from jaxmed.data.phantoms.tissues import EXAM_TISSUES

__all__ = ["ROLES", "SITES", "ExamConfig", "SiteProfile", "acquire_exam", "exam_truth", "sample_exam", "write_exam"]

ROLES = ("train", "deploy", "unseen")
_ADC_MASK_SNR = 5.0  # ADC is 0 where the low-b signal is below this many noise stds
_ADC_MAX = 4.0  # 1e-3 mm^2/s
_BIAS_WAVES = 8
_GRADIENT_MM = 30.0


def _triple(name, value, kind=float):
    out = tuple(kind(v) for v in value)
    if len(out) != 3 or min(out) <= 0:
        raise ValueError(f"{name} must be three positive values (z, y, x), got {value}")
    return out


@dataclass(frozen=True, kw_only=True)
class SiteProfile:
    """An acquisition site: scanner, protocol, grids, image quality (see the module docstring for the physics).

    Shapes and spacings are ``(z, y, x)``: slices, rows (anterior to
    posterior), columns (right to left); the field of view is their product.
    The slice spacing equals the slice thickness (no gap).

    Attributes:
        name, description: the site's key in `SITES` and what it stands for.
        role: ``"train"``, ``"deploy"`` (the site a model is fine-tuned on)
            or ``"unseen"`` (never trained on).
        field_strength_t: B0, tesla (written to DICOM; the SNR is set by the
            noise levels).
        manufacturer: a synthetic vendor name.
        t2_te_ms, t2_tr_ms: T2-weighted echo and repetition time.
        t2_shape, t2_spacing_mm: the T2 grid.
        t2_noise: Rician noise std over the peripheral zone's T2 signal.
        t2_gamma: the vendor's intensity curve exponent (1: linear).
        t2_gain: ``(min, max)`` stored value of the peripheral zone.
        dwi_te_ms, dwi_tr_ms: diffusion echo and repetition time.
        b_values: ``(b_low, b_high)``, s/mm^2; the DWI series is ``b_high``.
        dwi_shape, dwi_spacing_mm: the DWI/ADC grid.
        dwi_noise: Rician noise std over the peripheral zone's ``b_low``
            signal (both b-values).
        dwi_gain: ``(min, max)`` stored value of the peripheral zone at ``b_low``.
        bias_strength: std of the log bias field's random part.
        bias_length_mm: its correlation length.
        bias_gradient: log-bias change per 30 mm towards posterior (a coil
            behind the prostate: > 0).
        obliquity_deg: largest tilt of the stacks about the left-right axis.
        plan_jitter_mm: largest offset of the stack centre from the prostate
            centre along each axis.
        misregistration_deg: largest rotation of the patient between T2 and
            DWI about each axis.
        misregistration_mm: largest translation along each axis.
    """

    name: str
    description: str
    role: str
    field_strength_t: float
    manufacturer: str
    t2_te_ms: float
    t2_tr_ms: float
    t2_shape: tuple[int, int, int]
    t2_spacing_mm: tuple[float, float, float]
    t2_noise: float
    t2_gamma: float
    t2_gain: tuple[float, float]
    dwi_te_ms: float
    dwi_tr_ms: float
    b_values: tuple[float, float]
    dwi_shape: tuple[int, int, int]
    dwi_spacing_mm: tuple[float, float, float]
    dwi_noise: float
    dwi_gain: tuple[float, float]
    bias_strength: float
    bias_length_mm: float
    bias_gradient: float
    obliquity_deg: float
    plan_jitter_mm: float
    misregistration_deg: float
    misregistration_mm: float

    def __post_init__(self):
        for name in ("t2_shape", "dwi_shape"):
            object.__setattr__(self, name, _triple(name, getattr(self, name), int))
        for name in ("t2_spacing_mm", "dwi_spacing_mm"):
            object.__setattr__(self, name, _triple(name, getattr(self, name)))
        for name in ("t2_gain", "dwi_gain", "b_values"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.role not in ROLES:
            raise ValueError(f"site {self.name}: role must be one of {ROLES}, got {self.role!r}")
        for name in ("t2_gain", "dwi_gain"):
            lo, hi = getattr(self, name) if len(getattr(self, name)) == 2 else (0.0, -1.0)
            if not 0 < lo <= hi:
                raise ValueError(f"site {self.name}: {name} must be (min, max) with 0 < min <= max, got {getattr(self, name)}")
        b = self.b_values
        if len(b) != 2 or not 0 <= b[0] < b[1] <= 2000:
            raise ValueError(f"site {self.name}: b_values must be (b_low, b_high) with 0 <= b_low < b_high <= 2000, got {b}")
        positive = ("field_strength_t", "t2_te_ms", "t2_tr_ms", "dwi_te_ms", "dwi_tr_ms", "t2_gamma", "bias_length_mm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"site {self.name}: {name} must be > 0, got {getattr(self, name)}")
        non_negative = ("t2_noise", "dwi_noise", "bias_strength", "obliquity_deg", "plan_jitter_mm",
                        "misregistration_deg", "misregistration_mm")  # fmt: skip
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"site {self.name}: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def t2_fov_mm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.t2_shape, self.t2_spacing_mm, strict=True))

    @property
    def dwi_fov_mm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.dwi_shape, self.dwi_spacing_mm, strict=True))

    def as_dict(self) -> dict:
        """JSON-ready: every field, and the fields of view."""
        return {**dataclasses.asdict(self), "t2_fov_mm": self.t2_fov_mm, "dwi_fov_mm": self.dwi_fov_mm}


# Plausible prostate mpMRI protocols (PI-RADS v2.1 technical requirements:
# T2 in-plane <= 0.7 mm, slices 3 mm; DWI in-plane <= 2.5 mm, slices <= 4 mm,
# high b >= 1400 s/mm^2, ADC from b <= 100..800-1000), with each site off
# the reference in its own ways. D departs from them most and is never seen
# in training: a model of A alone should score clearly worse there.
SITES: dict[str, SiteProfile] = {
    "A": SiteProfile(
        name="A",
        description="3 T, vendor 1, the reference protocol: 0.65 mm T2, 3 mm slices, b 50/1400, low noise",
        role="train",
        field_strength_t=3.0,
        manufacturer="PHANTOM VENDOR 1",
        t2_te_ms=104.0,
        t2_tr_ms=4000.0,
        t2_shape=(24, 96, 96),
        t2_spacing_mm=(3.0, 0.65, 0.65),
        t2_noise=0.02,
        t2_gamma=1.0,
        t2_gain=(300.0, 600.0),
        dwi_te_ms=70.0,
        dwi_tr_ms=4500.0,
        b_values=(50.0, 1400.0),
        dwi_shape=(24, 36, 36),
        dwi_spacing_mm=(3.0, 2.0, 2.0),
        dwi_noise=0.01,
        dwi_gain=(800.0, 1600.0),
        bias_strength=0.08,
        bias_length_mm=80.0,
        bias_gradient=0.0,
        obliquity_deg=10.0,
        plan_jitter_mm=3.0,
        misregistration_deg=2.0,
        misregistration_mm=2.0,
    ),
    "B": SiteProfile(
        name="B",
        description="1.5 T, vendor 2: 0.8 mm T2, 3.6 mm slices, b 0/800 (low), more noise",
        role="train",
        field_strength_t=1.5,
        manufacturer="PHANTOM VENDOR 2",
        t2_te_ms=90.0,
        t2_tr_ms=5000.0,
        t2_shape=(20, 80, 80),
        t2_spacing_mm=(3.6, 0.8, 0.8),
        t2_noise=0.035,
        t2_gamma=1.0,
        t2_gain=(800.0, 1600.0),
        dwi_te_ms=80.0,
        dwi_tr_ms=5000.0,
        b_values=(0.0, 800.0),
        dwi_shape=(18, 32, 32),
        dwi_spacing_mm=(4.0, 2.25, 2.25),
        dwi_noise=0.02,
        dwi_gain=(300.0, 700.0),
        bias_strength=0.15,
        bias_length_mm=100.0,
        bias_gradient=0.0,
        obliquity_deg=10.0,
        plan_jitter_mm=3.0,
        misregistration_deg=3.0,
        misregistration_mm=3.0,
    ),
    "C": SiteProfile(
        name="C",
        description=(
            "3 T, vendor 3 with an endorectal coil (deployment site): strong posterior bias field, "
            "long TE and a compressive intensity curve on T2, b 100/1000"
        ),
        role="deploy",
        field_strength_t=3.0,
        manufacturer="PHANTOM VENDOR 3",
        t2_te_ms=118.0,
        t2_tr_ms=3600.0,
        t2_shape=(24, 104, 104),
        t2_spacing_mm=(3.0, 0.6, 0.6),
        t2_noise=0.02,
        t2_gamma=0.7,
        t2_gain=(1500.0, 3000.0),
        dwi_te_ms=65.0,
        dwi_tr_ms=4000.0,
        b_values=(100.0, 1000.0),
        dwi_shape=(24, 36, 36),
        dwi_spacing_mm=(3.0, 2.0, 2.0),
        dwi_noise=0.012,
        dwi_gain=(1000.0, 2500.0),
        bias_strength=0.2,
        bias_length_mm=60.0,
        bias_gradient=0.6,
        obliquity_deg=15.0,
        plan_jitter_mm=4.0,
        misregistration_deg=2.5,
        misregistration_mm=2.5,
    ),
    "D": SiteProfile(
        name="D",
        description=(
            "1.5 T, older scanner (never trained on): 1 mm T2 with 4.5 mm slices and short TE, "
            "coarse DWI (3 mm, 5 mm slices) at b 0/600, low SNR, anterior surface coil, large motion"
        ),
        role="unseen",
        field_strength_t=1.5,
        manufacturer="PHANTOM VENDOR 4",
        t2_te_ms=80.0,
        t2_tr_ms=3000.0,
        t2_shape=(16, 64, 64),
        t2_spacing_mm=(4.5, 1.0, 1.0),
        t2_noise=0.05,
        t2_gamma=1.0,
        t2_gain=(60.0, 150.0),
        dwi_te_ms=95.0,
        dwi_tr_ms=3500.0,
        b_values=(0.0, 600.0),
        dwi_shape=(14, 24, 24),
        dwi_spacing_mm=(5.0, 3.0, 3.0),
        dwi_noise=0.03,
        dwi_gain=(100.0, 300.0),
        bias_strength=0.25,
        bias_length_mm=70.0,
        bias_gradient=-0.2,
        obliquity_deg=20.0,
        plan_jitter_mm=5.0,
        misregistration_deg=6.0,
        misregistration_mm=6.0,
    ),
}


@dataclass(frozen=True, kw_only=True)
class ExamConfig:
    """An mpMRI exam at a site (kind ``"mri_exam"``).

    Attributes:
        site: a `SiteProfile`, or the name of one in `SITES`.
        patient: the patients' anatomy and lesions (the same patients at
            every site: see `sample_exam`).
        slices: None: the site's stacks (3D). An integer ``n``: every stack
            has ``n`` slices around the same centre (``1``: a 2D exam, one
            slice of each series through the planned centre).
        slice_samples: points averaged across each slice's thickness
            (partial volume), odd, >= 1.
    """

    site: SiteProfile | str = "A"
    patient: PatientConfig = field(default_factory=PatientConfig)
    slices: int | None = None
    slice_samples: int = 3

    def __post_init__(self):
        if isinstance(self.site, str):
            if self.site not in SITES:
                raise ValueError(f"unknown site {self.site!r}; known: {sorted(SITES)}")
            object.__setattr__(self, "site", SITES[self.site])
        if not isinstance(self.site, SiteProfile):
            raise ValueError(f"site must be a SiteProfile or a name in SITES, got {type(self.site).__name__}")
        if not isinstance(self.patient, PatientConfig):
            raise ValueError(f"patient must be a PatientConfig, got {type(self.patient).__name__}")
        if self.slices is not None and self.slices < 1:
            raise ValueError(f"slices must be None or >= 1, got {self.slices}")
        if self.slice_samples < 1 or self.slice_samples % 2 == 0:
            raise ValueError(f"slice_samples must be odd and >= 1 (the middle one is the voxel centre), got {self.slice_samples}")

    @property
    def t2_shape(self) -> tuple[int, int, int]:
        shape = self.site.t2_shape
        return shape if self.slices is None else (self.slices, *shape[1:])

    @property
    def dwi_shape(self) -> tuple[int, int, int]:
        shape = self.site.dwi_shape
        return shape if self.slices is None else (self.slices, *shape[1:])


def _plan_affine(rotation, centre, shape, spacing) -> jax.Array:
    """A stack of ``shape`` voxels of ``spacing`` centred on ``centre``, axes the rotated (z=S, y=P, x=L) frame."""
    columns = jnp.stack([rotation[:, 2] * spacing[0], rotation[:, 1] * spacing[1], rotation[:, 0] * spacing[2]], axis=1)
    origin = centre - columns @ ((jnp.asarray(shape, jnp.float32) - 1.0) / 2.0)
    top = jnp.concatenate([columns, origin[:, None]], axis=1)
    return jnp.concatenate([top, jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def _rigid(rotation, translation) -> jax.Array:
    top = jnp.concatenate([rotation, translation[:, None]], axis=1)
    return jnp.concatenate([top, jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def _render(patient, shape, affine, samples, texture_strength, signals):
    """Renders a stack slice by slice: ``signals(tissue)`` averaged over ``samples`` points across each slice.

    ``jax.lax.map`` over slices keeps the working set to one slice of
    sub-samples (of every exam in a vmapped batch), which XLA:CPU keeps in
    cache; rendering the whole supersampled stack at once was 2-4 times
    slower per exam in batches.

    Returns:
        ``(signal stacks, centre maps)``: the tuple of ``signals``' outputs
        averaged over each slice, ``[*shape]`` each; and ``"lesion"``,
        ``"tissue"``, ``"organ"`` at the voxel centres (the middle sub-sample).
    """
    step = affine[:3, 0]
    fine = affine.at[:3, 0].set(step / samples).at[:3, 3].add(-(samples - 1) / (2.0 * samples) * step)
    slab = (samples, *shape[1:])

    def one(z):
        tissue = render_patient(patient, slab, fine.at[:3, 3].add(z * step), texture_strength=texture_strength)
        mid = samples // 2
        return (
            tuple(jnp.mean(x, axis=0) for x in signals(tissue)),
            {k: tissue[k][mid] for k in ("lesion", "tissue", "organ")},
        )

    return jax.lax.map(one, jnp.arange(shape[0], dtype=jnp.float32))


def _bias(words_f, words_p, shape, affine, site: SiteProfile, centre) -> jax.Array:
    log_bias = jnp.zeros(shape, jnp.float32)
    if site.bias_strength > 0:
        frequencies = irwin_hall_normal(words_f)[0] / site.bias_length_mm
        phases = 2.0 * jnp.pi * uniform(words_p)
        log_bias = site.bias_strength * wave_field_grid(shape, affine, frequencies, phases)
    if site.bias_gradient != 0:
        index = [jnp.arange(n, dtype=jnp.float32) for n in shape]
        posterior = (
            affine[1, 0] * index[0][:, None, None]
            + affine[1, 1] * index[1][None, :, None]
            + affine[1, 2] * index[2][None, None, :]
            + (affine[1, 3] - centre[1])
        )
        log_bias = log_bias + site.bias_gradient * posterior / _GRADIENT_MM
    return jnp.exp(log_bias)


def acquire_exam(key: jax.Array, patient: dict[str, jax.Array], config: ExamConfig) -> dict[str, jax.Array]:
    """Images a patient at ``config.site``: planning, motion, contrast, bias, noise (module docstring).

    Args:
        key: PRNG key of the acquisition (planning, motion, gains, bias, noise).
        patient: from `jaxmed.data.phantoms.patient.sample_patient`.
        config: the exam settings (static under jit).

    Returns:
        With ``T = config.t2_shape`` and ``D = config.dwi_shape`` (``(z, y, x)``):

        * ``"t2"`` float32 ``[*T]`` (arbitrary units), ``"adc"`` float32
          ``[*D]`` (1e-6 mm^2/s), ``"dwi"`` float32 ``[*D]`` (``b_high``,
          arbitrary units); ``"t2_affine"``, ``"adc_affine"``,
          ``"dwi_affine"`` float32 ``[4, 4]``, voxel ``(z, y, x, 1)`` -> LPS mm
          (ADC and DWI share a grid);
        * ``"lesion_labels"`` int32 ``[*T]`` (0 none, ``k + 1`` lesion slot
          ``k``), ``"tissue"`` int32 ``[*T]`` (labels of `EXAM_TISSUES`),
          ``"organ_mask"`` bool ``[*T]``; ``"dwi_lesion_labels"`` int32
          ``[*D]`` (lesions as the moved anatomy puts them on the DWI grid);
        * the records of `jaxmed.data.phantoms.patient.lesion_records` on the T2
          grid (``"lesion_valid"``, ``"lesion_grade"``, ...,
          ``"max_grade"``, ``"significant"``) and ``"organ_centre_mm"``;
        * ``"misregistration"`` float32 ``[4, 4]`` (``M``: T2-time position
          -> DWI-time position, LPS mm), ``"misregistration_rotation_deg"``
          and ``"misregistration_translation_mm"`` ``[3]`` (the drawn
          angles about x, y, z and the translation);
        * ``"t2_gain"``, ``"dwi_gain"``, ``"t2_noise_std"``,
          ``"dwi_noise_std"`` float32 ``[]``: the drawn gains and the noise
          std in stored units (T2 before its intensity curve).
    """
    site = config.site
    t2_shape, dwi_shape = config.t2_shape, config.dwi_shape
    words = random_words(
        key,
        {
            "geometry": (12,),
            "bias_frequencies": (_BIAS_WAVES, 3),
            "bias_phases": (_BIAS_WAVES,),
            "t2_noise": t2_shape,
            "dwi_noise": (2, *dwi_shape),
        },
    )
    u = uniform(words["geometry"])
    pm = 2.0 * u - 1.0
    organ_centre = patient["organ_centre"]
    plan_rotation = rotation_matrix(jnp.stack([jnp.deg2rad(site.obliquity_deg) * pm[0], 0.0, 0.0]))
    centre = organ_centre + site.plan_jitter_mm * pm[1:4]
    t2_affine = _plan_affine(plan_rotation, centre, t2_shape, site.t2_spacing_mm)
    dwi_affine = _plan_affine(plan_rotation, centre, dwi_shape, site.dwi_spacing_mm)
    angles = site.misregistration_deg * pm[4:7]
    translation = site.misregistration_mm * pm[7:10]
    motion_rotation = rotation_matrix(jnp.deg2rad(angles))
    motion = _rigid(motion_rotation, organ_centre + translation - motion_rotation @ organ_centre)
    inverse = _rigid(motion_rotation.T, organ_centre - motion_rotation.T @ (organ_centre + translation))
    gains = [jnp.exp(jnp.log(lo) + (jnp.log(hi) - jnp.log(lo)) * x) for (lo, hi), x in ((site.t2_gain, u[10]), (site.dwi_gain, u[11]))]

    strength = config.patient.texture_strength
    samples = config.slice_samples
    pz = EXAM_TISSUES["peripheral_zone"]
    b_low, b_high = site.b_values

    # T2 (anatomy where the patient is at T2 time).
    (t2_signal,), t2_centre = _render(
        patient, t2_shape, t2_affine, samples, strength, lambda t: (jnp.power(t["s0"], site.t2_te_ms / REFERENCE_TE_MS),)
    )
    t2_ref = pz.s0 ** (site.t2_te_ms / REFERENCE_TE_MS)
    t2_bias = _bias(words["bias_frequencies"], words["bias_phases"], t2_shape, t2_affine, site, centre)
    t2_x = rician(words["t2_noise"], t2_bias * t2_signal / t2_ref, noise_std=site.t2_noise)
    t2 = gains[0] * jnp.power(t2_x, site.t2_gamma)

    # DWI and ADC (anatomy moved by M: sample it at M^-1 q).
    def diffusion(t):
        weighted = jnp.power(t["s0"], site.dwi_te_ms / REFERENCE_TE_MS)
        return tuple(diffusion_signal(weighted, t["adc"], t["kurtosis"], b_value=b) for b in (b_low, b_high))

    (s_low, s_high), dwi_centre = _render(patient, dwi_shape, inverse @ dwi_affine, samples, strength, diffusion)
    dwi_ref = pz.s0 ** (site.dwi_te_ms / REFERENCE_TE_MS) * math.exp(-1e-3 * b_low * pz.adc)
    # The coil is fixed to the scanner: the bias is sampled at the scanner positions.
    dwi_bias = _bias(words["bias_frequencies"], words["bias_phases"], dwi_shape, dwi_affine, site, centre)
    x_low = rician(words["dwi_noise"][0], dwi_bias * s_low / dwi_ref, noise_std=site.dwi_noise)
    x_high = rician(words["dwi_noise"][1], dwi_bias * s_high / dwi_ref, noise_std=site.dwi_noise)
    fit = jnp.log(jnp.maximum(x_low, 1e-6) / jnp.maximum(x_high, 1e-6)) / (1e-3 * (b_high - b_low))
    floor = _ADC_MASK_SNR * max(site.dwi_noise, 1e-3)
    adc = jnp.where(x_low > floor, jnp.clip(fit, 0.0, _ADC_MAX), 0.0) * 1000.0

    return {
        "t2": t2.astype(jnp.float32),
        "t2_affine": t2_affine,
        "adc": adc.astype(jnp.float32),
        "adc_affine": dwi_affine,
        "dwi": (gains[1] * x_high).astype(jnp.float32),
        "dwi_affine": dwi_affine,
        "lesion_labels": t2_centre["lesion"],
        "tissue": t2_centre["tissue"],
        "organ_mask": t2_centre["organ"],
        "dwi_lesion_labels": dwi_centre["lesion"],
        **lesion_records(patient, t2_centre["lesion"]),
        "organ_centre_mm": organ_centre,
        "misregistration": motion,
        "misregistration_rotation_deg": angles,
        "misregistration_translation_mm": translation,
        "t2_gain": gains[0],
        "dwi_gain": gains[1],
        "t2_noise_std": gains[0] * site.t2_noise,
        "dwi_noise_std": gains[1] * site.dwi_noise,
    }


def sample_exam(key: jax.Array, config: ExamConfig) -> dict[str, jax.Array]:
    """Draws one mpMRI exam (kind ``"mri_exam"``): a patient imaged at ``config.site``.

    The patient comes from ``fold_in(key, 0)`` and the acquisition from
    ``fold_in(key, 1)``, so one key at two sites images the same patient
    (same lesions, grades and positions), as a travelling-subject study
    would. Pure and jittable with ``config`` static: one compilation per
    site and shape; batch with ``jax.vmap`` or `jaxmed.data.phantoms.make_dataset`.
    On 2 CPU cores (shared) site A's exams (T2 24x96x96, DWI/ADC 24x36x36)
    come at 14 per second with the default chunks and 26 with
    ``make_dataset(..., chunk_size=4)``; site D's at 80-100; compiling a
    site takes about 5 s.

    Returns:
        See `acquire_exam`.
    """
    patient = sample_patient(jax.random.fold_in(key, 0), config.patient)
    return acquire_exam(jax.random.fold_in(key, 1), patient, config)


_ZONE_NAMES = {t.label: name for name, t in EXAM_TISSUES.items()}
_MODALITIES = ("t2", "adc", "dwi")


def _round(values, digits=3):
    return [round(float(v), digits) for v in np.ravel(values)]


def exam_truth(exam: Mapping[str, np.ndarray], site: SiteProfile | str | None = None) -> dict:
    """The truth of one exam as a JSON-ready record (host side; no patient data: it is a phantom).

    Args:
        exam: one exam's arrays, as `sample_exam` returns them (no batch axis).
        site: the site it was acquired at (recorded when given).

    Returns:
        ``{"phantom", "site", "grade_rule", "max_grade", "significant",
        "num_lesions", "lesions": [{"label", "grade", "significant",
        "zone", "volume_mm3", "voxels", "centre_mm", "semi_axes_mm", "adc",
        "dwi_contrast", "kurtosis", "t2_s0"}, ...], "mimics": [{"kind",
        "centre_mm", "volume_mm3"}], "misregistration": {"matrix",
        "rotation_deg", "translation_mm"}, "acquisition": {...},
        "geometry": {modality: {"shape", "spacing_mm", "affine"}}}``.
        ``label`` is the lesion's value in ``lesion_labels`` and in the NIfTI
        mask; positions are LPS mm.
    """
    exam = {k: np.asarray(v) for k, v in exam.items()}
    if isinstance(site, str):
        site = SITES[site]
    lesions = []
    for i in np.flatnonzero(exam["lesion_valid"]):
        lesions.append(
            {
                "label": int(i) + 1,
                "grade": int(exam["lesion_grade"][i]),
                "significant": bool(exam["lesion_significant"][i]),
                "zone": _ZONE_NAMES[int(exam["lesion_zone"][i])],
                "volume_mm3": round(float(exam["lesion_volume_mm3"][i]), 1),
                "voxels": int(exam["lesion_voxels"][i]),
                "centre_mm": _round(exam["lesion_centre_mm"][i]),
                "semi_axes_mm": _round(exam["lesion_semi_axes_mm"][i]),
                "adc": round(float(exam["lesion_adc"][i]), 4),
                "dwi_contrast": round(float(exam["lesion_dwi_contrast"][i]), 4),
                "kurtosis": round(float(exam["lesion_kurtosis"][i]), 4),
                "t2_s0": round(float(exam["lesion_s0"][i]), 4),
            }
        )
    mimics = [
        {"kind": "bph_nodule", "centre_mm": _round(exam["nodule_centre_mm"][i]),
         "volume_mm3": round(float(exam["nodule_volume_mm3"][i]), 1)}
        for i in np.flatnonzero(exam["nodule_valid"])
    ]  # fmt: skip
    geometry = {}
    for m in _MODALITIES:
        affine = exam[f"{m}_affine"].astype(np.float64)
        geometry[m] = {
            "shape": [int(n) for n in exam[m].shape],
            "spacing_mm": _round(np.linalg.norm(affine[:3, :3], axis=0), 4),
            "affine": [_round(row, 5) for row in affine],
        }
    return {
        "phantom": "jaxmed.data.phantoms.exams (synthetic; no patient data)",
        "site": None if site is None else site.as_dict(),
        "grade_rule": {
            "adc_points_below": ADC_POINTS,
            "volume_points_mm3_at_least": VOLUME_POINTS_MM3,
            "dwi_contrast_points_at_least": DWI_POINTS,
            "grade_is_1_plus_scores_reached": GRADE_SCORES,
            "significant_from_grade": SIGNIFICANT_GRADE,
            "dwi_contrast_reference_b": REFERENCE_B,
        },
        "max_grade": int(exam["max_grade"]),
        "significant": bool(exam["significant"]),
        "num_lesions": int(exam["num_lesions"]),
        "lesions": lesions,
        "mimics": mimics,
        "misregistration": {
            "matrix": [_round(row, 5) for row in exam["misregistration"]],
            "rotation_deg": _round(exam["misregistration_rotation_deg"]),
            "translation_mm": _round(exam["misregistration_translation_mm"]),
            "meaning": "LPS mm: a point at p in the T2 series appears at M p in the ADC and DWI series",
        },
        "acquisition": {k: round(float(exam[k]), 4) for k in ("t2_gain", "dwi_gain", "t2_noise_std", "dwi_noise_std")},
        "geometry": geometry,
    }


def write_exam(
    folder,
    exam: Mapping[str, np.ndarray],
    site: SiteProfile | str | None = None,
    *,
    uid_seed: str | None = None,
    patient_id: str = "PHANTOM-0000",
    overwrite: bool = False,
) -> dict[str, str]:
    """Saves one exam as a user's files: a DICOM series per modality, the lesion labels as NIfTI, the truth as JSON.

    Layout: ``folder/T2/*.dcm``, ``folder/ADC/*.dcm``, ``folder/DWI/*.dcm``
    (`jaxmed.io.write_dicom_series`: each series with its own grid and
    geometry; one study and one FrameOfReferenceUID, since all were
    acquired in one session: the misregistration is patient motion, which
    DICOM does not record), ``folder/lesion_mask.nii.gz`` (`jaxmed.io.write_nifti`:
    ``lesion_labels`` on the T2 grid, uint8; 0 background, ``k`` the lesion
    with ``"label": k`` in the truth; ``> 0`` is the lesion mask) and
    ``folder/truth.json`` (`exam_truth`, plus the file names and UIDs).
    Patient attributes are synthetic placeholders.

    Args:
        folder: created if missing.
        exam: one exam (no batch axis), jax or numpy arrays.
        site: the site (its TE, TR, b-value, field strength and vendor go
            into the DICOM headers and the truth); None leaves them out.
        uid_seed: makes every UID a deterministic function of it (the same
            call writes the same files); None: new random UIDs.
        patient_id: the placeholder PatientID.
        overwrite: replace existing files (raises `FileExistsError` otherwise,
            before anything is written).

    Returns:
        ``{"T2", "ADC", "DWI": series folder, "lesion_mask", "truth": file}``.
    """
    from pydicom.uid import generate_uid

    from jaxmed.io import write_dicom_series, write_nifti

    def uid(part: str) -> str:
        return str(generate_uid() if uid_seed is None else generate_uid(entropy_srcs=[uid_seed, part]))

    folder = os.fspath(folder)
    exam = {k: np.asarray(v) for k, v in exam.items()}
    if isinstance(site, str):
        site = SITES[site]
    paths = {
        "T2": os.path.join(folder, "T2"),
        "ADC": os.path.join(folder, "ADC"),
        "DWI": os.path.join(folder, "DWI"),
        "lesion_mask": os.path.join(folder, "lesion_mask.nii.gz"),
        "truth": os.path.join(folder, "truth.json"),
    }
    planned = [paths["lesion_mask"], paths["truth"]]
    for name in ("T2", "ADC", "DWI"):
        n = exam[name.lower()].shape[0]
        planned += [os.path.join(paths[name], f"IM_{k + 1:04d}.dcm") for k in range(n)]
    if not overwrite:
        for path in planned:
            if os.path.lexists(path):
                raise FileExistsError(f"{path}: file exists; pass overwrite=True to replace it")

    study_uid = uid("study")
    frame_uid = uid("frame_of_reference")
    patient = {"PatientName": "PHANTOM^SYNTHETIC", "PatientID": patient_id}
    common = {"BodyPartExamined": "PROSTATE"}
    series = {
        "T2": (1, "t2_tse_tra", "t2", {}),
        "ADC": (2, "ep2d_diff_ADC", "adc", {"ImageType": ["DERIVED", "PRIMARY", "ADC"]}),
        "DWI": (3, "ep2d_diff_b{b}", "dwi", {}),
    }
    uids = {}
    for name, (number, description, key, extra) in series.items():
        attributes = {**common, **extra}
        if site is not None:
            b_high = int(site.b_values[1])
            description = description.format(b=b_high)
            t2 = name == "T2"
            attributes.update(
                Manufacturer=site.manufacturer,
                InstitutionName=f"jaxmed phantom site {site.name}",
                MagneticFieldStrength=site.field_strength_t,
                EchoTime=site.t2_te_ms if t2 else site.dwi_te_ms,
                RepetitionTime=site.t2_tr_ms if t2 else site.dwi_tr_ms,
                ScanningSequence="SE" if t2 else "EP",
                SequenceVariant="SK" if t2 else "SP",
            )
            if name == "DWI":
                attributes["DiffusionBValue"] = float(b_high)
        else:
            description = description.format(b="high")
        seed = None if uid_seed is None else f"{uid_seed}/{name}"
        write_dicom_series(
            paths[name],
            exam[key],
            exam[f"{key}_affine"],
            modality="MR",
            series_description=description,
            series_number=number,
            study_uid=study_uid,
            frame_of_reference_uid=frame_uid,
            uid_seed=seed,
            patient=patient,
            study_description="mpMRI prostate (synthetic phantom)",
            attributes=attributes,
            overwrite=overwrite,
        )
        uids[name] = {"series_number": number, "series_description": description}
    write_nifti(paths["lesion_mask"], exam["lesion_labels"].astype(np.uint8), exam["t2_affine"], overwrite=overwrite)
    truth = exam_truth(exam, site)
    truth["files"] = {k: os.path.relpath(v, folder) for k, v in paths.items()}
    truth["dicom"] = {"study_uid": study_uid, "frame_of_reference_uid": frame_uid, "series": uids}
    with open(paths["truth"], "w") as f:
        json.dump(truth, f, indent=1)
    return paths
