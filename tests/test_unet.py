"""The U-Net: shapes, parameter count, pooling/upsampling, per-example independence.

Expected values are computed independently: the parameter count from the
layer formula, pooling and upsampling with numpy, a one-layer path with
``jax.lax.conv_general_dilated``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import numpy_params

from jaxmed.models import UNet
from jaxmed.models.unet import _max_pool2, _upsample2


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _expected_param_count(m_in, features, depth, *, rank, out=1):
    """Conv 3x3(x3) without bias + GroupNorm (scale, bias) per block conv; biased up-convs."""
    taps = 3**rank

    def block(c_in, c):
        return taps * c_in * c + 2 * c + taps * c * c + 2 * c

    total, c_in = 0, m_in
    for level in range(depth + 1):
        c = features * 2**level
        total += block(c_in, c)
        c_in = c
    for level in reversed(range(depth)):
        c = features * 2**level
        total += taps * c_in * c + c  # upsample conv
        total += block(2 * c, c)
        c_in = c
    return total + c_in * out + out


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 8, 8, 8, 2)])
def test_shapes_and_parameter_count(key, shape):
    model = UNet(features=4, depth=2, norm_groups=2)
    # Shapes only (no compile): running the net is tested below.
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(model.init, key, x)
    y = jax.eval_shape(model.apply, params, x)
    assert y.shape == shape[:-1] + (1,)
    assert _count(params) == _expected_param_count(shape[-1], 4, 2, rank=len(shape) - 2)


def test_pool_and_upsample_match_numpy(rng):
    x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    expected = x.reshape(2, 2, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(_max_pool2(jnp.asarray(x)), expected)
    np.testing.assert_array_equal(_upsample2(jnp.asarray(x)), x.repeat(2, axis=1).repeat(2, axis=2))
    v = rng.normal(size=(1, 2, 4, 4, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        _max_pool2(jnp.asarray(v)), v.reshape(1, 1, 2, 2, 2, 2, 2, 1).max(axis=(2, 4, 6))
    )


def test_depth_zero_without_norm_is_two_convs_and_a_projection(rng):
    model = UNet(features=3, depth=0, norm_groups=None)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 2)), jnp.float32)
    params = numpy_params(model, rng, x)["params"]

    def conv(h, p):
        dn = ("NHWC", "HWIO", "NHWC")
        out = jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME", dimension_numbers=dn)
        return out + p["bias"].reshape(1, 1, 1, -1)

    h = jax.nn.relu(conv(x, params["ConvBlock_0"]["Conv_0"]))
    h = jax.nn.relu(conv(h, params["ConvBlock_0"]["Conv_1"]))
    expected = conv(h, params["Conv_0"])
    got = jax.jit(model.apply)({"params": params}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_examples_are_independent_and_the_net_learns(rng):
    # GroupNorm statistics are per example: example 0's output must not move
    # when example 1 changes (the masked-region loss applies it per view).
    model = UNet(features=4, depth=1, norm_groups=2)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 2)), jnp.float32)
    params = numpy_params(model, rng, x)
    apply = jax.jit(model.apply)
    x2 = x.at[1].set(jnp.asarray(rng.normal(size=(8, 8, 2)) * 5, jnp.float32))
    np.testing.assert_allclose(apply(params, x)[0], apply(params, x2)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apply(params, x[:1])[0], apply(params, x)[0], rtol=1e-5, atol=1e-6)

    # A target the net can express (channel 0 > 0): the loss must fall well below log 2.
    target = (x[..., 0] > 0).astype(jnp.float32)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        loss, g = jax.value_and_grad(
            lambda p: optax.sigmoid_binary_cross_entropy(model.apply(p, x)[..., 0], target).mean()
        )(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
    assert float(loss) < 0.2


def test_bad_configuration_and_input_raise():
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(features=6, norm_groups=4)
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=-1)
    with pytest.raises(ValueError, match="divisible"):
        UNet(features=4, depth=2, norm_groups=2).init(jax.random.key(0), jnp.zeros((1, 10, 10, 1)))
    with pytest.raises(ValueError, match="expects"):
        UNet(features=8).init(jax.random.key(0), jnp.zeros((16, 16, 1)))
