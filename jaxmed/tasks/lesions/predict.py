"""Predicting on exam folders: DICOM series of one mpMRI exam each -> detection map, overlay, a table row.

An exam folder holds one DICOM series per modality (T2, ADC, DWI, in any
sub-folders), as `jaxmed.data.phantoms.write_exam` writes them. Each
series' modality is told from its header: ``ImageType`` or the description
naming ADC; a ``DiffusionBValue`` > 0 or a description naming diffusion
(``diff``, ``dwi``, ``trace``, ``b1400``...) for DWI; ``t2`` in the
description for T2. Then, per folder:

* the exam is checked (`ExamError`, naming the folder and the problem): no
  DICOM images; a series that is not MR; two studies, or two series of one
  modality (two exams in one folder); a series of unknown kind; no T2 (it
  defines the geometry); a missing ADC or DWI, unless the model was trained
  with masked regions (then it is blanked, as in training, and the row says
  so); series with different frames of reference (their positions are not
  comparable: refused unless ``register_anyway``, which registers from the
  header geometry regardless); a 2D model given stacks of several slices;
* the exam is preprocessed as in training (`jaxmed.tasks.lesions.preprocess`)
  and the model gives the fused lesion probability map, the
  significant-cancer probability and the grade probabilities;
* the map is resampled onto the T2 grid, lesion candidates extracted there
  (PI-CAI's dynamic extraction), and written as ``detection_map.nii.gz`` in
  the T2 geometry, with an overlay PNG of the candidates over the T2 image.

`predict_folders` does a batch: bad folders are reported with the reason and
the rest go on. No patient-identifying DICOM field is read out or printed.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmed.io import ImageReadError, write_nifti
from jaxmed.io.series import scan_folder, stack_series
from jaxmed.tasks.lesions.evaluation import EXTRACT, median_class
from jaxmed.tasks.lesions.figures import plot_overlays
from jaxmed.tasks.lesions.models import predict_lesions
from jaxmed.tasks.lesions.preprocess import MODALITIES, GeometryMismatch, preprocess_exams, to_native
from jaxmed.tasks.lesions.training import LesionModel

__all__ = ["ExamError", "TABLE_FIELDS", "find_series", "predict_folders", "read_exam"]

TABLE_FIELDS = ("exam", "folder", "significant_probability", "grade_group", "grade_probabilities",
                "num_candidates", "max_confidence", "missing", "notes", "detection_map", "overlay")
_NAMES = {"t2": "T2", "adc": "ADC", "dwi": "DWI"}


class ExamError(ValueError):
    """An exam folder that cannot be predicted on; the message names the folder and the problem."""

    def __init__(self, folder, problem: str):
        self.folder, self.problem = str(folder), problem
        super().__init__(f"{folder}: {problem}")


def _series_kind(ds) -> str | None:
    description = str(getattr(ds, "SeriesDescription", "") or "").lower()
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    if "ADC" in image_type or "adc" in description:
        return "adc"
    b_value = getattr(ds, "DiffusionBValue", None)
    try:
        b_value = float(b_value) if b_value is not None else None
    except (TypeError, ValueError):
        b_value = None
    if (b_value is not None and b_value > 0) or re.search(r"dwi|diff|trace|\bb\d{3,4}\b|_b\d{3,4}", description):
        return "dwi"
    if re.search(r"t2", description):
        return "t2"
    return None


def _label(series) -> str:
    ds = series.headers[0].dataset
    number = f"series {series.series_number}" if series.series_number is not None else "a series"
    description = str(getattr(ds, "SeriesDescription", "") or "")
    return f"{number}{f' ({description!r})' if description else ''}"


def find_series(folder, *, allow_missing: bool = False, register_anyway: bool = False) -> tuple[dict, list[str]]:
    """The exam's series by modality, checked (module docstring).

    Args:
      folder: one exam's folder.
      allow_missing: a missing ADC or DWI is noted, not an error.
      register_anyway: series with different frames of reference are noted, not an error.

    Returns:
      ``({modality: jaxmed.io.series.SeriesFiles}, notes)``.

    Raises:
      ExamError: naming the folder and the problem.
    """
    try:
        scan = scan_folder(folder)
    except ImageReadError as e:
        raise ExamError(folder, e.problem) from None
    if not scan.series:
        raise ExamError(folder, "no DICOM image series found" + (f" ({len(scan.problems)} unreadable file(s))"
                                                                 if scan.problems else ""))
    notes = [f"skipped {len(scan.problems)} file(s) that are not DICOM images"] if scan.problems else []
    not_mr = [f"{_label(s)} is {s.modality or 'of no modality'}" for s in scan.series if s.modality != "MR"]
    if not_mr:
        raise ExamError(folder, f"not an MR exam: {'; '.join(not_mr)}")
    studies = {str(getattr(s.headers[0].dataset, "StudyInstanceUID", "")) for s in scan.series}
    if len(studies) > 1:
        raise ExamError(folder, f"two exams in one folder: {len(studies)} studies (StudyInstanceUID); "
                                "give each exam its own folder")
    found: dict[str, Any] = {}
    for s in scan.series:
        kind = _series_kind(s.headers[0].dataset)
        if kind is None:
            raise ExamError(folder, f"{_label(s)} is not a T2, ADC or DWI series (by its ImageType, "
                                    "DiffusionBValue and SeriesDescription)")
        if kind in found:
            raise ExamError(folder, f"two {_NAMES[kind]} series ({_label(found[kind])} and {_label(s)}): two exams "
                                    "in one folder? give each exam its own folder")
        found[kind] = s
    missing = [m for m in MODALITIES if m not in found]
    if "t2" in missing:
        raise ExamError(folder, "no T2 series: the T2 series defines the exam's grid")
    if missing:
        names = ", ".join(_NAMES[m] for m in missing)
        if not allow_missing:
            raise ExamError(folder, f"missing {names}; this model was not trained with masked regions and needs "
                                    "every modality (jaxmed lesions train --masked-regions trains one that does not)")
        notes.append(f"missing {names}: predicted with it blanked (the model was trained with masked regions)")
    frames = {m: str(getattr(s.headers[0].dataset, "FrameOfReferenceUID", "")) for m, s in found.items()}
    if len(set(frames.values())) > 1:
        groups = ", ".join(f"{_NAMES[m]}: {uid[-12:] or 'none'}" for m, uid in frames.items())
        if not register_anyway:
            raise ExamError(folder, f"the series have different frames of reference ({groups}), so their positions "
                                    "are not comparable; pass --register-anyway to register them from the header "
                                    "geometry regardless")
        notes.append(f"different frames of reference ({groups}): registered from the header geometry anyway")
    return found, notes


def read_exam(folder, model: LesionModel, *, register_anyway: bool = False) -> tuple[dict, list[str], list[str]]:
    """An exam folder as `jaxmed.tasks.lesions.preprocess.preprocess_exams` takes it (a batch of one).

    Returns:
      ``(exam arrays, missing modalities, notes)``; a missing modality is
      filled with the T2 series (its channel is blanked after preprocessing).

    Raises:
      ExamError: a bad exam (see `find_series`), or an unreadable series.
    """
    found, notes = find_series(folder, allow_missing=model.config.loss.masked, register_anyway=register_anyway)
    volumes = {}
    for m, series in found.items():
        try:
            volumes[m] = stack_series(series, folder=str(folder))
        except ImageReadError as e:
            raise ExamError(folder, f"{_NAMES[m]} series cannot be read: {e.problem}") from None
        if volumes[m].is_colour:
            raise ExamError(folder, f"{_NAMES[m]} series is colour, not an MR image")
    ndim = len(model.config.preprocess.shape)
    if ndim == 2 and any(v.shape[0] != 1 for v in volumes.values()):
        slices = ", ".join(f"{_NAMES[m]} {v.shape[0]}" for m, v in volumes.items())
        raise ExamError(folder, f"this model takes 2D exams (one slice per series), got {slices} slices")
    missing = [m for m in MODALITIES if m not in volumes]
    exam = {}
    for m in MODALITIES:
        v = volumes.get(m, volumes["t2"])
        exam[m] = v.array[None].astype(np.float32)
        exam[f"{m}_affine"] = np.asarray(v.affine, np.float64)[None]
    return exam, missing, notes


def _row_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"detection_map": out_dir / name / "detection_map.nii.gz", "overlay": out_dir / name / "overlay.png"}


def predict_folders(model: LesionModel, folders: Sequence, out_dir, *, register_anyway: bool = False,
                    force: bool = False, progress: bool = True,
                    log: Callable[[str], None] = lambda s: None) -> tuple[list[dict], list[dict]]:
    """Predicts on each exam folder (module docstring); bad folders are reported and skipped.

    Writes ``out_dir/<exam>/detection_map.nii.gz`` (float32: each
    candidate's voxels at its confidence, 0 elsewhere; the T2 geometry) and ``overlay.png``, and
    ``out_dir/predictions.csv`` and ``predictions.json`` (the rows and the
    problems). ``<exam>`` is the folder's name (made unique).

    Returns:
      ``(rows, problems)``: one row per exam predicted (`TABLE_FIELDS`), and
      ``{"folder", "problem"}`` per folder that could not be.

    Raises:
      FileExistsError: an output exists and ``force`` is False (before
        anything is written).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    names, seen = [], {}
    for folder in folders:
        base = Path(folder).name or "exam"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    planned = [out_dir / "predictions.csv", out_dir / "predictions.json"]
    planned += [p for name in names for p in _row_paths(out_dir, name).values()]
    if not force and (existing := [str(p) for p in planned if p.exists()]):
        raise FileExistsError(f"{existing[0]}{f' and {len(existing) - 1} more' if len(existing) > 1 else ''}: "
                              "exists; refusing to overwrite (pass --force)")
    config = model.config
    rows, problems = [], []
    for folder, name in tqdm(list(zip(folders, names)), desc="exams", unit="exam", disable=not progress):
        try:
            exam, missing, notes = read_exam(folder, model, register_anyway=register_anyway)
            prepared = preprocess_exams(exam, config.preprocess)
        except (ExamError, GeometryMismatch, ValueError) as e:
            problem = e.problem if isinstance(e, ExamError) else str(e)
            problems.append({"folder": str(folder), "problem": problem})
            log(f"skipped {folder}: {problem}")
            continue
        image = prepared.image.copy()
        for m in missing:
            image[..., MODALITIES.index(m)] = config.loss.blank_value
        out = predict_lesions(model.params, config.localiser, config.classifier, image, mirror=config.mirror_tta)
        t2_shape = exam["t2"].shape[1:]
        native = np.clip(to_native(out["prob"][0], prepared.affine[0], prepared.t2_affine[0], t2_shape), 0.0, 1.0)
        candidates = EXTRACT(native[0] if native.shape[0] == 1 else native)
        detection = candidates.detection_map.reshape(native.shape).astype(np.float32)
        paths = _row_paths(out_dir, name)
        paths["detection_map"].parent.mkdir(parents=True, exist_ok=True)
        write_nifti(paths["detection_map"], detection, exam["t2_affine"][0], overwrite=True)
        z = int(np.argmax(detection.reshape(len(detection), -1).max(1))) if detection.max() > 0 else len(detection) // 2
        t2 = exam["t2"][0][z]
        plot_overlays(paths["overlay"], [t2], [native[z]], detections=[detection[z]],
                      titles=[f"{name}: P(csPCa) {out['significant'][0]:.2f}"])
        grade_probs = [round(float(p), 4) for p in out["grade_probs"][0]]
        rows.append({"exam": name, "folder": str(folder), "significant_probability": round(float(out["significant"][0]), 4),
                     "grade_group": int(median_class(out["grade_probs"])[0]) + 1, "grade_probabilities": grade_probs,
                     "num_candidates": int(len(candidates.confidences)),
                     "max_confidence": round(float(detection.max()), 4), "missing": [_NAMES[m] for m in missing],
                     "notes": notes, "detection_map": str(paths["detection_map"]), "overlay": str(paths["overlay"])})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    meaning = {"significant_probability": "P(grade group >= 2) from the classifier",
               "grade_group": "median grade group 1-5 of the ordinal distribution (1: no significant cancer)",
               "detection_map": "lesion candidates at their confidence on the T2 grid (PI-CAI dynamic extraction)"}
    (out_dir / "predictions.json").write_text(json.dumps({"rows": rows, "problems": problems, "fields": meaning},
                                                         indent=1))
    return rows, problems
