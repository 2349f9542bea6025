"""The estimators on a small trained VAE: IWAE bounds rise with K towards AIS, and
AIS forward/reverse (BDMC) bounds bracket log p(x) on data simulated from the VAE."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmed.likelihood import bdmc, log_px
from jaxmed.losses import vae_loss_fn
from jaxmed.models import VAE, VAEConfig, vae_latent_model

CONFIG = VAEConfig(
    image_shape=(8, 8, 1), latent_dim=2, channels=(8, 16), likelihood="gaussian_learned_global"
)


def _blobs(key, n):
    """Gaussian blobs at random centres: two true latent factors."""
    centre = jax.random.uniform(key, (n, 2), minval=1.5, maxval=5.5)
    grid = jnp.arange(8.0)
    d2 = (grid[None, :, None] - centre[:, 0, None, None]) ** 2 + (grid[None, None, :] - centre[:, 1, None, None]) ** 2
    return jnp.exp(-d2 / 4.0)[..., None]


@pytest.fixture(scope="module")
def trained():
    return _train()


def _train():
    vae = VAE(CONFIG)
    # Parameters drawn with numpy (LeCun-normal scale): compiling init costs more
    # than the training run itself.
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jax.random.key(1))

    def draw(s):
        fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=s.shape) / math.sqrt(fan_in), s.dtype)

    params = jax.tree.map(draw, shapes)
    tx = optax.adam(3e-3)
    loss_fn = vae_loss_fn(vae)

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, opt_state = carry
            k_data, k_sample = jax.random.split(key)
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, {"image": _blobs(k_data, 32)}, k_sample
            )
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 300))
        return params, losses

    params, losses = train(params, jax.random.key(2))
    assert losses[-20:].mean() < 0.6 * losses[:20].mean()  # it learned something
    return vae, params


def test_importance_rises_with_k_towards_ais_and_bdmc_brackets_it(trained):
    vae, params = trained
    model = vae_latent_model(vae, params)

    def simulate(key):
        k_z, k_x = jax.random.split(key)
        z = jax.random.normal(k_z, (CONFIG.latent_dim,))
        out = vae.apply(params, z, method=VAE.decode)
        return z, out["mean"] + jnp.exp(out["log_scale"]) * jax.random.normal(k_x, CONFIG.image_shape)

    zs, xs = jax.vmap(simulate)(jax.random.split(jax.random.key(3), 16))
    bounds = jax.jit(partial(bdmc, num_samples=16, num_steps=200))(jax.random.key(4), model, xs, zs)
    lower, upper = np.asarray(bounds.lower), np.asarray(bounds.upper)
    # The sandwich closes on average (bounds hold in expectation over the data).
    gap = upper - lower
    assert abs(gap.mean()) < 0.05 + 3 * gap.std() / 4, gap

    iwae = {
        k: np.asarray(jax.jit(partial(log_px, method="importance", num_samples=k, chunk_size=250))(
            jax.random.key(5), model, xs
        ))
        for k in (1, 10, 1000)
    }
    means = [iwae[k].mean() for k in (1, 10, 1000)]
    assert means[0] < means[1] < means[2], means
    # Every IWAE bound lies below the AIS value on average, and K = 1000 is closer
    # to it than K = 1 (allowance: 3 standard errors of the mean difference).
    for k, values in iwae.items():
        diff = lower - values
        assert diff.mean() > -3 * diff.std() / 4, (k, diff)
    assert (lower - iwae[1000]).mean() < 0.25 * (lower - iwae[1]).mean()
