"""The study's files: the per-image results table and the PNG figures."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmed.plots import plot_image_grid, plot_roc_curves, plot_score_histograms
from jaxmed.tasks.scan_quality.test_set import TestSet
from jaxmed.train import plot_loss_curve

__all__ = ["write_figures", "write_results"]


def write_results(
    out_dir: str | os.PathLike,
    sets: Mapping[str, tuple[TestSet, Mapping[str, np.ndarray]]],
) -> tuple[Path, Path]:
    """The per-image results table as ``results.csv`` and ``results.json``.

    Args:
      out_dir: folder.
      sets: ``{set name: (test set, {column: [N] values})}``, NaN where a
        value does not apply; the rows of every set, in order, with a
        ``set`` column (columns missing from a set are empty).
    """
    out_dir = Path(out_dir)
    rows = []
    for name, (test, columns) in sets.items():
        for i in range(len(test.labels)):
            row = {"set": name, "index": i, "group": str(test.groups[i]), "label": int(test.labels[i]),
                   "normal_slice": int(test.source[i])}
            row.update({column: _json_value(values[i]) for column, values in columns.items()})
            rows.append(row)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: "" if r.get(k) is None else r[k] for k in fields} for r in rows])
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return None if v is None else str(v)


def write_figures(
    out_dir: str | os.PathLike,
    *,
    sets: Mapping[str, tuple[TestSet, np.ndarray, np.ndarray]],
    score_name: str,
    threshold: float,
    grid: Mapping[str, tuple[TestSet, np.ndarray, np.ndarray]],
    records: Sequence[Mapping[str, Any]],
) -> list[Path]:
    """ROC curves, score histograms, an image grid and the loss curve as PNGs.

    Args:
      out_dir: folder.
      sets: ``{set name: (test set, [N] decision scores (normality), [N] PCA
        errors)}``; the set ``"template"`` first, then the new subjects
        (pooled in their figures).
      score_name: what the decision score is, for labels.
      threshold: the shipped threshold of the decision score.
      grid: ``{set name: (test set, rows shown, [len(rows), H, W, 1]
        reconstructions of those rows)}``.
      records: the fit loop's metric records.
    """
    out_dir = Path(out_dir)
    template = sets["template"]
    new = [v for k, v in sets.items() if k != "template"]
    paths = [
        plot_roc_curves(out_dir / "roc_template.png", _curves(template[0], -template[1]),
                        title=f"Template's held-out slices: VAE {score_name}"),
        plot_roc_curves(out_dir / "roc_pca.png", _curves(template[0], template[2]),
                        title="Template's held-out slices: PCA reconstruction error (baseline)"),
    ]
    if new:
        pooled = TestSet(*(np.concatenate([getattr(t, f) for t, _, _ in new]) for f in TestSet._fields))
        paths.append(plot_roc_curves(out_dir / "roc_new_subjects.png",
                                     _curves(pooled, -np.concatenate([s for _, s, _ in new])),
                                     title=f"{len(new)} new subjects (pooled): VAE {score_name}"))
    normal = np.concatenate([template[1][template[0].groups == "normal"], *(sc[t.groups == "normal"] for t, sc, _ in new)])
    # Corrupted slices reach far below the normal range; one window keeps it readable in both figures.
    spread = float(np.ptp(normal)) or 1.0
    low = min(float(normal.min()), threshold) - 3.0 * spread
    high = max(float(np.max(v[1])) for v in sets.values()) + 0.05 * spread
    histograms = {"score_histograms.png": ("Template's held-out slices", [template])}
    if new:
        histograms["score_histograms_new_subjects.png"] = (f"{len(new)} new subjects (pooled)", new)
    for name, (what, members) in histograms.items():
        groups = {g: np.concatenate([sc[t.groups == g] for t, sc, _ in members])
                  for g in dict.fromkeys(members[0][0].groups)}
        paths.append(plot_score_histograms(
            out_dir / name, groups, threshold=threshold, xlabel=score_name, xlim=(low, high),
            title=f"{what} (dashed: the shipped threshold; below {low:.4g} at the left edge)"))
    rows, labels = [], []
    for name, (test, shown, reconstructions) in grid.items():
        images = test.images[shown]
        rows += [[images[i], reconstructions[i], np.abs(images[i] - reconstructions[i])] for i in range(len(shown))]
        labels += [f"{name}: {g}" for g in test.groups[shown]]
    # Error maps share the scale of the first (normal) row's largest error.
    paths.append(plot_image_grid(out_dir / "image_grid.png", rows, row_labels=labels,
                                 column_labels=["input", "reconstruction", "|error|"],
                                 cmaps=["gray", "gray", "magma"],
                                 ranges=[(0.0, 1.0), (0.0, 1.0), (0.0, max(0.05, float(np.max(rows[0][2]))))]))
    paths.append(plot_loss_curve(records, out_dir / "loss_curve.png"))
    return paths


def _curves(test: TestSet, anomaly: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    normal = test.groups == "normal"
    return {a: (anomaly[normal | (test.groups == a)], test.labels[normal | (test.groups == a)])
            for a in dict.fromkeys(test.groups) if a != "normal"}
