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
from jaxmed.tasks.scan_quality.decision import Calibration, calibrate, calibration_shift, classify
from jaxmed.tasks.scan_quality.scorer import BACKGROUND_DIR, Scorer
from jaxmed.tasks.scan_quality.scores import SCORES, ScoreSpec, normality_scores

__all__ = ["ROW_FIELDS", "ScoreTable", "calibrate_paths", "score_paths", "write_table"]

# Columns of the results table, in order. ``level`` is "slice", "volume" or
# "error"; a volume row carries the lowest slice scores and, in
# ``worst_slice``, the index of the slice with the lowest decision score.
# ``score`` is the decision score; the columns of SCORES hold every score.
ROW_FIELDS = (
    "file", "input", "series", "level", "slice", "num_slices", "worst_slice",
    "score", "decision", "p_value", "num_reference", *SCORES, "problem",
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
      check: how the scores sit against the calibration's normal range
        (:func:`~jaxmed.tasks.scan_quality.decision.calibration_shift`), or
        None without a calibration.
    """

    rows: list[dict[str, Any]]
    problems: list[dict[str, str]]
    num_scored: int
    notes: list[dict[str, str]]
    check: dict[str, Any] | None = None


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
    calibrations: Mapping[str, Calibration] | None = None,
    threshold: float | None = None,
    progress: bool = False,
) -> ScoreTable:
    """Scores every slice of every volume under ``paths``; bad inputs become rows too.

    Args:
      scorer: from :func:`load_scorer`.
      paths: DICOM/NIfTI files and folders (searched recursively, DICOM
        grouped by series).
      spec: how to score; ``spec.score`` decides.
      calibrations: ``{score: Calibration}`` (thresholds and normal reference
        scores); the decision score's gives ``decision``, ``p_value`` and
        ``num_reference``, which stay empty without it.
      threshold: decide with this threshold (in the decision score's units)
        instead of the calibration's; with neither, ``decision`` is empty.
      progress: tqdm bars while reading and scoring.

    Returns:
      A :class:`ScoreTable`: per slice, the decision score (``score``) and
      every score that applies (:data:`~jaxmed.tasks.scan_quality.scores.SCORES`
      columns). A volume row's scores are its lowest slice scores (its
      ``worst_slice`` that of the decision score); its decision applies the
      (per-slice) threshold to it, and its ``p_value`` is the
      Bonferroni-adjusted smallest slice p-value, ``min(1, n * min_i p_i)``
      for ``n`` slices: a valid p-value for "all slices are normal". Note
      that a per-slice threshold at false-positive rate ``fpr`` flags a
      normal volume of ``n`` slices with probability up to ``n * fpr``. With
      a calibration, ``check`` says whether the scans lie outside its normal
      range as a whole (:func:`~jaxmed.tasks.scan_quality.decision.calibration_shift`).

    Raises:
      ValueError: the decision score needs a background model the scorer
        does not have.
    """
    if spec.score == "likelihood_ratio" and scorer.background is None:
        raise ValueError(f"{scorer.run_dir}: the likelihood-ratio score needs a background model in "
                         f"{scorer.run_dir / BACKGROUND_DIR} (jaxmed train --augment-mutation ...)")
    items, problems, notes = _read_items(paths, scorer.preprocessing, progress=progress)
    # All slices in one stream of fixed-size batches: one compilation, full batches.
    images = np.concatenate([it.images for it in items]) if items else np.zeros((0, 1, 1, 1), np.float32)
    indices = np.concatenate([it.indices for it in items]) if items else np.zeros((0,), np.int64)
    all_scores = normality_scores(jax.random.key(spec.seed), scorer.model, scorer.params, images, spec=spec,
                                  background=scorer.background, indices=indices, progress=progress)
    scores = all_scores[spec.score]
    calibration = (calibrations or {}).get(spec.score)
    decisions = None if calibration is None else classify(scores, calibration)
    p_values = np.full(len(scores), np.nan) if decisions is None else decisions.p_value
    num_reference = None if decisions is None else decisions.num_reference
    cut = threshold if threshold is not None else (calibration.threshold if calibration is not None else None)
    bounds = np.cumsum([0] + [len(it.images) for it in items])
    rows = []
    for it, start, stop in zip(items, bounds[:-1], bounds[1:]):
        s, p = scores[start:stop], p_values[start:stop]
        kinds = {k: v[start:stop] for k, v in all_scores.items()}
        common = {"file": it.file, "input": it.input, "series": it.series, "threshold": cut,
                  "num_reference": num_reference}
        for i, (index, value, p_slice) in enumerate(zip(it.indices, s, p, strict=True)):
            rows.append(_row(**common, level="slice", slice=int(index), num_slices=None, worst_slice=None,
                             score=value, p_value=p_slice, kinds={k: v[i] for k, v in kinds.items()}))
        worst = int(np.nanargmin(s)) if np.isfinite(s).any() else 0
        # Bonferroni over the volume's slices: a valid p-value for "every slice is normal".
        p_volume = None if np.isnan(p).all() else min(1.0, len(s) * float(np.nanmin(p)))
        rows.append(_row(**common, level="volume", slice=None, num_slices=len(s),
                         worst_slice=int(it.indices[worst]), score=s[worst], p_value=p_volume,
                         kinds={k: np.nanmin(v) if np.isfinite(v).any() else np.nan for k, v in kinds.items()}))
    for problem in problems:
        rows.append({**{k: None for k in ROW_FIELDS}, "file": problem["path"], "level": "error",
                     "problem": problem["problem"]})
    check = None
    if calibration is not None and len(scores):
        per_volume = {it.file: scores[start:stop] for it, start, stop in zip(items, bounds[:-1], bounds[1:])}
        check = calibration_shift(scores, calibration, groups=per_volume)
    return ScoreTable(rows, problems, len(items), notes, check)


def _row(*, file, input, series, level, slice, num_slices, worst_slice, score, threshold, p_value,
         num_reference, kinds) -> dict[str, Any]:
    value = _float_or_none(score)
    decision = None
    if threshold is not None:
        # NaN compares False: a non-finite score is called abnormal, as classify does.
        decision = "normal" if value is not None and value >= threshold else "abnormal"
    return {"file": file, "input": input, "series": series, "level": level, "slice": slice,
            "num_slices": num_slices, "worst_slice": worst_slice, "score": value, "decision": decision,
            "p_value": _float_or_none(p_value), "num_reference": num_reference,
            **{k: _float_or_none(kinds[k]) if k in kinds else None for k in SCORES},
            "problem": None if value is not None else "the score is NaN or infinite"}


def calibrate_paths(
    scorer: Scorer,
    paths: Sequence,
    *,
    spec: ScoreSpec,
    fpr: float = 0.05,
    progress: bool = False,
) -> tuple[dict[str, Calibration], list[dict[str, str]], int]:
    """Calibrates the per-slice threshold of every score on the slices of normal scans.

    Args:
      scorer: from :func:`load_scorer`.
      paths: files/folders of NORMAL scans (not the training images).
      spec: how to score (the same estimator settings must be used when
        scoring; any of the calibrated scores can then decide).
      fpr: target false-positive rate per slice.
      progress: tqdm bars.

    Returns:
      ``({score: calibration}, problems, num_volumes)``: a calibration of
      each score that applies (the likelihood ratio only with a background
      model).

    Raises:
      ValueError: no slice could be scored, or some scores are not finite.
    """
    table = score_paths(scorer, paths, spec=spec, progress=progress)
    slice_rows = [r for r in table.rows if r["level"] == "slice"]
    if not slice_rows:
        listing = "; ".join(f"{p['path']}: {p['problem']}" for p in table.problems) or "no image files found"
        raise ValueError(f"no normal slice could be scored ({listing})")
    calibrations = {}
    for kind in SCORES:
        if slice_rows[0][kind] is None and all(r[kind] is None for r in slice_rows):
            continue  # this score does not apply (no background model; the match method)
        scores = np.asarray([np.nan if r[kind] is None else r[kind] for r in slice_rows], np.float64)
        if not np.all(np.isfinite(scores)):
            bad = sorted({r["file"] for r in slice_rows if r[kind] is None})
            raise ValueError(f"non-finite {kind} scores for {', '.join(bad)}")
        calibrations[kind] = calibrate(scores, fpr=fpr)
    return calibrations, table.problems, table.num_scored


def write_table(
    table: ScoreTable,
    *,
    csv_path: str | os.PathLike,
    json_path: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Writes the rows as CSV (one row each) and JSON (``{"meta", "rows", "problems", "notes", "calibration_check"}``).

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
                                     "notes": table.notes, "calibration_check": table.check}, indent=2) + "\n")
    return csv_path, json_path
