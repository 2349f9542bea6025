"""PNG figures of results: ROC curves, score histograms, image grids.

Figures are built on ``matplotlib.figure.Figure`` objects and written with the
Agg canvas directly, so plotting neither needs a display nor touches
matplotlib's global pyplot state. Every function writes one PNG file and
returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxmed.metrics import auroc, roc_curve


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_roc_curves(path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str = "") -> Path:
    """ROC curves, one line per entry, AUROC in the legend.

    Args:
      path: PNG file to write.
      curves: ``{label: (scores, labels)}`` with higher score = more abnormal
        and labels 1 = abnormal (as in :mod:`jaxmed.metrics`).
      title: figure title.
    """
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        ax.step(np.asarray(fpr), np.asarray(tpr), where="post", label=f"{name} ({float(auroc(scores, labels)):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize="small", title="AUROC")
    return _save(fig, path)


def plot_score_histograms(
    path,
    scores: Mapping[str, np.ndarray],
    *,
    threshold: float | None = None,
    xlabel: str = "score",
    title: str = "",
    xlim: tuple[float, float] | None = None,
) -> Path:
    """Overlaid histograms of scores per group, with the decision threshold.

    Args:
      path: PNG file to write.
      scores: ``{group: [n] scores}`` (e.g. "normal", "noise", ...).
      threshold: drawn as a vertical line when given.
      xlabel: axis label (e.g. "log p(x) [nats]").
      title: figure title.
      xlim: ``(low, high)`` range of the bins; scores outside it are drawn
        in the first or last bin (for scores spanning orders of magnitude).
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    finite = np.concatenate([np.asarray(v, float).ravel() for v in scores.values()])
    finite = finite[np.isfinite(finite)]
    if xlim is not None:
        finite = np.clip(finite, *xlim)
    bins = np.linspace(finite.min(), finite.max(), 40) if finite.size else 10
    for name, values in scores.items():
        values = np.asarray(values, float).ravel()
        values = values[np.isfinite(values)]
        if xlim is not None:
            values = np.clip(values, *xlim)
        ax.hist(values, bins=bins, alpha=0.45, label=f"{name} (n={values.size})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="threshold")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_image_grid(
    path,
    rows: Sequence[Sequence[np.ndarray]],
    *,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    cmaps: Sequence[str] = (),
    ranges: Sequence[tuple[float, float] | None] = (),
) -> Path:
    """A grid of 2D images (e.g. input / reconstruction / error per test case).

    Args:
      path: PNG file to write.
      rows: ``rows[i][j]`` is the ``[H, W]`` (or ``[H, W, 1]``) image at row
        ``i``, column ``j``; all rows have the same number of columns.
      row_labels: one label per row (drawn at the left).
      column_labels: one title per column (drawn on the first row).
      cmaps: one colormap per column (default "gray").
      ranges: one ``(vmin, vmax)`` per column, shared by its rows so they
        compare (default None: each image scaled to its own range).
    """
    n_rows, n_cols = len(rows), len(rows[0])
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            ax = axes[i, j]
            image = np.asarray(image)
            vmin, vmax = (ranges[j] if j < len(ranges) and ranges[j] is not None else (None, None))
            ax.imshow(image.reshape(image.shape[:2]), cmap=cmaps[j] if j < len(cmaps) else "gray",
                      vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and j < len(column_labels):
                ax.set_title(column_labels[j], fontsize="small")
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize="small")
    return _save(fig, path)
