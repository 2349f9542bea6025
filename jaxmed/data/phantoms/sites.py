"""Acquisition sites of the mpMRI exam phantom: scanner, protocol, grids and image quality (`SiteProfile`, `SITES`).

Four sites by default, by role (`ROLES`): A and B for training, C for
deployment, D never trained on. How a site's settings act on an exam is
described in :mod:`jaxmed.data.phantoms.exams`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ROLES", "SITES", "SiteProfile"]

ROLES = ("train", "deploy", "unseen")

def _triple(name, value, kind=float):
    out = tuple(kind(v) for v in value)
    if len(out) != 3 or min(out) <= 0:
        raise ValueError(f"{name} must be three positive values (z, y, x), got {value}")
    return out


@dataclass(frozen=True, kw_only=True)
class SiteProfile:
    """An acquisition site: scanner, protocol, grids, image quality (see :mod:`jaxmed.data.phantoms.exams` for the physics).

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


