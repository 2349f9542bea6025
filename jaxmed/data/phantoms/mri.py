"""The multi-contrast MRI phantom: synthetic pelvic scans whose ground truth is known.

Kind ``"mri"`` of :data:`jaxmed.data.phantoms.PHANTOMS` (`MRIPhantomConfig`,
`sample_mri`) is a multi-contrast pelvic
MRI in the manner of prostate MRI, in 2D or 3D (ellipses or ellipsoids):

* anatomy as nested ellipsoids: a body (pelvic soft tissue) containing an
  organ whose outer zone is the peripheral zone and inner ellipsoid (shifted
  anteriorly) the transition zone; zero to ``max_lesions`` lesions inside the
  organ;
* each tissue has a T2-weighted signal ``s0`` (arbitrary units) and an
  apparent diffusion coefficient ``adc`` (1e-3 mm^2/s), both modulated by a
  smooth random texture (`TISSUES`);
* contrasts are computed from those two maps (`CONTRASTS`): T2 = ``s0``; ADC
  map = ``adc``; high-b DWI = ``s0 * exp(-b * adc)`` (mono-exponential
  diffusion decay). Lesions are therefore dark on T2, dark on ADC and bright
  on high-b DWI, as cancer is in prostate MRI (PI-RADS v2.1);
* every contrast is scaled so that its brightest noise-free tissue is 0.8,
  corrupted with Rician (magnitude) noise, and clipped to ``[0, 1]``.

Geometry: array axes are ``(h, w)`` or ``(d, h, w)``; pixels are isotropic and
coordinates run from -1 to 1 across the largest axis. Anterior is towards
``h = 0``; in-plane rotations act on ``(h, w)``.

Physical mode (``MRIPhantomConfig(spacing_mm=...)``): a patient of
:mod:`jaxmed.data.phantoms.patient` (anatomy in LPS millimetres, lesions with
grades 1-5 and clinical significance) rendered on the config's grid.
Tissue values are in :mod:`jaxmed.data.phantoms.tissues`.

References:
    Turkbey B. et al. Prostate Imaging Reporting and Data System version 2.1.
    Eur Urol 76(3):340-351, 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms._draw import (
    coordinates,
    inside_ellipsoid,
    normal,
    random_words,
    rician,
    rotate,
    smooth_fields,
    uniform,
)

from jaxmed.data.phantoms.patient import PatientConfig, sample_physical_mri
from jaxmed.data.phantoms.tissues import EXAM_TISSUES, TISSUES, Tissue

__all__ = ["CONTRASTS", "EXAM_TISSUES", "TISSUES", "MRIPhantomConfig", "Tissue", "sample_mri"]



def _t2(s0: jax.Array, adc: jax.Array, *, b_value: float) -> jax.Array:
    del adc, b_value
    return s0


def _adc(s0: jax.Array, adc: jax.Array, *, b_value: float) -> jax.Array:
    del s0, b_value
    return adc


def _dwi(s0: jax.Array, adc: jax.Array, *, b_value: float) -> jax.Array:
    # b in s/mm^2, adc in 1e-3 mm^2/s.
    return s0 * jnp.exp(-1e-3 * b_value * adc)


# Contrast name -> signal(s0, adc, *, b_value), elementwise, before scaling.
CONTRASTS: dict[str, Callable[..., jax.Array]] = {"t2": _t2, "adc": _adc, "dwi": _dwi}


@dataclass(frozen=True, kw_only=True)
class MRIPhantomConfig:
    """Multi-contrast MRI phantom (kind ``"mri"``).

    Attributes:
        shape: spatial shape, ``(h, w)`` for 2D or ``(d, h, w)`` for 3D.
        modalities: contrasts, in channel order; names from `CONTRASTS`.
        lesion_probability: probability that a sample has lesions.
        max_lesions: a sample with lesions has 1 to ``max_lesions`` of them
            (uniform).
        lesion_radius: ``(min, max)`` lesion semi-axis, as a fraction of the
            organ's mean semi-axis.
        texture_strength: relative standard deviation of the smooth
            multiplicative texture of ``s0`` and ``adc``.
        texture_cells: number of cells per axis of the coarse random grid the
            texture is interpolated from (larger: finer texture).
        noise_std: standard deviation of the Gaussian noise in each of the
            real and imaginary channels (Rician magnitude noise), in units of
            the scaled image.
        b_value: diffusion weighting of the DWI contrast, s/mm^2.
        spacing_mm: None (the default): the normalised mode above, pixels
            isotropic and coordinates -1..1. A voxel size in mm per axis of
            ``shape`` (``(dz, dy, dx)`` or ``(dy, dx)``): the **physical
            mode**, an axial grid of field of view ``shape * spacing_mm``
            centred on the isocentre through a `PatientConfig` patient drawn
            in mm (lesions with grades, BPH mimics, rectum, bladder); then
            ``lesion_probability``, ``max_lesions``, ``lesion_radius``,
            ``texture_strength`` and ``texture_cells`` are not used (the
            patient's own fields are) and `sample_mri` returns more keys.
        patient: physical mode only: the patient's anatomy and lesions
            (None: ``PatientConfig()``).
    """

    shape: tuple[int, ...] = (64, 64)
    modalities: tuple[str, ...] = ("t2", "adc", "dwi")
    lesion_probability: float = 0.5
    max_lesions: int = 2
    lesion_radius: tuple[float, float] = (0.2, 0.4)
    texture_strength: float = 0.08
    texture_cells: int = 8
    noise_std: float = 0.02
    b_value: float = 1400.0
    spacing_mm: tuple[float, ...] | None = None
    patient: PatientConfig | None = None

    def __post_init__(self):
        # Lists are accepted for convenience; tuples keep the config hashable
        # (it is a static argument of jit).
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "lesion_radius", tuple(float(r) for r in self.lesion_radius))
        if len(self.shape) not in (2, 3) or min(self.shape) < 8:
            raise ValueError(f"shape must be (h, w) or (d, h, w) with every size >= 8, got {self.shape}")
        if not self.modalities:
            raise ValueError("modalities must name at least one contrast")
        unknown = [m for m in self.modalities if m not in CONTRASTS]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {sorted(CONTRASTS)}")
        if not 0.0 <= self.lesion_probability <= 1.0:
            raise ValueError(f"lesion_probability must be in [0, 1], got {self.lesion_probability}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {self.max_lesions}")
        lo, hi = self.lesion_radius if len(self.lesion_radius) == 2 else (0.0, -1.0)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"lesion_radius must be (min, max) with 0 < min <= max <= 1, got {self.lesion_radius}")
        if self.texture_strength < 0 or self.noise_std < 0:
            raise ValueError("texture_strength and noise_std must be >= 0")
        if self.texture_cells < 2:
            raise ValueError(f"texture_cells must be >= 2, got {self.texture_cells}")
        if self.b_value < 0:
            raise ValueError(f"b_value must be >= 0 s/mm^2, got {self.b_value}")
        if self.spacing_mm is not None:
            object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
            if len(self.spacing_mm) != len(self.shape) or min(self.spacing_mm) <= 0:
                raise ValueError(
                    f"spacing_mm must give a positive voxel size (mm) for each axis of shape {self.shape}, "
                    f"got {self.spacing_mm}"
                )
        if self.patient is not None:
            if self.spacing_mm is None:
                raise ValueError("patient applies only in the physical mode: set spacing_mm too")
            if not isinstance(self.patient, PatientConfig):
                raise ValueError(f"patient must be a PatientConfig, got {type(self.patient).__name__}")


def _scales(config: MRIPhantomConfig) -> np.ndarray:
    """Per-contrast factor that maps the brightest noise-free tissue to 0.8: ``[M]``."""
    # Evaluated eagerly even inside jit: the scales are constants of the config.
    with jax.ensure_compile_time_eval():
        s0, adc = _tissue_tables()
        peaks = [float(jnp.max(CONTRASTS[m](s0, adc, b_value=config.b_value))) for m in config.modalities]
    return np.asarray([0.8 / p for p in peaks], dtype=np.float32)


def _tissue_tables() -> tuple[jax.Array, jax.Array]:
    """``s0`` and ``adc`` of `TISSUES` indexed by label: two float32 ``[num_tissues]``."""
    by_label = sorted(TISSUES.values(), key=lambda t: t.label)
    if [t.label for t in by_label] != list(range(len(by_label))):
        raise ValueError(f"TISSUES labels must be 0..{len(by_label) - 1}, got {[t.label for t in by_label]}")
    s0 = jnp.asarray([t.s0 for t in by_label], dtype=jnp.float32)
    adc = jnp.asarray([t.adc for t in by_label], dtype=jnp.float32)
    return s0, adc


def _anatomy_words(config: MRIPhantomConfig) -> dict[str, tuple[int, ...]]:
    """Random words `_anatomy` consumes, by block."""
    ndim = len(config.shape)
    return {
        "geometry": (3 * ndim + 6,),
        "lesion": (config.max_lesions, ndim + 2),
        "direction": (config.max_lesions, ndim),
    }


def _anatomy(words: dict[str, jax.Array], coords: jax.Array, config: MRIPhantomConfig):
    """Random nested ellipsoids, from the blocks of `_anatomy_words`.

    Returns:
        (tissue labels int32 ``[*S]``, organ mask ``[*S]``, lesion mask
        ``[*S]``, number of lesions int32 ``[]``).
    """
    ndim = len(config.shape)
    u = iter(jnp.split(2.0 * uniform(words["geometry"]) - 1.0, 3 * ndim + 6))  # in [-1, 1)

    def draw(count=1):
        return jnp.concatenate([next(u) for _ in range(count)])

    def unit(x):  # [-1, 1) -> [0, 1)
        return 0.5 * (x[0] + 1.0)

    # Base semi-axes (h: anterior-posterior, w: left-right; d: cranio-caudal in 3D).
    body_axes = jnp.asarray((0.9, 0.7, 0.9) if ndim == 3 else (0.7, 0.9))
    organ_axes = jnp.asarray((0.3, 0.28, 0.36) if ndim == 3 else (0.28, 0.36))
    body_semi = body_axes * (1.0 + 0.1 * draw(ndim))
    body_angle = 0.15 * draw()[0]
    organ_centre = 0.08 * draw(ndim)
    organ_semi = organ_axes * (1.0 + 0.15 * draw(ndim))
    organ_angle = 0.3 * draw()[0]

    # Transition zone: a smaller ellipsoid shifted anteriorly (towards h = 0)
    # inside the organ, leaving the peripheral zone as a posterior crescent.
    tz_scale = 0.5 + 0.15 * unit(draw())
    tz_shift = jnp.zeros(ndim).at[-2].set(-(0.15 + 0.15 * unit(draw())) * organ_semi[-2])
    tz_centre = organ_centre + rotate(tz_shift, organ_angle)

    in_body = inside_ellipsoid(coords, jnp.zeros(ndim), body_semi, body_angle)
    in_organ = inside_ellipsoid(coords, organ_centre, organ_semi, organ_angle) & in_body
    in_tz = inside_ellipsoid(coords, tz_centre, tz_scale * organ_semi, organ_angle) & in_organ

    # Lesions: a fixed number of candidates (static shapes), the first
    # num_lesions of them active. Centres are uniform in the inner 70% of the
    # organ and snapped to a pixel centre, so an active lesion always covers
    # at least its centre pixel.
    has_lesion = unit(draw()) < config.lesion_probability
    count = jnp.minimum(jnp.floor(unit(draw()) * config.max_lesions), config.max_lesions - 1) + 1
    num_lesions = jnp.where(has_lesion, count, 0).astype(jnp.int32)

    half = max(config.shape) / 2
    sizes = jnp.asarray(config.shape, dtype=jnp.float32)
    lo, hi = config.lesion_radius
    lesion_u = uniform(words["lesion"])
    directions = normal(words["direction"])

    def lesion(u_i, direction, index):
        direction = direction / jnp.linalg.norm(direction)
        radius = 0.7 * u_i[0] ** (1.0 / ndim)  # uniform in the ball of radius 0.7
        centre = organ_centre + rotate(radius * direction * organ_semi, organ_angle)
        pixel = jnp.clip(jnp.round(centre * half + sizes / 2 - 0.5), 0, sizes - 1)
        centre = (pixel + 0.5 - sizes / 2) / half
        semi = jnp.mean(organ_semi) * (lo + (hi - lo) * u_i[1 : ndim + 1])
        angle = math.pi * (2.0 * u_i[ndim + 1] - 1.0)
        return inside_ellipsoid(coords, centre, semi, angle) & (index < num_lesions)

    lesions = jax.vmap(lesion)(lesion_u, directions, jnp.arange(config.max_lesions))
    in_lesion = jnp.any(lesions, axis=0) & in_organ

    t = TISSUES
    label = jnp.where(in_body, t["body"].label, t["background"].label)
    label = jnp.where(in_organ, t["peripheral_zone"].label, label)
    label = jnp.where(in_tz, t["transition_zone"].label, label)
    label = jnp.where(in_lesion, t["lesion"].label, label)
    return label.astype(jnp.int32), in_organ, in_lesion, num_lesions


def sample_mri(key: jax.Array, config: MRIPhantomConfig) -> dict[str, jax.Array]:
    """Draws one multi-contrast MRI phantom (kind ``"mri"``).

    Pure and jittable with ``config`` static; batch it with
    ``jax.vmap(functools.partial(sample_mri, config=config))(keys)``.

    Args:
        key: PRNG key.
        config: the phantom's settings.

    Returns:
        A dict, with ``S = config.shape`` (``(h, w)`` or ``(d, h, w)``) and
        ``M = len(config.modalities)``:

        * ``"image"``: float32 ``[*S, M]`` in ``[0, 1]``, the contrasts of
          ``config.modalities``, co-registered (channels last);
        * ``"lesion_mask"``: bool ``[*S]``;
        * ``"organ_mask"``: bool ``[*S]``, the whole organ (lesions included);
        * ``"tissue"``: int32 ``[*S]``, labels of `TISSUES`;
        * ``"has_lesion"``: bool ``[]``, equal to ``lesion_mask.any()``;
        * ``"num_lesions"``: int32 ``[]``, lesions drawn (they may overlap).

        In the physical mode (``config.spacing_mm`` set) the same keys, with
        ``"tissue"`` labels of `EXAM_TISSUES`, ``"organ_mask"`` the prostate
        ellipsoid (a lesion may reach beyond it), ``"num_lesions"`` the
        lesions seen on the grid (they never overlap), and in addition:
        ``"lesion_labels"`` int32 ``[*S]`` (0 outside lesions, ``k + 1`` in
        lesion slot ``k``), ``"affine"`` float32 ``[4, 4]`` (voxel ``(z, y,
        x, 1)`` -> LPS mm, `axial_affine`) and the records of
        `lesion_records` (``"lesion_grade"``, ``"lesion_valid"``, ...,
        ``"max_grade"``, ``"significant"``). The DWI contrast is
        `diffusion_signal` at ``b_value`` (kurtosis model; 0 kurtosis outside
        lesions); each contrast is scaled so that the brightest tissue the
        sampler can draw is 0.8.
    """
    if config.spacing_mm is not None:
        return sample_physical_mri(key, config)
    shape = config.shape
    ndim = len(shape)
    num_modalities = len(config.modalities)
    words = random_words(
        key,
        {
            **_anatomy_words(config),
            "texture": (2,) + (config.texture_cells,) * ndim,
            "noise": (*shape, num_modalities),
        },
    )
    coords = coordinates(shape)
    label, organ, lesion, num_lesions = _anatomy(words, coords, config)

    s0_table, adc_table = _tissue_tables()
    texture = 1.0 + config.texture_strength * smooth_fields(words["texture"], shape)
    s0 = s0_table[label] * jnp.maximum(texture[0], 0.0)
    adc = adc_table[label] * jnp.maximum(texture[1], 0.0)

    clean = jnp.stack([CONTRASTS[m](s0, adc, b_value=config.b_value) for m in config.modalities], axis=-1)
    clean = clean * jnp.reshape(jnp.asarray(_scales(config)), (1,) * ndim + (-1,))
    image = rician(words["noise"], clean, noise_std=config.noise_std)
    return {
        "image": jnp.clip(image, 0.0, 1.0).astype(jnp.float32),
        "lesion_mask": lesion,
        "organ_mask": organ,
        "tissue": label,
        "has_lesion": jnp.any(lesion),
        "num_lesions": num_lesions.astype(jnp.int32),
    }
