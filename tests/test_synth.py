"""Tests of jaxmed.data.synth: exact answers for the velocity-field integration,
the template given back when every family is off, and the statistics of each
family checked against the formula that defines it.

The synthesis is jitted once per config (``config`` is static); configs are
shared between tests to keep compilations few.
"""

import dataclasses
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from jaxmed.data import synth
from jaxmed.data.brain_mri import load_brain_mri
from jaxmed.data.synth import FAMILIES, SynthConfig
from jaxmed.data.synth.deformation import sample_field

SLICES = jax.jit(synth.synth_slices, static_argnames="config")
SUBJECT = jax.jit(synth.synth_subject, static_argnames="config")
POSITIONS = np.array([30.5, 62.0, 95.25, 140.0], np.float32)  # fractional allowed
OFF = SynthConfig.only()


@pytest.fixture(scope="module")
def template():
    if importlib.util.find_spec("nilearn") is None:  # the maps ship in nilearn's wheel ("jaxmed[data]")
        pytest.skip("nilearn is not installed")
    return synth.load_synth_template()


@pytest.fixture(scope="module")
def splits(template):
    return load_brain_mri()


def _grid(shape):
    return jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in shape), indexing="ij"), axis=-1)


@jax.jit
def _deform(v):
    # As synth integrates its velocities (default steps), and the Jacobian.
    u = synth.integrate_velocity(v, steps=SynthConfig().svf_steps)
    return u, synth.jacobian_determinant(u)


# ----------------------------------------------------------------------------
# Stationary velocity fields


def test_zero_velocity_is_the_identity():
    u = jax.jit(lambda v: synth.integrate_velocity(v, steps=6))(jnp.zeros((7, 8, 9, 3)))
    np.testing.assert_array_equal(np.asarray(u), 0.0)


@pytest.mark.parametrize("shape", [(12, 10), (9, 10, 11)])
def test_constant_velocity_is_a_translation_by_it(shape):
    # exp(c) for a constant field is the translation by c: every squaring
    # doubles c / 2^T exactly (interpolating a constant gives it back).
    c = jnp.asarray([0.7, -1.3, 0.25][: len(shape)], jnp.float32)
    v = jnp.broadcast_to(c, (*shape, len(shape)))
    u = jax.jit(lambda v: synth.integrate_velocity(v, steps=5))(v)
    assert_allclose(np.asarray(u), np.broadcast_to(np.asarray(c), u.shape), rtol=1e-6)


def test_jacobian_determinant_of_a_linear_map():
    # u(x) = A x has Jacobian I + A everywhere (central differences are exact).
    a = np.array([[0.1, -0.2, 0.05], [0.3, -0.1, 0.0], [0.02, 0.1, 0.2]], np.float32)
    u = jnp.einsum("ij,...j->...i", a, _grid((5, 6, 7)))
    assert_allclose(np.asarray(synth.jacobian_determinant(u)), np.linalg.det(np.eye(3) + a), rtol=1e-5)


@pytest.mark.parametrize("std_mm", [2.0, 8.0])  # the default, and four times it
def test_default_deformations_do_not_fold(std_mm):
    # On the grid synth uses for the template (10 mm nodes, 20 mm smoothing).
    config = SynthConfig(svf_std_mm=std_mm)
    g = config.svf_grid_mm
    for seed in range(3):
        v = synth.sample_velocity(jax.random.key(seed), (20, 20, 20), std=std_mm / g,
                                  smoothness=config.svf_smoothness_mm / g)
        u, det = _deform(v)
        assert float(jnp.min(det)) > 0.1
        assert float(jnp.std(u)) > 0.3 * std_mm / g  # and they do deform


def test_velocity_has_the_configured_statistics():
    v = synth.sample_velocity(jax.random.key(0), (40, 40, 40), std=0.5, smoothness=2.0)
    assert v.shape == (40, 40, 40, 3)
    assert_allclose(float(jnp.std(v)), 0.5, rtol=0.15)  # one smooth field: few independent samples
    # Neighbours are strongly correlated: for a Gaussian of sigma s the
    # correlation at lag 1 is exp(-1 / (4 s^2)) = 0.94.
    lag = float(jnp.mean(v[1:] * v[:-1]) / jnp.mean(v * v))
    assert_allclose(lag, math.exp(-1 / 16), atol=0.03)


def _inverse_residual(nodes_per_sigma, seed):
    # The same field in mm (std 2 mm, smoothing 20 mm) on a grid of
    # 20 / nodes_per_sigma mm: RMS of exp(v) o exp(-v) - id relative to the
    # RMS of exp(v) - id, over nodes away from the (edge-extended) border.
    n = 10 * nodes_per_sigma
    v = synth.sample_velocity(jax.random.key(seed), (n, n, n), std=0.1 * nodes_per_sigma, smoothness=nodes_per_sigma)
    (u, _), (u_inv, _) = _deform(v), _deform(-v)
    composed = u_inv + sample_field(u, _grid((n,) * 3) + u_inv, mode="nearest")
    inner = (slice(2 * nodes_per_sigma, -2 * nodes_per_sigma),) * 3
    return float(jnp.sqrt(jnp.mean(jnp.sum(composed[inner] ** 2, -1)) / jnp.mean(jnp.sum(u[inner] ** 2, -1))))


def test_velocity_and_its_negative_are_inverse():
    # exp(-v) is the exact inverse of exp(v); what is left is the error of
    # trilinear interpolation, (h / sigma)^2 / 8 = 3% of the field per
    # resampling at sigma = 2 nodes (the defaults: 20 mm smoothing on 10 mm
    # nodes), compounded over the squarings and the composition: measured
    # 6% RMS (seeds 0-3). It must fall with the node spacing h: halving h
    # cut it 2.6-3.0x for those seeds (the interpolant alone would give 4x).
    coarse, fine = _inverse_residual(2, seed=0), _inverse_residual(4, seed=0)
    assert coarse < 0.1
    assert fine < coarse / 2


# ----------------------------------------------------------------------------
# The template round trip


def test_every_family_off_gives_back_the_template_slices(template, splits):
    every = [np.concatenate([s[name] for s in (splits.train, splits.val, splits.test)])
             for name in ("slice_index", "image", "brain_mask")]
    out = SLICES(jax.random.key(3), template, every[0], config=OFF)
    np.testing.assert_array_equal(np.asarray(out["image"]), every[1])
    np.testing.assert_array_equal(np.asarray(out["brain_mask"]), every[2])
    np.testing.assert_array_equal(np.asarray(out["bias_field"]), 1.0)
    # The tissue maps partition the brain: gm + wm + csf = brain (soft).
    v = np.asarray(template.volume)
    assert v.shape == (189, 64, 64, 4) and v.dtype == np.float32
    gm, wm, brain = v[..., 1], v[..., 2], v[..., 3]
    assert gm.min() >= 0 and wm.min() >= 0 and (gm + wm - brain).max() < 1e-5
    assert (brain[brain > 0.99] - (gm + wm)[brain > 0.99]).mean() < 0.1  # mostly tissue, some CSF


def test_thick_slices_are_boxcar_averages(template):
    # A 4 mm slab centred on slice k covers slices k-1..k+1 and half of k-2
    # and k+2 (each slice constant over its 1 mm).
    v = np.asarray(template.volume[..., 0])
    k = POSITIONS.astype(np.int64)
    config = dataclasses.replace(OFF, slice_thickness_mm=(4.0, 4.0))
    out = SLICES(jax.random.key(0), template, k, config=config)
    expected = (0.5 * v[k - 2] + v[k - 1] + v[k] + v[k + 1] + 0.5 * v[k + 2]) / 4
    assert_allclose(np.asarray(out["image"][..., 0]), expected, atol=2e-5)


def test_tissue_weights_equal_to_the_template_means_give_the_template(template, splits):
    m = np.asarray(template.tissue_means)
    # The template's own tissue intensities (least squares): GM, WM, CSF.
    assert 0.65 < m[0] < 0.8 and 0.9 < m[1] < 1.0 and 0.2 < m[2] < 0.4
    fixed = {f"{t}_intensity": (float(w), float(w)) for t, w in zip(("gm", "wm", "csf"), m, strict=True)}
    k, expected, brain = splits.train["slice_index"], splits.train["image"], splits.train["brain_mask"]
    # Keeping the template's texture (mix 1): the ratio is 1, exactly.
    config = dataclasses.replace(OFF, template_mix=(1.0, 1.0), **fixed)
    np.testing.assert_allclose(np.asarray(SLICES(jax.random.key(0), template, k, config=config)["image"]), expected,
                               atol=1e-6)
    # The partial-volume model alone (mix 0) explains the template to its
    # residual (RMS 0.019 over the brain before rescaling, 0.036 after).
    config = dataclasses.replace(OFF, template_mix=(0.0, 0.0), **fixed)
    got = np.asarray(SLICES(jax.random.key(0), template, k, config=config)["image"])
    assert np.sqrt(np.mean((got - expected)[..., 0][brain] ** 2)) < 0.05


# ----------------------------------------------------------------------------
# The families


def test_default_subjects_are_deterministic_and_drop_in(template):
    config = SynthConfig()
    a = SLICES(jax.random.key(7), template, POSITIONS, config=config)
    b = SLICES(jax.random.key(7), template, POSITIONS, config=config)
    c = SLICES(jax.random.key(8), template, POSITIONS, config=config)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert np.abs(np.asarray(a["image"]) - np.asarray(c["image"])).mean() > 0.01
    image = np.asarray(a["image"])
    assert image.shape == (4, 64, 64, 1) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert a["brain_mask"].shape == (4, 64, 64) and a["brain_mask"].dtype == bool
    for name in ("gm", "wm", "csf", "bias_field"):
        assert a[name].shape == (4, 64, 64) and a[name].dtype == np.float32
    # The brain is bright and the background dark, as in template slices.
    mask = np.asarray(a["brain_mask"])
    assert image[..., 0][mask].mean() > 0.5 > 0.05 > image[..., 0][~mask].mean()
    p = jax.tree.map(np.asarray, a["params"])
    assert np.all((config.scale_range[0] <= p["scale"]) & (p["scale"] <= config.scale_range[1]))
    assert np.all(np.abs(p["rotation_degrees"]) <= config.rotation_degrees)
    assert config.gamma_range[0] <= p["gamma"] <= config.gamma_range[1]
    for value, bounds in zip(p["tissue_intensity"], (config.gm_intensity, config.wm_intensity, config.csf_intensity),
                             strict=True):
        assert bounds[0] <= value <= bounds[1]
    assert config.slice_thickness_mm[0] <= p["slice_thickness_mm"] <= config.slice_thickness_mm[1]
    assert config.noise_std[0] <= p["noise_std"] <= config.noise_std[1]


def test_families_draw_from_their_own_streams_and_vmap(template):
    # Switching the noise off leaves the subject's anatomy exactly as it
    # was; vmap over keys matches one call per key.
    config = SynthConfig.only("affine", "noise")
    quiet = config.without("noise")
    keys = jax.random.split(jax.random.key(1), 2)
    batched = jax.jit(jax.vmap(lambda k: synth.synth_slices(k, template, POSITIONS, config=config)))(keys)
    for i, key in enumerate(keys):
        noisy, clean = (SLICES(key, template, POSITIONS, config=c) for c in (config, quiet))
        for name in ("brain_mask", "gm"):
            np.testing.assert_array_equal(np.asarray(noisy[name]), np.asarray(clean[name]))
        assert np.abs(np.asarray(noisy["image"]) - np.asarray(clean["image"])).mean() > 1e-3
        jax.tree.map(lambda x, y: assert_allclose(np.asarray(x)[i], np.asarray(y), rtol=1e-5, atol=1e-6),
                     batched, noisy)


def test_bias_field_stays_within_its_amplitude(template, splits):
    config = dataclasses.replace(OFF, bias_amplitude=(0.04, 0.12))
    k, template_image = splits.train["slice_index"], splits.train["image"][..., 0]
    for seed in range(3):
        out = SLICES(jax.random.key(seed), template, k, config=config)
        a = float(out["params"]["bias_amplitude"])
        assert 0.04 <= a <= 0.12
        field = np.asarray(out["bias_field"])
        brain = np.asarray(out["brain_mask"])
        assert np.abs(field - 1).max() <= a * (1 + 1e-6)
        assert np.abs(field[brain] - 1).max() >= 0.98 * a  # the bound is reached in the brain
        # The image is the template times the field, rescaled as a whole.
        image = np.asarray(out["image"][..., 0])
        ok = (template_image > 0.1) & (image < 1.0)
        ratio = image[ok] / (template_image[ok] * field[ok])
        assert_allclose(ratio, float(out["params"]["intensity_scale"]), rtol=1e-4)
        assert abs(float(out["params"]["intensity_scale"]) - 1) < 0.15


def test_noise_is_rician_with_the_configured_sigma(template, splits):
    sigma = 0.05
    config = dataclasses.replace(OFF, noise_std=(sigma, sigma))
    k, clean = splits.train["slice_index"], splits.train["image"][..., 0]
    out = SLICES(jax.random.key(4), template, k, config=config)
    noisy = np.asarray(out["image"][..., 0], np.float64)
    assert float(out["params"]["noise_std"]) == pytest.approx(sigma)
    # Background (zero signal): Rayleigh, mean sigma sqrt(pi / 2), E[M^2] = 2 sigma^2.
    background = noisy[clean == 0]
    assert background.size > 50_000
    assert_allclose(background.mean(), sigma * math.sqrt(math.pi / 2), rtol=0.02)
    assert_allclose(np.mean(background**2), 2 * sigma**2, rtol=0.02)
    # Bright signal A >> sigma: about N(sqrt(A^2 + sigma^2), sigma^2).
    signal = (clean > 0.3) & (clean < 0.8)
    assert_allclose(np.std(noisy[signal] - clean[signal]), sigma, rtol=0.02)
    assert_allclose(np.mean(noisy[signal] - np.sqrt(clean[signal] ** 2.0 + sigma**2)), 0.0, atol=1e-3)


def test_field_of_view_is_recentred_on_each_subject(template):
    # As load_brain_mri fits a scan: the brain's in-plane bounding box over
    # the whole volume, centred, its larger side the template's.
    def box(brain_mask):
        mask = np.asarray(brain_mask).any(axis=0)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        extent = np.array([rows[-1] - rows[0], cols[-1] - cols[0]])
        return extent, np.array([rows[-1] + rows[0], cols[-1] + cols[0]]) / 2

    extent0, centre0 = box(template.volume[..., 3] >= 0.5)
    config = SynthConfig.only("affine", "deformation")
    for seed in range(2):
        out = SUBJECT(jax.random.key(seed), template, config=config)
        assert out["image"].shape == (189, 64, 64, 1)
        extent, centre = box(out["brain_mask"])
        assert abs(extent.max() - extent0.max()) <= 1
        assert np.all(np.abs(centre - centre0) <= 1.5)
        assert np.abs(np.asarray(out["gm"]) - np.asarray(template.volume[..., 1])).mean() > 0.01  # a new brain


# ----------------------------------------------------------------------------
# Configuration


def test_families_switch_off_one_by_one():
    assert SynthConfig().enabled == FAMILIES
    assert OFF.enabled == ()
    for family in FAMILIES:
        assert SynthConfig.only(family).enabled == (family,)
        assert SynthConfig().without(family).enabled == tuple(f for f in FAMILIES if f != family)
    hash(SynthConfig())  # a static argument under jit
    assert SynthConfig(scale_range=[0.9, 1.1]).scale_range == (0.9, 1.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"svf_std_mm": -1.0}, "svf_std_mm"),
        ({"svf_smoothness_mm": 5.0}, "svf_smoothness_mm .* must be >= svf_grid_mm"),
        ({"svf_steps": 0}, "svf_steps must be an integer >= 1"),
        ({"svf_steps": 2.5}, "svf_steps"),
        ({"scale_range": (1.1, 0.9)}, "scale_range must be .* low <= high"),
        ({"scale_range": (0.0, 1.0)}, "scale_range must lie in"),
        ({"scale_range": 1.0}, "scale_range must be a .* pair"),
        ({"rotation_degrees": 90.0}, "rotation_degrees"),
        ({"gm_intensity": (-0.1, 0.5)}, "gm_intensity"),
        ({"template_mix": (0.5, 1.5)}, "template_mix"),
        ({"gamma_range": (0.0, 1.0)}, "gamma_range"),
        ({"bias_amplitude": (0.0, 1.0)}, "bias_amplitude must stay below 1"),
        ({"bias_control_points": 3}, "bias_control_points"),
        ({"slice_thickness_mm": (0.5, 2.0)}, "slice_thickness_mm must be .* start at 1 mm"),
        ({"noise_std": (0.0, math.nan)}, "noise_std"),
        ({"recentre": 1}, "recentre"),
    ],
)
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


def test_bad_arguments_raise(template):
    with pytest.raises(ValueError, match="unknown augmentation families"):
        SynthConfig().without("blur")
    with pytest.raises(ValueError, match="slice_positions must be 1D"):
        synth.synth_slices(jax.random.key(0), template, np.zeros((2, 3)), config=OFF)
    with pytest.raises(ValueError, match="orientation"):
        synth.load_synth_template(orientation="oblique")
    with pytest.raises(ValueError, match="velocity must be"):
        synth.integrate_velocity(jnp.zeros((4, 4, 3)), steps=2)
