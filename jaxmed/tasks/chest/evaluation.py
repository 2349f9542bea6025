"""How a chest model does on phantoms whose truth is known: region Dice, the segment checks, image scores.

:func:`evaluate_radiographs` runs the method (:func:`~jaxmed.tasks.chest.pipeline.analyse`)
on packed phantom radiographs (:func:`jaxmed.tasks.chest.data.radiograph_set`)
and measures, per radiograph, against the truth:

* Dice of each region at full resolution (:func:`jaxmed.metrics.dice`);
* the segment constraints on the layout made from the *predicted* regions:
  the share of each true lung that no valid segment of that lung covers,
  the largest share of a lung segment's window taken by the other (true)
  lung, and visible in it after blanking; valid segments per lung;
* for each finding, whether it lies whole in at least one layout segment;
* the image-level scores of each pooling.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.merge import merge_windows
from jaxmed.metrics import auroc, dice
from jaxmed.tasks.chest.data import unpack_findings
from jaxmed.tasks.chest.pipeline import POOLINGS, ChestModel, analyse
from jaxmed.tasks.chest.segments import Layout, kind_masks, segment_targets

__all__ = ["evaluate_radiographs", "summarise_evaluation"]


@functools.partial(jax.jit, static_argnames=("config",))
def _checks(out: dict, labels: jax.Array, bits: jax.Array, finding_valid: jax.Array, finding_type: jax.Array, *,
            config) -> dict[str, jax.Array]:
    seg = config.segments
    win = seg.window
    num_slots = finding_valid.shape[1]

    def one(pred, corners, kinds, valid, truth, bits, fvalid, ftype):
        per_class = dice(pred, truth, num_classes=4)
        masks = kind_masks(pred, margin=seg.margin)
        ones = jnp.ones((corners.shape[0], win, win), jnp.float32)
        uncovered, other_raw, other_shown, count = [], [], [], []
        for kind, (lung, other) in enumerate(((1, 2), (2, 1))):
            mine = (kinds == kind) & valid
            _, covered = merge_windows(ones, corners, image_shape=truth.shape, weights=ones * mine[:, None, None])
            lung_mask = truth == lung
            uncovered.append(jnp.sum(lung_mask & (covered == 0)) / jnp.maximum(jnp.sum(lung_mask), 1))

            def other_share(corner, k):
                window = jax.lax.dynamic_slice(truth, (corner[0], corner[1]), (win, win)) == other
                shown = jax.lax.dynamic_slice(masks, (k, corner[0], corner[1]), (1, win, win))[0]
                return jnp.mean(window), jnp.mean(window & shown)

            raw, shown = jax.vmap(other_share)(corners, kinds)
            other_raw.append(jnp.max(jnp.where(mine, raw, 0.0)))
            other_shown.append(jnp.max(jnp.where(mine, shown, 0.0)))
            count.append(jnp.sum(mine))
        fmasks = unpack_findings(bits, num_slots)
        targets = segment_targets(pred, fmasks, fvalid, ftype, Layout(corners, kinds, valid), seg)
        whole = jnp.any(targets["whole"] & valid[:, None], axis=0)
        return {"dice": per_class[1:], "uncovered": jnp.stack(uncovered), "other_lung_raw": jnp.stack(other_raw),
                "other_lung_shown": jnp.stack(other_shown), "segments_per_lung": jnp.stack(count),
                "finding_whole": whole}

    return jax.vmap(one)(out["labels"], out["corners"], out["kinds"], out["valid"], labels, bits,
                         finding_valid.astype(bool), finding_type)


def evaluate_radiographs(model: ChestModel, data: dict[str, np.ndarray], *, batch_size: int = 2,
                         progress: bool = False, keep: tuple[int, ...] = ()) -> dict[str, Any]:
    """The method and its checks on packed phantom radiographs.

    Args:
      model: the trained chest model.
      data: :func:`jaxmed.tasks.chest.data.radiograph_set` output.
      batch_size: radiographs per compiled call.
      progress: a progress bar.
      keep: rows whose full outputs (labels, heat map, layout) are returned
        for figures.

    Returns:
      ``{"dice": [N, 3]`` (right lung, left lung, heart), ``"uncovered":
      [N, 2]``, ``"other_lung_raw", "other_lung_shown": [N, 2]`` (largest
      share of a right (left) lung window taken by the left (right) lung),
      ``"segments_per_lung": [N, 2]``, ``"finding_whole": [N, F]``,
      ``"score_<pooling>": [N]``, ``"segment_prob": [N, K]``, ``"kept":
      {row: outputs}}``.
    """
    from tqdm.auto import tqdm

    params = (model.regions, model.classifier, model.attention)
    n = len(data["image"])
    parts: list[dict] = []
    kept: dict[int, dict] = {}
    for start in tqdm(range(0, n, batch_size), desc="evaluating", unit="batch", disable=not progress):
        rows = np.arange(start, start + batch_size) % n  # one compiled shape
        out = analyse(params, data["image"][rows], config=model.config)
        checks = _checks(out, data["labels"][rows], data["finding_bits"][rows], data["finding_valid"][rows],
                         data["finding_type"][rows], config=model.config)
        host = jax.device_get({**checks, **{f"score_{p}": out[f"score_{p}"] for p in POOLINGS},
                               "segment_prob": out["segment_prob"], "valid": out["valid"]})
        count = min(batch_size, n - start)
        parts.append({k: v[:count] for k, v in host.items()})
        for i in range(count):
            if start + i in keep:
                kept[start + i] = {k: np.asarray(v[i]) for k, v in jax.device_get(out).items()}
    result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    result["kept"] = kept
    return result


def _mean(x) -> float | None:
    x = np.asarray(x, np.float64)
    return float(np.mean(x)) if x.size else None


def summarise_evaluation(result: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON-ready summary of :func:`evaluate_radiographs`: means, worst cases, AUROC by pooling."""
    labels = np.asarray(data["has_finding"], np.int32)
    valid = np.asarray(data["finding_valid"], bool)
    whole = np.asarray(result["finding_whole"], bool)
    names = ("right_lung", "left_lung", "heart")
    summary = {
        "num_radiographs": int(len(labels)),
        "dice": {name: {"mean": _mean(result["dice"][:, i]), "min": float(np.min(result["dice"][:, i]))}
                 for i, name in enumerate(names)},
        "lung_uncovered_fraction": {"mean": _mean(result["uncovered"]), "max": float(np.max(result["uncovered"]))},
        "other_lung_in_window": {"max_raw": float(np.max(result["other_lung_raw"])),
                                 "max_shown": float(np.max(result["other_lung_shown"]))},
        "min_segments_per_lung": int(np.min(result["segments_per_lung"])),
        "finding_whole_in_a_segment": {"findings": int(valid.sum()), "whole": int((whole & valid).sum()),
                                       "rate": float((whole & valid).sum() / valid.sum()) if valid.any() else None},
    }
    if 0 < labels.sum() < len(labels):
        summary["auroc"] = {p: float(auroc(result[f"score_{p}"], labels)) for p in POOLINGS}
    return summary
