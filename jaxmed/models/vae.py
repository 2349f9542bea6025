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

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.likelihood import diag_normal_sample
from jaxmed.models.layers import OUTPUT_ACTIVATIONS, TrunkConfig, at_least_f32, flatten_batch
from jaxmed.models.observation import LIKELIHOODS

Array = jax.Array

# Likelihoods with a learned noise scale (the parameter "log_scale").
LEARNED_SCALE_LIKELIHOODS = ("gaussian_learned_pixel", "gaussian_learned_global", "student_t_learned_pixel",
                             "student_t_learned_global")
# Likelihoods with one learned scale per pixel (the others have one in all).
_PIXEL_SCALE_LIKELIHOODS = ("gaussian_learned_pixel", "student_t_learned_pixel")


@dataclass(frozen=True, kw_only=True)
class VAEConfig(TrunkConfig):
    """Architecture of a :class:`VAE`.

    The encoder and decoder trunks are set by the fields of
    :class:`~jaxmed.models.layers.TrunkConfig` (``image_shape``, ``channels``,
    ``kernel_size``, ``strides``, ``output_activation``, ``norm``, ``dtype``,
    ``down_impl``, ``up_impl``); ``image_shape = (D,)`` gives a VAE over flat
    features. The output activation gives the Gaussian mean; a Bernoulli
    decoder always outputs logits.

    Attributes:
      latent_dim: size of z.
      likelihood: key of :data:`~jaxmed.models.observation.LIKELIHOODS`:
        ``"gaussian_unit"`` (identity covariance), ``"gaussian_learned_pixel"``
        (one learned scale per pixel), ``"gaussian_learned_global"`` (one
        learned scale), their Student-t twins ``"student_t_learned_pixel"``
        and ``"student_t_learned_global"`` (heavier tails, ``student_df``
        degrees of freedom) or ``"bernoulli"``.
      student_df: degrees of freedom of the Student-t likelihoods (ignored by
        the others).
      min_scale: floor of a learned Gaussian's (or Student-t's) scale, in image
        intensity units (ignored by the other likelihoods). The scale is
        ``sigma = min_scale + exp(log_scale)``, ``log_scale`` the parameter:
        a smooth floor (unlike a clamp, its gradient does not drop to zero at
        the floor), so no optimiser-side projection is needed. Unfloored, the
        scale of pixels that are background in every training image falls
        towards 0 and any signal there costs absurdly many nats. ``0`` (the
        default): ``log_scale`` is log sigma itself, unbounded below.
    """

    latent_dim: int = 32
    likelihood: str = "gaussian_unit"
    min_scale: float = 0.0
    student_df: float = 3.0

    def __post_init__(self):
        super().__post_init__()
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; expected one of {tuple(LIKELIHOODS)}")
        if not (math.isfinite(self.min_scale) and self.min_scale >= 0):
            raise ValueError(f"min_scale must be finite and >= 0, got {self.min_scale}")
        if not (math.isfinite(self.student_df) and self.student_df > 0):
            raise ValueError(f"student_df must be finite and > 0, got {self.student_df}")

    def log_prob_fn(self) -> Callable[[Array, Mapping[str, Array]], Array]:
        """``log p(x | z)`` of ONE image given the decoder's output: the likelihood, with its options bound."""
        fn = LIKELIHOODS[self.likelihood]
        if self.likelihood.startswith("student_t"):
            return functools.partial(fn, df=self.student_df)
        return fn


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
        self.encoder = cfg.make_encoder(2 * cfg.latent_dim)
        self.decoder = cfg.make_decoder()
        if cfg.likelihood in _PIXEL_SCALE_LIKELIHOODS:
            self.log_scale = self.param("log_scale", nn.initializers.zeros_init(), cfg.image_shape)
        elif cfg.likelihood in LEARNED_SCALE_LIKELIHOODS:
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
        out = {"mean": OUTPUT_ACTIVATIONS[cfg.output_activation](h)}
        if cfg.likelihood in LEARNED_SCALE_LIKELIHOODS:
            out["log_scale"] = jnp.broadcast_to(self.noise_log_scale().astype(h.dtype), h.shape)
        return out

    def noise_log_scale(self) -> Array:
        """log sigma of a learned-Gaussian p(x | z), ``log(min_scale + exp(log_scale))``.

        Returns:
          ``image_shape`` (one scale per pixel) or ``()`` (one in all),
          float32, in log intensity units.
          Use ``model.apply(params, method=VAE.noise_log_scale)``.
        """
        cfg = self.config
        if cfg.likelihood not in LEARNED_SCALE_LIKELIHOODS:
            raise ValueError(f"likelihood {cfg.likelihood!r} has no learned scale")
        if cfg.min_scale == 0:
            return self.log_scale
        # logaddexp: exact and stable where exp(log_scale) << min_scale.
        return jnp.logaddexp(self.log_scale, math.log(cfg.min_scale))

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
        log_p = jax.vmap(cfg.log_prob_fn())(xs, out)
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
        z, _ = diag_normal_sample(key, mean, jnp.exp(log_scale))
        return {"mean": mean, "log_scale": log_scale, "z": z, "decoded": self.decode(z)}
