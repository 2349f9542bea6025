"""A trained VAE seen as a latent-variable model by the log p(x) estimators.

The estimators in :mod:`jaxmed.likelihood` know nothing of Flax: they call
three functions of ONE example (the ``LatentVariableModel`` protocol). This
module binds a :class:`~jaxmed.models.VAE` and its parameters into such an
object. It is a pytree (the parameters are leaves, the module is static), so it
can be passed through ``jax.jit`` and ``jax.vmap`` as an argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmed.likelihood import standard_normal_log_prob
from jaxmed.models.vae import VAE

Array = jax.Array


class VAELatentModel(struct.PyTreeNode):
    """A VAE with bound parameters: prior N(0, I), p(x | z), and q(z | x).

    Attributes:
      params: the VAE's variables (as returned by ``VAE.init``).
      model: the :class:`VAE` module (static).
    """

    params: Any
    model: VAE = struct.field(pytree_node=False)

    def log_prior(self, z: Array) -> Array:
        """log N(z; 0, I) of one latent ``(latent_dim,)``; scalar, nats."""
        return standard_normal_log_prob(z)

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log p(x | z) of one image ``image_shape`` and latent ``(latent_dim,)``; scalar, nats."""
        return self.model.apply(self.params, x, z, method=VAE.log_likelihood)

    def proposal(self, x: Array) -> tuple[Array, Array]:
        """q(z | x) of one image: ``(mean, std)``, each ``(latent_dim,)``."""
        mean, log_scale = self.model.apply(self.params, x, method=VAE.encode)
        return mean, jnp.exp(log_scale)


def vae_latent_model(model: VAE, params: Any) -> VAELatentModel:
    """Binds ``params`` to ``model`` for the estimators of :mod:`jaxmed.likelihood`.

    Args:
      model: a :class:`VAE`.
      params: its variables, ``model.init(...)`` or trained.

    Returns:
      A pytree with ``log_prior(z)``, ``log_likelihood(x, z)`` and
      ``proposal(x) -> (mean, std)``, each for one example.
    """
    return VAELatentModel(params=params, model=model)
