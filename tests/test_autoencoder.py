"""Tests of the plain autoencoder: shapes, its loss against numpy, compression
of a learnable image set, and a flat VAE trained on its features."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import numpy_params

from jaxmed.losses import autoencoder_loss_fn, vae_loss_fn
from jaxmed.models import AUTOENCODER_PRESETS, VAE, Autoencoder, AutoencoderConfig, VAEConfig


def test_shapes_and_loss_match_numpy(key, rng):
    cfg = AUTOENCODER_PRESETS["tiny"]
    model = Autoencoder(cfg)
    images = jnp.asarray(rng.uniform(size=(2, 3, *cfg.image_shape)), jnp.float32)
    params = numpy_params(model, rng, images)

    @jax.jit
    def run(params):
        features = model.apply(params, images, method=Autoencoder.encode)
        one = model.apply(params, images[1, 2], method=Autoencoder.encode)
        recon = model.apply(params, features, method=Autoencoder.decode)
        loss, metrics = autoencoder_loss_fn(model)(params, {"image": images[0]}, key)
        return features, one, recon, model.apply(params, images[0]), loss, metrics

    features, one, recon, recon0, loss, metrics = run(params)
    assert features.shape == (2, 3, cfg.feature_dim)
    assert recon.shape == images.shape
    np.testing.assert_allclose(one, features[1, 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recon0, recon[0], rtol=1e-5, atol=1e-6)
    assert np.all((np.asarray(recon) > 0) & (np.asarray(recon) < 1))  # sigmoid output
    expected = np.mean((np.asarray(recon0, np.float64) - np.asarray(images[0], np.float64)) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["mse"] == loss


def test_compresses_and_a_flat_vae_trains_on_its_features(key, rng):
    cfg = dataclasses.replace(AUTOENCODER_PRESETS["tiny"], feature_dim=2)
    model = Autoencoder(cfg)
    # Four distinct patterns (one quadrant on each): 2 features suffice.
    patterns = np.zeros((4, 8, 8, 1), np.float32)
    for i, (a, b) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        patterns[i, a : a + 4, b : b + 4] = 1.0
    images = jnp.asarray(patterns[rng.integers(0, 4, size=16)])
    params = numpy_params(model, rng, images)
    tx = optax.adam(3e-2)

    def fit(loss_fn, params, data, key, steps):
        def step(carry, k):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {"image": data}, k)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
        return params, losses

    @jax.jit
    def run(params, key):
        params, losses = fit(autoencoder_loss_fn(model), params, images, key, 150)
        return params, losses, model.apply(params, images, method=Autoencoder.encode)

    params, losses, features = run(params, key)
    # The best constant image (the pixel mean) has MSE equal to the pixel variance.
    baseline = float(np.var(np.asarray(images), axis=0).mean())
    assert float(losses[-1]) < 0.25 * baseline < float(losses[0]), (float(losses[-1]), baseline)
    # A VAE over the 2 features, as a flat input.
    vae = VAE(VAEConfig(image_shape=(2,), latent_dim=1, channels=(8,), likelihood="gaussian_learned_global",
                        output_activation="none"))
    vparams = numpy_params(vae, rng, features, key)
    _, vlosses = jax.jit(lambda p, k: fit(vae_loss_fn(vae), p, features, k, 100))(vparams, key)
    assert np.all(np.isfinite(vlosses))
    assert float(np.mean(vlosses[-10:])) < float(np.mean(vlosses[:10]))


def test_bad_configs_and_inputs_raise(key):
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderConfig(image_shape=(12, 12, 1), channels=(4, 8, 16))
    with pytest.raises(ValueError, match="1-3 spatial axes"):
        AutoencoderConfig(image_shape=(64,))
    with pytest.raises(ValueError, match="unknown norm"):
        AutoencoderConfig(image_shape=(8, 8, 1), channels=(4,), norm="batch")
    model = Autoencoder(AUTOENCODER_PRESETS["tiny"])
    params = jax.eval_shape(model.init, key, jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"features must have shape \(\*batch, 4\), got \(3, 5\)"):
        jax.eval_shape(lambda p: model.apply(p, jnp.zeros((3, 5)), method=Autoencoder.decode), params)
