"""Helpers shared by several test modules (not collected: no ``test_`` prefix)."""

import math

import jax
import jax.numpy as jnp


def numpy_params(model, rng, *example_args):
    """Parameters of ``model`` in the layout of ``model.init``, drawn with numpy.

    Kernels (leaves of two or more axes) are LeCun-normal, normalisation
    scales (leaves named ``scale``) are 1, every other leaf (biases, a learned
    log-scale) is N(0, 0.1**2), small but non-zero so that tests see it.
    Compiling ``model.init`` costs seconds of XLA time per new shape on CPU;
    the tests check functions of the parameters, not the initialiser.

    Args:
      model: a Flax module.
      rng: a ``numpy.random.Generator``.
      *example_args: the arguments of ``model.init`` after the key (arrays or
        ``jax.ShapeDtypeStruct``).
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *example_args)

    def draw(path, leaf):
        if getattr(path[-1], "key", None) == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=leaf.shape) / math.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def scipy_exact_log_px(model, xs):
    """log p(x) of a :class:`jaxmed.models.LinearGaussian` by scipy (marginal N(b, W W^T + s^2 I)), float64."""
    import numpy as np
    import scipy.stats

    w, b, s = (np.asarray(a, np.float64) for a in (model.weight, model.bias, model.noise_std))
    return scipy.stats.multivariate_normal(b, w @ w.T + s**2 * np.eye(len(b))).logpdf(np.asarray(xs, np.float64))
