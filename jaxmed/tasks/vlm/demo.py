"""``jaxmed demo vlm``: train the vision-language model on phantoms and score it on held-out ones.

Writes into the out folder::

    summary.json        settings, timings, the metrics and per-stage scores, the machine's load
    answers.csv         every held-out instruction: prompt, expected, the model's answer, its score
    instructions.png    a grid of held-out instructions: predicted (red) vs true (green) masks and points, answers
    model/              the trained model (jaxmed vlm ask --model OUT/model)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np

import jaxmed
from jaxmed.io import load_average, prepare_out_dir
from jaxmed.tasks.vlm.config import VLMTaskConfig, task_config_to_json
from jaxmed.tasks.vlm.evaluate import evaluate
from jaxmed.tasks.vlm.figures import plot_instruction_grid
from jaxmed.tasks.vlm.train import task_data, train_vlm

__all__ = ["BARS", "format_table", "run_demo"]

# The "done when" floors, for the table.
BARS = {"dice/right_lung": ">= 0.85", "dice/left_lung": ">= 0.85", "dice/heart": ">= 0.85",
        "accuracy/closed_visible": ">= 0.95", "size_error_mm/nodule_ge_10mm": "<= 2", "report/f1": ">= 0.9"}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(metrics: dict, per_stage: dict) -> str:
    """The metrics as a plain-text table (counts in brackets, the issue's floors beside them)."""
    counts = metrics.get("count", {})
    lines = [f"{'metric':34s} {'value':>8s}  {'n':>5s}  floor"]
    for key, value in metrics.items():
        if isinstance(value, dict) or key == "count":
            continue
        n = counts.get(key, "")
        lines.append(f"{key:34s} {_fmt(value):>8s}  {n!s:>5s}  {BARS.get(key, '')}")
    lines.append("")
    lines.append("per curriculum stage (mean score: Dice, accuracy, F1; landmark <= 10 mm, size <= 5 mm, "
                 "ratio <= 0.05 count as right)")
    lines += [f"  {stage:12s} {_fmt(score)}" for stage, score in per_stage.items()]
    return "\n".join(lines)


def _grid_items(data, records, evaluation_rows, limit: int = 16) -> list[dict]:
    """One held-out instruction per family first, then more masks, up to ``limit``."""
    chosen, seen = [], set()
    for k, rec in enumerate(records):
        if rec["family"] not in seen and rec["family"] != "report":
            seen.add(rec["family"])
            chosen.append(k)
    chosen += [k for k, rec in enumerate(records) if rec["family"] in ("segment", "find") and k not in chosen]
    items = []
    for k in chosen[:limit]:
        rec, i = records[k], data.instructions[k][0]
        extra = evaluation_rows[k]
        score = next((f"{key} {rec[key]:.2f}" for key in ("dice", "landmark_error_mm", "size_error_mm")
                      if rec.get(key) is not None), "")
        items.append({"image": data.images[i, ..., 0], "prompt": rec["prompt"], "expected": rec["expected"],
                      "answer": rec["answer"], "mask": extra.get("mask"), "true_mask": extra.get("true_mask"),
                      "landmark": extra.get("landmark"), "true_landmark": extra.get("true_landmark"),
                      "score": score})
    return items


def run_demo(task: VLMTaskConfig, out_dir: str | os.PathLike, *, force: bool = False, progress: bool = True,
             log: Callable[[str], None] = lambda line: None) -> dict:
    """Trains, evaluates and writes the demo's files (module docstring); returns the summary."""
    out = prepare_out_dir(out_dir, force=force, replace=("model",))
    t0 = time.perf_counter()
    start_load = load_average()
    model, info = train_vlm(task, out / "model", force=True, progress=progress, log=log)
    t_train = time.perf_counter()
    log(f"held-out: {task.num_val} phantoms")
    val, _ = task_data(task, model.tokenizer, split="val")
    result = evaluate(model, val, progress=progress, keep_arrays=True)
    t_eval = time.perf_counter()
    records = result["rows"]
    fields = ("image", "family", "stage", "prompt", "expected", "answer", "dice", "landmark_error_mm", "correct",
              "visible", "size_error_mm", "true_size_mm", "ratio_error", "f1")
    with open(out / "answers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    plot_instruction_grid(out / "instructions.png", _grid_items(val, records, result["arrays"]))
    table = format_table(result["metrics"], result["per_stage"])
    summary = {
        "jaxmed_version": jaxmed.__version__, "task": task_config_to_json(task),
        "metrics": result["metrics"], "per_stage": result["per_stage"], "bars": BARS, "training": info,
        "held_out": {"phantoms": task.num_val, "instructions": len(records)},
        "timings_s": {"train_s": round(t_train - t0, 1), "evaluation_s": round(t_eval - t_train, 1),
                      "total_s": round(time.perf_counter() - t0, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "load_average": {"start": start_load, "end": load_average()},
        "files": ["summary.json", "answers.csv", "instructions.png", "model/"],
        "table": table,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
