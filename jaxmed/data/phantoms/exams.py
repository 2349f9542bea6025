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

Sites are in :mod:`jaxmed.data.phantoms.sites`; `write_exam` and
`exam_truth` (:mod:`jaxmed.data.phantoms.exam_files`) save an exam as a
user's files and its truth as a record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from jaxmed.data.phantoms._draw import irwin_hall_normal, random_words, rician, rotation_matrix, uniform, wave_field_grid
from jaxmed.data.phantoms.patient import (
    REFERENCE_TE_MS,
    PatientConfig,
    diffusion_signal,
    lesion_records,
    render_patient,
    sample_patient,
)
from jaxmed.data.phantoms.sites import SITES, SiteProfile
from jaxmed.data.phantoms.tissues import EXAM_TISSUES

__all__ = ["ExamConfig", "acquire_exam", "sample_exam"]
_ADC_MASK_SNR = 5.0  # ADC is 0 where the low-b signal is below this many noise stds
_ADC_MAX = 4.0  # 1e-3 mm^2/s
_BIAS_WAVES = 8
_GRADIENT_MM = 30.0


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


