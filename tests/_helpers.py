"""Helpers shared by several test modules (not collected: no ``test_`` prefix)."""

import math

import jax
import jax.numpy as jnp
import numpy as np


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


def scan_volume(rng):
    """(z, y, x) = (6, 8, 8): five slices with an object, one empty slice (index 3)."""
    array = np.zeros((6, 8, 8), np.float32)
    array[:, 2:6, 1:7] = rng.uniform(100.0, 900.0, size=(6, 4, 6))
    array[3] = 0.0
    array[5, 0, 0] = 5000.0  # an outlier the percentile clip removes
    return array


def preprocess_by_hand(array):
    lo, hi = np.percentile(array, [0.5, 99.5])
    clipped = np.clip(array, lo, hi)
    scaled = (clipped - clipped.min()) / (clipped.max() - clipped.min() + 1e-8)
    keep = np.flatnonzero(np.mean(scaled > 0.05, axis=(1, 2)) >= 0.05)
    return scaled[keep][..., None], keep
