"""Losses on disjoint spatial regions with blanked modalities (masked-region training).

One training sample holds ``M`` co-registered modalities ``x: [*S, M]``
(``S = (H, W)`` or ``(D, H, W)``). A step computes ``V`` losses of the same
network on it; view ``v``

1. replaces the modalities marked in ``blank[v]`` by a blank value (a constant
   or a learned per-modality vector), then
2. averages the network's per-pixel loss over the pixels of ``regions[v]``
   only.

The network is updated with the (weighted) sum of the ``V`` losses. The views
are a batch axis: :func:`masked_region_losses` is ``jax.vmap`` over them, so a
step is one jitted function with no Python loop over views.

Region and blanking generators live in :mod:`jaxmed.data.regions`.
:func:`make_masked_region_loss` turns a network into a train-step loss
``loss_fn(params, batch, key)``; :func:`make_lesion_loss` is the ready-made
plain / masked-region lesion-map loss behind one config
(:class:`LesionLossConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmed.data.regions import random_partition_regions, single_modality_drops

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Array], tuple[Array, dict[str, Array]]]


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` over the ``True`` entries of ``mask``; 0 if there are none.

    Entries outside the mask are dropped with ``jnp.where`` (not multiplied by
    0), so an ``inf``/``NaN`` there cannot leak into the value, and their
    gradient is exactly 0.

    Args:
      values: any shape.
      mask: bool, the shape of ``values``.

    Returns:
      Scalar: ``sum(values[mask]) / max(count(mask), 1)``, in float32 or wider
      (a bfloat16 sum over thousands of pixels would lose the mean).
    """
    acc = jnp.promote_types(values.dtype, jnp.float32)
    total = jnp.sum(jnp.where(mask, values, 0.0), dtype=acc)
    # max(count, 1): an empty region gives 0 / 1 = 0 with a zero (not NaN) gradient.
    count = jnp.maximum(jnp.sum(mask, dtype=acc), 1.0)
    return total / count


def blank_modalities(x: Array, blank: Array, blank_value: float | Array = 0.0) -> Array:
    """Replaces the marked modalities of one example by a blank.

    Args:
      x: ``[*S, M]`` one example, modalities last.
      blank: bool ``[M]``, the modalities to replace.
      blank_value: a scalar or a per-modality vector ``[M]`` (may be a learned
        parameter; its gradient flows from the blanked modalities only).

    Returns:
      ``[*S, M]``: ``x`` with ``x[..., m] = blank_value[m]`` where ``blank[m]``.
    """
    m = x.shape[-1]
    if blank.shape != (m,):
        raise ValueError(f"blank must have shape ({m},) for {m} modalities, got {blank.shape}")
    fill = jnp.asarray(blank_value, dtype=x.dtype)
    if fill.shape not in ((), (m,)):
        raise ValueError(
            f"blank_value must be a scalar or have shape ({m},), got shape {fill.shape}"
        )
    lead = (1,) * (x.ndim - 1)
    # Explicit reshapes: the library runs under jax_numpy_rank_promotion="raise".
    fill = jnp.broadcast_to(fill, (m,)).reshape(lead + (m,))
    return jnp.where(blank.reshape(lead + (m,)), fill, x)


def masked_region_losses(
    loss_map_fn: Callable[[Array], Array],
    x: Array,
    *,
    regions: Array,
    blank: Array,
    blank_value: float | Array = 0.0,
) -> Array:
    """Per-view losses of one example: each on its own region, with modalities blanked.

    View ``v`` computes ``loss_map = loss_map_fn(blank_modalities(x, blank[v],
    blank_value))`` and returns its mean over ``regions[v]``. The views are
    vmapped (one batched call of the network), never looped.

    .. note::
       Loss ``v`` ignores the loss map (hence the targets) outside
       ``regions[v]``. The network *input* is the whole (blanked) image, so
       pixels outside the region still reach the loss through the network's
       receptive field; with a per-pixel network (1x1 convs) the loss is
       independent of everything outside the region.

       When ``blank`` is a concrete array (not drawn inside a traced step)
       and several views share one blanking pattern, the network runs once
       per distinct pattern and those views read their regions from the same
       loss map: the values are the same, the cost scales with the number of
       distinct patterns rather than views.

    Args:
      loss_map_fn: ``x_view [*S, M] -> [*S]``, the per-pixel loss of the network
        on one blanked input (closing over parameters and targets).
      x: ``[H, W, M]`` or ``[D, H, W, M]``, one example, modalities last.
      regions: bool ``[V, *S]``, the pixels each view's loss is computed on
        (disjoint in masked-region training; not required here).
      blank: bool ``[V, M]``, the modalities replaced in each view.
      blank_value: scalar or ``[M]`` blank (a constant or a learned vector).

    Returns:
      ``[V]``: the mean loss of each view over its region; 0 for an empty
      region (with a finite, zero gradient).
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be [H, W, M] or [D, H, W, M], got shape {x.shape}")
    spatial, m = x.shape[:-1], x.shape[-1]
    if regions.dtype != jnp.bool_:
        raise TypeError(f"regions must be a bool mask, got dtype {regions.dtype}")
    if blank.dtype != jnp.bool_:
        raise TypeError(f"blank must be a bool mask, got dtype {blank.dtype}")
    if regions.ndim != x.ndim or regions.shape[1:] != spatial:
        raise ValueError(
            f"regions must have shape [V, {', '.join(map(str, spatial))}] for x of shape "
            f"{x.shape}, got {regions.shape}"
        )
    if blank.shape != (regions.shape[0], m):
        raise ValueError(
            f"blank must have shape [V, M] = {(regions.shape[0], m)}, got {blank.shape}"
        )

    def loss_map(blank_v: Array) -> Array:
        values = loss_map_fn(blank_modalities(x, blank_v, blank_value))
        if values.shape != spatial:
            raise ValueError(
                f"loss_map_fn must return the spatial shape {spatial}, got {values.shape}"
            )
        return values

    patterns, view_pattern = _shared_patterns(blank)
    if patterns is None:
        return jax.vmap(lambda region, blank_v: masked_mean(loss_map(blank_v), region))(
            regions, blank
        )
    # Views with the same blanked modalities see the same input, hence the same
    # loss map: run the network once per distinct pattern, then read each
    # view's region from its pattern's map.
    maps = jax.vmap(loss_map)(jnp.asarray(patterns))
    # Static slices, not a gather: the gather's transpose is a scatter-add of
    # constants that XLA spent seconds constant-folding.
    view_maps = jnp.stack([maps[int(u)] for u in view_pattern])
    return jax.vmap(masked_mean)(view_maps, regions)


def _shared_patterns(blank: Array) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Distinct rows of a concrete ``blank [V, M]`` and each view's row index.

    Returns ``(None, None)`` when ``blank`` is traced (drawn inside the step)
    or has no repeated row, i.e. when there is nothing to share.
    """
    if isinstance(blank, jax.core.Tracer):
        return None, None
    blank = np.asarray(blank)
    patterns, view_pattern = np.unique(blank, axis=0, return_inverse=True)
    if len(patterns) == len(blank):
        return None, None
    return patterns, view_pattern.reshape(-1)


def _resolve(spec: Array | Callable[..., Array], key: Array, example: Mapping[str, Array]) -> Array:
    return spec(key, example) if callable(spec) else jnp.asarray(spec)


def make_masked_region_loss(
    apply_fn: Callable[[Any, Array], Array],
    *,
    regions: Array | Callable[[Array, Mapping[str, Array]], Array],
    blank: Array | Callable[[Array, Mapping[str, Array]], Array],
    blank_value: float | Array | Callable[[Any], Array] = 0.0,
    view_weights: Array | None = None,
    pixel_loss: Callable[[Array, Array], Array] = optax.sigmoid_binary_cross_entropy,
    image_key: str = "image",
    target_key: str = "lesion_mask",
) -> LossFn:
    """Builds ``loss_fn(params, batch, key) -> (loss, metrics)`` for masked-region training.

    For each example of the batch (vmapped), the ``V`` view losses of
    :func:`masked_region_losses` are computed with the per-pixel
    ``pixel_loss(logits, target)``; the example's loss is their weighted sum,
    and the batch loss is the mean over examples. Plain (unmasked) training is
    the special case of one view covering the whole image with nothing
    blanked: ``regions=jnp.ones((1, *S), bool), blank=jnp.zeros((1, M), bool)``.

    Args:
      apply_fn: ``(params, x [N, *S, M]) -> logits [N, *S, 1]``, e.g.
        ``UNet(...).apply``.
      regions: bool ``[V, *S]`` used for every example, or
        ``regions(key, example) -> [V, *S]`` drawn per example and step (e.g.
        from its organ mask); ``example`` is one example's slice of ``batch``.
      blank: bool ``[V, M]``, or ``blank(key, example) -> [V, M]``.
      blank_value: scalar or ``[M]`` constant, or ``blank_value(params) -> [M]``
        for a learned blank held in the parameters.
      view_weights: ``[V]`` weights of the sum over views; ``None`` = all 1.
      pixel_loss: ``(logits [*S], target [*S]) -> [*S]`` elementwise loss.
      image_key: batch entry holding the images ``[N, *S, M]``.
      target_key: batch entry holding the per-pixel targets ``[N, *S]``
        (bool or float).

    Returns:
      ``loss_fn(params, batch, key)`` giving the scalar loss and metrics
      ``{"loss": scalar, "view_loss_<v>": mean loss of view v over the batch}``.
      ``key`` draws the regions/blanks of callables; fold the step in with
      ``jax.random.fold_in`` for a new draw each step.
    """

    def example_losses(params: Any, example: Mapping[str, Array], key: Array) -> Array:
        key_regions, key_blank = jax.random.split(key)
        view_regions = _resolve(regions, key_regions, example)
        view_blank = _resolve(blank, key_blank, example)
        value = blank_value(params) if callable(blank_value) else blank_value
        x = example[image_key]
        target = example[target_key].astype(x.dtype)

        def loss_map_fn(x_view: Array) -> Array:
            logits = apply_fn(params, x_view[None])
            if logits.shape != (1, *x.shape[:-1], 1):
                raise ValueError(
                    f"apply_fn must return logits [N, *S, 1] = {(1, *x.shape[:-1], 1)}, "
                    f"got {logits.shape}"
                )
            return pixel_loss(logits[0, ..., 0], target)

        return masked_region_losses(
            loss_map_fn, x, regions=view_regions, blank=view_blank, blank_value=value
        )

    def loss_fn(
        params: Any, batch: Mapping[str, Array], key: Array
    ) -> tuple[Array, dict[str, Array]]:
        keys = jax.random.split(key, batch[image_key].shape[0])
        # The whole batch is vmapped so region callables can read other
        # per-example entries (an organ mask); every entry needs a leading N.
        view_losses = jax.vmap(example_losses, in_axes=(None, 0, 0))(params, dict(batch), keys)
        weights = (
            jnp.ones(view_losses.shape[-1], view_losses.dtype)
            if view_weights is None
            else jnp.asarray(view_weights, view_losses.dtype)
        )
        if weights.shape != view_losses.shape[-1:]:
            raise ValueError(
                f"view_weights must have shape ({view_losses.shape[-1]},), got {weights.shape}"
            )
        loss = jnp.mean(view_losses @ weights)
        view_means = jnp.mean(view_losses, axis=0)
        metrics = {f"view_loss_{v}": view_means[v] for v in range(view_means.shape[0])}
        return loss, {"loss": loss, **metrics}

    return loss_fn


def weighted_sigmoid_bce(logits: Array, target: Array, *, pos_weight: float = 1.0) -> Array:
    """Elementwise sigmoid cross-entropy with positives weighted by ``pos_weight``.

    Args:
      logits: any shape.
      target: the shape of ``logits``, in [0, 1].
      pos_weight: weight of the positive term (lesion pixels are rare; >1
        keeps a 0.5 threshold useful).

    Returns:
      ``(1 + (pos_weight - 1) * target) * BCE(logits, target)``, unreduced, nats.
    """
    return optax.sigmoid_binary_cross_entropy(logits, target) * (1.0 + (pos_weight - 1.0) * target)


@dataclass(frozen=True, kw_only=True)
class LesionLossConfig:
    """The training loss of a per-pixel lesion map, plain or masked-region.

    Attributes:
      masked: masked-region training: each example is split per step into
        random disjoint regions (``cell``-pixel squares dealt to the views by
        :func:`~jaxmed.data.regions.random_partition_regions`); view ``v``
        blanks modality ``v``, or with ``include_none`` (the default) view 0
        blanks nothing and view ``v`` blanks modality ``v - 1``
        (:func:`~jaxmed.data.regions.single_modality_drops`).
        False: one view, every pixel, nothing blanked.
      cell: side of the region cells, pixels.
      include_none: add a view with nothing blanked (``M + 1`` views, the
        default). Without it the network never sees all modalities at once
        in training and can fail when none is missing: in
        ``experiments/masked_region.py`` Dice with all modalities present was
        0.27 without this view and 0.98 with it.
      blank_value: the constant a blanked modality is replaced by.
      pos_weight: weight of lesion pixels in the cross-entropy.
    """

    masked: bool = True
    cell: int = 8
    include_none: bool = True
    blank_value: float = 0.0
    pos_weight: float = 1.0

    def __post_init__(self):
        if self.cell < 1:
            raise ValueError(f"LesionLossConfig.cell must be >= 1, got {self.cell}")
        if not self.pos_weight > 0:
            raise ValueError(f"LesionLossConfig.pos_weight must be > 0, got {self.pos_weight}")


def make_lesion_loss(
    apply_fn: Callable[[Any, Array], Array],
    config: LesionLossConfig,
    *,
    shape: Sequence[int],
    num_modalities: int,
    image_key: str = "image",
    target_key: str = "lesion_mask",
) -> LossFn:
    """``loss_fn(params, batch, key)`` for a lesion-map network, as ``config`` says.

    Args:
      apply_fn: ``(params, x [N, *S, M]) -> logits [N, *S, 1]``.
      config: plain or masked-region, and the loss settings.
      shape: the spatial shape ``S`` of the images.
      num_modalities: ``M``.
      image_key: batch entry of the images.
      target_key: batch entry of the lesion masks.

    Returns:
      The loss function of :func:`make_masked_region_loss`; its metrics hold
      one ``view_loss_<v>`` per view.
    """
    shape = tuple(int(s) for s in shape)

    def pixel_loss(logits: Array, target: Array) -> Array:
        return weighted_sigmoid_bce(logits, target, pos_weight=config.pos_weight)

    if not config.masked:
        return make_masked_region_loss(
            apply_fn,
            regions=jnp.ones((1, *shape), bool),
            blank=jnp.zeros((1, num_modalities), bool),
            pixel_loss=pixel_loss,
            image_key=image_key,
            target_key=target_key,
        )
    blank = single_modality_drops(num_modalities, include_none=config.include_none)

    def regions(key: Array, example: Mapping[str, Array]) -> Array:
        del example
        return random_partition_regions(key, shape, num_views=blank.shape[0], cell=config.cell)

    return make_masked_region_loss(
        apply_fn,
        regions=regions,
        blank=blank,
        blank_value=config.blank_value,
        pixel_loss=pixel_loss,
        image_key=image_key,
        target_key=target_key,
    )
