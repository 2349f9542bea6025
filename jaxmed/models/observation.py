"""Log-densities of one image under the decoder's likelihood p(x | z), in nats.

Each function takes ONE image ``x`` of shape ``image_shape`` and the decoder's
output for one latent (a dict of arrays shaped like ``x``, see
:meth:`jaxmed.models.VAE.decode`) and returns a scalar: the log-density summed
over pixels. The constants live in NumPyro's distributions, so training (the
ELBO) and evaluation (the log p(x) estimators) share one copy of each.

The prior and the KL term are :func:`jaxmed.likelihood.standard_normal_log_prob`
and :func:`jaxmed.likelihood.kl_to_standard_normal`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from jaxmed.models.layers import at_least_f32

Array = jax.Array
DecoderOutput = Mapping[str, Array]

# Every input is cast to at least float32: bf16 decoder outputs would lose ~3
# digits in a sum over 4096 pixels; float64 stays float64.


def gaussian_unit_log_prob(x: Array, out: DecoderOutput) -> Array:
    """log N(x; mean, I), summed over pixels.

    Args:
      x: one image, any shape.
      out: ``{"mean": ...}`` shaped like ``x``.

    Returns:
      Scalar log-density in nats.
    """
    return gaussian_log_prob(x, {"mean": out["mean"], "log_scale": jnp.zeros(())})


def gaussian_log_prob(x: Array, out: DecoderOutput) -> Array:
    """log N(x; mean, diag(exp(log_scale))**2), summed over pixels.

    Args:
      x: one image, any shape.
      out: ``{"mean": ..., "log_scale": ...}``; ``log_scale`` (natural log of
        the standard deviation) has the shape of ``x`` or is a scalar.

    Returns:
      Scalar log-density in nats.
    """
    x, mean, log_scale = (at_least_f32(a) for a in (x, out["mean"], out["log_scale"]))
    scale = jnp.broadcast_to(jnp.exp(log_scale), mean.shape)
    return dist.Normal(mean, scale).log_prob(x).sum()


def student_t_log_prob(x: Array, out: DecoderOutput, *, df: float) -> Array:
    """log StudentT(x; df, mean, exp(log_scale)), summed over pixels.

    Heavier-tailed than the Gaussian: an error of ``k`` scales costs about
    ``(df + 1) log k`` nats instead of ``k^2 / 2``, so a structure the model
    did not see (another subject's anatomy) costs nats in proportion to its
    area, not to its squared contrast over a tiny noise scale.

    Args:
      x: one image, any shape.
      out: ``{"mean": ..., "log_scale": ...}``; ``log_scale`` (natural log of
        the scale) has the shape of ``x`` or is a scalar.
      df: degrees of freedom (> 0; the Gaussian is the limit df -> inf).

    Returns:
      Scalar log-density in nats.
    """
    x, mean, log_scale = (at_least_f32(a) for a in (x, out["mean"], out["log_scale"]))
    scale = jnp.broadcast_to(jnp.exp(log_scale), mean.shape)
    return dist.StudentT(df, mean, scale).log_prob(x).sum()


def bernoulli_log_prob(x: Array, out: DecoderOutput) -> Array:
    """log Bernoulli(x; sigmoid(logits)), summed over pixels.

    .. note:: For ``x`` in [0, 1] that is not binary this is minus the binary
       cross-entropy, which is not a normalised density of a continuous ``x``.

    Args:
      x: one image with values in [0, 1].
      out: ``{"logits": ...}`` shaped like ``x``.

    Returns:
      Scalar log-probability in nats.
    """
    x, logits = at_least_f32(x), at_least_f32(out["logits"])
    return dist.Bernoulli(logits=logits).log_prob(x).sum()


# Name -> log-density; those taking ``df`` get it from VAEConfig.student_df.
LIKELIHOODS: dict[str, Callable[..., Array]] = {
    "gaussian_unit": gaussian_unit_log_prob,
    "gaussian_learned_pixel": gaussian_log_prob,
    "gaussian_learned_global": gaussian_log_prob,
    "student_t_learned_pixel": student_t_log_prob,
    "student_t_learned_global": student_t_log_prob,
    "bernoulli": bernoulli_log_prob,
}
