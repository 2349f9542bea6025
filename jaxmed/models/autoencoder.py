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

from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax

from jaxmed.models.layers import OUTPUT_ACTIVATIONS, TrunkConfig, at_least_f32, flatten_batch

Array = jax.Array


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(TrunkConfig):
    """Architecture of an :class:`Autoencoder`.

    The encoder and decoder trunks are set by the fields of
    :class:`~jaxmed.models.layers.TrunkConfig` (``image_shape`` with 1-3
    spatial axes, ``channels``, ``kernel_size``, ``strides``,
    ``output_activation``, ``norm``, ``dtype``, ``down_impl``, ``up_impl``).

    Attributes:
      feature_dim: size of the compressed representation.
    """

    min_spatial_rank: ClassVar[int] = 1

    feature_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")


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
        self.encoder = cfg.make_encoder(cfg.feature_dim)
        self.decoder = cfg.make_decoder()

    def encode(self, x: Array) -> Array:
        """``(*batch, *image_shape)`` -> features ``(*batch, feature_dim)``, at least float32."""
        batch, x = flatten_batch(x, self.config.image_shape, "x")
        return at_least_f32(self.encoder(x)).reshape(*batch, self.config.feature_dim)

    def decode(self, features: Array) -> Array:
        """Features ``(*batch, feature_dim)`` -> reconstruction ``(*batch, *image_shape)``."""
        cfg = self.config
        batch, f = flatten_batch(features, (cfg.feature_dim,), "features")
        h = OUTPUT_ACTIVATIONS[cfg.output_activation](at_least_f32(self.decoder(f)))
        return h.reshape(*batch, *cfg.image_shape)

    def __call__(self, x: Array) -> Array:
        """Reconstruction of ``x``: ``(*batch, *image_shape)`` -> same shape."""
        return self.decode(self.encode(x))
