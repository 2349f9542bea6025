"""The segment classifier's training loss: segments drawn inside the train step, then a presence + type loss.

Each step draws, for every radiograph of the batch, the jittered layout and
one window around each finding (:func:`~jaxmed.tasks.chest.segments.training_windows`),
extracts the segments (vmapped dynamic slices), labels them by what they show
of each finding (:func:`~jaxmed.tasks.chest.segments.segment_targets`) and
applies :func:`jaxmed.losses.presence_type_losses` to the classifier's
logits, weighted (windows that show too little of a finding to call are
left out). The step's metrics say how often every finding lay whole in at
least one segment (``finding_whole``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmed.losses import ClassifierLossConfig, presence_type_losses
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
      radiograph b lies whole in some segment), "finding_valid": [B, F]}``
      with ``K = config.num_segments + F``.
    """
    num_slots = batch["finding_valid"].shape[1]
    keys = jax.random.split(key, batch["image"].shape[0])

    def one(key, image, labels, bits, valid, lung, finding_type):
        masks = unpack_findings(bits, num_slots)
        layout = training_windows(key, labels, masks, valid, lung, config)
        segments = extract_segments(image, labels, layout, config)
        targets = segment_targets(labels, masks, valid, finding_type, layout, config)
        return segments, targets["label"], targets["weight"], targets["finding_type"], jnp.any(targets["whole"], 0)

    segments, label, weight, finding_type, whole = jax.vmap(one)(
        keys, batch["image"], batch["labels"], batch["finding_bits"], batch["finding_valid"].astype(bool),
        batch["finding_lung"], batch["finding_type"])
    return {"segments": segments.reshape(-1, *segments.shape[2:]), "label": label.reshape(-1),
            "weight": weight.reshape(-1), "finding_type": finding_type.reshape(-1), "whole": whole,
            "finding_valid": batch["finding_valid"].astype(bool)}


def make_segment_loss(apply_fn, segments: SegmentConfig, loss: ClassifierLossConfig):
    """The segment classifier's train-step loss ``loss_fn(params, batch, key)``.

    Args:
      apply_fn: ``apply_fn(params, segments) -> [N, 1 + T]`` logits.
      segments: the segments' settings.
      loss: the presence + type loss options.

    Returns:
      A loss over radiograph batches (:func:`draw_training_segments`): the
      weighted mean over segments, nats; metrics ``presence``,
      ``accuracy``, ``positive_fraction`` (of the weighted segments) and
      ``finding_whole`` (share of the batch's findings lying whole in at
      least one segment; NaN-free: 1 when there are none).
    """

    def loss_fn(params, batch, key):
        drawn = draw_training_segments(key, batch, segments)
        logits = apply_fn(params, drawn["segments"])
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
        return jnp.sum(weight * total) / norm, metrics

    return loss_fn
