"""Scoring scans from files: what ``jaxmed score`` and ``jaxmed calibrate`` run.

A file or folder goes through four steps:

1. read (:func:`jaxmed.io.iter_volumes`: DICOM files, multi-frame files,
   series folders, NIfTI);
2. preprocess exactly as the training images were
   (:func:`jaxmed.data.preprocess_volume` with the checkpoint's
   :class:`~jaxmed.data.Preprocessing`): intensity normalisation per volume,
   2D slices along one axis, resampling to the model's input size;
3. score every slice (:func:`~jaxmed.tasks.scan_quality.scores.score_images`);
4. decide with the calibration (:mod:`jaxmed.tasks.scan_quality.decision`):
   a slice is normal when its score is at or above the threshold; a volume
   takes its lowest slice score.

Rows of the results table never hold patient-identifying fields: only the
path, the input kind, the DICOM series number and the slice index. Slice
``i`` of a volume (its index along the slicing axis) is scored with
``jax.random.fold_in(key, i)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmed.data.preprocess import Preprocessing, preprocess_volume
from jaxmed.tasks.scan_quality.decision import Calibration, calibrate, classify
from jaxmed.tasks.scan_quality.scorer import Scorer
from jaxmed.tasks.scan_quality.scores import ScoreSpec, score_images

__all__ = ["ROW_FIELDS", "ScoreTable", "calibrate_paths", "score_paths", "write_table"]

# Columns of the results table, in order. ``level`` is "slice", "volume" or
# "error"; a volume row carries the lowest slice score and, in
# ``worst_slice``, the index of that slice.
ROW_FIELDS = (
    "file", "input", "series", "level", "slice", "num_slices", "worst_slice",
    "score", "decision", "p_value", "num_reference", "problem",
)


class _Item(NamedTuple):
    file: str
    input: str
    series: int | None
    images: np.ndarray
    indices: np.ndarray


class ScoreTable(NamedTuple):
    """Results of :func:`score_paths`.

    Attributes:
      rows: one dict per slice, per volume and per bad input, keys
        :data:`ROW_FIELDS` (JSON values; None where not applicable).
      problems: ``{"path", "problem"}`` for each input that could not be
        scored, in the order met.
      num_scored: number of volumes scored.
      notes: ``{"path", "note"}`` for each input scored after a conversion
        (a colour image read as greyscale).
    """

    rows: list[dict[str, Any]]
    problems: list[dict[str, str]]
    num_scored: int
    notes: list[dict[str, str]]


def _read_items(paths: Iterable, prep: Preprocessing, *, progress: bool
                ) -> tuple[list[_Item], list[dict], list[dict]]:
    from tqdm.auto import tqdm

    from jaxmed.io import ReadProblem, iter_volumes, to_greyscale

    items, problems, notes = [], [], []
    bar = tqdm(desc="reading", unit="volume", disable=not progress, leave=False)
    for found in iter_volumes(paths):
        bar.update(1)
        if isinstance(found, ReadProblem):
            problems.append(found.as_dict())
            continue
        volume = found.volume
        source = volume.source
        if volume.is_colour:
            # The VAE takes one channel: say so, then score the luma.
            volume = to_greyscale(volume)
            notes.append({"path": source, "note": f"a colour image ({volume.photometric}); scored as greyscale "
                                                  "(BT.601 luma, jaxmed.io.to_greyscale)"})
        try:
            images, indices = preprocess_volume(volume, prep)
        except ValueError as e:
            problems.append({"path": source, "problem": str(e).removeprefix(f"{source}: ")})
            continue
        if not len(images):
            problems.append({"path": source, "problem": (
                f"no slice along axis {prep.slice_axis} has {prep.min_foreground:.0%} of its pixels "
                f"above {prep.foreground_threshold} after scaling to [0, 1] (empty or constant image?)")})
            continue
        items.append(_Item(source, found.kind, found.series_number, images, indices))
    bar.close()
    return items, problems, notes


def _float_or_none(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def score_paths(
    scorer: Scorer,
    paths: Sequence,
    *,
    spec: ScoreSpec,
    calibration: Calibration | None = None,
    threshold: float | None = None,
    progress: bool = False,
) -> ScoreTable:
    """Scores every slice of every volume under ``paths``; bad inputs become rows too.

    Args:
      scorer: from :func:`load_scorer`.
      paths: DICOM/NIfTI files and folders (searched recursively, DICOM
        grouped by series).
      spec: how to score.
      calibration: the threshold and the normal reference scores; None
        leaves ``p_value`` and ``num_reference`` empty.
      threshold: decide with this threshold instead of the calibration's;
        with neither, ``decision`` is empty too.
      progress: tqdm bars while reading and scoring.

    Returns:
      A :class:`ScoreTable`. A volume row's score is its lowest slice score;
      its decision applies the (per-slice) threshold to it, and its
      ``p_value`` is the Bonferroni-adjusted smallest slice p-value,
      ``min(1, n * min_i p_i)`` for ``n`` slices: a valid p-value for "all
      slices are normal". Note that a per-slice threshold at false-positive
      rate ``fpr`` flags a normal volume of ``n`` slices with probability up
      to ``n * fpr``.
    """
    items, problems, notes = _read_items(paths, scorer.preprocessing, progress=progress)
    # All slices in one stream of fixed-size batches: one compilation, full batches.
    images = np.concatenate([it.images for it in items]) if items else np.zeros((0,))
    indices = np.concatenate([it.indices for it in items]) if items else np.zeros((0,), np.int64)
    scores = score_images(jax.random.key(spec.seed), scorer.model, scorer.params, images, spec=spec,
                          indices=indices, progress=progress)
    decisions = None if calibration is None else classify(scores, calibration)
    p_values = np.full(len(scores), np.nan) if decisions is None else decisions.p_value
    num_reference = None if decisions is None else decisions.num_reference
    cut = threshold if threshold is not None else (calibration.threshold if calibration is not None else None)
    bounds = np.cumsum([0] + [len(it.images) for it in items])
    rows = []
    for it, start, stop in zip(items, bounds[:-1], bounds[1:]):
        s, p = scores[start:stop], p_values[start:stop]
        common = {"file": it.file, "input": it.input, "series": it.series, "threshold": cut,
                  "num_reference": num_reference}
        for index, value, p_slice in zip(it.indices, s, p, strict=True):
            rows.append(_row(**common, level="slice", slice=int(index), num_slices=None, worst_slice=None,
                             score=value, p_value=p_slice))
        worst = int(np.nanargmin(s)) if np.isfinite(s).any() else 0
        # Bonferroni over the volume's slices: a valid p-value for "every slice is normal".
        p_volume = None if np.isnan(p).all() else min(1.0, len(s) * float(np.nanmin(p)))
        rows.append(_row(**common, level="volume", slice=None, num_slices=len(s),
                         worst_slice=int(it.indices[worst]), score=s[worst], p_value=p_volume))
    for problem in problems:
        rows.append({**{k: None for k in ROW_FIELDS}, "file": problem["path"], "level": "error",
                     "problem": problem["problem"]})
    return ScoreTable(rows, problems, len(items), notes)


def _row(*, file, input, series, level, slice, num_slices, worst_slice, score, threshold, p_value,
         num_reference) -> dict[str, Any]:
    value = _float_or_none(score)
    decision = None
    if threshold is not None:
        # NaN compares False: a non-finite score is called abnormal, as classify does.
        decision = "normal" if value is not None and value >= threshold else "abnormal"
    return {"file": file, "input": input, "series": series, "level": level, "slice": slice,
            "num_slices": num_slices, "worst_slice": worst_slice, "score": value, "decision": decision,
            "p_value": _float_or_none(p_value), "num_reference": num_reference,
            "problem": None if value is not None else "the score is NaN or infinite"}


def calibrate_paths(
    scorer: Scorer,
    paths: Sequence,
    *,
    spec: ScoreSpec,
    fpr: float = 0.05,
    progress: bool = False,
) -> tuple[Calibration, list[dict[str, str]], int]:
    """Calibrates the per-slice threshold on the slices of normal scans.

    Args:
      scorer: from :func:`load_scorer`.
      paths: files/folders of NORMAL scans (not the training images).
      spec: how to score (the same spec must be used when scoring).
      fpr: target false-positive rate per slice.
      progress: tqdm bars.

    Returns:
      ``(calibration, problems, num_volumes)``.

    Raises:
      ValueError: no slice could be scored, or some scores are not finite.
    """
    table = score_paths(scorer, paths, spec=spec, progress=progress)
    slice_rows = [r for r in table.rows if r["level"] == "slice"]
    scores = np.asarray([np.nan if r["score"] is None else r["score"] for r in slice_rows], np.float64)
    if not scores.size:
        listing = "; ".join(f"{p['path']}: {p['problem']}" for p in table.problems) or "no image files found"
        raise ValueError(f"no normal slice could be scored ({listing})")
    if not np.all(np.isfinite(scores)):
        bad = sorted({r["file"] for r in slice_rows if r["score"] is None})
        raise ValueError(f"non-finite scores for {', '.join(bad)}")
    return calibrate(scores, fpr=fpr), table.problems, table.num_scored


def write_table(
    table: ScoreTable,
    *,
    csv_path: str | os.PathLike,
    json_path: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Writes the rows as CSV (one row each) and JSON (``{"meta", "rows", "problems", "notes"}``).

    Raises:
      FileExistsError: an output exists and ``force`` is False (nothing is
        written then).
    """
    csv_path, json_path = Path(csv_path), Path(json_path)
    existing = [str(p) for p in (csv_path, json_path) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: exists; refusing to overwrite (pass --force)")
    for p in (csv_path, json_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in table.rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_FIELDS})
    json_path.write_text(json.dumps({"meta": dict(meta or {}), "rows": table.rows, "problems": table.problems,
                                     "notes": table.notes}, indent=2) + "\n")
    return csv_path, json_path
