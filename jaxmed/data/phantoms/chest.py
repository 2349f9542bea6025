"""The chest-radiograph phantom: PA radiographs at full resolution whose ground truth is known.

Kind ``"chest"`` of :data:`jaxmed.data.phantoms.PHANTOMS` (`ChestPhantomConfig`,
`sample_chest`; `chest_truth` turns one sample into a JSON-ready record).

.. note::
   **Orientation.** A posteroanterior (PA) chest radiograph in display
   convention: array axes are ``(row, column)``, superior towards row 0, and
   the patient's right on the image's LEFT (column 0 side). The heart
   therefore bulges to the image's right and the left lung (image right) is
   the smaller one. "Left" and "right" in names (``"left_lung"``,
   ``LUNGS``) are always the patient's.

   **Intensity.** Higher = brighter = more attenuation (bone and heart bright,
   lungs dark), as jaxmed reads a MONOCHROME1 radiograph after inversion.
   Values are float32 in ``[0, 1]``; air outside the body is 0.

Geometry. Pixels are square, ``pixel_spacing_mm`` apart (by default the
image spans a 400 mm detector: 0.39 mm at 1024, 0.195 mm at 2048). The
anatomy is drawn at its physical size in mm; a field of view smaller than the
chest (say 1024 pixels at 0.14 mm) is a centred crop, and findings are then
placed only in the visible part of a lung.

Anatomy (seeded variation in every part): the body outline (neck, shoulders,
chest, upper abdomen) and its soft tissue; two lungs shaped like lung fields
(rounded apices, lateral walls, the costophrenic angles where the lateral wall
meets the diaphragm, the left a little lower); the diaphragm domes, the
right higher than the left; the heart (an inclined ellipse reaching to the
patient's left), the mediastinum with the aortic knob, the trachea and main
bronchi, the hila and vessel markings that fade towards the periphery; the
spine (vertebral bodies with end plates, pedicles and spinous processes,
visible through the mediastinum), twelve pairs of posterior rib arcs and nine
of anterior arcs, the clavicles, a gastric air bubble under the left dome.
Per sample also vary: patient size and build, inspiration (diaphragm level,
rib spacing, lung aeration), position (shift) and in-plane rotation,
exposure, beam hardness (bone contrast), film contrast and photon dose.

Regions: each lung mask is its lung field as drawn on a PA film (inside the
rib cage, above the diaphragm, outside the heart and the mediastinum); the
heart mask is the cardiac ellipse, including the part projected below the
domes. They are disjoint by construction (the lung's level is a minimum that
includes the heart's outside).

Rendering: a close 2D equivalent of a projection. Each structure contributes
a thickness map in mm along the ray, computed from the chord of an
ellipsoid, superellipse, tube or ball through its cross-section (the chord
at normalised squared radius ``q`` is ``2 sqrt(1 - q)`` times the semi-axis
along the ray, `_draw.chord`): soft tissue of the body, minus the air in the
lungs (reduced where the heart, hila, vessels or findings displace it), the
trachea and the gastric bubble, plus bone (cortical shells and trabecular
cores of ribs, clavicles and vertebrae). The line integral is
``p = mu_soft * (soft - air) + mu_bone * bone``; the film curve maps it to
``1 - exp(-gamma * (p - p0 - ln(exposure)))``; quantum noise is Gaussian in
``p`` with variance ``exp(p) / N0`` (Poisson counts of ``N0`` unattenuated
photons per pixel), carried through the film curve, and correlated over
neighbouring pixels by a ``[1, 2, 1] / 4`` detector kernel. All smooth work
runs on a grid ``render_factor`` times coarser than the output (by default
twice: 0.78 mm at 1024 pixels, 0.39 mm at 2048; one render pixel beyond each
edge) and is
linearly interpolated to the output grid, a triangle blur of one render
pixel; per output pixel there are only the noise, the film-curve noise
scale, the heart's ellipse and the masks' thresholds of interpolated levels.

Findings, each with a mask (within its lung's mask) and a record: type
(`FINDING_TYPES`), lung (`LUNGS`), zone (`ZONES`: thirds of the lung's height
from apex to costophrenic angle, taken at the finding's centre), size in mm
and centre (pixels and mm).

* ``nodule`` (3-30 mm) and ``mass`` (> 30 mm): solid ellipsoids replacing
  lung air, the mass lobulated; size is the mean of the long and short
  diameters (the Fleischner convention), and the mask's area-equivalent
  diameter matches it. Placed inside the lung and the field of view with
  their whole outline when they fit (24 candidate centres in the lung's
  zone, the first that fits, else the one that fits best).
* ``consolidation``: a patchy region of partly airless lung within one lung;
  size is the mean diameter of the envelope the patches lie in.
* ``effusion``: fluid at the lung base, a layer over the dome under a
  meniscus that rises along the lateral chest wall, blunting the
  costophrenic angle and effacing the dome; size is the meniscus height
  above the costophrenic angle at the lateral wall; zone is always
  ``"lower"``, centre the centroid of the fluid. At most one per lung.

The config sets how many findings there are and the probabilities of each
type, or asks for exactly specified findings (`FindingSpec`, e.g. a 5 mm
nodule in the left lower zone, for studies by nodule size).

References:
    Fleischner Society: MacMahon H. et al. Guidelines for management of
    incidental pulmonary nodules detected on CT images. Radiology
    284(1):228-243, 2017 (nodule size as the mean of long and short axes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms._draw import (
    binomial_blur,
    chord,
    ellipse_form,
    irwin_hall_normal,
    random_words,
    smooth_fields,
    uniform,
    upsample_linear,
)

__all__ = [
    "FINDING_TYPES",
    "LUNGS",
    "REGIONS",
    "ZONES",
    "ChestPhantomConfig",
    "FindingSpec",
    "chest_truth",
    "sample_chest",
]

FINDING_TYPES: tuple[str, ...] = ("nodule", "mass", "consolidation", "effusion")
"""Finding type codes: ``"finding_type"`` holds the index (``-1`` in an unused slot)."""
LUNGS: tuple[str, ...] = ("right", "left")
"""Lung codes, the patient's sides: 0 = right (image left), 1 = left (image right)."""
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
"""Zone codes: thirds of a lung's height from apex to costophrenic angle."""
REGIONS: tuple[str, ...] = ("right_lung", "left_lung", "heart")
"""The region masks of a sample, by key."""

_NODULE, _MASS, _CONSOLIDATION, _EFFUSION = range(4)
# Largest size (mm) a FindingSpec may ask for, by type; nodules stop at 30 mm, masses start there.
_SIZE_LIMITS = {"nodule": (0.0, 30.0), "mass": (30.0, 150.0), "consolidation": (0.0, 200.0), "effusion": (0.0, 150.0)}

# Attenuation per mm at an effective energy near 60 keV: water-like soft
# tissue, and cortical bone's excess over the soft tissue it replaces.
_MU_SOFT = 0.02
_MU_BONE = 0.045
_TRABECULAR = 0.35  # trabecular bone density relative to cortex
# Film curve: line integrals below P0 (thin soft tissue) are black; gamma
# puts aerated lung near 0.3 and the mediastinum near 0.75.
_FILM_P0 = 1.5
_FILM_GAMMA = 0.5
_CANDIDATES = 24  # candidate centres per finding
_RIM = 8  # points on a finding's outline checked against its lung
_POSTERIOR_RIBS, _ANTERIOR_RIBS = 12, 9


@dataclass(frozen=True, kw_only=True)
class FindingSpec:
    """One exactly specified finding; fields left None are drawn as for a random finding.

    Attributes:
        type: one of `FINDING_TYPES`.
        lung: ``"right"`` or ``"left"`` (the patient's), or None.
        zone: one of `ZONES`, or None; an effusion's is ``"lower"``.
        size_mm: the finding's size (see the module docstring for each
            type's definition), or None for the config's range.
    """

    type: str
    lung: str | None = None
    zone: str | None = None
    size_mm: float | None = None

    def __post_init__(self):
        if self.type not in FINDING_TYPES:
            raise ValueError(f"FindingSpec: unknown type {self.type!r}; known: {list(FINDING_TYPES)}")
        if self.lung is not None and self.lung not in LUNGS:
            raise ValueError(f"FindingSpec: lung must be one of {list(LUNGS)} or None, got {self.lung!r}")
        if self.zone is not None and self.zone not in ZONES:
            raise ValueError(f"FindingSpec: zone must be one of {list(ZONES)} or None, got {self.zone!r}")
        if self.type == "effusion" and self.zone not in (None, "lower"):
            raise ValueError(f"FindingSpec: an effusion lies at the lung base (zone 'lower'), got zone {self.zone!r}")
        if self.size_mm is not None:
            object.__setattr__(self, "size_mm", float(self.size_mm))
            lo, hi = _SIZE_LIMITS[self.type]
            if not lo < self.size_mm <= hi:
                raise ValueError(f"FindingSpec: a {self.type}'s size_mm must be in ({lo:g}, {hi:g}], got {self.size_mm}")


def _range(name: str, value, lo: float, hi: float) -> tuple[float, float]:
    """``value`` as a float pair ``(a, b)`` with ``lo <= a <= b <= hi``, else ValueError."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must be (min, max) with {lo:g} <= min <= max <= {hi:g}, got {value!r}")
    return a, b


@dataclass(frozen=True, kw_only=True)
class ChestPhantomConfig:
    """PA chest radiograph phantom (kind ``"chest"``).

    Ranges ``(min, max)`` are drawn uniformly per sample (nodule sizes
    log-uniformly, so that small nodules are as common per octave as large).

    Attributes:
        shape: ``(rows, columns)``, each >= 64 and a multiple of
            `render_factor`.
        pixel_spacing_mm: pixel spacing; None for a 400 mm field of view
            (``400 / max(shape)``; see `spacing_mm`). The field of view must
            be at least 120 mm across.
        render_downsample: how many output pixels per render pixel along an
            axis (see the module docstring); None: 2 from 1024 pixels on, 1
            below (see `render_factor`). 4 at 2048 pixels renders the
            anatomy as coarsely as a 1024 image, and faster.
        finding_probability: probability that a sample has findings.
        max_findings: a sample with findings has 1 to ``max_findings`` of
            them (uniform); also the number of finding slots.
        type_probabilities: probability of each type in `FINDING_TYPES`
            order, or a mapping ``{type: probability}`` (missing types 0);
            they must sum to 1.
        findings: exactly specified findings: when not empty, every sample
            has exactly these, one per slot in this order, and
            ``finding_probability``, ``max_findings`` and
            ``type_probabilities`` are not used.
        nodule_size_mm: nodule sizes, within ``(0, 30]``.
        mass_size_mm: mass sizes, ``>= 30``.
        consolidation_size_mm: consolidation envelope diameters.
        effusion_height_mm: effusion meniscus heights.
        patient_scale: overall size of the patient relative to a standard
            adult (lungs about 250 mm wide together and 230 mm tall).
        inspiration: depth of inspiration in ``[0, 1]`` (0: poor, about 8
            posterior ribs above the right dome; 1: deep, about 10).
        rotation_deg: largest in-plane rotation of the patient, degrees.
        shift_mm: largest shift of the chest from the image centre, per axis.
        exposure: film exposure factor (more exposure: a darker image).
        contrast: factor on the film gamma.
        bone_contrast: factor on bone attenuation (beam hardness: lower kVp,
            more bone contrast).
        photons_per_mm2: unattenuated photon fluence at the detector, per mm^2
            (with the pixel area and exposure it sets the quantum noise).
    """

    shape: tuple[int, int] = (1024, 1024)
    pixel_spacing_mm: float | None = None
    render_downsample: int | None = None
    finding_probability: float = 0.5
    max_findings: int = 3
    type_probabilities: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15)
    findings: tuple[FindingSpec, ...] = ()
    nodule_size_mm: tuple[float, float] = (3.0, 30.0)
    mass_size_mm: tuple[float, float] = (30.0, 60.0)
    consolidation_size_mm: tuple[float, float] = (30.0, 80.0)
    effusion_height_mm: tuple[float, float] = (15.0, 60.0)
    patient_scale: tuple[float, float] = (0.9, 1.08)
    inspiration: tuple[float, float] = (0.0, 1.0)
    rotation_deg: float = 3.0
    shift_mm: float = 10.0
    exposure: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.9, 1.1)
    bone_contrast: tuple[float, float] = (0.85, 1.15)
    photons_per_mm2: tuple[float, float] = (2e4, 1e5)

    def __post_init__(self):
        # Lists and mappings are accepted for convenience; tuples keep the
        # config hashable (it is a static argument of jit).
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) != 2 or min(shape) < 64:
            raise ValueError(f"shape must be (rows, columns) with both >= 64, got {self.shape}")
        if self.pixel_spacing_mm is not None:
            object.__setattr__(self, "pixel_spacing_mm", float(self.pixel_spacing_mm))
            if not self.pixel_spacing_mm > 0:
                raise ValueError(f"pixel_spacing_mm must be > 0 (or None), got {self.pixel_spacing_mm}")
        if min(shape) * self.spacing_mm < 120.0:
            raise ValueError(
                f"the field of view must be >= 120 mm across; shape {shape} at {self.spacing_mm:.3g} mm "
                f"gives {min(shape) * self.spacing_mm:.0f} mm"
            )
        if self.render_downsample is not None:
            if int(self.render_downsample) < 1 or any(s % int(self.render_downsample) for s in shape):
                raise ValueError(f"render_downsample must be >= 1 and divide shape {shape}, got {self.render_downsample}")
            object.__setattr__(self, "render_downsample", int(self.render_downsample))
        probabilities = self.type_probabilities
        if isinstance(probabilities, Mapping):
            unknown = sorted(set(probabilities) - set(FINDING_TYPES))
            if unknown:
                raise ValueError(f"type_probabilities: unknown types {unknown}; known: {list(FINDING_TYPES)}")
            probabilities = [probabilities.get(t, 0.0) for t in FINDING_TYPES]
        probabilities = tuple(float(p) for p in probabilities)
        object.__setattr__(self, "type_probabilities", probabilities)
        if len(probabilities) != len(FINDING_TYPES) or min(probabilities) < 0 or abs(sum(probabilities) - 1) > 1e-6:
            raise ValueError(
                f"type_probabilities must give {len(FINDING_TYPES)} probabilities >= 0 summing to 1 "
                f"(order {list(FINDING_TYPES)}), got {self.type_probabilities}"
            )
        findings = tuple(self.findings)
        object.__setattr__(self, "findings", findings)
        if not all(isinstance(f, FindingSpec) for f in findings):
            raise ValueError(f"findings must be FindingSpec instances, got {findings!r}")
        if not 0.0 <= self.finding_probability <= 1.0:
            raise ValueError(f"finding_probability must be in [0, 1], got {self.finding_probability}")
        if int(self.max_findings) < 1:
            raise ValueError(f"max_findings must be >= 1, got {self.max_findings}")
        lo, hi = _range("nodule_size_mm", self.nodule_size_mm, 0.0, 30.0)
        if lo <= 0:
            raise ValueError(f"nodule_size_mm must be within (0, 30], got {self.nodule_size_mm}")
        ranges = {
            "nodule_size_mm": (lo, hi),
            "mass_size_mm": _range("mass_size_mm", self.mass_size_mm, 30.0, 150.0),
            "consolidation_size_mm": _range("consolidation_size_mm", self.consolidation_size_mm, 1.0, 200.0),
            "effusion_height_mm": _range("effusion_height_mm", self.effusion_height_mm, 1.0, 150.0),
            "patient_scale": _range("patient_scale", self.patient_scale, 0.5, 1.5),
            "inspiration": _range("inspiration", self.inspiration, 0.0, 1.0),
            "exposure": _range("exposure", self.exposure, 0.1, 10.0),
            "contrast": _range("contrast", self.contrast, 0.1, 10.0),
            "bone_contrast": _range("bone_contrast", self.bone_contrast, 0.0, 10.0),
            "photons_per_mm2": _range("photons_per_mm2", self.photons_per_mm2, 1.0, 1e12),
        }
        for name, value in ranges.items():
            object.__setattr__(self, name, value)
        if not 0.0 <= self.rotation_deg <= 45.0:
            raise ValueError(f"rotation_deg must be in [0, 45], got {self.rotation_deg}")
        if not 0.0 <= self.shift_mm <= 100.0:
            raise ValueError(f"shift_mm must be in [0, 100], got {self.shift_mm}")

    @property
    def spacing_mm(self) -> float:
        """The pixel spacing in mm: ``pixel_spacing_mm``, or ``400 / max(shape)`` when that is None."""
        return self.pixel_spacing_mm if self.pixel_spacing_mm is not None else 400.0 / max(self.shape)

    @property
    def render_factor(self) -> int:
        """Output pixels per render pixel along an axis (``render_downsample`` or the automatic choice)."""
        if self.render_downsample is not None:
            return int(self.render_downsample)
        return 2 if max(self.shape) >= 1024 and all(s % 2 == 0 for s in self.shape) else 1

    @property
    def num_slots(self) -> int:
        """Finding slots per sample: ``len(findings)`` if findings are specified, else ``max_findings``."""
        return len(self.findings) if self.findings else int(self.max_findings)


# --------------------------------------------------------------------------- random draws

_GEOMETRY = (
    "scale", "width", "inspiration", "rotation", "shift_y", "shift_x",
    "apex", "apex_asym", "apex_xi", "wlat_asym", "height", "dome_gap",
    "hcp_r", "hcp_l", "xi_dome_r", "xi_dome_l", "med_r", "med_l", "hmed",
    "heart_x", "heart_y", "heart_a", "heart_b", "heart_angle", "knob",
    "body_width", "body_depth", "lung_depth", "air",
    "rib_y0", "rib_spacing", "rib_c", "rib_a", "rib_b", "ant_a", "rib_asym",
    "clav_y", "clav_tilt", "clav_s", "spine_x", "trachea_x", "bubble", "bubble_size",
    "exposure", "contrast", "bone", "photons",
    "has_finding", "num_findings",
)  # fmt: skip
_SLOT = ("type", "lung", "zone", "size", "aspect", "angle", "lobulation", "density")


def _named(words: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """Uniforms in ``[0, 1)`` named along the last axis of ``words``."""
    u = uniform(words)
    return {name: u[..., i] for i, name in enumerate(names)}


def _lerp(u, bounds):
    lo, hi = bounds
    return lo + (hi - lo) * u


def _pm(u):
    """``[0, 1) -> [-1, 1)``."""
    return 2.0 * u - 1.0


def _smoothstep(t):
    t = jnp.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _circ(v):
    """Quarter circle on ``[0, 1]``: 0 at 0 with a vertical tangent, 1 at 1 with a horizontal one."""
    v = jnp.clip(v, 0.0, 1.0)
    return jnp.sqrt(v * (2.0 - v))


# --------------------------------------------------------------------------- anatomy


def _anatomy(g: dict[str, jax.Array], config: ChestPhantomConfig) -> tuple[dict, dict]:
    """Scalars of one patient, in mm in the anatomical frame (see `_to_anatomy`).

    Returns:
        ``(a, sides)``: ``a`` scalars; ``sides`` ``[2]`` arrays indexed by
        `LUNGS` (right, left) with the per-side parameters, ``sigma`` the
        side's sign of the anatomical x (-1 right, +1 left) and ``xi`` in
        the functions below the distance from the midline towards that
        side.
    """
    s = _lerp(g["scale"], config.patient_scale)
    ins = _lerp(g["inspiration"], config.inspiration)
    width = s * (1.0 + 0.06 * _pm(g["width"]))
    a = {"scale": s, "inspiration": ins}
    a["angle"] = math.radians(config.rotation_deg) * _pm(g["rotation"])
    a["cy"] = config.shift_mm * _pm(g["shift_y"]) + 10.0 * s  # the lungs' centre a little above the image centre
    a["cx"] = config.shift_mm * _pm(g["shift_x"])

    apex_r = (-118.0 + 8.0 * _pm(g["apex"])) * s
    apex_l = apex_r + 3.0 * _pm(g["apex_asym"])
    wlat_r = 128.0 * width
    wlat_l = wlat_r * (0.96 + 0.02 * _pm(g["wlat_asym"]))  # the left hemithorax a little narrower
    cp_r = apex_r + (208.0 + 45.0 * ins + 10.0 * _pm(g["height"])) * s  # costophrenic angle, right
    cp_l = cp_r + (12.0 + 12.0 * g["dome_gap"]) * s  # the left dome lower
    hcp_r = (28.0 + 16.0 * g["hcp_r"]) * s
    hcp_l = (28.0 + 16.0 * g["hcp_l"]) * s
    med_r = (27.0 + 3.0 * _pm(g["med_r"])) * s
    med_l = (24.0 + 3.0 * _pm(g["med_l"])) * s
    sides = {
        "sigma": jnp.asarray([-1.0, 1.0]),
        "apex": jnp.stack([apex_r, apex_l]),
        "cp": jnp.stack([cp_r, cp_l]),
        "dome": jnp.stack([cp_r - hcp_r, cp_l - hcp_l]),
        "wlat": jnp.stack([wlat_r, wlat_l]),
        "xi_apex": jnp.stack([wlat_r, wlat_l]) * (0.36 + 0.03 * _pm(g["apex_xi"])),
        "med": jnp.stack([med_r, med_l]),
        "xi_dome": jnp.stack([wlat_r * (0.5 + 0.05 * _pm(g["xi_dome_r"])), wlat_l * (0.55 + 0.05 * _pm(g["xi_dome_l"]))]),
        "hmed": jnp.stack([25.0, 20.0]) * s * (1.0 + 0.2 * _pm(g["hmed"])),
    }
    height = sides["cp"] - sides["apex"]
    # Mediastinal bulges into each lung: the superior vena cava on the right,
    # the aortic knob on the left. The hila: the left a little higher.
    knob = 1.0 + 0.15 * _pm(g["knob"])
    sides["bump_y"] = sides["apex"] + jnp.asarray([0.3, 0.21]) * height
    sides["bump_xi"] = sides["med"] + jnp.stack([-1.0, 2.0 * knob]) * s
    sides["bump_sy"] = jnp.stack([34.0, 17.0 * knob]) * s
    sides["bump_sx"] = jnp.stack([8.0, 16.0 * knob]) * s
    sides["hilum_y"] = sides["apex"] + 0.43 * height - jnp.asarray([0.0, 14.0]) * s
    sides["hilum_xi"] = sides["med"] + 0.26 * (sides["wlat"] - sides["med"])

    # Ribs: rib k of a side sits at y0 + S (k + c k^2) plus an arc of
    # t = xi / cage; the anterior arc of rib k leaves the posterior one at
    # the lateral wall (t = 1) and runs down towards the sternum.
    spacing = (19.0 + 4.0 * ins) * s * (1.0 + 0.04 * _pm(g["rib_spacing"]))
    asym = 2.0 * _pm(g["rib_asym"]) * s
    sides["rib_y0"] = sides["apex"] + (2.0 + 5.0 * _pm(g["rib_y0"])) * s + jnp.stack([asym, -asym])
    sides["rib_s"] = jnp.stack([spacing, spacing])
    sides["rib_c"] = jnp.full((2,), 0.02 + 0.008 * _pm(g["rib_c"]))
    sides["rib_a"] = jnp.full((2,), (50.0 + 8.0 * _pm(g["rib_a"])) * s)
    sides["rib_b"] = jnp.full((2,), (65.0 + 10.0 * _pm(g["rib_b"])) * s)
    sides["ant_a"] = jnp.full((2,), (55.0 + 10.0 * _pm(g["ant_a"])) * s)
    sides["cage"] = sides["wlat"] + 4.0 * s
    # Clavicles: from the sternal end near the midline up and out to the shoulder.
    sides["clav_xm"] = jnp.full((2,), 14.0 * s)
    sides["clav_ym"] = sides["apex"] + (38.0 + 8.0 * _pm(g["clav_y"])) * s
    sides["clav_xl"] = sides["wlat"] + 30.0 * s
    sides["clav_yl"] = sides["apex"] + (-12.0 + 10.0 * _pm(g["clav_tilt"])) * s
    sides["clav_s"] = jnp.full((2,), (30.0 + 8.0 * _pm(g["clav_s"])) * s)

    # Heart: an ellipse on the diaphragm, long axis tilted down to the
    # patient's left (image right), broader in expiration.
    a["heart_y"] = sides["dome"][0] - (38.0 + 8.0 * _pm(g["heart_y"])) * s
    a["heart_x"] = (22.0 + 6.0 * _pm(g["heart_x"])) * s
    a["heart_sx"] = 61.0 * s * (1.0 + 0.08 * _pm(g["heart_a"])) * (1.0 + 0.06 * (1.0 - ins))
    a["heart_sy"] = 50.0 * s * (1.0 + 0.08 * _pm(g["heart_b"]))
    a["heart_angle"] = -(0.5 + 0.1 * _pm(g["heart_angle"]))
    a["heart_depth"] = 100.0 * s

    a["body_b"] = 0.5 * (wlat_r + wlat_l) + (32.0 + 8.0 * _pm(g["body_width"])) * s
    a["body_d"] = 215.0 * s * (1.0 + 0.08 * _pm(g["body_depth"]))
    a["lung_depth"] = 165.0 * s * (1.0 + 0.08 * _pm(g["lung_depth"]))
    a["air"] = 0.76 + 0.1 * ins + 0.03 * _pm(g["air"])  # air fraction of aerated lung
    a["spine_x"] = 3.0 * _pm(g["spine_x"]) * s
    a["trachea_x"] = (-2.0 + 2.0 * _pm(g["trachea_x"])) * s
    a["carina_y"] = sides["apex"][0] + 0.3 * height[0]
    a["bubble"] = (g["bubble"] > 0.2).astype(jnp.float32)
    a["bubble_s"] = 1.0 + 0.3 * _pm(g["bubble_size"])

    a["exposure"] = _lerp(g["exposure"], config.exposure)
    a["gamma"] = _FILM_GAMMA * _lerp(g["contrast"], config.contrast)
    a["bone"] = _lerp(g["bone"], config.bone_contrast)
    a["photons"] = _lerp(g["photons"], config.photons_per_mm2)
    return a, sides


def _to_anatomy(a, y, x):
    """Image mm (from the image centre, y down, x right) -> the patient's frame (centred, unrotated)."""
    c, s = jnp.cos(a["angle"]), jnp.sin(a["angle"])
    dy, dx = y - a["cy"], x - a["cx"]
    return c * dy + s * dx, -s * dy + c * dx


def _to_image(a, y, x):
    """Inverse of `_to_anatomy`."""
    c, s = jnp.cos(a["angle"]), jnp.sin(a["angle"])
    return a["cy"] + c * y - s * x, a["cx"] + s * y + c * x


def _heart_form(a, y, x):
    return ellipse_form(y, x, (a["heart_y"], a["heart_x"]), (a["heart_sy"], a["heart_sx"]), a["heart_angle"])


def _hemithorax(sp, y, xi):
    """A lung field's outline without the heart: ``(v, lateral xi, medial xi, diaphragm y)`` at each point."""
    v = y - sp["apex"]
    height = sp["cp"] - sp["apex"]
    # Both walls leave the apex vertically (a rounded apex); the lateral
    # one reaches the full width half-way down, the medial one sooner.
    lateral = sp["xi_apex"] + (sp["wlat"] - sp["xi_apex"]) * _circ(v / (0.55 * height))
    medial = sp["xi_apex"] - (sp["xi_apex"] - sp["med"]) * _circ(v / (0.2 * height))
    # The dome: highest at xi_dome, down to the costophrenic angle at the
    # lateral wall (y = cp) and to the cardiophrenic angle medially.
    out = (xi - sp["xi_dome"]) / (sp["wlat"] - sp["xi_dome"])
    inward = (sp["xi_dome"] - xi) / (sp["xi_dome"] - sp["med"])
    drop = jnp.where(xi > sp["xi_dome"], (sp["cp"] - sp["dome"]) * out * out, sp["hmed"] * inward * inward)
    diaphragm = sp["dome"] + drop
    return v, lateral, medial, diaphragm


def _lung_level(a, sp, y, x):
    """Signed level of a lung field, about mm inside (> 0) or outside, at anatomical ``(y, x)``.

    The lung of side ``sp`` (parameters of that side, broadcastable against
    ``y`` and ``x``): the hemithorax outline minus the heart and the
    mediastinal bulge. A minimum of such levels, so linear interpolation
    keeps every part's sign (a lung pixel is never a heart pixel).
    """
    xi = sp["sigma"] * x
    v, lateral, medial, diaphragm = _hemithorax(sp, y, xi)
    heart_out = (_heart_form(a, y, x) - 1.0) * (0.5 * a["heart_sy"])
    bump_q = ellipse_form(y, xi, (sp["bump_y"], sp["bump_xi"]), (sp["bump_sy"], sp["bump_sx"]), 0.0)
    bump_out = (bump_q - 1.0) * (0.5 * sp["bump_sx"])
    return jnp.minimum(
        jnp.minimum(jnp.minimum(v, lateral - xi), jnp.minimum(xi - medial, diaphragm - y)),
        jnp.minimum(heart_out, bump_out),
    )


def _zone_of(sp, y):
    """Zone code (`ZONES`) of anatomical height ``y`` in the lung ``sp``: thirds from apex to costophrenic angle."""
    third = 3.0 * (y - sp["apex"]) / (sp["cp"] - sp["apex"])
    return jnp.clip(jnp.floor(third), 0, 2).astype(jnp.int32)


def _stack_index(y, y0, spacing, c):
    """Continuous index ``k`` of a stack placed at ``y0 + spacing (k + c k^2)``, and the vertical mm to the nearest member."""
    u = (y - y0) / spacing
    k = (jnp.sqrt(jnp.maximum(1.0 + 4.0 * c * u, 0.0)) - 1.0) / (2.0 * c)
    nearest = jnp.round(k)
    return nearest, (k - nearest) * spacing * (1.0 + 2.0 * c * nearest)


def _tube(d2, radius, cortex, depth_ratio):
    """Bone thickness (mm, cortical equivalent) of a tube of ``radius`` at squared distance ``d2`` from its axis."""
    outer = jnp.sqrt(jnp.maximum(radius * radius - d2, 0.0))
    inner_radius = jnp.maximum(radius - cortex, 0.0)
    inner = jnp.sqrt(jnp.maximum(inner_radius * inner_radius - d2, 0.0))
    return 2.0 * depth_ratio * (outer - inner + _TRABECULAR * inner)


def _ribs(sp, y, xi, s):
    """Posterior and anterior rib arcs of the side ``sp`` (per pixel): bone mm."""
    cage = sp["cage"]
    t = xi / cage
    y0, spacing, c = sp["rib_y0"], sp["rib_s"], sp["rib_c"]
    ra, rb = sp["rib_a"], sp["rib_b"]
    # Posterior arcs: rise from the spine, turn down steeply at the lateral wall.
    arc = ra * (t * t - t) + rb * t**6
    slope = (ra * (2.0 * t - 1.0) + 6.0 * rb * t**5) / cage
    k, dv = _stack_index(y - arc, y0, spacing, c)
    d2 = dv * dv / (1.0 + slope * slope)
    end = 1.02 - 0.25 * jnp.maximum(k - 9.0, 0.0)  # ribs 11 and 12 float, shorter
    window = jnp.clip((t - 0.08) / 0.06, 0.0, 1.0) * jnp.clip((end - t) / 0.04, 0.0, 1.0)
    window = jnp.where((k >= 0) & (k < _POSTERIOR_RIBS), window, 0.0)
    posterior = window * _tube(d2, 5.2 * s * (1.0 + 0.03 * k), 1.4, 0.85)
    # Anterior arcs: fainter, flat, from the lateral wall down and in to the
    # costal cartilages (invisible), which start further out for lower ribs.
    inward = 1.0 - t
    arc = rb + sp["ant_a"] * inward + 12.0 * s * inward * inward
    slope = -(sp["ant_a"] + 24.0 * s * inward) / cage
    k, dv = _stack_index(y - arc, y0, spacing, c)
    d2 = dv * dv / (1.0 + slope * slope)
    start = 0.2 + 0.035 * k
    window = jnp.clip((t - start) / 0.06, 0.0, 1.0) * jnp.clip((1.03 - t) / 0.04, 0.0, 1.0)
    window = jnp.where((k >= 0) & (k < _ANTERIOR_RIBS), window, 0.0)
    anterior = window * _tube(d2, 6.5 * s, 1.0, 0.6)
    return posterior + anterior


def _clavicle(sp, y, xi, s):
    """The clavicle of the side ``sp``: an S-shaped tube with rounded ends, bone mm."""
    length = sp["clav_xl"] - sp["clav_xm"]
    t = (xi - sp["clav_xm"]) / length
    tc = jnp.clip(t, 0.0, 1.0)
    rise = sp["clav_yl"] - sp["clav_ym"]
    centre = sp["clav_ym"] + rise * tc + sp["clav_s"] * tc * (1.0 - tc) * (1.0 - 2.0 * tc)
    slope = (rise + sp["clav_s"] * (1.0 - 6.0 * tc + 6.0 * tc * tc)) / length
    dv = y - centre
    beyond = (t - tc) * length
    d2 = dv * dv / (1.0 + slope * slope) + beyond * beyond
    return _tube(d2, (9.0 - 2.5 * tc) * s, 1.6, 0.9)


def _spine(a, sp, y, x, s):
    """Vertebral bodies (end plates, cortex), pedicles and spinous processes: bone mm.

    The vertebrae stack with the ribs: rib k leaves vertebra k.
    """
    dx = x - a["spine_x"]
    radius = jnp.clip(17.0 * s + 0.015 * (y - sp["apex"]), 12.0 * s, 24.0 * s)
    period = sp["rib_s"]
    k, dv = _stack_index(y, sp["rib_y0"] - 4.0 * s, period, sp["rib_c"])
    local = dv / (period * (1.0 + 2.0 * sp["rib_c"] * k))  # in [-0.5, 0.5] of the vertebra's height
    half = 0.4 - jnp.abs(local)  # > 0 in the body, < 0 in the disc
    body = jnp.clip(half * period / 1.5, 0.0, 1.0)
    plate = jnp.clip(1.0 - half * period / 2.5, 0.0, 1.0) * body
    d2 = dx * dx
    column = body * _tube(d2, radius, 2.0, 0.45) + plate * 0.15 * jnp.sqrt(jnp.maximum(radius * radius - d2, 0.0))
    # Pedicles: cortical rings seen end-on in the upper half of each body.
    py = (local + 0.12) * period
    px = jnp.abs(dx) - 0.72 * radius
    outer = jnp.clip((1.0 - jnp.square(px / (4.5 * s)) - jnp.square(py / (6.5 * s))) * 3.0, 0.0, 1.0)
    inner = jnp.clip((1.0 - jnp.square(px / (2.5 * s)) - jnp.square(py / (4.5 * s))) * 3.0, 0.0, 1.0)
    pedicles = 5.0 * s * (outer - (1.0 - _TRABECULAR) * inner)
    spinous_q = jnp.square(dx / (4.0 * s)) + jnp.square((local - 0.3) * period / (7.0 * s))
    spinous = 4.0 * s * jnp.clip((1.0 - spinous_q) * 3.0, 0.0, 1.0)
    return column + pedicles + spinous


def _vessels(sp, y, xi, wiggle, s):
    """Pulmonary vessels (soft-tissue mm) radiating from the hilum of the side ``sp`` and tapering outwards.

    Two sets of rays, ``cos(n theta + wiggle)`` ridges about the hilum with
    smooth random wiggles (crossing sets read as branches); a ridge's
    angular width shrinks as ``1 / r`` so that a vessel's calibre, not its
    angle, sets its width: ``2.5 mm`` half-width at the hilum, tapering to
    ~1 mm at 150 mm. Where the rays converge they merge into the hilar
    shadow.
    """
    dy, dx = y - sp["hilum_y"], xi - sp["hilum_xi"]
    r = jnp.sqrt(dy * dy + dx * dx) + 1e-3
    theta = jnp.arctan2(dy, dx)
    half_width = 2.5 * s * jnp.maximum(1.0 - r / (250.0 * s), 0.3)
    total = 0.0
    for n, field, weight in ((28, wiggle[0], 1.0), (47, wiggle[1], 0.6)):
        kappa = 2.0 * jnp.square(r / (n * half_width))
        ridge = jnp.maximum(1.0 - (1.0 - jnp.cos(n * theta + 0.8 * field)) * kappa, 0.0)
        total = total + weight * ridge
    return 6.0 * half_width * total  # vessels overlap along a ray: several calibres deep


def _capsule_chord(y, x, y0, x0, y1, x1, radius):
    """Chord (mm) through a tube of ``radius`` around the segment ``(y0, x0) - (y1, x1)``, rounded ends."""
    ly, lx = y1 - y0, x1 - x0
    t = jnp.clip(((y - y0) * ly + (x - x0) * lx) / (ly * ly + lx * lx), 0.0, 1.0)
    dy, dx = y - y0 - t * ly, x - x0 - t * lx
    return radius * chord((dy * dy + dx * dx) / (radius * radius))


def _body(a, sp, y, x):
    """Soft-tissue thickness (mm) of the torso: neck, shoulders, chest, upper abdomen."""
    s = a["scale"]
    apex = sp["apex"]
    neck, shoulder, chest = 55.0 * s, a["body_b"] + 35.0 * s, a["body_b"]
    half_width = (
        neck
        + (shoulder - neck) * _smoothstep((y - apex + 85.0 * s) / (55.0 * s))
        - (shoulder - chest) * _smoothstep((y - apex + 20.0 * s) / (110.0 * s))
        - 6.0 * s * _smoothstep((y - sp["cp"]) / (80.0 * s))
    )
    depth = 110.0 * s + (a["body_d"] - 110.0 * s) * _smoothstep((y - apex + 85.0 * s) / (90.0 * s))
    u = x / half_width
    u2 = u * u
    # A superellipse cross-section (exponent 4): a chest is flatter than an ellipse.
    return depth * jnp.sqrt(jnp.sqrt(jnp.maximum(1.0 - u2 * u2, 0.0)))


# --------------------------------------------------------------------------- findings


def _slot_constants(config: ChestPhantomConfig):
    """Per-slot forced values from ``config.findings`` (numpy; -1 or NaN: drawn)."""
    n = config.num_slots
    forced = {"type": np.full(n, -1), "lung": np.full(n, -1), "zone": np.full(n, -1), "size": np.full(n, np.nan)}
    for i, spec in enumerate(config.findings):
        forced["type"][i] = FINDING_TYPES.index(spec.type)
        forced["lung"][i] = -1 if spec.lung is None else LUNGS.index(spec.lung)
        forced["zone"][i] = -1 if spec.zone is None else ZONES.index(spec.zone)
        forced["size"][i] = np.nan if spec.size_mm is None else spec.size_mm
    return forced


def _draw_findings(g, u, candidates, a, sides, config: ChestPhantomConfig, *, fov_mm):
    """Types, sides, zones, sizes, shapes and centres of the finding slots (arrays ``[F]``)."""
    n = config.num_slots
    forced = _slot_constants(config)
    index = jnp.arange(n)
    if config.findings:
        active = jnp.ones(n, bool)
    else:
        count = jnp.minimum(jnp.floor(g["num_findings"] * config.max_findings), config.max_findings - 1) + 1
        active = (g["has_finding"] < config.finding_probability) & (index < count)
    cumulative = np.cumsum(config.type_probabilities)[:-1]
    kind = jnp.sum(u["type"][:, None] >= jnp.asarray(cumulative, jnp.float32)[None, :], axis=1)
    kind = jnp.where(forced["type"] >= 0, forced["type"], kind).astype(jnp.int32)
    lung = jnp.where(forced["lung"] >= 0, forced["lung"], (u["lung"] >= 0.5).astype(jnp.int32))
    # One effusion per lung: a second one moves to the other lung or, if
    # both have one, becomes a nodule (only random slots can collide).
    for i in range(1, n):
        def taken(side, i=i):
            return jnp.any((kind[:i] == _EFFUSION) & active[:i] & (lung[:i] == side))
        clash = (kind[i] == _EFFUSION) & taken(lung[i])
        other = 1 - lung[i]
        lung = lung.at[i].set(jnp.where(clash & ~taken(other), other, lung[i]))
        kind = kind.at[i].set(jnp.where(clash & taken(other), _NODULE, kind[i]))
    zone = jnp.where(forced["zone"] >= 0, forced["zone"], jnp.minimum(jnp.floor(3.0 * u["zone"]), 2.0).astype(jnp.int32))
    zone = jnp.where(kind == _EFFUSION, 2, zone)

    lo, hi = config.nodule_size_mm
    sizes = jnp.stack(
        [
            jnp.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u["size"]),
            _lerp(u["size"], config.mass_size_mm),
            _lerp(u["size"], config.consolidation_size_mm),
            _lerp(u["size"], config.effusion_height_mm),
        ]
    )
    size = jnp.take_along_axis(sizes, kind[None, :], axis=0)[0]
    size = jnp.where(np.isnan(forced["size"]), size, np.nan_to_num(forced["size"]))
    aspect = jnp.where(kind == _CONSOLIDATION, 0.6, jnp.where(kind == _MASS, 0.7, 0.8)) + (
        jnp.where(kind == _CONSOLIDATION, 0.4, jnp.where(kind == _MASS, 0.3, 0.2)) * u["aspect"]
    )
    semi_long = size / (1.0 + aspect)  # long + short diameter = 2 * size
    lobulation = jnp.where(kind == _MASS, 0.06 + 0.08 * u["lobulation"], jnp.where(kind == _NODULE, 0.04 * u["lobulation"], 0.0))

    # Placement: candidate centres uniform in the lung's zone band (between
    # the mediastinum and the lateral wall); the first whose outline (8 rim
    # points) lies in the lung and in the field of view, else the best one.
    sp = {k: v[lung] for k, v in sides.items()}
    height = sp["cp"] - sp["apex"]
    band = sp["apex"] + zone * height / 3.0
    cy = band[:, None] + candidates[..., 0] * (height / 3.0)[:, None]
    cxi = sp["med"][:, None] + candidates[..., 1] * (sp["wlat"] - sp["med"])[:, None]
    rim = jnp.where(kind <= _MASS, semi_long + 1.0, 0.3 * semi_long)
    angles = np.concatenate([[0.0], np.linspace(0.0, 2.0 * np.pi, _RIM, endpoint=False)])
    reach = np.concatenate([[0.0], np.ones(_RIM)])
    rim_y = np.reshape(reach * np.cos(angles), (1, 1, -1)).astype(np.float32)  # the centre, then the outline
    rim_x = np.reshape(reach * np.sin(angles), (1, 1, -1)).astype(np.float32)
    py = cy[..., None] + rim[:, None, None] * rim_y
    pxi = cxi[..., None] + rim[:, None, None] * rim_x
    px = sp["sigma"][:, None, None] * pxi
    spp = {k: v[:, None, None] for k, v in sp.items()}
    iy, ix = _to_image(a, py, px)
    margin = jnp.minimum(0.5 * fov_mm[0] - jnp.abs(iy), 0.5 * fov_mm[1] - jnp.abs(ix))
    score = jnp.min(jnp.minimum(_lung_level(a, spp, py, px), margin), axis=-1)  # [F, K]
    order = jnp.arange(_CANDIDATES, dtype=jnp.float32)
    best = jnp.argmax(jnp.where(score > 0.5, 1e6 - order, score), axis=-1)
    centre_y = jnp.take_along_axis(cy, best[:, None], axis=1)[:, 0]
    centre_x = sp["sigma"] * jnp.take_along_axis(cxi, best[:, None], axis=1)[:, 0]
    return {
        "active": active, "type": kind, "lung": lung, "zone": zone, "size": size,
        "semi_long": semi_long, "semi_short": aspect * semi_long, "angle": math.pi * u["angle"],
        "lobulation": lobulation, "density": 0.45 + 0.35 * u["density"],
        "centre_y": centre_y, "centre_x": centre_x, "sides": sp,
    }  # fmt: skip


def _finding_fields(f, i, a, y, x, patch):
    """Slot ``i`` at render pixels: mask level (> 0 inside), solid thickness (mm), air occupancy; ``[h, w]`` each.

    One slot at a time, summed by the caller: over a slot axis XLA:CPU
    makes these reductions inside loop fusions, several times slower than
    the same work unrolled.
    """
    col = {k: v[i] for k, v in f.items() if k != "sides"}
    sp = {k: v[i] for k, v in f["sides"].items()}
    kind = col["type"]
    dy, dx = y - col["centre_y"], x - col["centre_x"]
    c, s = jnp.cos(col["angle"]), jnp.sin(col["angle"])
    u, v = c * dy + s * dx, -s * dy + c * dx
    q = jnp.square(u / col["semi_long"]) + jnp.square(v / col["semi_short"])
    r2 = u * u + v * v + 1e-6
    cos3 = u * (4.0 * u * u - 3.0 * r2) * jax.lax.rsqrt(r2 * r2 * r2)  # cos(3 theta) in the finding's frame
    q = jnp.where(kind == _CONSOLIDATION, q / jnp.maximum(1.0 + 0.5 * patch[0], 0.35), q * (1.0 + col["lobulation"] * cos3))
    # Effusion: a meniscus rising along the lateral wall to size above the
    # costophrenic angle, over a layer at least 0.2 size deep on the dome.
    xi = sp["sigma"] * x
    _, _, _, diaphragm = _hemithorax(sp, y, xi)
    out = jnp.clip((xi - sp["xi_dome"]) / (sp["wlat"] - sp["xi_dome"]), 0.0, 1.0)
    meniscus = jnp.minimum(sp["cp"] - col["size"] * (0.35 + 0.65 * out * out), diaphragm - 0.2 * col["size"])
    fluid = (y - meniscus) / 10.0
    level = jnp.where(kind == _EFFUSION, fluid, 1.0 - q)
    here = col["active"] & (xi > 0)
    solid = jnp.where(here & (kind <= _MASS), col["size"] * jnp.sqrt(jnp.maximum(1.0 - q, 0.0)), 0.0)
    patchy = col["density"] * jnp.clip((1.0 - q) / 0.6, 0.0, 1.0) * jnp.clip(0.6 + 0.4 * patch[1], 0.2, 1.0)
    occupancy = jnp.where(kind == _EFFUSION, 0.95 * jnp.clip(fluid, 0.0, 1.0), jnp.where(kind == _CONSOLIDATION, patchy, 0.0))
    return level, solid, jnp.where(here, jnp.clip(occupancy, 0.0, 0.97), 0.0)


# --------------------------------------------------------------------------- sampler

_CENTROID_STRIDE = 4  # render pixels between the samples an effusion's centroid is taken from


def _words(config: ChestPhantomConfig) -> dict[str, tuple[int, ...]]:
    """Random words `sample_chest` consumes, by block."""
    h, w = config.shape
    cells = max(4, round(min(config.shape) * config.spacing_mm / 12.0))  # texture cells of about 12 mm
    return {
        "geometry": (len(_GEOMETRY),),
        "slots": (config.num_slots, len(_SLOT)),
        "candidates": (config.num_slots, _CANDIDATES, 2),
        "fields": (2, cells, cells),
        "noise": ((h + 5) // 4, w + 2),  # four pixels per word (rows 4 apart), see `_draw.irwin_hall_normal`
    }


def sample_chest(key: jax.Array, config: ChestPhantomConfig) -> dict[str, jax.Array]:
    """Draws one PA chest radiograph phantom (kind ``"chest"``).

    Pure and jittable with ``config`` static; batch it with
    ``jax.vmap(functools.partial(sample_chest, config=config))(keys)``, or
    use ``make_dataset(key, n, kind="chest", config=config)``.

    Args:
        key: PRNG key.
        config: the phantom's settings.

    Returns:
        A dict, with ``(H, W) = config.shape`` and ``F = config.num_slots``:

        * ``"image"``: float32 ``[H, W, 1]`` in ``[0, 1]`` (bright = dense);
        * ``"right_lung"``, ``"left_lung"``, ``"heart"``: bool ``[H, W]``
          (the patient's sides; lungs and heart disjoint);
        * ``"finding_masks"``: bool ``[F, H, W]``, each within its lung;
        * ``"finding_valid"``: bool ``[F]``: the slot holds a finding
          (drawn, and visible in the field of view);
        * ``"finding_type"``, ``"finding_lung"``, ``"finding_zone"``: int32
          ``[F]``, codes into `FINDING_TYPES`, `LUNGS`, `ZONES` (-1 where not
          valid);
        * ``"finding_size_mm"``: float32 ``[F]`` (0 where not valid);
        * ``"finding_centre_px"``: float32 ``[F, 2]``, ``(row, column)``,
          pixel ``(i, j)``'s centre at ``(i, j)``;
        * ``"finding_centre_mm"``: float32 ``[F, 2]``, the same in mm from
          pixel ``(0, 0)``'s centre (``centre_px * pixel_spacing_mm``);
        * ``"num_findings"``: int32 ``[]``; ``"has_finding"``: bool ``[]``;
        * ``"pixel_spacing_mm"``: float32 ``[]``;
        * ``"cardiothoracic_ratio"``: float32 ``[]``, the heart's greatest
          width over the lungs' (inner rib cage's) greatest width;
        * ``"posterior_ribs"``: int32 ``[]``, posterior ribs whose centre
          line crosses above the right dome's peak (inspiration);
        * ``"rotation_deg"``: float32 ``[]``, the in-plane rotation.
    """
    h_out, w_out = config.shape
    factor = config.render_factor
    spacing = config.spacing_mm
    shape = (h_out // factor, w_out // factor)
    num_slots = config.num_slots
    words = random_words(key, _words(config))
    g = _named(words["geometry"], _GEOMETRY)
    a, sides = _anatomy(g, config)
    s = a["scale"]
    fov = (h_out * spacing, w_out * spacing)

    # Render grid, mm from the image centre, then the patient's frame; one
    # render pixel beyond each edge, for the interpolation to the output grid.
    step = spacing * factor
    ry = ((jnp.arange(shape[0] + 2, dtype=jnp.float32) - 0.5 - 0.5 * shape[0]) * step)[:, None]
    rx = ((jnp.arange(shape[1] + 2, dtype=jnp.float32) - 0.5 - 0.5 * shape[1]) * step)[None, :]
    y, x = _to_anatomy(a, ry, rx)
    left = x > 0
    sp = {k: jnp.where(left, v[1], v[0]) for k, v in sides.items()}
    xi = sp["sigma"] * x

    # Lungs: air along each ray through the hemithorax, less what the heart,
    # the mediastinal bulge, the hila and the vessels displace.
    v, lateral, medial, diaphragm = _hemithorax(sp, y, xi)
    height = sp["cp"] - sp["apex"]
    width = jnp.maximum(lateral - medial, 1.0)
    r = 2.0 * (xi - medial) / width - 1.0
    lens = jnp.sqrt(jnp.sqrt(jnp.maximum(1.0 - r * r, 0.0)))
    depth = a["lung_depth"] * (0.4 + 0.6 * _circ(v / (0.6 * height)))
    lung_air = jnp.where(v > 0, depth * lens * jnp.sqrt(jnp.clip((diaphragm - y) / 10.0, 0.0, 1.0)), 0.0)
    heart_q = _heart_form(a, y, x)
    heart = 0.5 * a["heart_depth"] * chord(heart_q)
    bump_q = ellipse_form(y, xi, (sp["bump_y"], sp["bump_xi"]), (sp["bump_sy"], sp["bump_sx"]), 0.0)
    bump = 30.0 * s * chord(bump_q)
    hilum_q = ellipse_form(y, xi, (sp["hilum_y"], sp["hilum_xi"]), (34.0 * s, 18.0 * s), 0.0)
    hilum = 12.0 * s * jnp.square(jnp.maximum(1.0 - hilum_q, 0.0))
    fields = smooth_fields(words["fields"], (shape[0] + 2, shape[1] + 2))
    vessels = _vessels(sp, y, xi, fields, s) * lens
    retained = 0.12 * lung_air  # lung behind the heart and in front of it
    air = jnp.maximum(lung_air - heart - bump - hilum - vessels, retained)

    # Findings displace air in their lung.
    f = _draw_findings(g, _named(words["slots"], _SLOT), uniform(words["candidates"]), a, sides, config, fov_mm=fov)
    levels, solid, kept = [], 0.0, 1.0
    for i in range(num_slots):
        # The vessels' textures serve for the patches of consolidation too.
        level_i, solid_i, occupancy_i = _finding_fields(f, i, a, y, x, fields)
        levels.append(level_i)
        solid = solid + solid_i
        kept = kept * (1.0 - occupancy_i)
    air = jnp.maximum(air - solid, 0.0) * kept * a["air"]

    # Airways and the gastric bubble (pure air).
    car_y, car_x = a["carina_y"], a["trachea_x"]
    air = air + _capsule_chord(y, x, -400.0, car_x, car_y, car_x, 8.5 * s)
    air = air + _capsule_chord(y, x, car_y, car_x, car_y + 22.0 * s, car_x - 26.0 * s, 7.0 * s)
    air = air + _capsule_chord(y, x, car_y, car_x, car_y + 35.0 * s, car_x + 36.0 * s, 6.0 * s)
    bubble_centre = (sides["dome"][1] + 26.0 * s, 0.5 * sides["wlat"][1])
    bubble_q = ellipse_form(y, x, bubble_centre, (14.0 * s * a["bubble_s"], 26.0 * s * a["bubble_s"]), 0.1)
    air = air + a["bubble"] * 18.0 * s * a["bubble_s"] * chord(bubble_q)

    # Midline structures take the mean of the sides (no step at the midline).
    mid = {k: 0.5 * (v[0] + v[1]) for k, v in sides.items()}
    bone = _ribs(sp, y, xi, s) + _clavicle(sp, y, xi, s) + _spine(a, mid, y, x, s)
    p = _MU_SOFT * jnp.maximum(_body(a, mid, y, x) - air, 0.0) + _MU_BONE * a["bone"] * bone

    # Film curve; the lung level (a min of levels, so a lung pixel is never a heart pixel).
    offset = _FILM_P0 + jnp.log(a["exposure"])
    film = jnp.exp(-a["gamma"] * (p - offset))
    lung_level = _lung_level(a, sp, y, x)  # its parts are the ones above: XLA computes them once
    full = upsample_linear(jnp.stack([1.0 - film, lung_level, *levels]), factor, padded=True)

    # Per output pixel. Quantum noise: Gaussian in p with variance exp(p) / N0,
    # through the film curve: std gamma film exp(p / 2) / sqrt(N0), which is
    # gamma exp(offset / 2) film^(1 - 1 / (2 gamma)) / sqrt(N0) in terms of the film.
    photons = a["photons"] * a["exposure"] * spacing * spacing
    film_full = jnp.maximum(1.0 - full[0], 1e-3)
    beta = 1.0 - 0.5 / a["gamma"]
    noise_std = a["gamma"] * jnp.exp(0.5 * offset) * jax.lax.rsqrt(photons) * jnp.exp(beta * jnp.log(film_full))
    z = jnp.reshape(irwin_hall_normal(words["noise"], terms=2), (-1, w_out + 2))[: h_out + 2]
    z = binomial_blur(z, padded=True) * np.float32(16.0 / 6.0)  # unit variance again
    # Computed with its channel axis: added afterwards, XLA:CPU copies the image.
    image = jnp.clip(full[0][..., None] + noise_std[..., None] * z[..., None], 0.0, 1.0)
    rows = (jnp.arange(h_out, dtype=jnp.float32) + 0.5 - 0.5 * h_out)[:, None] * spacing
    cols = (jnp.arange(w_out, dtype=jnp.float32) + 0.5 - 0.5 * w_out)[None, :] * spacing
    y_full, x_full = _to_anatomy(a, rows, cols)
    in_lung = full[1] > 0
    right_lung, left_lung = in_lung & (x_full <= 0), in_lung & (x_full > 0)
    heart_mask = (_heart_form(a, y_full, x_full) < 1.0) & ~in_lung  # ~in_lung: only where rounding disagrees
    slot_lung = jnp.where((f["lung"] == 1)[:, None, None], left_lung[None], right_lung[None])
    finding_masks = (full[2:] > 0) & slot_lung & f["active"][:, None, None]
    valid = jnp.any(finding_masks, axis=(1, 2))

    # Centres: the drawn centre, or for an effusion the centroid of its
    # mask, sampled every few render pixels (in output pixels).
    stride = _CENTROID_STRIDE
    sub = (slice(1, -1, stride), slice(1, -1, stride))
    ri = ((jnp.arange(0, shape[0], stride, dtype=jnp.float32) + 0.5) * factor - 0.5)[:, None]
    ci = ((jnp.arange(0, shape[1], stride, dtype=jnp.float32) + 0.5) * factor - 0.5)[None, :]
    centroids = []
    for i in range(num_slots):
        side = (x[sub] > 0) == (f["lung"][i] == 1)
        weight = ((levels[i][sub] > 0) & (lung_level[sub] > 0) & side).astype(jnp.float32)
        total = jnp.maximum(jnp.sum(weight), 1.0)
        centroids.append(jnp.stack([jnp.sum(weight * ri), jnp.sum(weight * ci)]) / total)
    centroid = jnp.stack(centroids)
    cy_img, cx_img = _to_image(a, f["centre_y"], f["centre_x"])
    drawn = jnp.stack([cy_img / spacing + 0.5 * h_out - 0.5, cx_img / spacing + 0.5 * w_out - 0.5], -1)
    centre_px = jnp.where((f["type"] == _EFFUSION)[:, None], centroid, drawn)
    # The zone at the centre; an effusion's is its lung's base by definition.
    centre_mm = (centre_px[:, 0] + 0.5 - 0.5 * h_out) * spacing, (centre_px[:, 1] + 0.5 - 0.5 * w_out) * spacing
    ay, _ = _to_anatomy(a, *centre_mm)
    zone = jnp.where(f["type"] == _EFFUSION, 2, _zone_of(f["sides"], ay))

    # Truths for reports: cardiothoracic ratio, posterior ribs above the right dome.
    ch, sh = jnp.cos(a["heart_angle"]), jnp.sin(a["heart_angle"])
    heart_width = 2.0 * jnp.sqrt(jnp.square(a["heart_sx"] * ch) + jnp.square(a["heart_sy"] * sh))
    ctr = heart_width / (sides["wlat"][0] + sides["wlat"][1])
    t_dome = sides["xi_dome"][0] / sides["cage"][0]
    ks = jnp.arange(_POSTERIOR_RIBS, dtype=jnp.float32)
    rib_y = sides["rib_y0"][0] + sides["rib_s"][0] * (ks + sides["rib_c"][0] * ks * ks)
    rib_y = rib_y + sides["rib_a"][0] * (t_dome * t_dome - t_dome) + sides["rib_b"][0] * t_dome**6
    ribs_above = jnp.sum(rib_y < sides["dome"][0]).astype(jnp.int32)

    def masked(values, fill):
        return jnp.where(valid, values, fill)

    return {
        "image": image,
        "right_lung": right_lung,
        "left_lung": left_lung,
        "heart": heart_mask,
        "finding_masks": finding_masks,
        "finding_valid": valid,
        "finding_type": masked(f["type"], -1).astype(jnp.int32),
        "finding_lung": masked(f["lung"], -1).astype(jnp.int32),
        "finding_zone": masked(zone, -1).astype(jnp.int32),
        "finding_size_mm": masked(f["size"], 0.0).astype(jnp.float32),
        "finding_centre_px": jnp.where(valid[:, None], centre_px, 0.0).astype(jnp.float32),
        "finding_centre_mm": jnp.where(valid[:, None], centre_px * spacing, 0.0).astype(jnp.float32),
        "num_findings": jnp.sum(valid).astype(jnp.int32),
        "has_finding": jnp.any(valid),
        "pixel_spacing_mm": jnp.asarray(spacing, jnp.float32),
        "cardiothoracic_ratio": ctr.astype(jnp.float32),
        "posterior_ribs": ribs_above,
        "rotation_deg": jnp.degrees(a["angle"]).astype(jnp.float32),
    }


# --------------------------------------------------------------------------- truth record (host)


def _region_record(mask: np.ndarray, spacing: float) -> dict:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return {"area_mm2": 0.0, "centroid_px": None, "bbox_px": None}
    return {
        "area_mm2": round(float(rows.size * spacing * spacing), 1),
        "centroid_px": [round(float(rows.mean()), 2), round(float(cols.mean()), 2)],
        "bbox_px": [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1],
    }


def chest_truth(sample: Mapping[str, np.ndarray]) -> dict:
    """The truth of one chest phantom as a JSON-ready record (host side, numpy).

    Args:
        sample: one sample's arrays, as `sample_chest` returns them (no
            batch axis); for a data set ``d``, ``chest_truth({k: v[i] for k,
            v in d.items()})``.

    Returns:
        ``{"pixel_spacing_mm", "shape", "orientation", "regions": {name:
        {"area_mm2", "centroid_px", "bbox_px"}}, "findings": [{"type",
        "lung", "zone", "size_mm", "centre_px", "centre_mm", "area_mm2",
        "mask_index"}, ...], "measurements": {"cardiothoracic_ratio",
        "posterior_ribs", "rotation_deg"}}``: Python scalars, lists and
        strings only. Pixel coordinates are ``(row, column)``; ``bbox_px``
        is ``[row0, col0, row1, col1)``; ``mask_index`` is the finding's
        index in ``sample["finding_masks"]``.
    """
    spacing = float(sample["pixel_spacing_mm"])
    findings = []
    for i in np.flatnonzero(np.asarray(sample["finding_valid"])):
        findings.append(
            {
                "type": FINDING_TYPES[int(sample["finding_type"][i])],
                "lung": LUNGS[int(sample["finding_lung"][i])],
                "zone": ZONES[int(sample["finding_zone"][i])],
                "size_mm": round(float(sample["finding_size_mm"][i]), 2),
                "centre_px": [round(float(c), 2) for c in sample["finding_centre_px"][i]],
                "centre_mm": [round(float(c), 2) for c in sample["finding_centre_mm"][i]],
                "area_mm2": round(float(np.count_nonzero(sample["finding_masks"][i]) * spacing * spacing), 1),
                "mask_index": int(i),
            }
        )
    return {
        "pixel_spacing_mm": spacing,
        "shape": [int(n) for n in np.shape(sample["right_lung"])],
        "orientation": "PA; rows superior to inferior; patient's right on the image left",
        "regions": {name: _region_record(np.asarray(sample[name]), spacing) for name in REGIONS},
        "findings": findings,
        "measurements": {
            "cardiothoracic_ratio": round(float(sample["cardiothoracic_ratio"]), 3),
            "posterior_ribs": int(sample["posterior_ribs"]),
            "rotation_deg": round(float(sample["rotation_deg"]), 2),
        },
    }
