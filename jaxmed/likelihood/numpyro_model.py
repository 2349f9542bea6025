"""A NumPyro model + guide seen as a :class:`LatentVariableModel`.

The model has one latent sample site (``z``, a vector) and one observed site
(``x``) and is called as ``model(x)``; ``model(None)`` must also run (NumPyro's
convention for a model that can generate data), because log p(z) is read from a
trace without data. The guide is called as ``guide(x)`` and its site ``z`` must be a
diagonal Normal (``dist.Normal(loc, scale).to_event(1)``), which becomes the
proposal q(z|x). Learned parameters (e.g. ``svi_result.params``) are substituted
into both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers
from numpyro.infer.util import compute_log_probs


def _unwrap(fn):
    """The base distribution under Independent / Expanded wrappers."""
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


@jax.tree_util.register_pytree_node_class
class NumPyroLatentModel:
    """Adapter from a NumPyro model + guide to :class:`LatentVariableModel`.

    Build it with :func:`numpyro_latent_model`. A pytree whose leaves are the
    substituted parameters.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        params: Mapping[str, Any] | None,
        latent_site: str,
        observed_site: str,
    ):
        self.model = model
        self.guide = guide
        self.params = dict(params or {})
        self.latent_site = latent_site
        self.observed_site = observed_site

    def tree_flatten(self):
        return (self.params,), (self.model, self.guide, self.latent_site, self.observed_site)

    @classmethod
    def tree_unflatten(cls, aux, children):
        model, guide, latent_site, observed_site = aux
        obj = object.__new__(cls)
        obj.params = children[0]
        obj.model, obj.guide, obj.latent_site, obj.observed_site = model, guide, latent_site, observed_site
        return obj

    def _model_log_probs(self, x, z):
        # seed: with x=None the observed site is sampled; the key is irrelevant.
        model = handlers.seed(handlers.substitute(self.model, data=self.params), rng_seed=0)
        log_probs, trace = compute_log_probs(model, (x,), {}, {self.latent_site: z})
        self._check_model_trace(trace, observed=x is not None)
        return log_probs

    def _check_model_trace(self, trace, *, observed: bool) -> None:
        name = f"numpyro_latent_model: model {getattr(self.model, '__name__', self.model)!r}"
        if self.latent_site not in trace or trace[self.latent_site]["type"] != "sample":
            raise ValueError(f"{name} has no latent sample site {self.latent_site!r}")
        if jnp.ndim(trace[self.latent_site]["value"]) != 1:
            raise ValueError(
                f"{name}: latent site {self.latent_site!r} must be a vector (d,), got shape "
                f"{jnp.shape(trace[self.latent_site]['value'])}"
            )
        if self.observed_site not in trace:
            raise ValueError(f"{name} has no observed site {self.observed_site!r}")
        if observed and not trace[self.observed_site]["is_observed"]:
            raise ValueError(f"{name}: site {self.observed_site!r} is not observed (pass obs=x)")
        others = [
            site_name for site_name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
            and site_name not in (self.latent_site, self.observed_site)
        ]
        if others:
            raise ValueError(
                f"{name} has latent sample sites {others} besides {self.latent_site!r}; the "
                "estimators integrate over one vector latent only"
            )

    def log_prior(self, z: Array) -> Array:
        """log p(z) from the model's site ``z``; a scalar."""
        return self._model_log_probs(None, z)[self.latent_site]

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log p(x|z) from the model's observed site; a scalar."""
        return self._model_log_probs(x, z)[self.observed_site]

    def proposal(self, x: Array) -> tuple[Array, Array]:
        """The guide's diagonal Normal at site ``z``: ``(loc, scale)``, each ``(d,)``."""
        guide = handlers.seed(handlers.substitute(self.guide, data=self.params), rng_seed=0)
        trace = handlers.trace(guide).get_trace(x)
        name = f"numpyro_latent_model: guide {getattr(self.guide, '__name__', self.guide)!r}"
        if self.latent_site not in trace:
            raise ValueError(f"{name} has no sample site {self.latent_site!r}")
        site = trace[self.latent_site]
        base = _unwrap(site["fn"])
        if type(base) is not dist.Normal:
            raise ValueError(
                f"{name}: site {self.latent_site!r} must be a diagonal Normal "
                f"(dist.Normal(loc, scale).to_event(1)), got {type(site['fn']).__name__}"
                + (f" of {type(base).__name__}" if base is not site["fn"] else "")
            )
        shape = jnp.shape(site["value"])
        if len(shape) != 1:
            raise ValueError(f"{name}: site {self.latent_site!r} must be a vector (d,), got shape {shape}")
        return jnp.broadcast_to(base.loc, shape), jnp.broadcast_to(base.scale, shape)


def numpyro_latent_model(
    model: Callable,
    guide: Callable,
    *,
    params: Mapping[str, Any] | None = None,
    latent_site: str = "z",
    observed_site: str = "x",
) -> NumPyroLatentModel:
    """Wraps a NumPyro model and guide for the log p(x) estimators.

    Args:
        model: ``model(x)`` with a vector latent site ``latent_site`` and an observed
            site ``observed_site`` (``obs=x``); must also run as ``model(None)``.
            No other latent sample sites.
        guide: ``guide(x)`` whose site ``latent_site`` is a diagonal Normal.
        params: values for ``numpyro.param`` sites of model and guide (e.g.
            ``svi_result.params``).
        latent_site: name of the latent site.
        observed_site: name of the observed site.

    Returns:
        A :class:`NumPyroLatentModel`. Mismatches (missing sites, extra latents, a
        non-diagonal guide) raise ``ValueError`` when an estimator first traces it.

    Example::

        def model(x=None):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([2]).to_event(1))
            numpyro.sample("x", dist.Normal(W @ z, 0.5).to_event(1), obs=x)

        lvm = numpyro_latent_model(model, guide, params=svi_result.params)
        log_px(key, lvm, xs, method="importance", num_samples=1000)
    """
    return NumPyroLatentModel(model, guide, params, latent_site, observed_site)
