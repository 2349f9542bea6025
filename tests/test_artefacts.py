"""Artefacts: identities, predicted statistics and positions, jit and vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from numpy.testing import assert_allclose

from jaxmed.data import artefacts as A

NAMES = ["noise", "ghosting", "motion", "blur", "bias_field", "spike"]
# One jitted severity function per artefact, shared by the tests so that each
# compiles once per shape (severity is traced: pass np.float32 values).
JITTED = {name: jax.jit(lambda k, im, s, f=f: f(k, im, severity=s)) for name, f in A.ARTEFACTS.items()}


def _phantom(n=32):
    y, x = (np.mgrid[:n, :n] - (n - 1) / 2) / (n / 2)
    image = 0.6 * ((y / 0.8) ** 2 + (x / 0.6) ** 2 < 1) + 0.4 * ((y / 0.4) ** 2 + ((x - 0.1) / 0.25) ** 2 < 1)
    return image.astype(np.float32)


def test_registry_is_complete():
    assert list(A.ARTEFACTS) == NAMES
    assert all(callable(f) for f in A.ARTEFACTS.values())


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_exact_identity_and_default_changes_image(name, key):
    g = JITTED[name]
    image = _phantom()
    assert np.array_equal(np.asarray(g(key, image, np.float32(0.0))), image)
    changed = np.asarray(g(key, image, np.float32(A.DEFAULT_SEVERITY)))
    assert changed.shape == image.shape and changed.dtype == np.float32
    assert np.sqrt(np.mean((changed - image) ** 2)) > 0.01


@jax.jit
def _operators_at_identity(image):
    n = image.shape[0]
    return (
        A.periodic_ghosting(image, num_ghosts=3, intensity=0.0),
        A.segmented_motion(image, line_position=jnp.zeros(n, int), angles=jnp.zeros(1), shifts=jnp.zeros((1, 2))),
        A.kspace_spikes(image, frequencies=jnp.array([[3, 4]]), amplitudes=jnp.zeros(1)),
        A.gaussian_blur(image, sigma=0.0),
    )


def test_kspace_operators_with_identity_parameters_return_the_image():
    image = _phantom()
    ghosted, moved, spiked, blurred = _operators_at_identity(image)
    for out in (ghosted, moved, spiked):
        assert_allclose(out, image, atol=1e-6)
    assert np.array_equal(blurred, image)


def test_rician_noise_statistics(key):
    # Left half 0, right half A = 2: reference intensity 2, so at severity 0.5
    # sigma = 0.5 * 0.15 * 2 = 0.15.
    image = np.zeros((128, 128), np.float32)
    image[:, 64:] = 2.0
    sigma = 0.15
    out = np.asarray(jax.jit(lambda k, im: A.noise(k, im, severity=0.5))(key, image))
    background, bright = out[:, :64], out[:, 64:]
    # Zero signal: Rayleigh(sigma).
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    assert background.std() == pytest.approx(sigma * math.sqrt(2 - math.pi / 2), rel=0.04)
    # Bright signal: Rice(A / sigma), std close to sigma.
    rice = scipy.stats.rice(2.0 / sigma, scale=sigma)
    assert bright.mean() == pytest.approx(rice.mean(), rel=0.005)
    assert bright.std() == pytest.approx(rice.std(), rel=0.04)
    assert rice.std() == pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("axis", [0, 1])
def test_ghosts_at_n_over_num_ghosts(key, axis):
    image = np.zeros((32, 32), np.float32)
    image[5, 7] = 1.0
    out = jax.jit(lambda k, im: A.ghosting(k, im, severity=0.6, min_ghosts=4, max_ghosts=4, axis=axis))(key, image)
    expected = np.zeros((32, 32))
    expected[5, 7] = 1.0 - 0.6 / 4
    for j in (1, 2, 3):
        pos = [5, 7]
        pos[axis] = (pos[axis] + j * 8) % 32
        expected[tuple(pos)] = 0.6 / 4
    assert_allclose(np.asarray(out), expected, atol=1e-6)


def test_periodic_ghosting_matches_numpy_kspace_comb(rng):
    image = rng.uniform(size=(30, 20)).astype(np.float32)
    kspace = np.fft.fft(image, axis=0)
    kspace[1::3] *= 1 - 0.7
    expected = np.abs(np.fft.ifft(kspace, axis=0))
    assert_allclose(A.periodic_ghosting(image, num_ghosts=3, intensity=0.7, offset=1), expected, atol=1e-6)


# All motion tests use 16x16 images and two positions: one compile per axis.
_motion = jax.jit(A.segmented_motion, static_argnames="axis")


def test_motion_translation_is_a_circular_shift(rng):
    image = rng.uniform(size=(16, 16)).astype(np.float32)
    out = _motion(image, line_position=np.ones(16, int), angles=np.zeros(2), shifts=np.array([[0.0, 0.0], [3.0, -5.0]]))
    assert_allclose(out, np.roll(image, (3, -5), axis=(0, 1)), atol=1e-5)


def test_motion_rotation_by_90_degrees():
    image = np.zeros((16, 16), np.float32)
    image[7, 13] = 1.0  # right of the centre (7.5, 7.5)
    image[1, 8] = 0.5  # above it
    out = _motion(image, line_position=np.zeros(16, int), angles=np.array([90.0, 0.0]), shifts=np.zeros((2, 2)))
    # +x turns towards +y: clockwise as displayed.
    assert_allclose(out, np.rot90(image, k=-1), atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_motion_combines_kspace_segments(rng, axis):
    image = rng.uniform(size=(16, 16)).astype(np.float32)
    n = image.shape[axis]
    line_position = np.zeros(n, int)
    line_position[: n // 4] = 1  # the first lines acquired (most negative frequencies)
    shift = [1.5, -2.0]
    out = _motion(image, line_position=line_position, angles=np.zeros(2), shifts=np.array([[0.0, 0.0], shift]), axis=axis)
    # By hand: the moved copy by the Fourier shift theorem, lines picked in DFT order.
    fy = np.fft.fftfreq(16)[:, None]
    fx = np.fft.fftfreq(16)[None, :]
    k_still = np.fft.fft2(image)
    k_moved = k_still * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))
    moved_lines = (np.arange(n) - n // 2)[: n // 4] % n
    kspace = k_still.copy()
    index = [slice(None), slice(None)]
    index[axis] = moved_lines
    kspace[tuple(index)] = k_moved[tuple(index)]
    assert_allclose(out, np.abs(np.fft.ifft2(kspace)), atol=1e-5)


def test_blur_of_a_delta_is_the_normalised_gaussian_kernel(key):
    delta = np.zeros((33, 33), np.float32)
    delta[16, 16] = 1.0
    sigma = 0.8 * 0.03 * 33  # severity 0.8, documented scale
    out = np.asarray(jax.jit(lambda k, im: A.blur(k, im, severity=0.8))(key, delta))
    radius = int(4 * sigma + 0.5)
    d = np.arange(-radius, radius + 1)
    g = np.exp(-(d**2) / (2 * sigma**2))
    g /= g.sum()
    expected = np.zeros_like(delta, dtype=np.float64)
    expected[16 - radius : 17 + radius, 16 - radius : 17 + radius] = np.outer(g, g)
    assert_allclose(out, expected, atol=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_blur_matches_scipy_with_zero_padding(rng):
    image = rng.uniform(size=(20, 26)).astype(np.float32)
    for sigma in (0.6, 2.3):
        expected = scipy.ndimage.gaussian_filter(image.astype(np.float64), sigma, mode="constant", truncate=4.0)
        assert_allclose(jax.jit(lambda im: A.gaussian_blur(im, sigma=sigma))(image), expected, atol=1e-5)


def test_bias_field_is_a_scaled_polynomial(key):
    n = 24
    severity = 0.8
    out = np.asarray(jax.jit(lambda k, im: A.bias_field(k, im, severity=severity))(key, np.ones((n, n), np.float32)))
    log_field = np.log(out.astype(np.float64))
    assert np.abs(log_field).max() == pytest.approx(severity * math.log(3.0), rel=1e-5)
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    design = np.stack([y**i * x**j for i in range(4) for j in range(4 - i) if i + j > 0], axis=-1).reshape(-1, 9)
    coef, *_ = np.linalg.lstsq(design, log_field.ravel(), rcond=None)
    assert np.abs(design @ coef - log_field.ravel()).max() < 1e-5  # degree <= 3, no constant term
    assert np.abs(coef).min() > 1e-3  # and it uses every term


def test_bias_field_scales_on_the_object(key):
    image = _phantom()
    out = np.asarray(JITTED["bias_field"](key, image, np.float32(0.5)))
    inside = image > 0
    assert np.all(out[~inside] == 0)
    assert np.abs(np.log(out[inside] / image[inside])).max() == pytest.approx(0.5 * math.log(3.0), rel=1e-5)


def test_kspace_spike_adds_the_predicted_sinusoid():
    c, a, phase, (u, v) = 0.5, 0.1, 0.7, (3, -5)
    image = np.full((16, 20), c, np.float32)
    out = np.asarray(A.kspace_spikes(image, frequencies=[[u, v]], amplitudes=[a * np.exp(1j * phase)]), np.float64)
    y, x = np.mgrid[:16, :20]
    expected = 2 * c * a * np.cos(2 * np.pi * (u * y / 16 + v * x / 20) + phase)
    assert_allclose(out**2 - c**2 - a**2, expected, atol=1e-5)


def test_spike_frequency_and_amplitude_from_severity():
    n, severity = 32, 0.5
    a = severity * 0.2  # fraction of max|image| = 1
    keys = jax.random.split(jax.random.key(3), 8)
    f = jax.jit(jax.vmap(lambda k: A.spike(k, jnp.ones((n, n)), severity=severity)))
    for out in np.asarray(f(keys), np.float64):
        spectrum = np.abs(np.fft.fft2(out**2 - 1 - a**2)) / n**2
        peaks = np.argwhere(spectrum > 1e-3)
        assert len(peaks) == 2  # +/- one frequency: a pure sinusoid
        assert_allclose(spectrum[tuple(peaks.T)], a, rtol=1e-3)  # 2 a cos -> a at each of +/-(u, v)
        u, v = (peaks[0] + n // 2) % n - n // 2
        radius = math.hypot(u, v) / n
        assert 0.1 - 0.5 / n * math.sqrt(2) <= radius <= 0.35 + 0.5 / n * math.sqrt(2)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_equals_loop(name):
    f = A.ARTEFACTS[name]
    images = np.stack([_phantom(), _phantom()[::-1], 0.5 * _phantom().T]).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), 3)
    severities = np.array([0.3, 0.5, 1.0], np.float32)
    # Batched over keys, images and severities alike.
    batched = jax.jit(jax.vmap(lambda k, im, s: f(k, im, severity=s)))(keys, images, severities)
    looped = np.stack([np.asarray(JITTED[name](k, im, s)) for k, im, s in zip(keys, images, severities)])
    assert_allclose(np.asarray(batched), looped, atol=1e-5)


def test_jit_equals_no_jit(key):
    image = _phantom()
    for name, f in A.ARTEFACTS.items():
        eager = np.asarray(f(key, image, severity=0.5))
        assert_allclose(np.asarray(JITTED[name](key, image, np.float32(0.5))), eager, atol=1e-5, err_msg=name)


def test_bad_arguments(key):
    image = _phantom()
    with pytest.raises(ValueError, match=r"severity must be in \[0, 1\]"):
        A.noise(key, image, severity=1.5)
    with pytest.raises(ValueError, match="one 2D image"):
        A.blur(key, np.stack([image, image]))
    with pytest.raises(ValueError, match="axis must be 0 or 1"):
        A.ghosting(key, image, axis=2)
    with pytest.raises(ValueError, match="shifts must be"):
        A.segmented_motion(image, line_position=np.zeros(32, int), angles=[0.0, 1.0], shifts=[[0.0, 0.0]])
