"""The negative evidence lower bound of a VAE, and training losses built on it.

``negative_elbo`` is written for ONE example and is unreduced; the loss
functions the training engine calls vmap it over a batch and average. The
reconstruction term uses the same log-density functions
(:data:`jaxmed.models.observation.LIKELIHOODS`, through
:meth:`jaxmed.models.VAEConfig.log_prob_fn`) as the log p(x) estimators.

References:
  D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
  I. Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
  Constrained Variational Framework", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxmed.models.autoencoder import Autoencoder
from jaxmed.likelihood import kl_to_standard_normal
from jaxmed.models.vae import VAE

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Array], tuple[Array, dict[str, Array]]]


def negative_elbo(
    params: Any, x: Array, key: Array, *, model: VAE, beta: float = 1.0
) -> tuple[Array, dict[str, Array]]:
    """-ELBO(x) = -log p(x | z) + beta * KL(q(z | x) || N(0, I)), z ~ q(z | x).

    One reparameterised sample of z; the KL term is in closed form. With
    ``beta = 1`` the expectation of the result is an upper bound on -log p(x).

    Args:
      params: the VAE's variables.
      x: ONE image, ``config.image_shape``.
      key: PRNG key for the sample of z.
      model: the :class:`~jaxmed.models.VAE`.
      beta: weight of the KL term (keyword-only).

    Returns:
      ``(loss, aux)``: the scalar loss in nats, and ``aux`` with the scalars
      ``"nll"`` (-log p(x | z)) and ``"kl"``.
    """
    out = model.apply(params, x, key)
    nll = -model.config.log_prob_fn()(x, out["decoded"])
    kl = kl_to_standard_normal(out["mean"], jnp.exp(out["log_scale"]))
    return nll + beta * kl, {"nll": nll, "kl": kl}


@dataclass(frozen=True, kw_only=True)
class VAELossConfig:
    """The training options of a VAE (its registry entry's loss config).

    Attributes:
      beta: weight of the KL term (1: the ELBO; a beta-VAE otherwise).
    """

    beta: float = 1.0

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"VAELossConfig.beta must be >= 0, got {self.beta}")


@dataclass(frozen=True, kw_only=True)
class AutoencoderLossConfig:
    """The training options of a plain autoencoder: none (mean squared error)."""


def vae_loss_fn(model: VAE, *, beta: float = 1.0) -> LossFn:
    """The batch loss of a VAE for the training engine.

    Args:
      model: the :class:`~jaxmed.models.VAE`.
      beta: weight of the KL term.

    Returns:
      ``loss_fn(params, batch, key) -> (loss, metrics)``: ``batch["image"]`` is
      ``(B, *image_shape)``; ``loss`` is the mean negative ELBO per image
      (nats); ``metrics`` holds the batch means of ``"loss"``, ``"nll"``,
      ``"kl"`` and ``"elbo"`` (= -loss at beta 1; always nll + kl negated).
    """

    def loss_fn(params, batch, key):
        images = batch["image"]
        keys = jax.random.split(key, images.shape[0])
        per_example = jax.vmap(lambda x, k: negative_elbo(params, x, k, model=model, beta=beta))
        losses, aux = per_example(images, keys)
        loss = jnp.mean(losses)
        nll, kl = jnp.mean(aux["nll"]), jnp.mean(aux["kl"])
        return loss, {"loss": loss, "nll": nll, "kl": kl, "elbo": -(nll + kl)}

    return loss_fn


def autoencoder_loss_fn(model: Autoencoder) -> LossFn:
    """The batch loss of a plain autoencoder: mean squared error per pixel.

    Args:
      model: the :class:`~jaxmed.models.Autoencoder`.

    Returns:
      ``loss_fn(params, batch, key) -> (loss, metrics)``; ``batch["image"]`` is
      ``(B, *image_shape)``; ``loss`` is the mean over images and pixels of
      the squared error; ``key`` is unused (the model is deterministic) and
      kept so that every loss has the engine's signature. ``metrics`` holds
      ``"loss"`` and ``"mse"``.
    """

    def loss_fn(params, batch, key):
        del key
        images = batch["image"]
        # Equal-size images: the mean over images and pixels at once.
        loss = jnp.mean(jnp.square(model.apply(params, images) - images))
        return loss, {"loss": loss, "mse": loss}

    return loss_fn
