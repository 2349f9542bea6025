"""Chest radiographs from files: per-image probability and findings, heat-map overlays, a table (``jaxmed chest predict``).

A DICOM radiograph is read with :mod:`jaxmed.io` (``voi=True``: the file's
window, MONOCHROME1 inverted so higher = brighter), checked (one greyscale
frame, a frontal view, large enough), normalised
(:func:`jaxmed.io.radiograph.normalise_radiograph`; :func:`~jaxmed.io.radiograph.prepare_radiograph`), padded to a
square (centred, 0 = air) and resampled onto the model's working grid.
:func:`~jaxmed.tasks.chest.pipeline.analyse` then finds the regions, the
segments and their probabilities. A radiograph in which the region net finds
no pair of lung fields (:func:`lung_problem`; another body part) is a result,
``status = "no lungs found"`` with the reason in its notes, not an error. Bad files (not readable, colour, several frames, a lateral view,
too small) are reported by name with the problem and the batch goes on.

.. note::
   Pixel spacing is not used: the working grid is the phantoms' 400 mm field
   of view, and a radiograph is fitted to it whole. Radiographs that show
   more or less of the chest than that appear larger or smaller to the
   networks; the region net is trained over fields of view from 270 to
   400 mm for that reason. The segments are at the model's scale of the
   working grid, which for a radiograph larger than the grid is that much
   below its own resolution (RG1_UNCR.dcm, 1955 rows onto 1024: 0.52).

No patient-identifying DICOM field is read into the results.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmed.data.phantoms import FINDING_TYPES
from jaxmed.io import ImageReadError
from jaxmed.io.radiograph import MIN_PIXELS, Prepared, prepare_radiograph
from jaxmed.tasks.chest.figures import plot_heat_map, plot_region_overlay
from jaxmed.tasks.chest.pipeline import ChestModel, analyse
from jaxmed.tasks.chest.segments import SEGMENT_KINDS

__all__ = ["MIN_PIXELS", "ROW_FIELDS", "Prepared", "Prediction", "lung_problem", "predict_image", "predict_paths",
           "prepare_radiograph", "write_predictions"]

MIN_LUNG_FRACTION = 0.01  # a lung covers at least this share of the working grid to count as found
MIN_LUNG_RATIO = 0.3  # the smaller lung field covers at least this share of the larger (phantoms: about 0.8)
ROW_FIELDS = ("file", "status", "probability", "decision", "score_max", "score_noisy_or", "score_attention",
              "num_findings", "findings", "num_segments", "right_lung_fraction", "left_lung_fraction", "rows",
              "columns", "spacing_known", "overlay", "regions_overlay", "notes")


class Prediction(NamedTuple):
    """What the model says about one radiograph."""

    row: dict[str, Any]
    arrays: dict[str, np.ndarray]
    prepared: Prepared


def _native_box(corner: np.ndarray, window: int, prepared: Prepared) -> list[int]:
    """A window's ``[row0, col0, row1, col1)`` in the file's pixels, clipped to the image."""
    f = prepared.factor
    r0, c0 = corner[0] * f - prepared.pad[0], corner[1] * f - prepared.pad[1]
    r1, c1 = r0 + window * f, c0 + window * f
    rows, cols = prepared.native_shape
    return [int(np.clip(round(v), 0, n)) for v, n in ((r0, rows), (c0, cols), (r1, rows), (c1, cols))]


def lung_problem(labels: np.ndarray) -> str | None:
    """Why the region map shows no pair of lung fields of a frontal chest radiograph, or None when it does.

    A pair: each lung at least :data:`MIN_LUNG_FRACTION` of the grid, the
    smaller at least :data:`MIN_LUNG_RATIO` of the larger, and the right lung
    (the patient's) on the image's left of the left lung. A radiograph of
    another body part fails one of these even where the region net marks
    some dark soft tissue as lung.
    """
    labels = np.asarray(labels)
    areas = [np.mean(labels == v) for v in (1, 2)]
    if min(areas) < MIN_LUNG_FRACTION:
        missing = " and ".join(n for n, a in zip(("right", "left"), areas) if a < MIN_LUNG_FRACTION)
        return f"no {missing} lung field (less than {MIN_LUNG_FRACTION:.0%} of the image)"
    if min(areas) < MIN_LUNG_RATIO * max(areas):
        return f"the lung fields are not a pair (areas {areas[0]:.3f} and {areas[1]:.3f} of the image)"
    cols = [np.nonzero(labels == v)[1].mean() for v in (1, 2)]
    if cols[0] >= cols[1]:
        return "the lung fields are the wrong way round for a PA or AP view"
    return None


def predict_image(model: ChestModel, prepared: Prepared, *, file: str, threshold: float | None = None,
                  notes: Sequence[str] = ()) -> Prediction:
    """The model's result for one prepared radiograph: a table row and the arrays behind it.

    Args:
      model: the trained chest model.
      prepared: the radiograph (:func:`prepare_radiograph`).
      file: its name for the table.
      threshold: probability at which the image and a segment are called
        positive (default: the model's).
      notes: notes for the row.

    Returns:
      A :class:`Prediction`: ``row`` (:data:`ROW_FIELDS`; ``findings`` a list
      of ``{"segment", "kind", "probability", "type", "type_probability",
      "box_px"}`` in the file's pixels, most probable first) and the arrays
      of :func:`~jaxmed.tasks.chest.pipeline.analyse` for one image.
    """
    config = model.config
    threshold = config.threshold if threshold is None else threshold
    out = jax.device_get(analyse((model.regions, model.classifier, model.attention), prepared.image[None],
                                 config=config))
    arrays = {k: np.asarray(v[0]) for k, v in out.items()}
    lungs = arrays["lung_fraction"]
    problem = lung_problem(arrays["labels"])
    rows, cols = prepared.native_shape
    row = {"file": file, "rows": rows, "columns": cols, "num_segments": int(arrays["valid"].sum()),
           "right_lung_fraction": round(float(lungs[0]), 4), "left_lung_fraction": round(float(lungs[1]), 4),
           "notes": list(notes), "findings": [], "num_findings": 0}
    for name in ("max", "noisy_or", "attention"):
        row[f"score_{name}"] = round(float(arrays[f"score_{name}"]), 4)
    if problem is not None:
        row.update(status="no lungs found", probability=None, decision=None, notes=[*row["notes"], problem],
                   score_max=None, score_noisy_or=None, score_attention=None, num_segments=0)
        return Prediction(row, arrays, prepared)
    status = "ok"
    probability = float(arrays[f"score_{config.decision}"])
    findings = []
    for k in np.argsort(-arrays["segment_prob"]):
        p = float(arrays["segment_prob"][k])
        if not arrays["valid"][k] or p < threshold:
            continue
        types = arrays["segment_types"][k]
        findings.append({"segment": int(k), "kind": SEGMENT_KINDS[int(arrays["kinds"][k])],
                         "probability": round(p, 4), "type": FINDING_TYPES[int(np.argmax(types))],
                         "type_probability": round(float(np.max(types)), 4),
                         "box_px": _native_box(arrays["corners"][k], config.segments.window, prepared)})
    row.update(status=status, probability=round(probability, 4),
               decision="finding" if probability >= threshold else "no finding", findings=findings,
               num_findings=len(findings))
    return Prediction(row, arrays, prepared)


def _crop(array: np.ndarray, prepared: Prepared) -> np.ndarray:
    """The part of a working-grid array that shows the file's image (padding cut off)."""
    f = prepared.factor
    rows, cols = prepared.native_shape
    r0, c0 = int(prepared.pad[0] / f), int(prepared.pad[1] / f)
    return array[r0:r0 + max(1, int(round(rows / f))), c0:c0 + max(1, int(round(cols / f)))]


def write_overlays(prediction: Prediction, out_dir: Path, stem: str, *, window: int) -> tuple[Path, Path]:
    """The heat-map overlay and the regions overlay of one radiograph, as PNGs in ``out_dir``."""
    a, prepared = prediction.arrays, prediction.prepared
    f = prepared.factor
    offset = np.asarray([int(prepared.pad[0] / f), int(prepared.pad[1] / f)])
    row = prediction.row
    title = (f"{row['file']}: {row['status']}" + (f", probability {row['probability']:.3f}"
                                                   if row.get("probability") is not None else ""))
    heat = plot_heat_map(out_dir / f"{stem}_heatmap.png", _crop(prepared.image[..., 0], prepared),
                         _crop(a["heat"], prepared), _crop(a["count"], prepared), corners=a["corners"] - offset,
                         kinds=a["kinds"], valid=a["valid"] & (row["status"] != "no lungs found"),
                         probs=a["segment_prob"], window=window, title=title)
    regions = plot_region_overlay(out_dir / f"{stem}_regions.png", _crop(prepared.image[..., 0], prepared),
                                  _crop(a["labels"], prepared), title=f"{row['file']}: regions ({row['status']})")
    return heat, regions


class PredictionTable(NamedTuple):
    """Results of a batch: rows (:data:`ROW_FIELDS`) and the files that could not be read."""

    rows: list[dict[str, Any]]
    problems: list[dict[str, str]]


def _stems(paths: Sequence[str]) -> list[str]:
    """Unique file stems for the overlays (``name``, ``name_2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).name.replace(".", "_") or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def predict_paths(model: ChestModel, paths: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None,
                  threshold: float | None = None, progress: bool = True,
                  on_result: Callable[[dict], None] | None = None) -> PredictionTable:
    """Predicts every file; a bad file is reported and the rest go on.

    Args:
      model: the trained chest model.
      paths: DICOM files.
      out_dir: where the overlays go (``<stem>_heatmap.png``,
        ``<stem>_regions.png``); None: none are written.
      threshold: as :func:`predict_image`.
      progress: a progress bar.
      on_result: called with each row as it is ready.

    Returns:
      A :class:`PredictionTable`.
    """
    from tqdm.auto import tqdm

    paths = [os.fspath(p) for p in paths]
    rows, problems = [], []
    for path, stem in tqdm(list(zip(paths, _stems(paths))), desc="radiographs", unit="file", disable=not progress):
        try:
            prepared, notes = prepare_radiograph(path, grid=model.config.grid)
        except ImageReadError as err:
            problems.append({"path": err.path, "problem": err.problem})
            continue
        prediction = predict_image(model, prepared, file=path, threshold=threshold, notes=notes)
        row = {**prediction.row, "spacing_known": "pixel spacing unknown" not in " ".join(notes)}
        if out_dir is not None:
            heat, regions = write_overlays(prediction._replace(row=row), Path(out_dir), stem,
                                           window=model.config.segments.window)
            row.update(overlay=str(heat), regions_overlay=str(regions))
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return PredictionTable(rows, problems)


def write_predictions(table: PredictionTable, *, csv_path: Path, json_path: Path, meta: dict[str, Any]) -> None:
    """The table as CSV (one row per readable file; findings as JSON text) and JSON (rows, problems, meta)."""
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in table.rows:
            flat = {k: row.get(k) for k in ROW_FIELDS}
            flat["findings"] = json.dumps(row["findings"])
            flat["notes"] = "; ".join(row["notes"])
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    json_path.write_text(json.dumps({"meta": meta, "rows": table.rows, "problems": table.problems}, indent=1) + "\n")
