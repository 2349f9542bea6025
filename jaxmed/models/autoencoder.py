"""A plain (deterministic) convolutional autoencoder for compressing images.

Images are mapped to ``feature_dim`` features and back with the same encoder
and decoder trunks as :class:`jaxmed.models.VAE`. Train it with
:func:`jaxmed.losses.autoencoder_loss_fn`; then
``model.apply(params, images, method=Autoencoder.encode)`` gives feature
vectors on which a flat VAE (``VAEConfig(image_shape=(feature_dim,), ...)``,
e.g. ``PRESETS["features64"]``) can be trained.

Every method accepts ONE image or any number of leading batch axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax

from jaxmed.models.layers import (
    DOWN_IMPLS,
    NORMS,
    UP_IMPLS,
    ConvDecoder,
    ConvEncoder,
    at_least_f32,
    flatten_batch,
)
from jaxmed.models.vae import OUTPUT_ACTIVATIONS

Array = jax.Array


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig:
    """Architecture of an :class:`Autoencoder`.

    Attributes:
      image_shape: ``(*spatial, channels)`` of one image, channels last.
      feature_dim: size of the compressed representation.
      channels: encoder channels per down-sampling layer; the decoder mirrors them.
      kernel_size: convolution kernel extent.
      strides: down-sampling factor of each layer (an int applies to all).
      output_activation: ``"sigmoid"`` (images in [0, 1]) or ``"none"``.
      norm: ``"none"``, ``"layer"`` or ``"group"``.
      dtype: compute dtype; parameters stay float32.
      down_impl: strided-convolution implementation (same function, see layers).
      up_impl: transposed-convolution implementation (same function).
    """

    image_shape: tuple[int, ...]
    feature_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    kernel_size: int = 4
    strides: int | tuple[int, ...] = 2
    output_activation: str = "sigmoid"
    norm: str = "none"
    dtype: Any = None
    down_impl: str = "auto"
    up_impl: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        strides = self.strides
        strides = (strides,) * len(self.channels) if isinstance(strides, int) else tuple(strides)
        object.__setattr__(self, "strides", strides)
        if not 2 <= len(self.image_shape) <= 4 or min(self.image_shape) < 1:
            raise ValueError(
                f"image_shape must be (*spatial, channels) with 1-3 spatial axes, got {self.image_shape}"
            )
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if len(strides) != len(self.channels) or min(strides) < 1:
            raise ValueError(f"need one positive stride per layer ({len(self.channels)}), got {strides}")
        factor = math.prod(strides)
        if any(n % factor for n in self.image_shape[:-1]):
            raise ValueError(
                f"spatial shape {self.image_shape[:-1]} not divisible by prod(strides) = {factor}"
            )
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"unknown output_activation {self.output_activation!r}; expected one of {OUTPUT_ACTIVATIONS}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.down_impl not in DOWN_IMPLS:
            raise ValueError(f"unknown down_impl {self.down_impl!r}; expected one of {DOWN_IMPLS}")
        if self.up_impl not in UP_IMPLS:
            raise ValueError(f"unknown up_impl {self.up_impl!r}; expected one of {UP_IMPLS}")


AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    # The reference64 VAE's trunks with a 64-feature bottleneck.
    "reference64": AutoencoderConfig(image_shape=(64, 64, 1), feature_dim=64),
    "tiny": AutoencoderConfig(image_shape=(8, 8, 1), feature_dim=4, channels=(4, 8)),
}


class Autoencoder(nn.Module):
    """Deterministic encoder to ``feature_dim`` features and decoder back.

    Attributes:
      config: the architecture.
    """

    config: AutoencoderConfig

    def setup(self):
        cfg = self.config
        self.encoder = ConvEncoder(
            channels=cfg.channels, kernel_size=cfg.kernel_size, strides=cfg.strides,
            out_features=cfg.feature_dim, norm=cfg.norm, impl=cfg.down_impl, dtype=cfg.dtype,
        )
        self.decoder = ConvDecoder(
            out_shape=cfg.image_shape, channels=cfg.channels, kernel_size=cfg.kernel_size,
            strides=cfg.strides, norm=cfg.norm, impl=cfg.up_impl, dtype=cfg.dtype,
        )

    def encode(self, x: Array) -> Array:
        """``(*batch, *image_shape)`` -> features ``(*batch, feature_dim)``, at least float32."""
        batch, x = flatten_batch(x, self.config.image_shape, "x")
        return at_least_f32(self.encoder(x)).reshape(*batch, self.config.feature_dim)

    def decode(self, features: Array) -> Array:
        """Features ``(*batch, feature_dim)`` -> reconstruction ``(*batch, *image_shape)``."""
        cfg = self.config
        batch, f = flatten_batch(features, (cfg.feature_dim,), "features")
        h = at_least_f32(self.decoder(f))
        h = jax.nn.sigmoid(h) if cfg.output_activation == "sigmoid" else h
        return h.reshape(*batch, *cfg.image_shape)

    def __call__(self, x: Array) -> Array:
        """Reconstruction of ``x``: ``(*batch, *image_shape)`` -> same shape."""
        return self.decode(self.encode(x))
