"""Tissues of the MRI phantoms: T2-weighted signal and ADC per tissue label.

`TISSUES` are those of the classic pelvic phantom (`jaxmed.data.phantoms.mri`);
`EXAM_TISSUES` add what the physical-space patient model
(`jaxmed.data.phantoms.patient`) draws besides: BPH nodules, the rectal lumen
and the bladder.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EXAM_TISSUES", "TISSUES", "Tissue"]


class Tissue(NamedTuple):
    """Tissue properties of the MRI phantom.

    Attributes:
        label: value in the ``"tissue"`` map.
        s0: T2-weighted signal, arbitrary units in ``[0, 1]``.
        adc: apparent diffusion coefficient, 1e-3 mm^2/s.
    """

    label: int
    s0: float
    adc: float


# Typical 3 T prostate values: peripheral zone bright on T2 with a high ADC,
# transition zone intermediate, cancer dark on T2 with a low ADC (around
# 0.8e-3 mm^2/s). Air has no signal; its ADC is shown as 0.
TISSUES: dict[str, Tissue] = {
    "background": Tissue(label=0, s0=0.0, adc=0.0),
    "body": Tissue(label=1, s0=0.35, adc=1.4),
    "peripheral_zone": Tissue(label=2, s0=0.85, adc=1.8),
    "transition_zone": Tissue(label=3, s0=0.5, adc=1.25),
    "lesion": Tissue(label=4, s0=0.45, adc=0.75),
}


# Tissues of the physical-space anatomy: the labels of `TISSUES` keep their
# meaning; nodules (benign prostatic hyperplasia, BPH), the rectal lumen (gas)
# and the bladder (urine) are added. Lesion and nodule values are nominal:
# each one draws its own (`sample_patient`).
EXAM_TISSUES: dict[str, Tissue] = {
    **TISSUES,
    "nodule": Tissue(label=5, s0=0.38, adc=1.05),
    "rectum": Tissue(label=6, s0=0.0, adc=0.0),
    "bladder": Tissue(label=7, s0=0.95, adc=2.8),
}
