"""A multi-modal lesion localiser: one localisation map per modality image, and their fusion into one map.

``MultiModalLocaliser`` takes co-registered images ``[N, *S, M]`` (``S`` 2D or
3D, modalities last). Each modality image goes on its own through one
:class:`jaxmed.models.UNet` shared by all modalities (its input is the image
and a one-hot code of the modality, ``1 + M`` channels; its output
``feature_channels`` features per pixel), then (optional) dropout and the
modality's own linear head: the localisation map of that image, a logit per
pixel. The ``M`` images are one batch of ``M * N`` through the U-Net.

.. note::
   One U-Net with a modality code rather than ``M`` U-Nets with their own
   weights: ``nn.vmap`` over stacked kernels makes grouped convolutions,
   which XLA:CPU ran 14x slower (a 64x64 train step of 16 exams: 14.6 s
   against 1.0 s).

The maps are combined into one map of lesion logits by:

* ``"mean"``: the mean of the per-modality probabilities,
  ``logit(mean_m sigmoid(l_m))``;
* ``"max"``: their maximum, ``max_m l_m`` (sigmoid is monotone);
* ``"learned"``: a small convolutional network on the concatenated
  per-modality features (3x3 conv, ReLU, 1x1 conv), which can weigh the
  modalities by how reliable each is and combine evidence (dark on T2 *and*
  dark on ADC *and* bright on DWI).

``sigmoid`` of the fused logit is the lesion probability; its maximum over
an exam is the exam's lesion score. Dropout before the heads stays active
with ``deterministic=False`` (an ``"dropout"`` PRNG stream), which Monte
Carlo dropout uses for uncertainty.

The U-Net's parameters (under ``"unet"``) keep :class:`~jaxmed.models.UNet`'s
names, so its encoder half (``ConvBlock_0`` ... ``ConvBlock_depth``)
initialises :class:`jaxmed.models.MapClassifier`'s encoder.

References:
  Ronneberger, Fischer, Brox. U-Net. MICCAI 2015.
  Gal, Ghahramani. Dropout as a Bayesian approximation. ICML 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.unet import UNet

Array = jax.Array

__all__ = ["FUSIONS", "LOCALISER_PRESETS", "LocaliserConfig", "MultiModalLocaliser", "fuse_logits", "modality_inputs"]

FUSIONS = ("mean", "max", "learned")


def modality_inputs(x: Array) -> Array:
    """Each modality image with a one-hot code of its modality, as one batch: ``[N, *S, M]`` -> ``[M * N, *S, 1 + M]``.

    Row ``m * N + i`` is image ``m`` of example ``i``; channel 0 is the image,
    channels ``1:`` the code (1 at ``1 + m``).
    """
    n, *spatial, m = x.shape
    images = jnp.moveaxis(x, -1, 0)[..., None]  # [M, N, *S, 1]
    code = jnp.broadcast_to(jnp.eye(m, dtype=x.dtype).reshape(m, 1, *([1] * len(spatial)), m), (m, n, *spatial, m))
    return jnp.concatenate([images, code], axis=-1).reshape(m * n, *spatial, 1 + m)


def fuse_logits(logits: Array, fusion: str) -> Array:
    """Fixed fusions of per-modality logit maps into one: ``"mean"`` or ``"max"`` of the probabilities.

    Args:
      logits: ``[..., M]`` per-modality logits.
      fusion: ``"mean"`` (``logit(mean_m sigmoid(l_m))``) or ``"max"``
        (``max_m l_m``).

    Returns:
      ``[...]`` fused logits. The mean is computed in log space
      (``log p = logsumexp(log_sigmoid(l)) - log M``, likewise ``log(1 - p)``),
      so it stays finite for saturated maps.
    """
    if fusion == "max":
        return jnp.max(logits, axis=-1)
    if fusion == "mean":
        log_m = math.log(logits.shape[-1])
        log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=-1) - log_m
        log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=-1) - log_m
        return log_p - log_q
    raise ValueError(f"fuse_logits: fusion must be 'mean' or 'max', got {fusion!r}")


class MultiModalLocaliser(nn.Module):
    """A shared U-Net over the modality images, per-modality localisation maps, and their fusion (module docstring).

    Attributes:
      features, depth, norm_groups: of the :class:`~jaxmed.models.UNet`.
      feature_channels: features per pixel and modality the U-Net gives the
        map heads (and the learned fusion).
      fusion: one of :data:`FUSIONS`.
      fusion_hidden: channels of the learned fusion's hidden layer.
      dropout: rate of the dropout on the per-modality features.

    Example:
      >>> model = MultiModalLocaliser(features=4, depth=1, norm_groups=4)
      >>> x = jnp.zeros((2, 16, 16, 3))
      >>> params = model.init(jax.random.key(0), x)
      >>> model.apply(params, x).shape
      (2, 16, 16, 1)
    """

    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8
    feature_channels: int = 8
    fusion: str = "learned"
    fusion_hidden: int = 16
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True, with_maps: bool = False) -> Array | dict[str, Array]:
        """Fused lesion logits, and on request the per-modality maps.

        Args:
          x: ``[N, *S, M]`` co-registered images (``S`` of 2 or 3 axes, each
            divisible by ``2**depth``).
          deterministic: False applies dropout (needs a ``"dropout"`` rng).
          with_maps: also return the per-modality maps.

        Returns:
          ``[N, *S, 1]`` fused logits; with ``with_maps`` a dict with
          ``"fused"`` (that), ``"maps"`` ``[N, *S, M]`` (per-modality
          logits) and ``"features"`` ``[M, N, *S, feature_channels]``.
        """
        if x.ndim not in (4, 5):
            raise ValueError(f"MultiModalLocaliser expects [N, H, W, M] or [N, D, H, W, M], got shape {x.shape}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        n, *spatial, m = x.shape
        features = nn.relu(UNet(features=self.features, depth=self.depth, out_channels=self.feature_channels,
                                norm_groups=self.norm_groups, name="unet")(modality_inputs(x)))
        features = features.reshape(m, n, *spatial, self.feature_channels)
        features = nn.Dropout(self.dropout)(features, deterministic=deterministic)
        kernel = self.param("head_kernel", nn.initializers.lecun_normal(), (m, self.feature_channels, 1))
        bias = self.param("head_bias", nn.initializers.zeros, (m,))
        maps = jnp.einsum("mn...f,mf->n...m", features, kernel[..., 0]) + bias.reshape((1,) * (x.ndim - 1) + (m,))
        if self.fusion == "learned":
            stacked = jnp.moveaxis(features, 0, -2).reshape(n, *spatial, m * self.feature_channels)
            kernel = (3,) * (x.ndim - 2)
            hidden = nn.relu(nn.Conv(self.fusion_hidden, kernel, padding="SAME", name="fusion_hidden")(stacked))
            fused = nn.Conv(1, (1,) * (x.ndim - 2), name="fusion_out")(hidden)
        else:
            fused = fuse_logits(maps, self.fusion)[..., None]
        if with_maps:
            return {"fused": fused, "maps": maps, "features": features}
        return fused


@dataclass(frozen=True, kw_only=True)
class LocaliserConfig:
    """A :class:`MultiModalLocaliser` and the images it takes (a registry config).

    Attributes:
      image_shape: ``(H, W, M)`` or ``(D, H, W, M)``.
      features, depth, norm_groups, feature_channels, fusion, fusion_hidden,
        dropout: as :class:`MultiModalLocaliser`.
    """

    image_shape: tuple[int, ...]
    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8
    feature_channels: int = 8
    fusion: str = "learned"
    fusion_hidden: int = 16
    dropout: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        if len(self.image_shape) not in (3, 4) or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, M) or (D, H, W, M), got {self.image_shape}")
        if self.image_shape[-1] < 2:
            raise ValueError(f"a multi-modal localiser needs >= 2 modalities, got image_shape {self.image_shape}")
        factor = 2**self.depth
        if any(s % factor for s in self.image_shape[:-1]):
            raise ValueError(f"spatial shape {self.image_shape[:-1]} not divisible by 2**depth = {factor}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.feature_channels < 1 or self.fusion_hidden < 1:
            raise ValueError("feature_channels and fusion_hidden must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        UNet(features=self.features, depth=self.depth, norm_groups=self.norm_groups)  # validates them

    @property
    def num_modalities(self) -> int:
        return self.image_shape[-1]

    def make_module(self) -> MultiModalLocaliser:
        """The network: ``[N, *image_shape]`` -> fused logits ``[N, *spatial, 1]``."""
        return MultiModalLocaliser(features=self.features, depth=self.depth, norm_groups=self.norm_groups,
                                   feature_channels=self.feature_channels, fusion=self.fusion,
                                   fusion_hidden=self.fusion_hidden, dropout=self.dropout)


# 64x64 2D mpMRI exams (T2, ADC, DWI; the lesions task), its 3D twin on 16-slice crops, and a test-sized net.
LOCALISER_PRESETS: dict[str, LocaliserConfig] = {
    "mpmri64": LocaliserConfig(image_shape=(64, 64, 3)),
    "mpmri3d": LocaliserConfig(image_shape=(16, 64, 64, 3), depth=2),
    "tiny": LocaliserConfig(image_shape=(16, 16, 3), features=4, depth=1, norm_groups=4, feature_channels=4,
                            fusion_hidden=4),
}
