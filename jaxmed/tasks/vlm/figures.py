"""PNG figures of the vision-language task: one answer over its radiograph; a grid of instructions."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxmed.plots import _save

__all__ = ["plot_answer", "plot_instruction_grid"]


def _overlay(ax, image, *, mask=None, true_mask=None, landmark=None, true_landmark=None):
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    if true_mask is not None and true_mask.any():
        ax.contour(true_mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    if mask is not None and mask.any():
        ax.imshow(np.ma.masked_where(~mask, mask.astype(float)), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
    if true_landmark is not None:
        ax.plot(true_landmark[1], true_landmark[0], "+", color="lime", ms=9, mew=1.5)
    if landmark is not None:
        ax.plot(landmark[1], landmark[0], "x", color="red", ms=8, mew=1.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_answer(path, image: np.ndarray, text: str, *, mask: np.ndarray | None = None,
                landmark: tuple[float, float] | None = None, title: str = "") -> Path:
    """The radiograph with the predicted mask (red) or point (red x) and the answer text."""
    fig = Figure(figsize=(4.2, 4.6))
    ax = fig.subplots()
    _overlay(ax, image, mask=mask, landmark=landmark)
    ax.set_title("\n".join(textwrap.wrap(title or text, 48)), fontsize="small")
    return _save(fig, path)


def plot_instruction_grid(path, items: Sequence[dict], *, columns: int = 4) -> Path:
    """A grid of answered instructions.

    Args:
      items: ``{"image", "prompt", "expected", "answer", "mask", "true_mask",
        "landmark", "true_landmark", "score"}`` (arrays or None); predicted
        masks red, true contours green, predicted points red x, true green +.
    """
    rows = -(-len(items) // columns)
    fig = Figure(figsize=(3.0 * columns, 3.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        _overlay(ax, item["image"], mask=item.get("mask"), true_mask=item.get("true_mask"),
                 landmark=item.get("landmark"), true_landmark=item.get("true_landmark"))
        lines = textwrap.wrap(item["prompt"], 38)[:2]
        answer = f"model: {item['answer'][:60]}"
        expected = f"truth: {item['expected'][:60]}"
        score = f" ({item['score']})" if item.get("score") else ""
        ax.set_title("\n".join(lines + [answer + score, expected]), fontsize=6.5, loc="left")
    return _save(fig, path)
