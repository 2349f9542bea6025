"""Classification losses: presence of a finding and its type, per example, unreduced.

A classifier with ``1 + T`` logits per example reads logit 0 as "a finding is
present" (sigmoid) and logits ``1:`` as the finding's type among ``T``
(softmax), the type counted only where a finding is present.
:func:`presence_type_losses` is the elementwise loss, :func:`make_classifier_loss`
the train-step loss of the ``"classifier"`` registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmed.losses.masked_region import weighted_sigmoid_bce

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Array], tuple[Array, dict[str, Array]]]

__all__ = ["ClassifierLossConfig", "make_classifier_loss", "presence_type_losses"]


@dataclass(frozen=True, kw_only=True)
class ClassifierLossConfig:
    """Training options of a presence + type classifier.

    Attributes:
      pos_weight: weight of the positive term of the presence cross-entropy
        (findings are the minority class).
      type_weight: weight of the type cross-entropy beside the presence term.
      map_weight: weight of a dense finding-map cross-entropy
        (:func:`finding_map_loss`, per cell of the classifier's map head)
        beside the presence term, for batches with finding masks; 0: none.
      map_pos_weight: weight of the positive cells in it (findings cover a
        few percent of the cells).
    """

    pos_weight: float = 1.0
    type_weight: float = 0.5
    map_weight: float = 0.0
    map_pos_weight: float = 10.0

    def __post_init__(self):
        if not self.pos_weight > 0:
            raise ValueError(f"ClassifierLossConfig.pos_weight must be > 0, got {self.pos_weight}")
        if not self.type_weight >= 0:
            raise ValueError(f"ClassifierLossConfig.type_weight must be >= 0, got {self.type_weight}")
        if not self.map_pos_weight > 0:
            raise ValueError(f"ClassifierLossConfig.map_pos_weight must be > 0, got {self.map_pos_weight}")
        if not self.map_weight >= 0:
            raise ValueError(f"ClassifierLossConfig.map_weight must be >= 0, got {self.map_weight}")


def presence_type_losses(
    logits: Array, label: Array, finding_type: Array, *, pos_weight: float = 1.0, type_weight: float = 0.5
) -> tuple[Array, Array]:
    """Presence and type cross-entropies of each example, unreduced.

    Args:
      logits: ``[N, 1 + T]``: presence logit, then ``T`` type logits.
      label: ``[N]`` presence target in ``[0, 1]``.
      finding_type: ``[N]`` int, the type index in ``[0, T)`` where a finding
        is present; any value (e.g. -1) elsewhere.
      pos_weight: weight of positives in the presence term.
      type_weight: weight of the type term.

    Returns:
      ``(total, presence)``, each ``[N]`` nats: ``presence + type_weight *
      type`` with the type term 0 where ``label < 0.5`` (or the type is
      out of range), and the presence term alone.
    """
    presence = weighted_sigmoid_bce(logits[:, 0], label, pos_weight=pos_weight)
    num_types = logits.shape[1] - 1
    if num_types == 0:
        return presence, presence
    has_type = (label >= 0.5) & (finding_type >= 0) & (finding_type < num_types)
    safe = jnp.where(has_type, finding_type, 0)
    typed = optax.softmax_cross_entropy_with_integer_labels(logits[:, 1:], safe)
    return presence + type_weight * jnp.where(has_type, typed, 0.0), presence


def finding_map_loss(cell_logits: Array, finding_map: Array, *, pos_weight: float = 1.0) -> Array:
    """Per-image dense cross-entropy of a classifier's cell logits against a finding map.

    A cell's target is 4 times the share of it a finding covers, at most 1: a
    cell is positive once a finding covers a quarter of it (small nodules
    fill little of a cell).

    Args:
      cell_logits: ``[N, m1, m2]`` one logit per cell of the last feature map.
      finding_map: ``[N, H, W]`` in [0, 1], the share of each pixel a finding
        covers; resized to the cells (linear, antialiased).
      pos_weight: weight of the positive cells (findings cover few of them).

    Returns:
      ``[N]`` mean over cells, nats.
    """
    n, m1, m2 = cell_logits.shape
    cells = jax.image.resize(finding_map.astype(jnp.float32), (n, m1, m2), "linear", antialias=True)
    target = jnp.clip(4.0 * cells, 0.0, 1.0)
    return jnp.mean(weighted_sigmoid_bce(cell_logits, target, pos_weight=pos_weight), axis=(1, 2))


def make_classifier_loss(apply_fn: Callable[[Any, Array], Array], config: ClassifierLossConfig) -> LossFn:
    """The train-step loss ``loss_fn(params, batch, key)`` of a presence + type classifier.

    Args:
      apply_fn: ``apply_fn(params, images) -> [N, 1 + T]`` logits (with
        ``config.map_weight > 0``, ``apply_fn(params, images, with_map=True)
        -> (logits, [N, m1, m2] cell logits)``: a classifier with a map head).
      config: the loss options.

    Returns:
      A loss over batches ``{"image": [N, H, W, C], "label": [N], "finding_type":
      [N] int, "weight": [N] (optional, default 1), "finding_map": [N, H, W]
      (needed when ``config.map_weight > 0``)}``: the weighted mean of
      :func:`presence_type_losses`, plus ``map_weight`` times the batch mean
      of :func:`finding_map_loss`; metrics ``presence`` (weighted mean
      presence term), ``accuracy`` (presence at logit 0, weighted) and, with
      the map, ``map``.
    """

    def loss_fn(params, batch, key):
        del key
        if config.map_weight > 0:
            if "finding_map" not in batch:
                raise ValueError("make_classifier_loss: map_weight > 0 needs batch['finding_map'] [N, H, W]")
            logits, cell_logits = apply_fn(params, batch["image"], with_map=True)
            dense = jnp.mean(finding_map_loss(cell_logits, batch["finding_map"], pos_weight=config.map_pos_weight))
        else:
            logits = apply_fn(params, batch["image"])
            dense = None
        label = batch["label"].astype(jnp.float32)
        weight = batch.get("weight")
        weight = jnp.ones_like(label) if weight is None else weight.astype(jnp.float32)
        total, presence = presence_type_losses(logits, label, batch["finding_type"], pos_weight=config.pos_weight,
                                               type_weight=config.type_weight)
        norm = jnp.maximum(jnp.sum(weight), 1e-6)
        correct = ((logits[:, 0] > 0) == (label >= 0.5)).astype(jnp.float32)
        metrics = {"presence": jnp.sum(weight * presence) / norm, "accuracy": jnp.sum(weight * correct) / norm}
        loss = jnp.sum(weight * total) / norm
        if dense is not None:
            metrics["map"] = dense
            loss = loss + config.map_weight * dense
        return loss, metrics

    return loss_fn
