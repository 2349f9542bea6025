"""The segment classifier's training loss: segments drawn inside the train step, then a presence + type loss.

Each step draws, for every radiograph of the batch, the jittered layout and
one window around each finding (:func:`~jaxmed.tasks.chest.segments.training_windows`),
extracts the segments (vmapped dynamic slices), labels them by what they show
of each finding (:func:`~jaxmed.tasks.chest.segments.segment_targets`) and
applies :func:`jaxmed.losses.presence_type_losses` to the classifier's
logits, weighted (windows that show too little of a finding to call are
left out), plus a dense cross-entropy of the classifier's finding map
against the visible finding masks (``ClassifierLossConfig.map_weight``):
with image labels alone the network learned nothing in the step budgets of
2 CPU cores. The step's metrics say how often every finding lay whole in at
least one segment (``finding_whole``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmed.losses import ClassifierLossConfig, finding_map_loss, presence_type_losses
from jaxmed.tasks.chest.data import unpack_findings
from jaxmed.tasks.chest.segments import SegmentConfig, extract_segments, segment_targets, training_windows

__all__ = ["draw_training_segments", "make_segment_loss"]


def draw_training_segments(key: jax.Array, batch: dict[str, jax.Array], config: SegmentConfig) -> dict[str, jax.Array]:
    """Segments and targets of a batch of radiographs, drawn for training.

    Args:
      key: PRNG key of the step.
      batch: ``{"image": [B, H, W, 1], "labels": [B, H, W], "finding_bits":
        [B, H, W], "finding_valid", "finding_lung", "finding_type": [B, F]}``
        (:func:`jaxmed.tasks.chest.data.radiograph_set`).
      config: the segments' settings.

    Returns:
      ``{"segments": [B * K, s, s, 1], "label", "weight": [B * K] float32,
      "finding_type": [B * K] int32, "whole": [B, F] bool (finding f of
      radiograph b lies whole in some segment), "finding_valid": [B, F],
      "finding_map": [B * K, s, s]`` float32 (the share of each segment
      pixel covered by a visible finding, resampled as the segment is),
      ``"valid": [B * K] bool}`` with ``K = config.num_segments + F``.
    """
    num_slots = batch["finding_valid"].shape[1]
    keys = jax.random.split(key, batch["image"].shape[0])

    def one(key, image, labels, bits, valid, lung, finding_type):
        masks = unpack_findings(bits, num_slots)
        layout = training_windows(key, labels, masks, valid, lung, config)
        segments = extract_segments(image, labels, layout, config)
        targets = segment_targets(labels, masks, valid, finding_type, layout, config)
        shown = jnp.any(masks & valid[:, None, None], axis=0)[..., None].astype(jnp.float32)
        finding_map = extract_segments(shown, labels, layout, dataclasses.replace(config, fill_value=0.0))[..., 0]
        return (segments, targets["label"], targets["weight"], targets["finding_type"], jnp.any(targets["whole"], 0),
                finding_map, layout.valid)

    segments, label, weight, finding_type, whole, finding_map, seg_valid = jax.vmap(one)(
        keys, batch["image"], batch["labels"], batch["finding_bits"], batch["finding_valid"].astype(bool),
        batch["finding_lung"], batch["finding_type"])
    return {"segments": segments.reshape(-1, *segments.shape[2:]), "label": label.reshape(-1),
            "weight": weight.reshape(-1), "finding_type": finding_type.reshape(-1), "whole": whole,
            "finding_valid": batch["finding_valid"].astype(bool),
            "finding_map": finding_map.reshape(-1, *finding_map.shape[2:]), "valid": seg_valid.reshape(-1)}


def make_segment_loss(apply_fn, segments: SegmentConfig, loss: ClassifierLossConfig):
    """The segment classifier's train-step loss ``loss_fn(params, batch, key)``.

    Args:
      apply_fn: ``apply_fn(params, segments) -> [N, 1 + T]`` logits (with
        ``loss.map_weight > 0``, ``apply_fn(params, segments, with_map=True)
        -> (logits, [N, m, m] cell logits)``: a classifier with a map head).
      segments: the segments' settings.
      loss: the presence + type loss options.

    Returns:
      A loss over radiograph batches (:func:`draw_training_segments`): the
      weighted mean over segments, nats, plus ``map_weight`` times the mean
      cell cross-entropy of the finding map (a cell's target: 4 times the
      share of it a visible finding covers, at most 1; positive cells weighted
      by ``map_pos_weight``); metrics ``map``, ``presence``,
      ``accuracy``, ``positive_fraction`` (of the weighted segments) and
      ``finding_whole`` (share of the batch's findings lying whole in at
      least one segment; NaN-free: 1 when there are none).
    """

    def loss_fn(params, batch, key):
        drawn = draw_training_segments(key, batch, segments)
        if loss.map_weight > 0:
            logits, cell_logits = apply_fn(params, drawn["segments"], with_map=True)
            dense = finding_map_loss(cell_logits, drawn["finding_map"], pos_weight=loss.map_pos_weight)
        else:
            logits = apply_fn(params, drawn["segments"])
            dense = jnp.zeros(logits.shape[:1])
        total, presence = presence_type_losses(logits, drawn["label"], drawn["finding_type"],
                                               pos_weight=loss.pos_weight, type_weight=loss.type_weight)
        weight = drawn["weight"]
        norm = jnp.maximum(jnp.sum(weight), 1e-6)
        correct = ((logits[:, 0] > 0) == (drawn["label"] >= 0.5)).astype(jnp.float32)
        num_findings = jnp.sum(drawn["finding_valid"])
        whole = jnp.sum(drawn["whole"] & drawn["finding_valid"])
        metrics = {"presence": jnp.sum(weight * presence) / norm, "accuracy": jnp.sum(weight * correct) / norm,
                   "positive_fraction": jnp.sum(weight * drawn["label"]) / norm,
                   "finding_whole": jnp.where(num_findings > 0, whole / jnp.maximum(num_findings, 1), 1.0),
                   "num_findings": num_findings.astype(jnp.float32), "num_whole": whole.astype(jnp.float32)}
        valid = drawn["valid"].astype(jnp.float32)
        map_loss = jnp.sum(valid * dense) / jnp.maximum(jnp.sum(valid), 1.0)
        metrics["map"] = map_loss
        return jnp.sum(weight * total) / norm + loss.map_weight * map_loss, metrics

    return loss_fn
