"""PNG figures of the chest task: regions over a radiograph, the segments' heat map, segments, region Dice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["plot_heat_map", "plot_region_overlay", "plot_segments"]

# Region label -> colour (background transparent): right lung, left lung, heart.
_REGION_COLOURS = np.asarray([[0, 0, 0, 0], [0.1, 0.6, 1.0, 0.35], [0.1, 0.9, 0.3, 0.35], [1.0, 0.3, 0.2, 0.35]])
_KIND_COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange")


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.asarray(image, np.float32).reshape(image.shape[:2]), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_region_overlay(path, image: np.ndarray, labels: np.ndarray, *, truth: np.ndarray | None = None,
                        title: str = "") -> Path:
    """The radiograph with its region labels as coloured fills (and the true regions' outlines, when given).

    Args:
      path: PNG file to write.
      image: ``[H, W]`` or ``[H, W, 1]`` in [0, 1].
      labels: ``[H, W]`` region labels (0 background, 1 right lung, 2 left lung, 3 heart).
      truth: ``[H, W]`` true labels, drawn as contours.
      title: figure title.
    """
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    _show(ax, image)
    ax.imshow(_REGION_COLOURS[np.asarray(labels, np.int64)], interpolation="nearest")
    if truth is not None:
        for value, colour in ((1, "tab:blue"), (2, "tab:green"), (3, "tab:red")):
            if np.any(truth == value):
                ax.contour(np.asarray(truth == value, np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
    ax.set_title(title or "regions: right lung (blue), left lung (green), heart (red)", fontsize="small")
    return _save(fig, path)


def plot_heat_map(path, image: np.ndarray, heat: np.ndarray, count: np.ndarray, *, corners: np.ndarray,
                  kinds: np.ndarray, valid: np.ndarray, probs: np.ndarray, window: int, title: str = "") -> Path:
    """The radiograph, its segment windows and the heat map merged from them.

    Left: the windows (colour by kind, probability at the corner). Right:
    the heat map (mean probability of the segments showing each pixel)
    over the radiograph, transparent where no segment shows the pixel.

    Args:
      path: PNG file to write.
      image: ``[H, W]`` in [0, 1].
      heat, count: ``[H, W]`` (:func:`jaxmed.data.merge_windows`).
      corners: ``[K, 2]`` window corners; kinds, valid, probs: ``[K]``.
      window: window side, pixels.
      title: figure title.
    """
    fig = Figure(figsize=(10, 5))
    left, right = fig.subplots(1, 2)
    _show(left, image)
    for (r, c), kind, ok, p in zip(np.asarray(corners), np.asarray(kinds), np.asarray(valid), np.asarray(probs)):
        if not ok:
            continue
        colour = _KIND_COLOURS[int(kind) % len(_KIND_COLOURS)]
        left.add_patch(Rectangle((c - 0.5, r - 0.5), window, window, fill=False, edgecolor=colour, linewidth=1.0))
        left.text(c + 4, r + 4, f"{p:.2f}", color=colour, fontsize=6, va="top")
    left.set_title("segments (blue: right lung, green: left, red: heart, purple/orange: heart-lung)",
                   fontsize="x-small")
    _show(right, image)
    shown = np.ma.masked_where(np.asarray(count) <= 0, np.asarray(heat))
    im = right.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
    fig.colorbar(im, ax=right, fraction=0.046, pad=0.02, label="segment probability")
    right.set_title(title or "heat map merged from overlapping segments", fontsize="small")
    return _save(fig, path)


def plot_segments(path, segments: np.ndarray, *, labels: Sequence[str] = ()) -> Path:
    """A row of segments ``[K, s, s, 1]`` as the classifier sees them."""
    k = len(segments)
    fig = Figure(figsize=(1.4 * k, 1.7))
    axes = fig.subplots(1, k, squeeze=False)[0]
    for i, ax in enumerate(axes):
        _show(ax, segments[i])
        if i < len(labels):
            ax.set_title(labels[i], fontsize=6)
    return _save(fig, path)
