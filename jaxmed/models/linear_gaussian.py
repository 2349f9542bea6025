"""A linear-Gaussian latent-variable model: log p(x) and p(z|x) in closed form.

p(z) = N(0, I_d),  p(x|z) = N(W z + b, sigma^2 I_D),  so
p(x) = N(b, W W^T + sigma^2 I_D)  and  p(z|x) = N(mu, Sigma) with
Sigma = (I_d + W^T W / sigma^2)^-1,  mu = Sigma W^T (x - b) / sigma^2.

It implements :class:`jaxmed.likelihood.LatentVariableModel`, so every estimator
can be checked against the exact answer. Its proposal is the diagonal of the exact
posterior, optionally shifted and widened on purpose, so that the estimators have
something to correct.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxmed.likelihood import diag_normal_log_prob, standard_normal_log_prob

_LOG_2PI = math.log(2 * math.pi)


@jax.tree_util.register_pytree_node_class
class LinearGaussian:
    """p(z) = N(0, I_d), p(x|z) = N(W z + b, sigma^2 I_D), with exact log p(x).

    A pytree (its arrays are leaves), so it can be passed through ``jax.jit``.

    Args:
        weight: W, ``(D, d)``.
        bias: b, ``(D,)``.
        noise_std: sigma > 0, a scalar.
        proposal_shift: added to the exact posterior mean in :meth:`proposal`;
            a scalar or ``(d,)``. 0 for the (diagonal) exact posterior.
        proposal_scale: multiplies the exact posterior's marginal standard
            deviations in :meth:`proposal`; a scalar or ``(d,)``, > 0.

    Raises:
        ValueError: if the shapes disagree or sigma / the scale are not positive.
    """

    def __init__(
        self,
        weight: Array,
        bias: Array,
        noise_std: Array | float,
        *,
        proposal_shift: Array | float = 0.0,
        proposal_scale: Array | float = 1.0,
    ):
        weight, bias = jnp.asarray(weight), jnp.asarray(bias)
        dtype = jnp.result_type(weight, bias)
        noise_std = jnp.asarray(noise_std, dtype)
        proposal_shift = jnp.asarray(proposal_shift, dtype)
        proposal_scale = jnp.asarray(proposal_scale, dtype)
        if weight.ndim != 2:
            raise ValueError(f"LinearGaussian: weight must be (D, d), got shape {weight.shape}")
        data_dim, latent_dim = weight.shape
        if bias.shape != (data_dim,):
            raise ValueError(
                f"LinearGaussian: bias must have shape ({data_dim},) to match weight "
                f"{weight.shape}, got {bias.shape}"
            )
        if noise_std.shape != ():
            raise ValueError(f"LinearGaussian: noise_std must be a scalar, got shape {noise_std.shape}")
        for name, value in (("proposal_shift", proposal_shift), ("proposal_scale", proposal_scale)):
            if value.shape not in ((), (latent_dim,)):
                raise ValueError(
                    f"LinearGaussian: {name} must be a scalar or ({latent_dim},), got {value.shape}"
                )
        # Value checks only where the values are known (not under a trace).
        for name, value in (("noise_std", noise_std), ("proposal_scale", proposal_scale)):
            if not isinstance(value, jax.core.Tracer) and not np.all(np.asarray(value) > 0):
                raise ValueError(f"LinearGaussian: {name} must be > 0, got {value}")
        self.weight = weight.astype(dtype)
        self.bias = bias.astype(dtype)
        self.noise_std = noise_std
        self.proposal_shift = proposal_shift
        self.proposal_scale = proposal_scale

    @classmethod
    def random(
        cls,
        key: Array,
        *,
        data_dim: int,
        latent_dim: int,
        noise_std: float = 0.5,
        proposal_shift: Array | float = 0.0,
        proposal_scale: Array | float = 1.0,
        dtype=jnp.float32,
    ) -> LinearGaussian:
        """A model with W ~ N(0, 1/d) entries and b ~ N(0, 1), for experiments."""
        k_w, k_b = jax.random.split(key)
        weight = jax.random.normal(k_w, (data_dim, latent_dim), dtype) / math.sqrt(latent_dim)
        bias = jax.random.normal(k_b, (data_dim,), dtype)
        return cls(
            weight, bias, noise_std,
            proposal_shift=proposal_shift, proposal_scale=proposal_scale,
        )

    # -- pytree ---------------------------------------------------------------
    def tree_flatten(self):
        children = (self.weight, self.bias, self.noise_std, self.proposal_shift, self.proposal_scale)
        return children, None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        # Bypass __init__: JAX rebuilds pytrees with tracers and placeholders.
        obj = object.__new__(cls)
        obj.weight, obj.bias, obj.noise_std, obj.proposal_shift, obj.proposal_scale = children
        return obj

    # -- shapes ---------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        """D, the size of x."""
        return self.weight.shape[0]

    @property
    def latent_dim(self) -> int:
        """d, the size of z."""
        return self.weight.shape[1]

    # -- LatentVariableModel --------------------------------------------------
    def log_prior(self, z: Array) -> Array:
        """log N(z; 0, I_d) for ``z`` of shape ``(d,)``, in nats."""
        return standard_normal_log_prob(z)

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log N(x; W z + b, sigma^2 I_D) for ``x`` ``(D,)`` and ``z`` ``(d,)``."""
        return diag_normal_log_prob(x, self.weight @ z + self.bias, self.noise_std)

    def proposal(self, x: Array) -> tuple[Array, Array]:
        """Diagonal of the exact posterior, shifted and scaled: ``(mean, std)``, each ``(d,)``."""
        mean, cov = self.exact_posterior(x)
        return mean + self.proposal_shift, self.proposal_scale * jnp.sqrt(jnp.diagonal(cov))

    # -- exact answers ----------------------------------------------------------
    def _posterior_precision(self) -> Array:
        gram = self.weight.T @ self.weight / jnp.square(self.noise_std)
        return jnp.eye(self.latent_dim, dtype=gram.dtype) + gram

    def exact_posterior(self, x: Array) -> tuple[Array, Array]:
        """p(z|x) = N(mean, cov): ``mean`` ``(d,)``, ``cov`` ``(d, d)``."""
        chol = jnp.linalg.cholesky(self._posterior_precision())
        cov = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(self.latent_dim, dtype=chol.dtype))
        mean = cov @ (self.weight.T @ (x - self.bias)) / jnp.square(self.noise_std)
        return mean, cov

    def exact_log_px(self, x: Array) -> Array:
        """log p(x) = log N(x; b, W W^T + sigma^2 I_D) in nats, for ``x`` ``(D,)``.

        Uses the matrix determinant lemma and Woodbury's identity, so only d x d
        matrices are factorised (D may be large).
        """
        var = jnp.square(self.noise_std)
        residual = x - self.bias
        chol = jnp.linalg.cholesky(self._posterior_precision())
        projected = jax.scipy.linalg.solve_triangular(chol, self.weight.T @ residual, lower=True)
        mahalanobis = jnp.sum(jnp.square(residual)) / var - jnp.sum(jnp.square(projected)) / jnp.square(var)
        log_det = self.data_dim * jnp.log(var) + 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * (mahalanobis + log_det + self.data_dim * _LOG_2PI)

    def sample(self, key: Array) -> tuple[Array, Array]:
        """One draw (z, x) from p(z) p(x|z): ``z`` ``(d,)``, ``x`` ``(D,)``.

        z is an exact posterior sample for x, which reverse AIS (BDMC) needs.
        """
        k_z, k_x = jax.random.split(key)
        z = jax.random.normal(k_z, (self.latent_dim,), self.weight.dtype)
        noise = jax.random.normal(k_x, (self.data_dim,), self.weight.dtype)
        return z, self.weight @ z + self.bias + self.noise_std * noise
