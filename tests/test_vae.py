"""Tests of jaxmed.models: conv layers (every implementation against PyTorch and
Flax), the VAE's shapes, likelihoods against hand-written formulas, and the
latent-variable adapter used by the log p(x) estimators."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.models import LIKELIHOODS, PRESETS, VAE, VAEConfig, vae_latent_model
from jaxmed.models.conv import (
    DOWN_IMPLS,
    UP_IMPLS,
    conv_transpose,
    depth_to_space,
    space_to_depth,
    strided_conv,
)

LOG_2PI = math.log(2 * math.pi)


def _torch(a):
    # PyTorch is an optional oracle (the `bench` extra); XLA's own convolution
    # is the reference that always runs.
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.asarray(a, np.float64))


# ----------------------------------------------------------------------------- layers


def test_space_to_depth_matches_numpy_and_inverts(rng):
    x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    y = np.asarray(space_to_depth(jnp.asarray(x), 2))
    assert y.shape == (2, 2, 3, 12)
    # channel (r1, r2, c): y[b, i, j, (r1 * 2 + r2) * 3 + c] = x[b, 2i + r1, 2j + r2, c]
    for r1 in range(2):
        for r2 in range(2):
            for c in range(3):
                np.testing.assert_array_equal(y[..., (r1 * 2 + r2) * 3 + c], x[:, r1::2, r2::2, c])
    np.testing.assert_array_equal(np.asarray(depth_to_space(jnp.asarray(y), 2)), x)


@pytest.mark.parametrize("impl", DOWN_IMPLS)
@pytest.mark.parametrize("n, k, s", [(8, 4, 2), (9, 5, 3)])
def test_strided_conv_matches_torch(impl, n, k, s, rng):
    x = rng.normal(size=(2, n, n, 3)).astype(np.float32)
    w = rng.normal(size=(k, k, 3, 5)).astype(np.float32)
    out = jax.jit(lambda x, w: strided_conv(x, w, strides=s, impl=impl))(x, w)
    # "SAME" padding: total max((ceil(n/s)-1)*s + k - n, 0), the extra pixel at the end.
    total = max((-(-n // s) - 1) * s + k - n, 0)
    pads = [(total // 2, total - total // 2)] * 2
    xla = jax.lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(out, xla, rtol=1e-4, atol=1e-4)
    torch = pytest.importorskip("torch")
    xt = torch.nn.functional.pad(_torch(x).permute(0, 3, 1, 2), (total // 2, total - total // 2) * 2)
    ref = torch.nn.functional.conv2d(xt, _torch(w).permute(3, 2, 0, 1), stride=s)
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", UP_IMPLS)
@pytest.mark.parametrize("n, k, s", [(5, 4, 2), (3, 6, 3)])
def test_conv_transpose_matches_flax_and_torch(impl, n, k, s, rng):
    x = rng.normal(size=(2, n, n, 3)).astype(np.float32)
    w = rng.normal(size=(k, k, 3, 5)).astype(np.float32)
    out = jax.jit(lambda x, w: conv_transpose(x, w, strides=s, impl=impl))(x, w)
    assert out.shape == (2, n * s, n * s, 5)
    flax_out = nn.ConvTranspose(5, (k, k), (s, s), padding="SAME", use_bias=False).apply(
        {"params": {"kernel": w}}, x
    )
    np.testing.assert_allclose(out, flax_out, rtol=1e-4, atol=1e-4)
    # lax "SAME" transposed conv = PyTorch's with the kernel flipped and padding
    # k - 1 - pad_a, pad_a = ceil((k + s - 2) / 2); output cropped to n * s.
    pad_a = -(-(k + s - 2) // 2)
    torch = pytest.importorskip("torch")
    full = torch.nn.functional.conv_transpose2d(
        _torch(x).permute(0, 3, 1, 2), _torch(w[::-1, ::-1].copy()).permute(2, 3, 0, 1), stride=s
    )
    lo = k - 1 - pad_a
    ref = full[:, :, lo : lo + n * s, lo : lo + n * s].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_fast_layers_match_reference_with_gradients_1d_and_3d(rng):
    # 1D: every implementation, value and gradients. 3D (odd sizes, so the
    # Winograd tiles are padded): the N-d Winograd index logic, values only
    # (its gradients are autodiff of the same linear maps as in 1D).
    x1 = jnp.asarray(rng.normal(size=(2, 7, 3)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float32)
    x3 = jnp.asarray(rng.normal(size=(1, 5, 6, 3, 3)), jnp.float32)
    w3 = jnp.asarray(rng.normal(size=(4, 4, 4, 3, 2)), jnp.float32)

    def loss(x, w, fn, impl):
        return jnp.sum(jnp.sin(fn(x, w, strides=2, impl=impl)))

    @jax.jit
    def run(x1, w1, x3, w3):
        grads = {
            (fn.__name__, impl): jax.value_and_grad(loss, (0, 1))(x1, w1, fn, impl)
            for fn, impls in [(strided_conv, DOWN_IMPLS), (conv_transpose, UP_IMPLS)]
            for impl in impls
        }
        values = {
            fn.__name__: [fn(x3, w3, strides=2, impl=impl) for impl in ("xla", winograd)]
            for fn, winograd in [(strided_conv, "s2d_winograd"), (conv_transpose, "subpixel_winograd")]
        }
        return grads, values

    grads, values = run(x1, w1, x3, w3)
    for (name, impl), got in grads.items():
        ref = grads[(name, "xla")]
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{name} {impl}")
    for name, (ref, got) in values.items():
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------- VAE


def _reference64_param_count():
    enc = sum(16 * cin * cout + cout for cin, cout in [(1, 32), (32, 64), (64, 128), (128, 256)])
    enc += 4 * 4 * 256 * 64 + 64  # dense to mean and log-scale
    dec = 32 * 4 * 4 * 256 + 4 * 4 * 256
    dec += sum(16 * cin * cout + cout for cin, cout in [(256, 128), (128, 64), (64, 32), (32, 1)])
    return enc + dec


def test_reference64_size_and_implementations_agree(key, rng):
    cfg = PRESETS["reference64"]
    model = VAE(cfg)
    x = jnp.asarray(rng.uniform(size=(2, 64, 64, 1)), jnp.float32)
    params = numpy_params(model, rng, x, key)
    n = sum(a.size for a in jax.tree.leaves(params))
    assert n == _reference64_param_count() == 1_775_361
    textbook = VAE(VAEConfig(image_shape=(64, 64, 1), down_impl="xla", up_impl="xla"))
    z = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)

    @jax.jit
    def both(params, x, z):
        return [
            (m.apply(params, x, method=VAE.encode), m.apply(params, z, method=VAE.decode))
            for m in (model, textbook)
        ]

    fast, ref = both(params, x, z)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


SMALL_CONFIGS = {
    "2d": PRESETS["tiny"],
    "3d": VAEConfig(image_shape=(8, 8, 4, 1), latent_dim=3, channels=(4, 4)),  # small3d, smaller
    "flat": PRESETS["features64"],
}


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_shapes_one_image_and_batches_agree(name, key, rng):
    cfg = SMALL_CONFIGS[name]
    model = VAE(cfg)
    xs = jnp.asarray(rng.uniform(size=(2, 3, *cfg.image_shape)), jnp.float32)
    params = numpy_params(model, rng, xs[0], key)

    @jax.jit
    def run(params, xs):
        mean, log_scale = model.apply(params, xs, method=VAE.encode)
        one = model.apply(params, xs[1, 2], method=VAE.encode)
        decoded = model.apply(params, mean, method=VAE.decode)
        ll = model.apply(params, xs, mean, method=VAE.log_likelihood)
        ll0 = model.apply(params, xs[1, 2], mean[1, 2], method=VAE.log_likelihood)
        return mean, log_scale, one, decoded, ll, ll0, model.apply(params, xs, key)

    mean, log_scale, (m0, s0), decoded, ll, ll0, out = run(params, xs)
    assert mean.shape == log_scale.shape == (2, 3, cfg.latent_dim)
    np.testing.assert_allclose(m0, mean[1, 2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s0, log_scale[1, 2], rtol=1e-5, atol=1e-5)
    assert all(v.shape == (2, 3, *cfg.image_shape) for v in decoded.values())
    assert ll.shape == (2, 3) and ll0.shape == ()
    np.testing.assert_allclose(ll0, ll[1, 2], rtol=1e-5)
    assert out["z"].shape == (2, 3, cfg.latent_dim)
    # z = mean + exp(log_scale) * eps, eps ~ N(0, 1) from the key.
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(out["z"], mean + np.exp(log_scale) * eps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "likelihood", ["gaussian_unit", "gaussian_learned_pixel", "gaussian_learned_global", "student_t_learned_pixel",
                   "student_t_learned_global", "bernoulli"]
)
def test_log_likelihood_matches_formula(likelihood, key, rng):
    import scipy.stats

    cfg = VAEConfig(image_shape=(8, 8, 2), latent_dim=3, channels=(4, 8), likelihood=likelihood, student_df=2.5)
    model = VAE(cfg)
    x = rng.uniform(size=(2, 8, 8, 2))
    if likelihood == "bernoulli":
        x = (x > 0.5).astype(np.float64)
    x = jnp.asarray(x, jnp.float32)
    params = numpy_params(model, rng, x, key)
    learned = likelihood.startswith(("gaussian_learned", "student_t"))
    if learned:
        # A non-trivial learned scale, so that the test sees it.
        shape = params["params"]["log_scale"].shape
        params["params"]["log_scale"] = jnp.asarray(rng.normal(size=shape) * 0.3, jnp.float32)
    z = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    got, dec = jax.jit(
        lambda p, x, z: (model.apply(p, x, z, method=VAE.log_likelihood), model.apply(p, z, method=VAE.decode))
    )(params, x, z)
    dec = jax.tree.map(lambda a: np.asarray(a, np.float64), dec)
    xn = np.asarray(x, np.float64)
    if learned:
        # min_scale = 0: the parameter is log sigma itself.
        np.testing.assert_array_equal(
            dec["log_scale"], np.broadcast_to(params["params"]["log_scale"], dec["mean"].shape)
        )
    if likelihood == "bernoulli":
        p = 1 / (1 + np.exp(-dec["logits"]))
        np.testing.assert_allclose(dec["mean"], p, rtol=1e-5)
        expected = (xn * np.log(p) + (1 - xn) * np.log1p(-p)).sum(axis=(1, 2, 3))
    elif likelihood.startswith("student_t"):
        sigma = np.exp(dec["log_scale"])
        assert (np.unique(sigma).size == 1) == likelihood.endswith("global")
        expected = scipy.stats.t(2.5, dec["mean"], sigma).logpdf(xn).sum(axis=(1, 2, 3))
    else:
        sigma = np.exp(dec["log_scale"]) if "log_scale" in dec else np.ones_like(xn)
        if likelihood == "gaussian_learned_global":
            assert np.unique(sigma).size == 1
        expected = (
            -0.5 * ((xn - dec["mean"]) / sigma) ** 2 - np.log(sigma) - 0.5 * LOG_2PI
        ).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_min_scale_is_a_smooth_floor_of_the_learned_scale(key, rng):
    import scipy.stats

    floor = 0.01
    cfg = VAEConfig(image_shape=(8, 8, 1), latent_dim=2, channels=(4, 8), likelihood="gaussian_learned_pixel",
                    min_scale=floor)
    model = VAE(cfg)
    x = jnp.asarray(rng.uniform(size=cfg.image_shape), jnp.float32)
    z = jnp.asarray(rng.normal(size=(cfg.latent_dim,)), jnp.float32)
    params = numpy_params(model, rng, x, key)
    # Far below the floor (the unfloored sigma would be 4e-18), at it, and above it.
    raw = rng.choice([-40.0, math.log(floor), 0.5], size=cfg.image_shape)
    params["params"]["log_scale"] = jnp.asarray(raw, jnp.float32)

    @jax.jit
    def run(params):
        decoded = model.apply(params, z, method=VAE.decode)
        log_lik, grads = jax.value_and_grad(lambda p: model.apply(p, x, z, method=VAE.log_likelihood))(params)
        return decoded, log_lik, grads["params"]["log_scale"], model.apply(params, method=VAE.noise_log_scale)

    decoded, log_lik, grad, noise_log_scale = run(params)
    sigma = floor + np.exp(raw)
    np.testing.assert_allclose(np.exp(np.asarray(decoded["log_scale"], np.float64)), sigma, rtol=1e-5)
    np.testing.assert_allclose(noise_log_scale, decoded["log_scale"], rtol=1e-6)
    mean = np.asarray(decoded["mean"], np.float64)
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(log_lik, scipy.stats.norm(mean, sigma).logpdf(xn).sum(), rtol=1e-5)
    # d log N / d raw = (r^2 / sigma^2 - 1) / sigma * d sigma / d raw, d sigma / d raw = exp(raw):
    # finite everywhere, vanishing smoothly far below the floor.
    expected = ((xn - mean) ** 2 / sigma**2 - 1) / sigma * np.exp(raw)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-12)
    assert np.all(np.abs(np.asarray(grad))[raw == 0.5] > 0)


def test_latent_model_under_jit_and_vmap(key, rng):
    cfg = PRESETS["tiny"]
    model = VAE(cfg)
    xs = jnp.asarray(rng.uniform(size=(3, *cfg.image_shape)), jnp.float32)
    params = numpy_params(model, rng, xs, key)
    lvm = vae_latent_model(model, params)
    z = jnp.asarray(rng.normal(size=(3, cfg.latent_dim)), jnp.float32)

    @jax.jit
    def evaluate(lvm, xs, z):
        return jax.vmap(lambda x, z: (lvm.log_prior(z), lvm.log_likelihood(x, z), lvm.proposal(x)))(xs, z)

    log_prior, log_lik, (mean, std) = evaluate(lvm, xs, z)
    zn = np.asarray(z, np.float64)
    np.testing.assert_allclose(log_prior, (-0.5 * zn**2 - 0.5 * LOG_2PI).sum(-1), rtol=1e-6)
    ref = jax.jit(lambda p: (model.apply(p, xs, z, method=VAE.log_likelihood), model.apply(p, xs, method=VAE.encode)))
    ref_log_lik, (m, s) = ref(params)
    np.testing.assert_allclose(log_lik, ref_log_lik, rtol=1e-5)
    np.testing.assert_allclose(mean, m, rtol=1e-6)
    np.testing.assert_allclose(std, np.exp(s), rtol=1e-6)
    # Params are leaves: a new set of params does not retrace and changes the answer.
    params2 = jax.tree.map(lambda a: a * 1.5, params)
    _, log_lik2, _ = evaluate(vae_latent_model(model, params2), xs, z)
    assert evaluate._cache_size() == 1
    assert not np.allclose(log_lik2, log_lik)
    assert set(LIKELIHOODS) == {"gaussian_unit", "gaussian_learned_pixel", "gaussian_learned_global",
                                "student_t_learned_pixel", "student_t_learned_global", "bernoulli"}


def test_bad_shapes_and_configs_raise(key):
    model = VAE(PRESETS["tiny"])
    # Shapes are checked while tracing: abstract evaluation is enough.
    params = jax.eval_shape(model.init, key, jnp.zeros((1, 8, 8, 1)), key)
    with pytest.raises(ValueError, match=r"x must have shape \(\*batch, 8, 8, 1\), got \(2, 8, 7, 1\)"):
        jax.eval_shape(lambda p: model.apply(p, jnp.zeros((2, 8, 7, 1)), method=VAE.encode), params)
    with pytest.raises(ValueError, match="batch shape"):
        jax.eval_shape(
            lambda p: model.apply(p, jnp.zeros((2, 8, 8, 1)), jnp.zeros((3, 2)), method=VAE.log_likelihood),
            params,
        )
    with pytest.raises(ValueError, match="not divisible"):
        VAEConfig(image_shape=(30, 30, 1), channels=(8, 8))
    with pytest.raises(ValueError, match="unknown likelihood"):
        VAEConfig(image_shape=(8, 8, 1), channels=(4, 8), likelihood="laplace")
    with pytest.raises(ValueError, match="one positive stride per layer"):
        VAEConfig(image_shape=(8, 8, 1), channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="unknown down_impl"):
        VAEConfig(image_shape=(8, 8, 1), channels=(4, 8), down_impl="fft")
    with pytest.raises(ValueError, match="min_scale"):
        VAEConfig(image_shape=(8, 8, 1), channels=(4, 8), likelihood="gaussian_learned_pixel", min_scale=-0.1)
    assert VAEConfig(image_shape=[8, 8, 1], channels=[4, 8]).strides == (2, 2)
