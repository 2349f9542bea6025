"""The scan-quality check of issue 15, through the command line, on a simulated other head.

What a new user does with ``jaxmed demo``'s checkpoint on scans of another
subject: ``jaxmed score`` on NIfTI volumes, clean and with each artefact
applied slice by slice in 2D k-space at native resolution (severity 0.5);
then ``jaxmed calibrate --force`` on half of the clean volume's slices
(alternate blocks of 4) and ``jaxmed score`` on the other half.

The "other head" is the MNI152 template moved away from itself: scaled
1.06 x 0.95 x 1.02, rotated 4 degrees in plane, gamma 0.9, a +-5% linear bias
and Rician noise (sigma 0.02 of the 99.5th percentile), 52 brain-filled axial
slices at 1 mm. It is not a real second subject (none ships); the real-subject
check is the issue's own.

Command::

    python experiments/scan_quality_cli_check.py CHECKPOINT OUT_DIR [SUBJECT.nii]   # CHECKPOINT: jaxmed-demo/checkpoint

SUBJECT: a real T1 volume to use instead (all its slices; e.g. nibabel's
``tests/data/anatomical.nii``).

Runtime: about 4 minutes on 2 CPU cores shared with other jobs (load 5).
Measured 2026-12-02 with the demo's checkpoint (``summary.json`` in OUT_DIR)::

    AUROC against the subject's own clean slices (52 vs 52 per artefact)
    score             noise  ghosting  motion  blur  bias_field  spike
    log_px             1.00      1.00    0.49  0.01        0.24   1.00
    complexity         1.00      1.00    0.84  0.98        1.00   1.00
    likelihood_ratio   1.00      1.00    0.44  0.01        0.15   1.00

    called abnormal, shipped threshold:       clean 0%, noise 100%, ghosting 71%, motion 4%, blur 0%, bias_field 0%, spike 100%
    after jaxmed calibrate on the even blocks: clean 0%, noise 100%, ghosting 100%, motion 33%, blur 88%, bias_field 100%, spike 100%
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from jaxmed.cli import main as jaxmed
from jaxmed.data import ARTEFACTS, template_path

SEVERITY = 0.5
NUM_SLICES = 52
BLOCK = 4


def other_head(volume: np.ndarray, seed: int = 3) -> np.ndarray:
    """The template moved, re-contrasted, biased and noisy (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centre = (np.asarray(volume.shape) - 1) / 2
    th = np.deg2rad(4.0)
    rotation = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    matrix = rotation @ np.diag([1 / 1.06, 1 / 0.95, 1 / 1.02])
    w = ndimage.affine_transform(volume, matrix, offset=centre - matrix @ centre, order=1)
    w = np.clip(w / np.percentile(w, 99.5), 0, None) ** 0.9
    x = np.linspace(-1, 1, w.shape[0])[:, None, None]
    z = np.linspace(-1, 1, w.shape[2])[None, None, :]
    w = w * (1 + 0.05 * x + 0.04 * z)
    s = 0.02
    return np.sqrt((w + s * rng.standard_normal(w.shape)) ** 2 + (s * rng.standard_normal(w.shape)) ** 2)


def write_volumes(out: Path, subject: Path | None = None) -> dict[str, Path]:
    if subject is None:
        img = nib.load(template_path())
        template = np.asarray(img.get_fdata(), np.float32)
        head = other_head(template).astype(np.float32)
        # 52 brain-filled axial slices (the NIfTI's third axis) around the middle of the brain.
        brain = (template > 0.2 * template.max()).mean(axis=(0, 1))
        filled = np.flatnonzero(brain > 0.1)
        first = filled[len(filled) // 2] - NUM_SLICES // 2
        head = head[:, :, first:first + NUM_SLICES]
        affine = img.affine.copy()
        affine[:3, 3] += affine[:3, 2] * first
    else:
        img = nib.as_closest_canonical(nib.load(subject))  # RAS: the third axis is axial
        head, affine = np.clip(np.asarray(img.get_fdata(), np.float32), 0, None), img.affine
    peak = float(head.max())
    volumes = {"clean": head}
    for name, artefact in ARTEFACTS.items():
        volumes[name] = np.stack([np.asarray(artefact(jax.random.key(i), jnp.asarray(head[:, :, i] / peak),
                                                      severity=SEVERITY)) * peak
                                  for i in range(head.shape[2])], axis=2).astype(np.float32)
    paths = {}
    half = (np.arange(head.shape[2]) // BLOCK) % 2
    for name, v in volumes.items():
        paths[name] = out / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(v, affine), paths[name])
        for b in (0, 1):
            nib.save(nib.Nifti1Image(v[:, :, half == b], affine), out / "half" / f"{name}_{b}.nii.gz")
    return paths


def slice_rows(csv_path: Path) -> dict[str, list[dict]]:
    rows = {}
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            if r["level"] == "slice":
                rows.setdefault(Path(r["file"]).name.split(".")[0].removesuffix("_1"), []).append(r)
    return rows


def main() -> None:
    checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    subject = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    (out / "half").mkdir(parents=True, exist_ok=False)
    paths = write_volumes(out, subject)
    assert jaxmed(["score", "--checkpoint", str(checkpoint), "--out", str(out / "shipped"), "--no-progress",
                   *map(str, paths.values())]) == 0
    rows = slice_rows(out / "shipped.csv")
    auroc = {}
    for score in ("log_px", "complexity", "likelihood_ratio"):
        clean = np.asarray([float(r[score]) for r in rows["clean"]])
        auroc[score] = {}
        for name in ARTEFACTS:
            bad = np.asarray([float(r[score]) for r in rows[name]])
            labels = np.r_[np.zeros(clean.size), np.ones(bad.size)]
            auroc[score][name] = float(roc_auc_score(labels, -np.r_[clean, bad]))

    def flagged(table):
        return {k: float(np.mean([r["decision"] == "abnormal" for r in v])) for k, v in table.items()}

    local = out / "checkpoint"
    shutil.copytree(checkpoint, local)
    assert jaxmed(["calibrate", "--checkpoint", str(local), "--normal", str(out / "half" / "clean_0.nii.gz"),
                   "--force", "--no-progress"]) == 0
    assert jaxmed(["score", "--checkpoint", str(local), "--out", str(out / "local"), "--no-progress",
                   *sorted(map(str, (out / "half").glob("*_1.nii.gz")))]) == 0
    summary = {"subject": str(subject) if subject else "the template moved (other_head)", "severity": SEVERITY,
               "num_slices": len(rows["clean"]), "block": BLOCK, "auroc_vs_own_clean": auroc,
               "flagged_shipped_threshold": flagged(rows), "flagged_after_local_calibration":
               flagged(slice_rows(out / "local.csv"))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
