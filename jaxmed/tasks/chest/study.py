"""The chest study end to end: ``jaxmed demo chest``.

Trains the chest model on phantoms (:func:`~jaxmed.tasks.chest.train.train_chest`),
measures it on held-out phantoms (region Dice at full resolution, the segment
constraints on layouts made from the predicted regions, whether each finding
lies whole in a segment, image-level AUROC of max, noisy-OR and attention
pooling) and runs it on pydicom-data's real chest radiograph ``RG1_UNCR.dcm``
(regions and heat map as PNGs; no truth there, so no number is claimed).

Writes into ``out_dir``: ``model/`` (usable by ``jaxmed chest predict
--model OUT/model``), ``summary.json``, ``regions_phantom.png``,
``heatmap_phantom.png``, ``segments_phantom.png``, ``roc_pooling.png``,
``rg1_heatmap.png``, ``rg1_regions.png`` and ``rg1_prediction.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmed.io import prepare_out_dir
from jaxmed.plots import plot_roc_curves
from jaxmed.tasks.chest.config import ChestConfig, config_to_json
from jaxmed.tasks.chest.data import radiograph_set
from jaxmed.tasks.chest.evaluation import evaluate_radiographs, summarise_evaluation
from jaxmed.tasks.chest.figures import plot_heat_map, plot_region_overlay, plot_segments
from jaxmed.tasks.chest.pipeline import POOLINGS
from jaxmed.tasks.chest.predict import predict_paths
from jaxmed.tasks.chest.segments import SEGMENT_KINDS, extract_segments, segment_layout
from jaxmed.tasks.chest.train import train_chest

__all__ = ["MODEL_DIR", "REAL_RADIOGRAPH", "run_demo"]

MODEL_DIR = "model"
REAL_RADIOGRAPH = "RG1_UNCR.dcm"  # pydicom-data's real adult PA chest CR
_EVAL_STREAM = 21


def _real_radiograph() -> str | None:
    """The path of RG1_UNCR.dcm (pydicom-data, a test extra), or None when it is not installed."""
    try:
        from pydicom.data import get_testdata_file

        return get_testdata_file(REAL_RADIOGRAPH)  # a name on disk: no download
    except Exception:  # noqa: BLE001 - pydicom-data missing or its index unreadable
        return None


def _table(config: ChestConfig, summary: dict, real: dict | None) -> str:
    d = summary["dice"]
    lines = [
        f"region Dice at full resolution ({config.grid}x{config.grid}, U-Net at {config.regions.input_size}; "
        f"{summary['num_radiographs']} held-out phantoms; mean / min):",
        "  " + ", ".join(f"{name.replace('_', ' ')} {v['mean']:.3f} / {v['min']:.3f}" for name, v in d.items()),
        f"segments: {config.segments.num_segments} per radiograph, windows of {config.segments.window} px at scale "
        f"{config.segments.segment_size / config.segments.window:.2f} ({config.segments.segment_size} px)",
        f"  lung pixels outside every segment of their lung: mean {summary['lung_uncovered_fraction']['mean']:.4f}, "
        f"max {summary['lung_uncovered_fraction']['max']:.4f}",
        f"  other lung in a lung window: max {summary['other_lung_in_window']['max_raw']:.4f} of the window, "
        f"visible after blanking {summary['other_lung_in_window']['max_shown']:.4f}",
        f"  fewest valid segments per lung: {summary['min_segments_per_lung']}",
        f"  findings whole in at least one segment: {summary['finding_whole_in_a_segment']['whole']} of "
        f"{summary['finding_whole_in_a_segment']['findings']}",
    ]
    if "auroc" in summary:
        lines.append("image-level AUROC (finding present): " + ", ".join(
            f"{p} {summary['auroc'][p]:.3f}" for p in POOLINGS))
    if real is not None:
        lines.append(f"{REAL_RADIOGRAPH}: {real['status']}, probability "
                     f"{'-' if real['probability'] is None else format(real['probability'], '.3f')}, "
                     f"{real['num_findings']} segment(s) at or above {config.threshold}, {real['num_segments']} "
                     "segments (no truth: shown, not scored)")
    return "\n".join(lines)


def run_demo(config: ChestConfig, out_dir: str | os.PathLike, *, force: bool = False, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the chest study and writes its outputs into ``out_dir`` (see the module docstring).

    Args:
      config: the model and its training (e.g. ``PRESETS["demo"]``).
      out_dir: an empty or missing folder (any folder with ``force``; its ``model/`` is replaced).
      force: write into a non-empty folder.
      progress: progress bars.
      log: called with a line of text at each stage.

    Returns:
      The summary (also ``summary.json``), the printed table under ``"table"``.

    Raises:
      FileExistsError: ``out_dir`` is not empty and ``force`` is False.
    """
    say = log or (lambda line: None)
    out_dir = prepare_out_dir(out_dir, force=force, replace=(MODEL_DIR,))
    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    model, training = train_chest(config, out_dir / MODEL_DIR, progress=progress, log=say)

    t = time.perf_counter()
    say(f"evaluating on {config.num_eval} held-out phantoms")
    data = radiograph_set(jax.random.fold_in(jax.random.key(config.seed), _EVAL_STREAM), config.num_eval,
                          config.phantom_config(), progress=progress, desc="held-out phantoms")
    with_finding = np.flatnonzero(data["has_finding"])
    example = int(with_finding[0]) if len(with_finding) else 0
    # Batches of one: the same compiled call as predicting a file.
    result = evaluate_radiographs(model, data, batch_size=1, progress=progress, keep=(example,))
    summary = summarise_evaluation(result, data)
    eval_s = time.perf_counter() - t

    t = time.perf_counter()
    files = []
    kept = result["kept"][example]
    image = data["image"][example].astype(np.float32)
    files.append(plot_region_overlay(out_dir / "regions_phantom.png", image, kept["labels"], truth=data["labels"][example],
                                     title="held-out phantom: predicted regions (fill), truth (outline)"))
    files.append(plot_heat_map(out_dir / "heatmap_phantom.png", image, kept["heat"], kept["count"],
                               corners=kept["corners"], kinds=kept["kinds"], valid=kept["valid"],
                               probs=kept["segment_prob"], window=config.segments.window,
                               title=f"held-out phantom with {int(data['num_findings'][example])} finding(s)"))
    layout = segment_layout(kept["labels"], config.segments)
    segments = np.asarray(extract_segments(image, kept["labels"], layout, config.segments))
    files.append(plot_segments(out_dir / "segments_phantom.png", segments, labels=[
        f"{SEGMENT_KINDS[int(k)]} {p:.2f}" for k, p in zip(kept["kinds"], kept["segment_prob"])]))
    labels = np.asarray(data["has_finding"], np.int32)
    if 0 < labels.sum() < len(labels):
        files.append(plot_roc_curves(out_dir / "roc_pooling.png",
                                     {p: (result[f"score_{p}"], labels) for p in POOLINGS},
                                     title="finding present: image-level pooling of segment predictions"))

    real_row = None
    path = _real_radiograph()
    if path is not None:
        say(f"predicting the real radiograph {REAL_RADIOGRAPH}")
        table = predict_paths(model, [path], out_dir=out_dir, progress=False)
        if table.rows:
            real_row = {**table.rows[0], "file": REAL_RADIOGRAPH}
            for key, name in (("overlay", "rg1_heatmap.png"), ("regions_overlay", "rg1_regions.png")):
                target = out_dir / name
                os.replace(real_row[key], target)
                real_row[key] = name
                files.append(target)
            (out_dir / "rg1_prediction.json").write_text(json.dumps(real_row, indent=1) + "\n")
            files.append(out_dir / "rg1_prediction.json")
    else:
        say(f"{REAL_RADIOGRAPH} not found (pip install pydicom-data): the real radiograph is left out")
    figures_s = time.perf_counter() - t
    timings = {**training["timings_s"], "evaluation_s": round(eval_s, 2), "figures_and_rg1_s": round(figures_s, 2),
               "total_s": round(time.perf_counter() - t_start, 2)}
    out = {
        "config": config_to_json(config),
        "evaluation": summary,
        "training": training,
        "real_radiograph": real_row,
        "timings_s": timings,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "table": _table(config, summary, real_row),
        "files": sorted({Path(f).name for f in files} | {"summary.json"}) + [MODEL_DIR + "/"],
    }
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
