"""PNG figures of the lesions task: FROC curves, maps over images with candidates, learning curves.

Built on ``matplotlib.figure.Figure`` with the Agg canvas, as
:mod:`jaxmed.plots` (whose ROC curves the task uses as they are): no display
and no pyplot state. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_froc", "plot_learning_curves", "plot_overlays"]


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_froc(path, curves: Mapping[str, object], *, title: str = "") -> Path:
    """FROC curves: lesion sensitivity against false positives per case (log axis), one per entry.

    Args:
      path: PNG file.
      curves: ``{label: jaxmed.metrics.Froc}``.
      title: figure title.
    """
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for name, froc in curves.items():
        fp, sens = np.asarray(froc.fp_per_case, float), np.asarray(froc.sensitivity, float)
        keep = np.isfinite(fp) & (fp > 0)
        ax.step(fp[keep], sens[keep], where="post", label=f"{name} ({froc.sensitivity_at(1.0):.2f} at 1 FP)")
    ax.set_xscale("log")
    ax.set(xlabel="false positives per case", ylabel="lesion sensitivity", ylim=(0, 1.01), title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_overlays(path, images: Sequence[np.ndarray], maps: Sequence[np.ndarray], *,
                  detections: Sequence[np.ndarray] | None = None, truths: Sequence[np.ndarray] | None = None,
                  titles: Sequence[str] = (), map_label: str = "lesion probability") -> Path:
    """Per exam: the T2 slice, the map over it, and the candidates (outlined, confidence written).

    Args:
      path: PNG file.
      images: ``[H, W]`` background images (e.g. T2), one per exam.
      maps: ``[H, W]`` maps in [0, 1] shown over them.
      detections: ``[H, W]`` detection maps (candidates at their confidence), outlined in yellow.
      truths: ``[H, W]`` true lesion masks, outlined in cyan.
      titles: one per exam.
      map_label: the colour bar's label.
    """
    from scipy import ndimage

    n = len(images)
    fig = Figure(figsize=(2.6 * n, 2.9))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.imshow(images[i], cmap="gray")
        shown = ax.imshow(np.ma.masked_less(maps[i], 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.55)
        if truths is not None and np.any(truths[i]):
            ax.contour(truths[i] > 0.5, levels=[0.5], colors="cyan", linewidths=0.8)
        if detections is not None:
            labels, count = ndimage.label(detections[i] > 0, structure=np.ones((3, 3)))
            for k in range(1, count + 1):
                blob = labels == k
                ax.contour(blob, levels=[0.5], colors="yellow", linewidths=0.8)
                y, x = np.argwhere(blob).mean(0)
                ax.text(x, y, f"{detections[i][blob].max():.2f}", color="yellow", fontsize=6, ha="center")
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(titles):
            ax.set_title(titles[i], fontsize="small")
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label=map_label)
    return _save(fig, path)


def plot_learning_curves(path, ks: Sequence[int], curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                         ylabel: str, title: str = "") -> Path:
    """A metric against the number of labelled exams, mean and spread over seeds, one line per order.

    Args:
      path: PNG file.
      ks: labelled exams at each point.
      curves: ``{label: (mean [len(ks)], std [len(ks)])}``.
      ylabel: the metric.
      title: figure title.
    """
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for name, (mean, std) in curves.items():
        mean, std = np.asarray(mean, float), np.asarray(std, float)
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set(xlabel="labelled deployment exams k", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
