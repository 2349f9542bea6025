"""Exams of the acquisition sites as model inputs and targets (phantoms with known truth).

`site_exams` draws ``n`` exams at a site (`jaxmed.data.phantoms.exams`),
preprocesses them (`jaxmed.tasks.lesions.preprocess`) in fixed-size chunks
(one compilation per site and chunk) and returns, per exam:

* ``"image"`` float32 ``[n, *S, 3]``: T2, ADC, DWI co-registered and z-scored;
* ``"lesion_mask"`` float32 ``[n, *S]``: the clinically significant lesions
  (grade >= 2, PI-CAI's csPCa), the detection target;
* ``"lesion_labels"`` int32 ``[n, *S]``: every lesion, by slot (grade-1
  lesions are lesions, but not targets);
* ``"grade"`` int32 ``[n]``: the exam's ordinal class ``0..4`` = the highest
  grade group of its lesions in the image, with no lesion counted as grade
  group 1 (``class = max(max_grade, 1) - 1``), so ``class >= 1`` is
  ``"significant"``;
* ``"significant"``, ``"has_lesion"`` bool ``[n]``; ``"motion_mm"``
  ``[n, 2]`` (the registration's correction); ``"affine"``, ``"t2_affine"``.

Each site's patients are its own: site ``s`` draws from
``fold_in(key, index of s in SITES)``; ``split`` separates further sets of
one site (a validation set).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmed.data.phantoms import SITES, ExamConfig, SiteProfile, make_dataset
from jaxmed.tasks.lesions.preprocess import PreprocessConfig, preprocess_exams, to_canonical_labels

__all__ = ["TARGET_KEYS", "grade_class", "site_exams", "subset"]

TARGET_KEYS = ("image", "lesion_mask", "grade", "significant")
# Exams drawn and registered per compiled call (compilation dominates small sets: ~30 s per site and shape).
_CHUNK = 16


def grade_class(max_grade: np.ndarray) -> np.ndarray:
    """Ordinal class ``0..4`` from the highest grade group (0 = no lesion): ``max(g, 1) - 1``."""
    return (np.maximum(np.asarray(max_grade), 1) - 1).astype(np.int32)


def _significant_mask(labels: np.ndarray, significant: np.ndarray) -> np.ndarray:
    """Voxels of significant lesions: labels ``[n, ...]`` (slot + 1), significant ``[n, L]``."""
    table = np.concatenate([np.zeros((len(labels), 1), bool), np.asarray(significant, bool)], axis=1)
    return np.take_along_axis(table, labels.reshape(len(labels), -1), axis=1).reshape(labels.shape)


def site_exams(key: jax.Array, site: str | SiteProfile, n: int, *, preprocess: PreprocessConfig,
               slices: int | None = 1, split: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """``n`` preprocessed exams of ``site`` (module docstring).

    Args:
      key: the study's data key.
      site: a key of `jaxmed.data.phantoms.SITES`, or a `SiteProfile` named
        by one: the same patients as that site's, acquired with the
        profile's settings (a changed protocol).
      n: number of exams.
      preprocess: the canonical grid and registration.
      slices: the exams' slices (1: 2D exams; None: the site's stacks).
      split: another set of the same site (0: the main one).
      progress: a progress bar over chunks.
    """
    from tqdm.auto import tqdm

    name = site.name if isinstance(site, SiteProfile) else site
    if name not in SITES:
        raise ValueError(f"unknown site {name!r}; known: {sorted(SITES)}")
    site_key = jax.random.fold_in(jax.random.fold_in(key, list(SITES).index(name)), split)
    config = ExamConfig(site=site, slices=slices)
    parts = []
    for start in tqdm(range(0, n, _CHUNK), desc=f"site {name} exams", unit="chunk", disable=not progress):
        # Whole chunks of one size (the last one cut): one compilation per site, whatever n.
        exams = make_dataset(jax.random.fold_in(site_key, start), _CHUNK, kind="mri_exam", config=config)
        prepared = preprocess_exams(exams, preprocess)
        labels = to_canonical_labels(exams["lesion_labels"], prepared.t2_affine, prepared.affine, preprocess.shape)
        parts.append({
            "image": prepared.image,
            "lesion_mask": _significant_mask(labels, exams["lesion_significant"]).astype(np.float32),
            "lesion_labels": labels,
            "grade": grade_class(exams["max_grade"]),
            "significant": np.asarray(exams["significant"], bool),
            "has_lesion": np.asarray(exams["has_lesion"], bool),
            "motion_mm": prepared.motion_mm,
            "affine": prepared.affine,
            "t2_affine": prepared.t2_affine,
        })
    out = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    return out


def subset(data: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    """The exams ``rows`` (indices or a bool mask) of a set."""
    return {k: v[rows] for k, v in data.items()}
