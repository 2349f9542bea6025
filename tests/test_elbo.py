"""Tests of jaxmed.losses.elbo: the negative ELBO against a hand computation,
the batch loss against per-example calls, the closed-form KL against Monte
Carlo, and a short training run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _helpers import numpy_params

from jaxmed.losses import negative_elbo, vae_loss_fn
from jaxmed.models import PRESETS, VAE, VAEConfig
from jaxmed.likelihood import kl_to_standard_normal

LOG_2PI = math.log(2 * math.pi)


def test_negative_elbo_matches_hand_computation(key, rng):
    # The learned global scale: the unit-variance formula is its log_sigma = 0 case
    # (and is checked on its own in test_vae).
    likelihood = "gaussian_learned_global"
    cfg = VAEConfig(image_shape=(8, 8, 1), latent_dim=3, channels=(4, 8), likelihood=likelihood)
    model = VAE(cfg)
    x = jnp.asarray(rng.uniform(size=cfg.image_shape), jnp.float32)
    params = numpy_params(model, rng, x, key)
    params["params"]["log_scale"] = jnp.asarray(-0.4, jnp.float32)
    beta = 0.5

    @jax.jit
    def run(params):
        loss_and_aux, grads = jax.value_and_grad(
            lambda p: negative_elbo(p, x, key, model=model, beta=beta), has_aux=True
        )(params)
        mean, log_scale = model.apply(params, x, method=VAE.encode)
        eps = jax.random.normal(key, mean.shape)  # the draw __call__ makes from `key`
        decoded = model.apply(params, mean + jnp.exp(log_scale) * eps, method=VAE.decode)
        return loss_and_aux, grads, (mean, log_scale, eps, decoded["mean"])

    (loss, aux), grads, parts = run(params)
    mu, ls, eps, x_mean = (np.asarray(a, np.float64) for a in parts)
    assert np.abs(eps).max() > 0.1  # a real draw: z is not the mean, so the sample is checked too
    log_sigma = -0.4
    r2 = ((np.asarray(x, np.float64) - x_mean) ** 2).sum()
    n = x.size
    nll = 0.5 * r2 / math.exp(2 * log_sigma) + n * log_sigma + 0.5 * n * LOG_2PI
    kl = 0.5 * (mu**2 + np.exp(2 * ls) - 1 - 2 * ls).sum()
    np.testing.assert_allclose(aux["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, nll + beta * kl, rtol=1e-5)
    # d nll / d log_sigma = n - r2 / sigma^2; the KL does not depend on it.
    np.testing.assert_allclose(grads["params"]["log_scale"], n - r2 / math.exp(2 * log_sigma), rtol=1e-4)


def test_kl_closed_form_matches_monte_carlo(rng):
    mean = np.array([0.3, -1.2, 2.0])
    log_scale = np.array([-0.5, 0.2, 0.0])
    z = mean + np.exp(log_scale) * rng.standard_normal((400_000, 3))
    log_q = (-0.5 * ((z - mean) / np.exp(log_scale)) ** 2 - log_scale - 0.5 * LOG_2PI).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    mc = np.mean(log_q - log_p)
    closed = jax.jit(kl_to_standard_normal)(jnp.asarray(mean, jnp.float32), jnp.exp(jnp.asarray(log_scale, jnp.float32)))
    np.testing.assert_allclose(closed, mc, rtol=0.01)
    np.testing.assert_allclose(closed, 0.5 * (mean**2 + np.exp(2 * log_scale) - 1 - 2 * log_scale).sum(), rtol=1e-6)


def test_batch_loss_is_mean_of_per_example_losses(key, rng):
    model = VAE(PRESETS["tiny"])
    images = jnp.asarray(rng.uniform(size=(3, 8, 8, 1)), jnp.float32)
    params = numpy_params(model, rng, images, key)
    loss, metrics = jax.jit(vae_loss_fn(model, beta=2.0))(params, {"image": images}, key)
    one = jax.jit(lambda x, k: negative_elbo(params, x, k, model=model, beta=2.0))
    keys = jax.random.split(key, 3)
    per = [one(images[i], keys[i]) for i in range(3)]
    np.testing.assert_allclose(loss, np.mean([p[0] for p in per]), rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], np.mean([p[1]["nll"] for p in per]), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], np.mean([p[1]["kl"] for p in per]), rtol=1e-5)
    np.testing.assert_allclose(metrics["elbo"], -(metrics["nll"] + metrics["kl"]), rtol=1e-6)
    assert metrics["loss"] == loss


def test_training_lowers_the_loss_and_bf16_matches_f32(key, rng):
    cfg = VAEConfig(image_shape=(8, 8, 1), latent_dim=2, channels=(4, 8), likelihood="bernoulli")
    model = VAE(cfg)
    # Two kinds of image (left or right half on): learnable, so the loss must fall.
    halves = np.zeros((2, 8, 8, 1), np.float32)
    halves[0, :, :4] = 1.0
    halves[1, :, 4:] = 1.0
    images = jnp.asarray(halves[rng.integers(0, 2, size=16)])
    params = numpy_params(model, rng, images, key)
    loss_fn = vae_loss_fn(model)
    tx = optax.adam(3e-2)

    @jax.jit
    def train(params, key):
        def step(carry, k):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {"image": images}, k)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 60))
        return params, losses

    trained, losses = train(params, key)
    start, end = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert end < 0.5 * start, (start, end)
    # Mixed precision: bf16 compute, f32 parameters and loss.
    bf16 = VAE(VAEConfig(**{**cfg.__dict__, "dtype": jnp.bfloat16}))
    f32_loss, bf16_loss = jax.jit(
        lambda p: (loss_fn(p, {"image": images}, key)[0], vae_loss_fn(bf16)(p, {"image": images}, key)[0])
    )(trained)
    assert bf16_loss.dtype == jnp.float32
    np.testing.assert_allclose(bf16_loss, f32_loss, rtol=0.05)
