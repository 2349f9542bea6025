"""How strongly each site's preprocessed images show its lesions: per-channel lesion d' of the training sets.

Command (the figures below; they set `ExamAugment.lesion_contrast`'s lower end)::

    python experiments/lesions_site_contrast.py --out runs/lesions-contrast

For each site named (default the study's training sites, A and B; never the
test site D, whose masks would tune the augmentation on the test set) it
draws the first ``--exams`` of the study's own exams of that site (split 0,
the study's data key, 2D as in the study), preprocesses them and, for every
exam whose significant-lesion mask (all its significant lesions together;
one in nearly every 2D slice) has at least 5 voxels, computes per channel
(T2, ADC, DWI) the mask's d' against a 3-voxel ring of covered tissue
around it: ``|mean_lesion - mean_ring| / sqrt((var_lesion + var_ring) / 2)``.
It reports the median over those exams and each site's ratio to the first
site.
Writes summary.json into --out.

Recorded run (the command above; 2 CPU cores; 35 s)::

    | site | exams | T2 d' | ADC d' | DWI d' |
    | A    | 26      | 1.17  | 2.02   | 2.73   |
    | B    | 29      | 0.98  | 1.83   | 1.21   |
    B / A:            0.84    0.91     0.44

The DWI evidence of B's lesions is 0.44 of A's (b 800 against 1400 s/mm^2,
and B's noisier series); their ADC evidence, 0.91 (the fade is one factor
on both, so DWI, the channel that differs, sets it). `ExamAugment`'s default ``lesion_contrast`` is
``(0.44, 1)``: the fade spans the spread the training sites themselves show,
from the weakest to the strongest, and no more. (The b-values agree: a
lesion's log-signal difference on DWI is b times its ADC deficit, so B's b
800 against A's 1400 alone gives 0.57, and B's noisier series takes it
lower.)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import scipy.ndimage as ndi

from jaxmed.io import prepare_out_dir
from jaxmed.tasks.lesions import StudyConfig, study_data_key
from jaxmed.tasks.lesions.data import site_exams

CHANNELS = ("t2", "adc", "dwi")


def lesion_d_prime(image: np.ndarray, mask: np.ndarray, *, ring: int = 3, min_voxels: int = 5) -> np.ndarray | None:
    """Per-channel d' of the lesion ``mask`` (one exam's) against a ``ring``-voxel band of covered tissue around
    it; None when the mask has fewer than ``min_voxels`` voxels."""
    mask = mask > 0.5
    if mask.sum() < min_voxels:
        return None
    band = ndi.binary_dilation(mask, iterations=ring) & ~mask & (image[..., 0] != 0)
    out = []
    for c in range(image.shape[-1]):
        a, b = image[..., c][mask], image[..., c][band]
        out.append(abs(a.mean() - b.mean()) / np.sqrt(0.5 * (a.var() + b.var()) + 1e-12))
    return np.asarray(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/lesions-contrast", help="output folder")
    p.add_argument("--sites", nargs="+", default=["A", "B"], help="sites to measure (default the training sites)")
    p.add_argument("--exams", type=int, default=96, help="exams per site (default 96)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)
    out = prepare_out_dir(args.out, force=args.force)
    config = StudyConfig()
    key = study_data_key(config.train)
    rows = {}
    for site in args.sites:
        exams = site_exams(key, site, args.exams, preprocess=config.train.preprocess, slices=config.slices)
        values = [d for d in map(lesion_d_prime, exams["image"], exams["lesion_mask"]) if d is not None]
        median = np.median(np.stack(values), axis=0)
        rows[site] = {"exams": len(values), **{c: float(v) for c, v in zip(CHANNELS, median)}}
    first = args.sites[0]
    ratios = {s: {c: rows[s][c] / rows[first][c] for c in CHANNELS} for s in args.sites}
    print("| site | exams | T2 d' | ADC d' | DWI d' |")
    for s, r in rows.items():
        print(f"| {s} | {r['exams']} | {r['t2']:.2f} | {r['adc']:.2f} | {r['dwi']:.2f} |")
    for s in args.sites[1:]:
        print(f"{s} / {first}: " + "  ".join(f"{c} {ratios[s][c]:.2f}" for c in CHANNELS))
    (out / "summary.json").write_text(json.dumps({"exams_drawn": args.exams, "sites": rows, "ratio_to_first": ratios},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
