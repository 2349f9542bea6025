"""The metrics log (``metrics.jsonl``) and its loss-curve plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a ``metrics.jsonl`` file: one JSON object per line.

    Returns:
      The records in file order; ``[]`` if the file does not exist.

    Raises:
      ValueError: a line is not a JSON object (names the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")
        records.append(record)
    return records


def append_metrics(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Appends one record as a line of JSON (flushed at once, for ``tail -f``)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


def truncate_metrics(path: str | os.PathLike, *, after_step: int) -> list[dict[str, Any]]:
    """Drops records with ``step > after_step`` (a resumed run logs them again).

    Returns:
      The records kept.
    """
    records = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= after_step]
    if len(kept) != len(records):
        tmp = Path(str(path) + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
    return kept


def plot_loss_curve(
    records: Sequence[dict[str, Any]], path: str | os.PathLike, *, keys: Sequence[str] = ("loss", "val_loss")
) -> Path:
    """Plots metrics against step into a PNG (matplotlib, no pyplot state).

    Args:
      records: metric records, each with ``step``.
      path: output file.
      keys: which metrics to draw; missing or non-finite values are skipped.

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure  # Agg canvas, no global backend switch

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for key in keys:
        points = [(r["step"], r[key]) for r in records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
