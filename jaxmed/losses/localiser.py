"""The training loss of a multi-modal lesion localiser: its fused map and each modality's map, plain or masked-region.

A localiser (:class:`jaxmed.models.MultiModalLocaliser`) gives a fused lesion
logit map and one map per modality. The per-pixel loss is the weighted
cross-entropy of the fused map plus ``modality_weight`` times the mean over
modalities of each map's (deep supervision: every modality's map is a
lesion map in its own right, whatever the fusion). With ``masked`` it is
computed by :func:`jaxmed.losses.masked_region_losses`: per example and step,
random disjoint regions, each view with one modality blanked (and one with
none), the views' region means summed, as
:func:`jaxmed.losses.make_lesion_loss` does for a single map; a blanked
modality's own map is still asked for the lesions, and learns to say little
from a blank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxmed.data.regions import random_partition_regions, single_modality_drops
from jaxmed.losses.masked_region import LesionLossConfig, masked_region_losses, weighted_sigmoid_bce

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Array], tuple[Array, dict[str, Array]]]

__all__ = ["LocaliserLossConfig", "localiser_pixel_loss", "make_localiser_loss"]


@dataclass(frozen=True, kw_only=True)
class LocaliserLossConfig(LesionLossConfig):
    """Training options of a multi-modal localiser: those of :class:`~jaxmed.losses.LesionLossConfig` and one more.

    Attributes:
      masked, cell, include_none, blank_value, pos_weight: as
        :class:`~jaxmed.losses.LesionLossConfig` (here plain training and
        ``pos_weight=5`` by default).
      modality_weight: weight of the per-modality maps' mean loss beside the
        fused map's.
    """

    masked: bool = False
    pos_weight: float = 5.0
    modality_weight: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if not self.modality_weight >= 0:
            raise ValueError(f"LocaliserLossConfig.modality_weight must be >= 0, got {self.modality_weight}")


def localiser_pixel_loss(fused: Array, maps: Array, target: Array, *, pos_weight: float,
                         modality_weight: float) -> Array:
    """Per-pixel loss of one example, nats, unreduced.

    Args:
      fused: ``[*S]`` fused logits.
      maps: ``[*S, M]`` per-modality logits.
      target: ``[*S]`` lesion target in [0, 1].
      pos_weight: weight of lesion pixels.
      modality_weight: weight of the per-modality term.

    Returns:
      ``[*S]``: ``wbce(fused) + modality_weight * mean_m wbce(maps[..., m])``.
    """
    main = weighted_sigmoid_bce(fused, target, pos_weight=pos_weight)
    per_modality = weighted_sigmoid_bce(maps, jnp.broadcast_to(target[..., None], maps.shape), pos_weight=pos_weight)
    return main + modality_weight * jnp.mean(per_modality, axis=-1)


def make_localiser_loss(
    apply_fn: Callable[[Any, Array, Array], Mapping[str, Array]],
    config: LocaliserLossConfig,
    *,
    shape: Sequence[int],
    num_modalities: int,
    image_key: str = "image",
    target_key: str = "lesion_mask",
) -> LossFn:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` of a localiser.

    Args:
      apply_fn: ``(params, x [1, *S, M], key) -> {"fused": [1, *S, 1], "maps":
        [1, *S, M]}`` (``key`` for dropout).
      config: the options.
      shape: the spatial shape ``S``.
      num_modalities: ``M``.
      image_key, target_key: batch entries of the images ``[N, *S, M]`` and
        targets ``[N, *S]``.

    Returns:
      The loss, the batch mean of each example's summed view losses; metrics
      ``"loss"`` and ``"view_loss_<v>"`` (the batch mean of view ``v``).
    """
    shape = tuple(int(s) for s in shape)
    if config.masked:
        blank = single_modality_drops(num_modalities, include_none=config.include_none)
    else:
        blank = jnp.zeros((1, num_modalities), bool)

    def example_losses(params, x, target, key):
        region_key, dropout_key = jax.random.split(key)
        if config.masked:
            regions = random_partition_regions(region_key, shape, num_views=blank.shape[0], cell=config.cell)
        else:
            regions = jnp.ones((1, *shape), bool)

        def loss_map(x_view):
            out = apply_fn(params, x_view[None], dropout_key)
            return localiser_pixel_loss(out["fused"][0, ..., 0], out["maps"][0], target,
                                        pos_weight=config.pos_weight, modality_weight=config.modality_weight)

        return masked_region_losses(loss_map, x, regions=regions, blank=blank, blank_value=config.blank_value)

    def loss_fn(params, batch, key):
        x = batch[image_key]
        target = batch[target_key].astype(x.dtype)
        keys = jax.random.split(key, x.shape[0])
        views = jax.vmap(example_losses, in_axes=(None, 0, 0, 0))(params, x, target, keys)  # [N, V]
        loss = jnp.mean(jnp.sum(views, axis=-1))
        means = jnp.mean(views, axis=0)
        return loss, {"loss": loss, **{f"view_loss_{v}": means[v] for v in range(means.shape[0])}}

    return loss_fn
