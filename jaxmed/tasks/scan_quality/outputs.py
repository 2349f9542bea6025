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
    test: TestSet,
    columns: Mapping[str, np.ndarray],
) -> tuple[Path, Path]:
    """The per-image results table as ``results.csv`` and ``results.json``.

    Args:
      out_dir: folder.
      test: the test set.
      columns: ``{name: [N] values}``, NaN where a value does not apply.
    """
    out_dir = Path(out_dir)
    rows = []
    for i in range(len(test.labels)):
        row = {"index": i, "group": str(test.groups[i]), "label": int(test.labels[i]),
               "normal_slice": int(test.source[i])}
        for name, values in columns.items():
            v = values[i]
            if isinstance(v, (np.floating, float)):
                v = None if not math.isfinite(float(v)) else float(v)
            elif isinstance(v, (np.bool_, bool)):
                v = bool(v)
            elif isinstance(v, (np.integer, int)):
                v = int(v)
            else:
                v = None if v is None else str(v)
            row[name] = v
        rows.append(row)
    fields = list(rows[0]) if rows else []
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


def write_figures(
    out_dir: str | os.PathLike,
    *,
    test: TestSet,
    normality: Mapping[str, np.ndarray],
    pca: np.ndarray,
    threshold: float,
    reconstructions: np.ndarray,
    rows: np.ndarray,
    records: Sequence[Mapping[str, Any]],
) -> list[Path]:
    """ROC curves, score histograms, an image grid and the loss curve as PNGs.

    Args:
      out_dir: folder.
      test: the test set.
      normality: ``{"importance": [N], ...}`` normality scores.
      pca: ``[N]`` PCA errors.
      threshold: the calibrated threshold of the importance score.
      reconstructions: ``[len(rows), H, W, 1]`` reconstructions of ``test.images[rows]``.
      rows: test rows shown in the grid (one per group).
      records: the fit loop's metric records.
    """
    out_dir = Path(out_dir)
    normal = test.groups == "normal"
    artefacts = [g for g in dict.fromkeys(test.groups) if g != "normal"]

    # Corrupted slices reach -1e6 nats; the window keeps the normal range readable.
    scores = normality["importance"]
    spread = float(np.ptp(scores[normal])) or 1.0
    low = min(float(scores[normal].min()), threshold) - 3.0 * spread
    high = float(scores.max()) + 0.05 * spread

    def curves(anomaly):
        return {a: (anomaly[normal | (test.groups == a)], test.labels[normal | (test.groups == a)])
                for a in artefacts}

    paths = [
        plot_roc_curves(out_dir / "roc_vae.png", curves(-normality["importance"]),
                        title="VAE, log p(x) by importance sampling"),
        plot_roc_curves(out_dir / "roc_pca.png", curves(pca), title="PCA reconstruction error (baseline)"),
        plot_score_histograms(out_dir / "score_histograms.png",
                              {g: normality["importance"][test.groups == g] for g in dict.fromkeys(test.groups)},
                              threshold=threshold, xlabel="log p(x) [nats], importance sampling", xlim=(low, high),
                              title=f"Test slices (dashed: threshold; scores below {low:.4g} drawn at the left edge)"),
    ]
    images = test.images[rows]
    grid = [[images[i], reconstructions[i], np.abs(images[i] - reconstructions[i])] for i in range(len(rows))]
    # Error maps share the scale of the first (normal) row's largest error.
    paths.append(plot_image_grid(out_dir / "image_grid.png", grid, row_labels=[str(g) for g in test.groups[rows]],
                                 column_labels=["input", "reconstruction", "|error|"],
                                 cmaps=["gray", "gray", "magma"],
                                 ranges=[(0.0, 1.0), (0.0, 1.0), (0.0, max(0.05, float(np.max(grid[0][2]))))]))
    paths.append(plot_loss_curve(records, out_dir / "loss_curve.png"))
    return paths
