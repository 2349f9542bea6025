"""What an estimator needs to know about a latent-variable model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from jax import Array


@runtime_checkable
class LatentVariableModel(Protocol):
    """A model p(z) p(x|z) with a diagonal Gaussian proposal q(z|x), seen one example at a time.

    Every method takes ONE example; the estimators vmap them over samples and images.
    The latent ``z`` is a vector of shape ``(d,)``; ``x`` has whatever shape the model
    uses (a vector for :class:`jaxmed.models.LinearGaussian`, an ``(h, w, c)`` image for
    a VAE). All densities are in nats. The methods must be pure and traceable by JAX
    (they are called under ``jit``, ``vmap``, ``lax.scan`` and ``grad`` with respect to
    ``z``).

    Implementations in jaxmed: :class:`jaxmed.models.LinearGaussian` (exact log p(x)),
    ``jaxmed.models.vae_latent_model(model, params)`` (a trained VAE) and
    :func:`jaxmed.likelihood.numpyro_latent_model` (a NumPyro model + guide).
    """

    def log_prior(self, z: Array) -> Array:
        """log p(z) for ``z`` of shape ``(d,)``; a scalar."""
        ...

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log p(x|z) for one example ``x`` and ``z`` of shape ``(d,)``; a scalar."""
        ...

    def proposal(self, x: Array) -> tuple[Array, Array]:
        """The proposal q(z|x) = N(mean, diag(std**2)): ``(mean, std)``, each ``(d,)``."""
        ...
