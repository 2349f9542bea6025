"""Masked-region losses, region sets and blanking schedules.

Expected values come from numpy: a per-pixel (1x1 conv) logistic network has a
closed-form loss map, ``softplus(z) - y z`` with ``z = x @ w + b``, so every
view's loss is a numpy mean over its region. The jitted, vmapped losses are
also compared with a Python loop over views, and the train step with one and
four (simulated) devices.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import numpy_params

from jaxmed.data.regions import (
    block_regions,
    checkerboard_regions,
    one_modality_per_view,
    organ_regions,
    random_blanking,
    random_partition_regions,
    single_modality_drops,
)
from jaxmed.losses import (
    LesionLossConfig,
    blank_modalities,
    make_lesion_loss,
    make_masked_region_loss,
    masked_mean,
    masked_region_losses,
)
from jaxmed.models import UNet
from jaxmed.train import (
    TrainState,
    jit_train_step,
    make_mesh,
    make_train_step,
    replicate,
    shard_batch,
)

H, W, M = 8, 10, 3


def _pixel_params(rng):
    return {"w": rng.normal(size=(M,)).astype(np.float32), "b": np.float32(-0.2)}


def _pixel_loss_map(params, target):
    """Per-pixel logistic regression (a 1x1 conv): ``x_view [*S, M] -> BCE [*S]``."""

    def loss_map(x_view):
        logits = jnp.einsum("...m,m->...", x_view, params["w"]) + params["b"]
        return optax.sigmoid_binary_cross_entropy(logits, target)

    return loss_map


def _numpy_view_losses(params, x, target, regions, blank, blank_value):
    x, target = np.asarray(x, np.float64), np.asarray(target, np.float64)
    out = []
    for region, blank_v in zip(np.asarray(regions), np.asarray(blank)):
        xv = x.copy()
        xv[..., blank_v] = np.broadcast_to(blank_value, (M,))[blank_v]
        z = xv @ np.asarray(params["w"], np.float64) + float(params["b"])
        bce = np.logaddexp(0.0, z) - target * z
        out.append(bce[region].mean() if region.any() else 0.0)
    return np.array(out)


def _example(rng):
    x = rng.normal(size=(H, W, M)).astype(np.float32)
    target = (rng.random((H, W)) < 0.3).astype(np.float32)
    return x, target


def test_masked_mean_matches_numpy_and_ignores_nan_outside(rng):
    values = rng.normal(size=(5, 7)).astype(np.float32)
    mask = rng.random((5, 7)) < 0.4
    np.testing.assert_allclose(masked_mean(values, mask), values[mask].mean(), rtol=1e-6)
    values[~mask] = np.nan
    assert np.isfinite(masked_mean(values, mask))
    grad = jax.grad(masked_mean)(jnp.asarray(np.where(mask, values, 1.0)), mask)
    np.testing.assert_allclose(grad, mask / mask.sum(), rtol=1e-6)


def test_masked_mean_of_bfloat16_reduces_in_float32(rng):
    values = rng.random(3000).astype(np.float32)
    mask = np.ones(3000, bool)
    got = masked_mean(jnp.asarray(values, jnp.bfloat16), mask)
    assert got.dtype == jnp.float32
    exact = np.asarray(jnp.asarray(values, jnp.bfloat16), np.float64).mean()
    np.testing.assert_allclose(got, exact, rtol=1e-5)


def test_volumes_match_numpy(rng):
    params = _pixel_params(rng)
    x = rng.normal(size=(4, H, W, M)).astype(np.float32)
    target = (rng.random((4, H, W)) < 0.3).astype(np.float32)
    regions = checkerboard_regions((4, H, W), cell=2, num_views=3)
    blank = one_modality_per_view(3, M)
    got = jax.jit(
        lambda x: masked_region_losses(_pixel_loss_map(params, target), x, regions=regions, blank=blank)
    )(x)
    expected = _numpy_view_losses(params, x, target, regions, blank, 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_losses_match_numpy_and_a_python_loop(rng):
    params = _pixel_params(rng)
    x, target = _example(rng)
    regions = random_partition_regions(jax.random.key(1), (H, W), num_views=4, cell=2)
    blank = random_blanking(jax.random.key(2), 4, M, num_blanked=1)
    blank_value = np.array([0.5, -1.0, 2.0], np.float32)
    loss_map = _pixel_loss_map(params, target)

    fn = jax.jit(
        lambda x, r, b: masked_region_losses(loss_map, x, regions=r, blank=b, blank_value=blank_value)
    )
    got = fn(x, regions, blank)
    loop = [
        masked_mean(loss_map(blank_modalities(jnp.asarray(x), blank[v], blank_value)), regions[v])
        for v in range(4)
    ]
    expected = _numpy_view_losses(params, x, target, regions, blank, blank_value)
    np.testing.assert_allclose(got, loop, rtol=1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_shared_blank_patterns_give_the_same_values_and_gradients(rng):
    # 6 views, 3 distinct patterns: the network runs 3 times, the losses and
    # gradients must still be those of 6 separate views.
    params = _pixel_params(rng)
    x, target = _example(rng)
    regions = checkerboard_regions((H, W), cell=2, num_views=6)
    blank = one_modality_per_view(6, M)

    def loss(params, blank):
        return masked_region_losses(_pixel_loss_map(params, target), x, regions=regions, blank=blank)

    shared = jax.jit(lambda p: loss(p, blank))(params)  # concrete blank: patterns are shared
    traced = jax.jit(loss)(params, blank)  # traced blank: one pass per view
    np.testing.assert_allclose(shared, traced, rtol=1e-6)
    expected = _numpy_view_losses(params, x, target, regions, blank, 0.0)
    np.testing.assert_allclose(shared, expected, rtol=1e-5)
    # The network's input batch: 3 blanked copies when shared, 6 when traced.
    shared_program = str(jax.make_jaxpr(lambda p: loss(p, blank))(params))
    traced_program = str(jax.make_jaxpr(loss)(params, blank))
    assert f"f32[3,{H},{W},{M}]" in shared_program and f"f32[6,{H},{W},{M}]" not in shared_program
    assert f"f32[6,{H},{W},{M}]" in traced_program

    g_shared = jax.jit(jax.grad(lambda p: loss(p, blank).sum()))(params)
    g_traced = jax.jit(jax.grad(lambda p, b: loss(p, b).sum()))(params, blank)
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_traced)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loss_k_ignores_everything_outside_its_region(rng):
    params = _pixel_params(rng)
    x, target = _example(rng)
    regions = block_regions((H, W), grid=(2, 1))
    blank = single_modality_drops(M)[:2]

    def losses(x, target):
        return masked_region_losses(
            _pixel_loss_map(params, target), x, regions=regions, blank=blank
        )

    losses = jax.jit(losses)
    base = losses(x, target)
    outside = ~np.asarray(regions[0])
    x2, t2 = x.copy(), target.copy()
    x2[outside] = rng.normal(size=(outside.sum(), M)) * 10
    t2[outside] = 1.0 - t2[outside]
    changed = losses(x2, t2)
    assert changed[0] == base[0]  # bit for bit: nothing outside region 0 is read
    assert abs(changed[1] - base[1]) > 1e-3  # while view 1 does see the change

    jac = jax.jit(jax.jacobian(losses))(jnp.asarray(x), jnp.asarray(target))  # [V, H, W, M]
    jac = np.asarray(jac)
    for v in range(2):
        assert np.all(jac[v][~np.asarray(regions[v])] == 0.0)
        assert np.abs(jac[v][np.asarray(regions[v])]).sum() > 0


def test_unet_loss_ignores_inputs_beyond_its_receptive_field(key):
    # A 3x3-conv net without normalisation (depth 0: two convs, 5x5 receptive
    # field): pixels 3 or more away from region 0 cannot affect loss 0.
    model = UNet(features=2, depth=0, norm_groups=None)
    x = jax.random.normal(key, (16, 16, 2))
    target = jnp.zeros((16, 16))
    params = numpy_params(model, np.random.default_rng(0), x[None])
    regions = block_regions((16, 16), grid=(2, 1))

    def loss0(x):
        def loss_map(xv):
            return optax.sigmoid_binary_cross_entropy(model.apply(params, xv[None])[0, ..., 0], target)

        return masked_region_losses(loss_map, x, regions=regions, blank=jnp.zeros((2, 2), bool))[0]

    grad = np.abs(np.asarray(jax.jit(jax.grad(loss0))(x))).sum(-1)  # [16, 16]
    assert np.all(grad[10:] == 0.0)  # rows >= 8 + 2 are out of reach
    assert np.all(grad[8:10].sum(1) > 0)  # the two rows just outside are in reach


def test_blanked_modality_does_not_change_the_view_loss(rng):
    params = _pixel_params(rng)
    x, target = _example(rng)
    regions = jnp.ones((2, H, W), bool)
    blank = jnp.array([[False, True, False], [False, False, False]])
    learned_blank = jnp.array([0.3, 0.7, -0.4])

    def losses(x, blank_value):
        return masked_region_losses(
            _pixel_loss_map(params, target), x, regions=regions, blank=blank, blank_value=blank_value
        )

    x2 = x.copy()
    x2[..., 1] = 100.0
    a, b = losses(x, learned_blank), losses(x2, learned_blank)
    assert a[0] == b[0]
    assert abs(a[1] - b[1]) > 1e-3
    g_x = jax.grad(lambda x: losses(x, learned_blank)[0])(jnp.asarray(x))
    assert np.all(np.asarray(g_x)[..., 1] == 0.0)
    # A learned blank gets a gradient only through the modality it replaces.
    g_blank = jax.grad(lambda bv: losses(x, bv)[0])(learned_blank)
    assert g_blank[0] == 0.0 and g_blank[2] == 0.0 and g_blank[1] != 0.0


def test_empty_region_gives_zero_loss_and_finite_gradient(rng):
    params = _pixel_params(rng)
    x, target = _example(rng)
    regions = jnp.stack([jnp.zeros((H, W), bool), jnp.ones((H, W), bool)])
    blank = jnp.zeros((2, M), bool)

    def losses(p):
        return masked_region_losses(_pixel_loss_map(p, target), x, regions=regions, blank=blank)

    assert losses(params)[0] == 0.0
    grads = jax.grad(lambda p: losses(p)[0])(params)
    for g in jax.tree.leaves(grads):
        assert np.all(np.asarray(g) == 0.0)
    grads = jax.grad(lambda p: losses(p).sum())(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bad_shapes_raise(rng):
    x, target = _example(rng)
    loss_map = _pixel_loss_map(_pixel_params(rng), target)
    with pytest.raises(ValueError, match="regions must have shape"):
        masked_region_losses(loss_map, x, regions=jnp.ones((2, H, W + 1), bool), blank=jnp.zeros((2, M), bool))
    with pytest.raises(ValueError, match="blank must have shape"):
        masked_region_losses(loss_map, x, regions=jnp.ones((2, H, W), bool), blank=jnp.zeros((3, M), bool))
    with pytest.raises(TypeError, match="bool"):
        masked_region_losses(loss_map, x, regions=jnp.ones((2, H, W)), blank=jnp.zeros((2, M), bool))
    with pytest.raises(ValueError, match="blank_value"):
        blank_modalities(jnp.asarray(x), jnp.zeros(M, bool), jnp.zeros(2))


# --- region sets and blanking schedules -------------------------------------------------


def _assert_disjoint_cover(regions):
    counts = np.asarray(regions).sum(0)
    assert np.all(counts == 1)


def test_block_and_checkerboard_regions_match_index_formulas():
    blocks = np.asarray(block_regions((6, 9), grid=(2, 3)))
    _assert_disjoint_cover(blocks)
    i, j = np.meshgrid(np.arange(6), np.arange(9), indexing="ij")
    np.testing.assert_array_equal(blocks.argmax(0), (i // 3) * 3 + j // 3)

    board = np.asarray(checkerboard_regions((6, 9), cell=2, num_views=3))
    _assert_disjoint_cover(board)
    np.testing.assert_array_equal(board.argmax(0), (i // 2 + j // 2) % 3)

    cube = np.asarray(checkerboard_regions((4, 4, 4), cell=2))
    _assert_disjoint_cover(cube)
    assert cube.shape == (2, 4, 4, 4) and cube[0].sum() == 32


def test_random_partition_is_balanced_cellwise_and_keyed():
    a = np.asarray(random_partition_regions(jax.random.key(0), (10, 12), num_views=4, cell=2))
    b = np.asarray(random_partition_regions(jax.random.key(0), (10, 12), num_views=4, cell=2))
    c = np.asarray(random_partition_regions(jax.random.key(1), (10, 12), num_views=4, cell=2))
    _assert_disjoint_cover(a)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    labels = a.argmax(0)
    # 5 x 6 = 30 cells of 2x2 dealt to 4 views: 8, 8, 7, 7 cells.
    assert sorted(a.sum((1, 2)) // 4) == [7, 7, 8, 8]
    np.testing.assert_array_equal(labels[::2, ::2], labels[1::2, 1::2])
    # Jittable with a traced key (drawn per step inside the train step).
    d = jax.jit(lambda k: random_partition_regions(k, (10, 12), num_views=4, cell=2))(jax.random.key(0))
    np.testing.assert_array_equal(d, a)


def test_organ_regions_restrict_and_add_background():
    organ = np.zeros((6, 6), bool)
    organ[1:5, 2:6] = True
    partition = block_regions((6, 6), grid=(1, 2))
    regions = np.asarray(organ_regions(jnp.asarray(organ), partition, background=True))
    assert regions.shape == (3, 6, 6)
    _assert_disjoint_cover(regions)
    np.testing.assert_array_equal(regions[0], organ & (np.arange(6) < 3)[None, :])
    np.testing.assert_array_equal(regions[1], organ & (np.arange(6) >= 3)[None, :])
    np.testing.assert_array_equal(regions[2], ~organ)


def test_blanking_schedules():
    np.testing.assert_array_equal(
        one_modality_per_view(4, 3), np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], bool)
    )
    np.testing.assert_array_equal(single_modality_drops(3), np.eye(3, dtype=bool))
    with_none = np.asarray(single_modality_drops(3, include_none=True))
    np.testing.assert_array_equal(with_none, np.concatenate([np.zeros((1, 3), bool), np.eye(3, dtype=bool)]))
    rand = np.asarray(random_blanking(jax.random.key(0), 200, 3, num_blanked=2))
    assert np.all(rand.sum(1) == 2)
    # Uniform over modalities: each is blanked in 2/3 of 200 views (binomial sd 6.7).
    np.testing.assert_allclose(rand.mean(0), 2 / 3, atol=0.1)
    with pytest.raises(ValueError):
        random_blanking(jax.random.key(0), 2, 3, num_blanked=3)


# --- the train-step loss ------------------------------------------------------------------


class _PixelNet(nn.Module):
    """A 1x1 conv: a per-pixel logistic regression, ``[N, *S, M] -> [N, *S, 1]``."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(1, (1, 1))(x)


def _pixel_net_params(rng):
    """Parameters of `_PixelNet` (the layout of its ``init``), drawn with numpy."""
    kernel = rng.normal(size=(1, 1, M, 1)).astype(np.float32)
    return {"params": {"Conv_0": {"kernel": kernel, "bias": np.array([-0.1], np.float32)}}}


def _batch(rng, n):
    return {
        "image": rng.normal(size=(n, H, W, M)).astype(np.float32),
        "lesion_mask": rng.random((n, H, W)) < 0.3,
        "organ_mask": rng.random((n, H, W)) < 0.7,
    }


def test_train_loss_is_the_weighted_view_sum_averaged_over_the_batch(rng, key):
    model = _PixelNet()
    batch = _batch(rng, 3)
    params = _pixel_net_params(rng)
    regions = checkerboard_regions((H, W), cell=2, num_views=3)
    blank = single_modality_drops(M)
    weights = np.array([1.0, 0.5, 2.0], np.float32)
    loss_fn = make_masked_region_loss(model.apply, regions=regions, blank=blank, view_weights=weights)
    loss, metrics = jax.jit(loss_fn)(params, batch, key)

    p = {"w": params["params"]["Conv_0"]["kernel"].reshape(M), "b": params["params"]["Conv_0"]["bias"][0]}
    per_example = np.stack(
        [
            _numpy_view_losses(p, batch["image"][i], batch["lesion_mask"][i], regions, blank, 0.0)
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(loss, (per_example @ weights).mean(), rtol=1e-5)
    for v in range(3):
        np.testing.assert_allclose(metrics[f"view_loss_{v}"], per_example[:, v].mean(), rtol=1e-5)


def test_train_loss_with_per_example_random_regions_from_the_organ_mask(rng, key):
    model = _PixelNet()
    batch = _batch(rng, 2)
    params = _pixel_net_params(rng)

    def regions(k, example):
        partition = random_partition_regions(k, (H, W), num_views=2, cell=2)
        return organ_regions(example["organ_mask"], partition)

    def blank(k, example):
        del example
        return random_blanking(k, 2, M, num_blanked=1)

    loss_fn = make_masked_region_loss(model.apply, regions=regions, blank=blank, blank_value=0.25)
    loss, _ = jax.jit(loss_fn)(params, batch, key)

    # The same draws, by hand: the loss splits the key per example, then into
    # (regions, blank).
    p = {"w": params["params"]["Conv_0"]["kernel"].reshape(M), "b": params["params"]["Conv_0"]["bias"][0]}
    expected = 0.0
    for i, k in enumerate(jax.random.split(key, 2)):
        k_r, k_b = jax.random.split(k)
        r = np.asarray(regions(k_r, {"organ_mask": jnp.asarray(batch["organ_mask"][i])}))
        b = np.asarray(blank(k_b, None))
        assert not np.any(r.sum(0) > 1) and np.all(r.any(0) == batch["organ_mask"][i])
        expected += _numpy_view_losses(p, batch["image"][i], batch["lesion_mask"][i], r, b, 0.25).sum() / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_learned_blank_vector_is_trained(rng, key):
    model = _PixelNet()
    batch = _batch(rng, 2)
    params = {"net": _pixel_net_params(rng), "blank": jnp.zeros(M)}
    loss_fn = make_masked_region_loss(
        lambda p, x: model.apply(p["net"], x),
        regions=block_regions((H, W), grid=(1, 2)),
        blank=jnp.array([[True, False, False], [False, False, False]]),
        blank_value=lambda p: p["blank"],
    )
    grads, _ = jax.grad(loss_fn, has_aux=True)(params, batch, key)
    g = np.asarray(grads["blank"])
    assert g[0] != 0.0 and g[1] == 0.0 and g[2] == 0.0


def test_step_traces_once_and_agrees_on_one_and_four_devices(rng, key):
    model = _PixelNet()
    batch = {
        "image": rng.random((4, 8, 8, M)).astype(np.float32),
        "lesion_mask": rng.random((4, 8, 8)) < 0.2,
    }
    params = {"net": _pixel_net_params(rng), "blank": jnp.full(M, 0.5)}
    loss_fn = make_masked_region_loss(
        lambda p, x: model.apply(p["net"], x),
        regions=lambda k, ex: random_partition_regions(k, (8, 8), num_views=3, cell=2),
        blank=single_modality_drops(M),
        blank_value=lambda p: p["blank"],
    )
    traces = []

    def counted(params, batch, key):
        traces.append(1)
        return loss_fn(params, batch, key)

    results = []
    for n in (1, 4):
        mesh = make_mesh(n)
        step = jit_train_step(make_train_step(counted), mesh)
        state = replicate(TrainState.create(params=params, tx=optax.sgd(0.1), key=jax.random.key(7)), mesh)
        traces.clear()
        losses = []
        for _ in range(3):
            state, metrics = step(state, shard_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
        assert len(traces) == 1, f"{n} devices: traced {len(traces)} times"
        results.append((losses, jax.device_get(state.params)))
    (l1, p1), (l4, p4) = results
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    assert l1[2] < l1[0]
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lesion_loss_configs(rng, key):
    model = _PixelNet()
    batch = _batch(rng, 2)
    params = _pixel_net_params(rng)
    plain = make_lesion_loss(model.apply, LesionLossConfig(masked=False, pos_weight=3.0), shape=(H, W), num_modalities=M)
    loss, metrics = jax.jit(plain)(params, batch, key)
    z = batch["image"].astype(np.float64) @ params["params"]["Conv_0"]["kernel"].reshape(M) - 0.1
    y = batch["lesion_mask"].astype(np.float64)
    expected = ((np.logaddexp(0.0, z) - y * z) * (1 + 2 * y)).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert set(metrics) == {"loss", "view_loss_0"}

    masked = make_lesion_loss(
        model.apply, LesionLossConfig(cell=2, include_none=True), shape=(H, W), num_modalities=M
    )
    _, metrics = jax.jit(masked)(params, batch, key)
    assert {f"view_loss_{v}" for v in range(M + 1)} <= set(metrics)
    with pytest.raises(ValueError, match="cell"):
        LesionLossConfig(cell=0)
