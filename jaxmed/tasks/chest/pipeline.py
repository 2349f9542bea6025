"""A trained chest model and what it computes for a radiograph on the working grid.

:class:`ChestModel` holds the three networks' parameters (region U-Net,
segment classifier, attention pooling) and the config; :func:`analyse` is
the whole method for a batch of normalised radiographs, one jitted function:
regions at the reduced size brought back to full resolution, the segment
layout, the segments (vmapped dynamic slices), the classifier's segment
probabilities and types, the image-level scores by max, noisy-OR and
attention pooling, and the heat map merged from the overlapping segments.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmed.data.merge import merge_windows
from jaxmed.models import AttentionPooling, max_pooling, noisy_or_pooling
from jaxmed.tasks.chest.config import ChestConfig
from jaxmed.tasks.chest.regions import downsample, region_probabilities, regions_from_probabilities
from jaxmed.tasks.chest.segments import extract_segments, kind_masks, segment_layout

Array = jax.Array

__all__ = ["POOLINGS", "ChestModel", "analyse", "image_scores"]

POOLINGS = ("max", "noisy_or", "attention")


class ChestModel(NamedTuple):
    """The trained networks of the chest task.

    Attributes:
      config: how they were built and trained.
      regions: parameters of the region U-Net.
      classifier: parameters of the segment classifier.
      attention: parameters of the attention pooling head
        (:class:`jaxmed.models.AttentionPooling`).
    """

    config: ChestConfig
    regions: Any
    classifier: Any
    attention: Any


def attention_module(config: ChestConfig) -> AttentionPooling:
    """The attention pooling head of a model with ``config``."""
    return AttentionPooling(hidden=config.attention_hidden)


def image_scores(probs: Array, embeddings: Array, valid: Array, attention_params: Any, config: ChestConfig
                 ) -> dict[str, Array]:
    """Image-level probabilities of one radiograph from its segments, by each pooling.

    Args:
      probs: ``[K]`` segment probabilities of a finding.
      embeddings: ``[K, D]`` segment embeddings.
      valid: ``[K]`` bool, the segments that exist.
      attention_params: the attention head's parameters (None: no attention score).
      config: the model's config.

    Returns:
      ``{"max", "noisy_or"[, "attention"]}`` scalars in [0, 1]; 0 when no
      segment is valid.
    """
    scores = {"max": max_pooling(probs, valid), "noisy_or": noisy_or_pooling(probs, valid)}
    if attention_params is not None:
        safe = valid | ~jnp.any(valid)  # an empty bag would be 0 / 0
        logit, _ = attention_module(config).apply(attention_params, embeddings, safe)
        scores["attention"] = jnp.where(jnp.any(valid), jax.nn.sigmoid(logit), 0.0)
    return scores


@functools.partial(jax.jit, static_argnames=("config", "heat_map"))
def analyse(model_params: tuple[Any, Any, Any], images: Array, *, config: ChestConfig, heat_map: bool = True
            ) -> dict[str, Array]:
    """The method on a batch of radiographs on the working grid.

    Args:
      model_params: ``(regions, classifier, attention)`` parameters
        (attention may be None).
      images: ``[N, G, G, 1]`` normalised radiographs
        (:func:`~jaxmed.tasks.chest.regions.normalise_radiograph`), ``G =
        config.grid``.
      config: the model's config (static).
      heat_map: also merge the heat map.

    Returns:
      A dict of ``[N, ...]`` arrays: ``"labels"`` ``[N, G, G]`` uint8 region
      labels; ``"corners"`` ``[N, K, 2]``, ``"kinds"`` ``[N, K]``, ``"valid"``
      ``[N, K]`` (the layout); ``"segment_prob"`` ``[N, K]``;
      ``"segment_types"`` ``[N, K, T]`` type probabilities; ``"embeddings"``
      ``[N, K, D]``; ``"lung_fraction"`` ``[N, 2]`` (right, left) of the grid;
      ``"score_max"``, ``"score_noisy_or"``, ``"score_attention"`` ``[N]``;
      with ``heat_map``: ``"heat"`` ``[N, G, G]`` (the mean probability of the
      segments showing each pixel, 0 where none does) and ``"count"``
      ``[N, G, G]`` (how many do).
    """
    region_params, classifier_params, attention_params = model_params
    size = config.regions.input_size
    region_net = config.regions.make_module()
    classifier = config.classifier.make_module()
    seg = config.segments

    small = jax.vmap(lambda x: downsample(x, size))(images)
    probs = region_probabilities(region_net, region_params, small)

    def one(image, prob):
        labels = regions_from_probabilities(prob, image.shape[:2])
        layout = segment_layout(labels, seg)
        segments = extract_segments(image, labels, layout, seg)
        logits, embeddings = classifier.apply(classifier_params, segments, with_embedding=True)
        p = jax.nn.sigmoid(logits[:, 0])
        out = {"labels": labels, "corners": layout.corners, "kinds": layout.kinds, "valid": layout.valid,
               "segment_prob": p, "segment_types": jax.nn.softmax(logits[:, 1:], axis=-1),
               "embeddings": embeddings,
               "lung_fraction": jnp.stack([jnp.mean(labels == 1), jnp.mean(labels == 2)])}
        scores = image_scores(p, embeddings, layout.valid, attention_params, config)
        out.update({f"score_{k}": v for k, v in scores.items()})
        if heat_map:
            win = seg.window
            masks = kind_masks(labels, margin=seg.margin)
            shown = jax.vmap(lambda c, k: jax.lax.dynamic_slice(masks, (k, c[0], c[1]), (1, win, win))[0])(
                layout.corners, layout.kinds)
            weights = shown.astype(jnp.float32) * layout.valid[:, None, None]
            values = jnp.broadcast_to(p[:, None, None], weights.shape)
            out["heat"], out["count"] = merge_windows(values, layout.corners, image_shape=labels.shape,
                                                      weights=weights)
        return out

    return jax.vmap(one)(images.astype(jnp.float32), probs)
