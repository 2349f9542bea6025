"""A classifier of multi-modal images and a localisation map, whose encoder is a U-Net's (Flax Linen), 2D or 3D.

``MapClassifier`` takes co-registered images ``[N, *S, M]`` and a lesion
probability map ``[N, *S]`` (e.g. :class:`jaxmed.models.MultiModalLocaliser`'s
fused map) and gives per example one score ``s`` and ordinal cumulative
logits ``s - theta_k`` (``theta`` increasing, ``K - 1`` of them for ``K``
ordered classes): ``sigmoid(s - theta_k) = P(class > k)``
(:func:`jaxmed.losses.cumulative_link_nll`, the proportional-odds model).

Each modality image goes through one encoder shared by all modalities, as
in :class:`~jaxmed.models.MultiModalLocaliser`: its input is the image, the
one-hot modality code (``modality_inputs``) and the map, ``2 + M``
channels; :class:`UNetEncoder` is the down-sampling half of
:class:`jaxmed.models.UNet` with the same parameter names, so the
localiser's trained encoder initialises it (the map's input kernel starts
at 0: at initialisation the encoder computes exactly the localiser's
features; :func:`encoder_params_from_unet`). The bottleneck features of each
modality are pooled three ways over space (mean; mean weighted by the map
at that resolution; maximum), the modalities' pools concatenated with the
map's maximum logit and mean, and a two-layer head with dropout gives ``s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.localiser import modality_inputs
from jaxmed.models.unet import ConvBlock, _max_pool2

Array = jax.Array

__all__ = ["MAP_CLASSIFIER_PRESETS", "MapClassifier", "MapClassifierConfig", "UNetEncoder", "encoder_params_from_unet"]

_EPS = 1e-6


class UNetEncoder(nn.Module):
    """The down-sampling half of :class:`jaxmed.models.UNet`, under the same parameter names.

    ``ConvBlock_l`` at level ``l`` (``features * 2**l`` channels) followed by
    2x max pooling, ``depth`` times, then the bottleneck block
    ``ConvBlock_depth``.

    Attributes:
      features, depth, norm_groups: as the U-Net's.
    """

    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[N, *S, C]`` -> bottleneck features ``[N, *S / 2**depth, features * 2**depth]``."""
        for level in range(self.depth):
            x = _max_pool2(ConvBlock(self.features * 2**level, self.norm_groups, name=f"ConvBlock_{level}")(x))
        return ConvBlock(self.features * 2**self.depth, self.norm_groups, name=f"ConvBlock_{self.depth}")(x)


def encoder_params_from_unet(unet_params: Mapping[str, Any], encoder_params: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder parameters taken from a trained U-Net's, the extra input channels' kernels set to 0.

    Args:
      unet_params: a :class:`~jaxmed.models.UNet`'s parameter dict (the
        ``"params"`` collection's content: ``ConvBlock_0``, ...).
      encoder_params: a :class:`UNetEncoder`'s (same depth and features; its
        first convolution may take more input channels than the U-Net's).

    Returns:
      ``encoder_params``'s structure with every array from ``unet_params``;
      input channels the U-Net did not have get zero kernels, so the encoder
      ignores them until trained.

    Raises:
      ValueError: the two do not match (depth, features, or fewer encoder channels).
    """
    def take(path, enc):
        node = unet_params
        for k in path:
            name = getattr(k, "key", None)
            if name not in node:
                raise ValueError(f"the U-Net has no parameter {jax.tree_util.keystr(path)}")
            node = node[name]
        src = jnp.asarray(node)
        if src.shape == enc.shape:
            return src.astype(enc.dtype)
        if src.ndim == enc.ndim and src.shape[:-2] == enc.shape[:-2] and src.shape[-1] == enc.shape[-1] \
                and src.shape[-2] < enc.shape[-2]:
            pad = [(0, 0)] * (src.ndim - 2) + [(0, enc.shape[-2] - src.shape[-2]), (0, 0)]
            return jnp.pad(src, pad).astype(enc.dtype)
        raise ValueError(f"parameter {jax.tree_util.keystr(path)}: U-Net shape {src.shape}, encoder {enc.shape}")

    return jax.tree_util.tree_map_with_path(take, dict(encoder_params))


def _pool_map(prob: Array, factor: int) -> Array:
    """Mean of ``[N, *S]`` over ``factor``-sized blocks: ``[N, *S / factor]``."""
    n, *spatial = prob.shape
    split = [n]
    for s in spatial:
        split += [s // factor, factor]
    return prob.reshape(split).mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


class MapClassifier(nn.Module):
    """Images + a localisation map -> a score and ordinal cumulative logits (module docstring).

    Attributes:
      features, depth, norm_groups: of the encoder (the localiser U-Net's).
      num_classes: ``K`` ordered classes (``K - 1`` cumulative logits).
      hidden: width of the head's hidden layer.
      dropout: dropout rate before the head's output layer.

    Example:
      >>> model = MapClassifier(features=4, depth=1, norm_groups=4)
      >>> x, p = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 16, 16))
      >>> params = model.init(jax.random.key(0), x, p)
      >>> model.apply(params, x, p)["cumulative_logits"].shape
      (2, 4)
    """

    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8
    num_classes: int = 5
    hidden: int = 64
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: Array, prob_map: Array, *, deterministic: bool = True) -> dict[str, Array]:
        """Scores and cumulative logits.

        Args:
          x: ``[N, *S, M]`` co-registered images.
          prob_map: ``[N, *S]`` lesion probabilities in [0, 1].
          deterministic: False applies dropout (needs a ``"dropout"`` rng).

        Returns:
          ``{"score": [N], "cumulative_logits": [N, K - 1], "embedding": [N, E]}``.
        """
        n, *spatial, m = x.shape
        if tuple(prob_map.shape) != (n, *spatial):
            raise ValueError(f"prob_map must be [N, *S] = {(n, *spatial)}, got {prob_map.shape}")
        maps = jnp.broadcast_to(prob_map[None, ..., None], (m, n, *spatial, 1)).reshape(m * n, *spatial, 1)
        inputs = jnp.concatenate([modality_inputs(x), maps.astype(x.dtype)], axis=-1)
        feats = UNetEncoder(self.features, self.depth, self.norm_groups, name="encoder")(inputs)
        axes = tuple(range(1, feats.ndim - 1))
        weights = _pool_map(maps[..., 0], 2**self.depth)
        weights = weights / (jnp.sum(weights, axis=axes, keepdims=True) + _EPS)
        pooled = jnp.concatenate([jnp.mean(feats, axis=axes), jnp.sum(feats * weights[..., None], axis=axes),
                                  jnp.max(feats, axis=axes)], axis=-1)
        pooled = jnp.moveaxis(pooled.reshape(m, n, -1), 0, 1).reshape(n, -1)
        p = jnp.clip(prob_map.reshape(n, -1), _EPS, 1 - _EPS)
        top = jnp.max(p, axis=-1)
        stats = jnp.stack([jnp.log(top) - jnp.log1p(-top), jnp.mean(p, axis=-1)], axis=-1)
        embedding = jnp.concatenate([pooled, stats], axis=-1)
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(embedding))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        score = nn.Dense(1, name="score")(h)[:, 0]
        # Increasing cut-points: the first, then positive gaps.
        first = self.param("cut_first", nn.initializers.zeros, ())
        gaps = self.param("cut_gaps", nn.initializers.constant(0.5), (self.num_classes - 2,))
        cuts = first + jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(jax.nn.softplus(gaps) + 1e-3)])
        return {"score": score, "cumulative_logits": score[:, None] - cuts[None, :], "embedding": embedding}


@dataclass(frozen=True, kw_only=True)
class MapClassifierConfig:
    """A :class:`MapClassifier` (its encoder must match the localiser's U-Net to take its weights).

    Attributes:
      features, depth, norm_groups, num_classes, hidden, dropout: as
        :class:`MapClassifier`.
    """

    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8
    num_classes: int = 5
    hidden: int = 64
    dropout: float = 0.1

    def __post_init__(self):
        if self.features < 1 or self.depth < 0 or self.hidden < 1:
            raise ValueError(f"features and hidden must be >= 1, depth >= 0; got {self.features}, {self.hidden}, "
                             f"{self.depth}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.norm_groups is not None and (self.norm_groups < 1 or self.features % self.norm_groups):
            raise ValueError(f"norm_groups={self.norm_groups} must be >= 1 and divide features={self.features}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def make_module(self) -> MapClassifier:
        return MapClassifier(features=self.features, depth=self.depth, norm_groups=self.norm_groups,
                             num_classes=self.num_classes, hidden=self.hidden, dropout=self.dropout)


MAP_CLASSIFIER_PRESETS: dict[str, MapClassifierConfig] = {
    "mpmri64": MapClassifierConfig(),
    "mpmri3d": MapClassifierConfig(depth=2),
    "tiny": MapClassifierConfig(features=4, depth=1, norm_groups=4, hidden=8),
}
