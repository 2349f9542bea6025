"""A convolutional variational autoencoder (Kingma & Welling, 2014) in Flax Linen.

The recognition model (encoder) gives a diagonal Gaussian q(z | x); the
generative model (decoder) gives p(x | z) under one of the likelihoods in
:data:`jaxmed.models.observation.LIKELIHOODS`. The prior is N(0, I).
One module serves 2D images, 3D volumes (the spatial rank is
``len(image_shape) - 1``) and flat feature vectors (``image_shape = (D,)``:
encoder and decoder become MLPs with ``channels`` as hidden widths, e.g. a VAE
over the features of :class:`jaxmed.models.Autoencoder`).

Example::

    model = VAE(PRESETS["reference64"])
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)), jax.random.key(1))
    mean, log_scale = model.apply(params, images, method=VAE.encode)

Every method accepts ONE image or any number of leading batch axes:
``x`` is ``(*batch, *image_shape)`` and ``z`` is ``(*batch, latent_dim)``.

References:
  D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.layers import (
    DOWN_IMPLS,
    NORMS,
    UP_IMPLS,
    ConvDecoder,
    ConvEncoder,
    at_least_f32,
    flatten_batch,
)
from jaxmed.models.observation import LIKELIHOODS

Array = jax.Array

OUTPUT_ACTIVATIONS = ("sigmoid", "none")


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Architecture of a :class:`VAE`.

    Attributes:
      image_shape: ``(*spatial, channels)`` of one image, channels last, e.g.
        ``(64, 64, 1)`` or ``(32, 32, 32, 1)``; ``(D,)`` for flat features.
      latent_dim: size of z.
      channels: encoder channels per down-sampling layer (MLP widths for flat
        input); the decoder mirrors them.
      kernel_size: convolution kernel extent along every spatial axis.
      strides: down-sampling factor of each layer (an int applies to all);
        each spatial size must be divisible by their product.
      likelihood: key of :data:`~jaxmed.models.observation.LIKELIHOODS`:
        ``"gaussian_unit"`` (identity covariance), ``"gaussian_learned_pixel"``
        (one learned log-scale per pixel), ``"gaussian_learned_global"`` (one
        learned log-scale) or ``"bernoulli"``.
      output_activation: applied to the decoder output to give a Gaussian mean
        (``"sigmoid"`` for images in [0, 1], or ``"none"``). A Bernoulli decoder
        always outputs logits.
      norm: ``"none"``, ``"layer"`` or ``"group"`` (groups of 8 channels) after
        each hidden layer.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32
        and log-densities are computed in at least float32. ``None``: float32.
      down_impl: implementation of the strided convolutions, a key of
        :data:`jaxmed.models.layers.DOWN_IMPLS`. All compute the same function
        with the same parameters; they differ only in speed.
      up_impl: implementation of the transposed convolutions, as ``down_impl``.
    """

    image_shape: tuple[int, ...]
    latent_dim: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 256)
    kernel_size: int = 4
    strides: int | tuple[int, ...] = 2
    likelihood: str = "gaussian_unit"
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
        if not 1 <= len(self.image_shape) <= 4 or min(self.image_shape) < 1:
            raise ValueError(
                f"image_shape must be (*spatial, channels) with 0-3 spatial axes, got {self.image_shape}"
            )
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if len(strides) != len(self.channels) or min(strides) < 1:
            raise ValueError(f"need one positive stride per layer ({len(self.channels)}), got {strides}")
        factor = math.prod(strides)
        if len(self.image_shape) > 1 and any(n % factor for n in self.image_shape[:-1]):
            raise ValueError(
                f"spatial shape {self.image_shape[:-1]} not divisible by prod(strides) = {factor}"
            )
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; expected one of {tuple(LIKELIHOODS)}")
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

    @property
    def spatial_rank(self) -> int:
        """Number of spatial axes (0 for flat features)."""
        return len(self.image_shape) - 1


PRESETS: dict[str, VAEConfig] = {
    # The benchmark network: 64x64x1; encoder 4 x [conv k4 s2 + ReLU] 32-64-128-256,
    # dense to mean and log-scale (latent 32); decoder dense to 4x4x256 + ReLU,
    # 3 x [transposed conv k4 s2 + ReLU] 128-64-32, transposed conv to 1 channel
    # + sigmoid; unit-variance Gaussian likelihood.
    "reference64": VAEConfig(image_shape=(64, 64, 1), latent_dim=32, channels=(32, 64, 128, 256)),
    "small32": VAEConfig(image_shape=(32, 32, 1), latent_dim=8, channels=(8, 16, 32)),
    "tiny": VAEConfig(image_shape=(8, 8, 1), latent_dim=2, channels=(4, 8)),
    "small3d": VAEConfig(image_shape=(16, 16, 16, 1), latent_dim=8, channels=(8, 16)),
    # A VAE over 64 autoencoder features (see Autoencoder); MLP widths 128-128.
    "features64": VAEConfig(
        image_shape=(64,), latent_dim=8, channels=(128, 128),
        likelihood="gaussian_learned_global", output_activation="none",
    ),
}


class VAE(nn.Module):
    """Convolutional VAE with a diagonal-Gaussian encoder and a configurable likelihood.

    Attributes:
      config: the architecture.
    """

    config: VAEConfig

    def setup(self):
        cfg = self.config
        self.encoder = ConvEncoder(
            channels=cfg.channels, kernel_size=cfg.kernel_size, strides=cfg.strides,
            out_features=2 * cfg.latent_dim, norm=cfg.norm, impl=cfg.down_impl, dtype=cfg.dtype,
        )
        self.decoder = ConvDecoder(
            out_shape=cfg.image_shape, channels=cfg.channels, kernel_size=cfg.kernel_size,
            strides=cfg.strides, norm=cfg.norm, impl=cfg.up_impl, dtype=cfg.dtype,
        )
        if cfg.likelihood == "gaussian_learned_pixel":
            self.log_scale = self.param("log_scale", nn.initializers.zeros_init(), cfg.image_shape)
        elif cfg.likelihood == "gaussian_learned_global":
            self.log_scale = self.param("log_scale", nn.initializers.zeros_init(), ())

    def encode(self, x: Array) -> tuple[Array, Array]:
        """q(z | x) = N(mean, diag(exp(log_scale))**2).

        The network's second output head is the log standard deviation
        (half the log-variance): the same function family as a log-variance head.

        Args:
          x: ``(*batch, *image_shape)``.

        Returns:
          ``(mean, log_scale)``, each ``(*batch, latent_dim)``, at least float32.
        """
        batch, x = flatten_batch(x, self.config.image_shape, "x")
        h = at_least_f32(self.encoder(x))
        mean, log_scale = jnp.split(h, 2, axis=-1)
        return mean.reshape(*batch, -1), log_scale.reshape(*batch, -1)

    def decode(self, z: Array) -> dict[str, Array]:
        """Parameters of p(x | z).

        Args:
          z: ``(*batch, latent_dim)``.

        Returns:
          A dict of arrays of shape ``(*batch, *image_shape)``, at least float32:
          ``"mean"`` (the expected image) always; ``"log_scale"`` (log standard
          deviation) for learned Gaussians; ``"logits"`` for Bernoulli.
        """
        cfg = self.config
        batch, z = flatten_batch(z, (cfg.latent_dim,), "z")
        h = at_least_f32(self.decoder(z)).reshape(*batch, *cfg.image_shape)
        if cfg.likelihood == "bernoulli":
            return {"mean": jax.nn.sigmoid(h), "logits": h}
        mean = jax.nn.sigmoid(h) if cfg.output_activation == "sigmoid" else h
        out = {"mean": mean}
        if cfg.likelihood in ("gaussian_learned_pixel", "gaussian_learned_global"):
            out["log_scale"] = jnp.broadcast_to(self.log_scale.astype(h.dtype), h.shape)
        return out

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log p(x | z), summed over pixels.

        Args:
          x: ``(*batch, *image_shape)``.
          z: ``(*batch, latent_dim)`` with the same batch axes.

        Returns:
          ``(*batch,)`` log-densities in nats.
        """
        cfg = self.config
        batch, xs = flatten_batch(x, cfg.image_shape, "x")
        zbatch, _ = flatten_batch(z, (cfg.latent_dim,), "z")
        if zbatch != batch:
            raise ValueError(f"x has batch shape {batch} but z has {zbatch}")
        out = self.decode(z.reshape(-1, cfg.latent_dim))
        log_p = jax.vmap(LIKELIHOODS[cfg.likelihood])(xs, out)
        return log_p.reshape(batch)

    def __call__(self, x: Array, key: Array) -> dict[str, Any]:
        """Encodes, draws one reparameterised z ~ q(z | x) and decodes it.

        Args:
          x: ``(*batch, *image_shape)``.
          key: PRNG key for the sample.

        Returns:
          ``{"mean", "log_scale"}`` of q(z | x) and ``"z"`` (each
          ``(*batch, latent_dim)``), and ``"decoded"``, the dict of
          :meth:`decode` at z.
        """
        mean, log_scale = self.encode(x)
        z = mean + jnp.exp(log_scale) * jax.random.normal(key, mean.shape, mean.dtype)
        return {"mean": mean, "log_scale": log_scale, "z": z, "decoded": self.decode(z)}
