"""Scan-quality artefacts, simulated where they arise (in k-space for MRI).

Two layers:

* **Operators** apply one artefact with explicit physical parameters:
  :func:`rician_noise`, :func:`periodic_ghosting`, :func:`segmented_motion`,
  :func:`gaussian_blur`, :func:`kspace_spikes` (and the bias field inside
  :func:`bias_field`). Those that act in k-space take the 2D DFT of the image
  (``jnp.fft``, unnormalised forward transform), change it as the artefact
  does, and return the magnitude of the inverse DFT, as an MRI magnitude image
  is reconstructed.
* **Severity functions** ``f(key, image, *, severity) -> image`` draw those
  parameters from ``key`` at a strength set by ``severity`` in [0, 1]:
  0 returns ``image`` exactly, 1 is strong, and the default 0.5 is clearly
  visible on a 64x64 brain slice. They are collected in :data:`ARTEFACTS`.

Conventions: ``image`` is ONE 2D image ``[H, W]`` (rows ``y``, columns ``x``)
scaled to about [0, 1] with a zero background. Intensity-like parameters are
fractions of the image's reference intensity ``max|image|`` (1 for an image
scaled to [0, 1]); lengths are in pixels or fractions of the image size. The
phase-encoding direction (the k-space lines acquired one after another) is
``axis`` (default 0, i.e. ``y``); the read-out direction is instantaneous.
Every function is pure and jittable, and vmaps over keys, images and
severities: ``jax.vmap(lambda k, im: noise(k, im, severity=0.5))(keys, images)``.
For a 3D stack of 2D acquisitions, vmap over slices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

__all__ = [
    "ARTEFACTS",
    "DEFAULT_SEVERITY",
    "bias_field",
    "blur",
    "gaussian_blur",
    "ghosting",
    "kspace_spikes",
    "motion",
    "noise",
    "periodic_ghosting",
    "rician_noise",
    "segmented_motion",
    "spike",
]

DEFAULT_SEVERITY = 0.5


# ----------------------------------------------------------------------------
# Helpers


def _image(image: ArrayLike) -> Array:
    image = jnp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"artefacts act on one 2D image [H, W]; got shape {image.shape} (vmap over a batch)")
    if not jnp.issubdtype(image.dtype, jnp.floating):
        image = image.astype(jnp.float32)
    return image


def _severity(severity: ArrayLike, dtype) -> Array:
    try:
        value = float(severity)
    except TypeError:  # traced under jit/vmap: cannot be checked here
        value = None
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {value}")
    return jnp.asarray(severity, dtype)


def _axis(axis: int) -> int:
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 or 1 for a 2D image, got {axis}")
    return axis % 2


def _reference(image: Array) -> Array:
    return jnp.max(jnp.abs(image))


def _unless_zero(severity: Array, image: Array, out: Array) -> Array:
    # Severity 0 must return the input bit for bit; the FFT round trip alone
    # would only get within ~1e-7.
    return jnp.where(severity > 0, out.astype(image.dtype), image)


def _along(vector: Array, axis: int) -> Array:
    """Reshapes a length-N vector to broadcast along ``axis`` of a 2D array."""
    return vector[:, None] if axis == 0 else vector[None, :]


def _complex(dtype):
    return jnp.complex128 if dtype == jnp.float64 else jnp.complex64


# ----------------------------------------------------------------------------
# Operators (explicit physical parameters)


def rician_noise(key: Array, image: ArrayLike, *, sigma: ArrayLike) -> Array:
    """Adds complex Gaussian noise and takes the magnitude (Rician noise).

    White complex Gaussian noise in k-space is white complex Gaussian noise
    in the image (the DFT is unitary up to scale), so it is added directly:
    ``|image + sigma (n_re + i n_im)|`` with ``n ~ N(0, 1)``. On a zero
    background the result is Rayleigh distributed (mean
    ``sigma sqrt(pi / 2)``); on a bright region ``A >> sigma`` it is close to
    ``N(sqrt(A^2 + sigma^2), sigma^2)``.

    Args:
        key: PRNG key.
        image: ``[H, W]`` real image.
        sigma: noise standard deviation per real/imaginary channel, in image
            units.

    Returns:
        ``[H, W]`` magnitude image.

    References:
        Gudbjartsson & Patz, "The Rician distribution of noisy MRI data",
        MRM 34 (1995).
    """
    image = _image(image)
    n = jax.random.normal(key, (2, *image.shape), image.dtype)
    return jnp.hypot(image + sigma * n[0], sigma * n[1])


def periodic_ghosting(
    image: ArrayLike,
    *,
    num_ghosts: ArrayLike,
    intensity: ArrayLike,
    offset: ArrayLike = 0,
    axis: int = 0,
) -> Array:
    """Ghosting from a signal modulated periodically along the phase encoding.

    Every ``num_ghosts``-th k-space line along ``axis`` (DFT indices
    ``k = offset (mod num_ghosts)``) is scaled by ``1 - intensity``, as when
    signal changes with a period of ``num_ghosts`` lines (pulsation,
    breathing, alternating echoes). Since that comb is
    ``(1/n) sum_j exp(2 pi i j (k - offset) / n)``, the image becomes
    ``image - (intensity / n) sum_j phase_j * shift(image, j N / n)``: ghosts
    of amplitude ``intensity / num_ghosts`` at every ``N / num_ghosts`` pixels
    along ``axis`` (circularly; an exact pixel shift when ``num_ghosts``
    divides ``N``).

    Args:
        image: ``[H, W]`` image.
        num_ghosts: modulation period in lines, an integer ``>= 1``.
        intensity: modulation depth, 0 (none) to 1 (those lines missing).
        offset: which line of each period is modulated, in ``[0, num_ghosts)``.
        axis: phase-encoding axis, 0 (``y``) or 1 (``x``).

    Returns:
        ``[H, W]`` magnitude image.
    """
    image = _image(image)
    axis = _axis(axis)
    n_lines = image.shape[axis]
    k = jnp.arange(n_lines)
    modulation = 1.0 - intensity * (jnp.mod(k - offset, num_ghosts) == 0)
    kspace = jnp.fft.fft(image, axis=axis)
    out = jnp.fft.ifft(kspace * _along(modulation.astype(image.dtype), axis), axis=axis)
    return jnp.abs(out).astype(image.dtype)


def _rotate(image: Array, degrees: Array) -> Array:
    """Rotates about the image centre (linear interpolation, zero outside)."""
    h, w = image.shape
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing="ij")
    # Pull back: the output at q shows the input at R(-theta)(q - c) + c.
    src_y = cos * (y - cy) - sin * (x - cx) + cy
    src_x = sin * (y - cy) + cos * (x - cx) + cx
    return map_coordinates(image, [src_y, src_x], order=1, mode="constant", cval=0.0)


def segmented_motion(
    image: ArrayLike,
    *,
    line_position: ArrayLike,
    angles: ArrayLike,
    shifts: ArrayLike,
    axis: int = 0,
) -> Array:
    """Rigid motion during acquisition: k-space lines taken at several positions.

    The object is at ``P`` rigid positions during the scan; each k-space line
    along ``axis`` is acquired at one of them. The k-space of position ``p``
    is the DFT of the image rotated by ``angles[p]`` about its centre (linear
    interpolation) times the phase ramp of a translation by ``shifts[p]``
    (exact, sub-pixel); each line is taken from the k-space of its position.

    Args:
        image: ``[H, W]`` image.
        line_position: int ``[N]`` (``N = image.shape[axis]``), the position
            index in ``[0, P)`` at which each line was acquired, lines in
            *centred* order (index 0 is spatial frequency ``-N/2``, ``N // 2``
            is the centre of k-space, as after ``fftshift``).
        angles: ``[P]`` in-plane rotation of each position about the image
            centre, degrees; positive turns ``+x`` towards ``+y`` (clockwise
            as displayed with ``y`` down).
        shifts: ``[P, 2]`` translation ``(dy, dx)`` of each position, pixels.
        axis: phase-encoding axis, 0 (``y``) or 1 (``x``).

    Returns:
        ``[H, W]`` magnitude image. With every line at a position of zero
        angle and shift it is ``image`` (to float precision).
    """
    image = _image(image)
    axis = _axis(axis)
    angles = jnp.asarray(angles, image.dtype)
    shifts = jnp.asarray(shifts, image.dtype)
    num_positions = angles.shape[0]
    if shifts.shape != (num_positions, 2):
        raise ValueError(f"shifts must be [{num_positions}, 2] to match angles, got {shifts.shape}")
    line_position = jnp.asarray(line_position)
    if line_position.shape != (image.shape[axis],):
        raise ValueError(f"line_position must be [{image.shape[axis]}], got {line_position.shape}")
    h, w = image.shape
    fy = jnp.fft.fftfreq(h).astype(image.dtype)[:, None]
    fx = jnp.fft.fftfreq(w).astype(image.dtype)[None, :]

    def kspace_at(degrees, shift):
        ramp = jnp.exp(-2j * jnp.pi * (fy * shift[0] + fx * shift[1]))
        return jnp.fft.fft2(_rotate(image, degrees)) * ramp

    kspaces = jax.vmap(kspace_at)(angles, shifts)  # [P, H, W]
    position_fft_order = jnp.fft.ifftshift(line_position)
    chosen = position_fft_order[None, :] == jnp.arange(num_positions)[:, None]  # [P, N]
    chosen = chosen[:, :, None] if axis == 0 else chosen[:, None, :]
    kspace = jnp.sum(jnp.where(chosen, kspaces, 0), axis=0)
    return jnp.abs(jnp.fft.ifft2(kspace)).astype(image.dtype)


def gaussian_blur(image: ArrayLike, *, sigma: ArrayLike, truncate: float = 4.0) -> Array:
    """Gaussian blur with zero padding.

    The kernel is the sampled Gaussian ``exp(-d^2 / (2 sigma^2))`` on integer
    offsets ``|d| <= floor(truncate * sigma + 0.5)``, normalised to sum 1 (as
    ``scipy.ndimage.gaussian_filter(..., mode="constant")``), applied along
    both axes. ``sigma`` may be traced: the separable filter is written as two
    ``[H, H]`` and ``[W, W]`` banded matrices, so its support need not be
    static. ``sigma = 0`` is the identity.

    Args:
        image: ``[H, W]`` image.
        sigma: standard deviation in pixels, ``>= 0``.
        truncate: kernel radius in units of sigma.

    Returns:
        ``[H, W]`` blurred image.
    """
    image = _image(image)
    sigma = jnp.asarray(sigma, image.dtype)
    radius = jnp.floor(truncate * sigma + 0.5)
    # A tiny floor keeps sigma = 0 finite: the kernel is then exactly a delta.
    safe_sigma = jnp.maximum(sigma, 1e-6)

    def matrix(n):
        d = jnp.arange(n, dtype=image.dtype)
        d = d[:, None] - d[None, :]
        offsets = jnp.arange(-n + 1, n, dtype=image.dtype)
        in_support = jnp.abs(offsets) <= radius
        norm = jnp.sum(jnp.where(in_support, jnp.exp(-0.5 * (offsets / safe_sigma) ** 2), 0.0))
        weights = jnp.exp(-0.5 * (d / safe_sigma) ** 2) / norm
        return jnp.where(jnp.abs(d) <= radius, weights, 0.0)

    h, w = image.shape
    return matrix(h) @ image @ matrix(w).T


def kspace_spikes(image: ArrayLike, *, frequencies: ArrayLike, amplitudes: ArrayLike) -> Array:
    """Spikes: single bright k-space points, seen as stripes (herringbone).

    Adding ``a H W`` at DFT index ``(u, v)`` adds the complex sinusoid
    ``a exp(2 pi i (u y / H + v x / W))`` to the image before the magnitude
    is taken: ``|image + sum_s a_s exp(...)|``. On a constant region ``c``
    with one spike, ``out^2 - c^2 - |a|^2 = 2 c |a| cos(2 pi (u y / H + v x /
    W) + arg a)``.

    Args:
        image: ``[H, W]`` image.
        frequencies: int ``[S, 2]``, ``(u, v)`` of each spike in cycles per
            image along ``(y, x)`` (negative allowed; taken modulo the size).
        amplitudes: complex or real ``[S]``, each stripe's amplitude in image
            units.

    Returns:
        ``[H, W]`` magnitude image.
    """
    image = _image(image)
    h, w = image.shape
    frequencies = jnp.asarray(frequencies)
    amplitudes = jnp.asarray(amplitudes).astype(_complex(image.dtype))
    if frequencies.ndim != 2 or frequencies.shape[1] != 2 or amplitudes.shape != frequencies.shape[:1]:
        raise ValueError(f"need frequencies [S, 2] and amplitudes [S], got {frequencies.shape} and {amplitudes.shape}")
    kspace = jnp.fft.fft2(image)
    kspace = kspace.at[jnp.mod(frequencies[:, 0], h), jnp.mod(frequencies[:, 1], w)].add(amplitudes * (h * w))
    return jnp.abs(jnp.fft.ifft2(kspace)).astype(image.dtype)


# ----------------------------------------------------------------------------
# Severity functions: f(key, image, *, severity) -> image


def noise(key: Array, image: ArrayLike, *, severity: ArrayLike = DEFAULT_SEVERITY, max_sigma: float = 0.15) -> Array:
    """Rician noise (see :func:`rician_noise`).

    Physical parameter: ``sigma = severity * max_sigma * max|image|``, i.e. at
    the default severity 0.5 the noise standard deviation per channel is 7.5%
    of the image maximum. ``key`` draws the noise.

    Args:
        key: PRNG key.
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        max_sigma: ``sigma / max|image|`` at severity 1.

    Returns:
        ``[H, W]`` noisy magnitude image.
    """
    image = _image(image)
    severity = _severity(severity, image.dtype)
    sigma = severity * max_sigma * _reference(image)
    return _unless_zero(severity, image, rician_noise(key, image, sigma=sigma))


def ghosting(
    key: Array,
    image: ArrayLike,
    *,
    severity: ArrayLike = DEFAULT_SEVERITY,
    min_ghosts: int = 2,
    max_ghosts: int = 4,
    axis: int = 0,
) -> Array:
    """Periodic ghosting (see :func:`periodic_ghosting`).

    Physical parameters: modulation depth ``intensity = severity``; ``key``
    draws the period ``num_ghosts`` uniformly in ``[min_ghosts, max_ghosts]``
    and the modulated line of each period. Each ghost has amplitude
    ``severity / num_ghosts`` of the object's (e.g. 0.25 at severity 0.5
    with two ghosts) and lies ``N / num_ghosts`` pixels away along ``axis``.

    Args:
        key: PRNG key.
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        min_ghosts: smallest period drawn, ``>= 2``.
        max_ghosts: largest period drawn.
        axis: phase-encoding axis, 0 (``y``) or 1 (``x``).

    Returns:
        ``[H, W]`` magnitude image.
    """
    if not 2 <= min_ghosts <= max_ghosts:
        raise ValueError(f"need 2 <= min_ghosts <= max_ghosts, got {min_ghosts}, {max_ghosts}")
    image = _image(image)
    severity = _severity(severity, image.dtype)
    key_n, key_offset = jax.random.split(key)
    num_ghosts = jax.random.randint(key_n, (), min_ghosts, max_ghosts + 1)
    offset = jax.random.randint(key_offset, (), 0, num_ghosts)
    out = periodic_ghosting(image, num_ghosts=num_ghosts, intensity=severity, offset=offset, axis=axis)
    return _unless_zero(severity, image, out)


def motion(
    key: Array,
    image: ArrayLike,
    *,
    severity: ArrayLike = DEFAULT_SEVERITY,
    num_movements: int = 2,
    max_degrees: float = 15.0,
    max_shift: float = 0.15,
    axis: int = 0,
) -> Array:
    """Rigid motion during a sequential acquisition (see :func:`segmented_motion`).

    Lines are acquired in order from spatial frequency ``-N/2`` to ``N/2 - 1``
    along ``axis``. The object moves ``num_movements`` times, at times drawn
    uniformly in [0.3, 0.7] of the scan, splitting k-space into
    ``num_movements + 1`` segments. The segment holding the centre of k-space
    is the reference position (no motion: the image stays registered); each
    other segment is at its own position, with rotation
    ``+/- u * severity * max_degrees`` degrees and a translation of length
    ``u' * severity * max_shift * min(H, W)`` pixels in a random direction,
    ``u, u' ~ U(0.5, 1)``. At the default severity 0.5 on 64x64: 3.75-7.5
    degrees and 2.4-4.8 pixels.

    Args:
        key: PRNG key.
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        num_movements: number of motion events, ``>= 1``.
        max_degrees: largest rotation at severity 1, degrees.
        max_shift: largest translation at severity 1, fraction of the
            image's smaller side.
        axis: phase-encoding axis, 0 (``y``) or 1 (``x``).

    Returns:
        ``[H, W]`` magnitude image.
    """
    if num_movements < 1:
        raise ValueError(f"num_movements must be >= 1, got {num_movements}")
    image = _image(image)
    axis = _axis(axis)
    severity = _severity(severity, image.dtype)
    n_lines = image.shape[axis]
    num_positions = num_movements + 1
    k_times, k_sign, k_deg, k_dir, k_len = jax.random.split(key, 5)
    times = jnp.sort(jax.random.uniform(k_times, (num_movements,), image.dtype, 0.3, 0.7))
    line_time = jnp.arange(n_lines, dtype=image.dtype) / n_lines
    line_position = jnp.sum(line_time[:, None] >= times[None, :], axis=1)
    reference = line_position[n_lines // 2]
    moved = jnp.arange(num_positions) != reference
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (num_positions,)), 1.0, -1.0).astype(image.dtype)
    degrees = sign * jax.random.uniform(k_deg, (num_positions,), image.dtype, 0.5, 1.0) * severity * max_degrees
    direction = jax.random.uniform(k_dir, (num_positions,), image.dtype, 0.0, 2.0 * jnp.pi)
    length = (
        jax.random.uniform(k_len, (num_positions,), image.dtype, 0.5, 1.0) * severity * max_shift * min(image.shape)
    )
    shifts = jnp.stack([length * jnp.sin(direction), length * jnp.cos(direction)], axis=-1)
    degrees = jnp.where(moved, degrees, 0.0)
    shifts = jnp.where(moved[:, None], shifts, 0.0)
    out = segmented_motion(image, line_position=line_position, angles=degrees, shifts=shifts, axis=axis)
    return _unless_zero(severity, image, out)


def blur(
    key: Array, image: ArrayLike, *, severity: ArrayLike = DEFAULT_SEVERITY, max_sigma: float = 0.03
) -> Array:
    """Gaussian blur (see :func:`gaussian_blur`), e.g. a lower acquired resolution.

    Physical parameter: ``sigma = severity * max_sigma * min(H, W)`` pixels
    (0.96 pixels at the default severity on 64x64). ``key`` is unused (the
    blur is deterministic); it is there for the common signature.

    Args:
        key: PRNG key (unused).
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        max_sigma: sigma at severity 1, as a fraction of the smaller side.

    Returns:
        ``[H, W]`` blurred image.
    """
    del key
    image = _image(image)
    severity = _severity(severity, image.dtype)
    out = gaussian_blur(image, sigma=severity * max_sigma * min(image.shape))
    return _unless_zero(severity, image, out)


def bias_field(
    key: Array,
    image: ArrayLike,
    *,
    severity: ArrayLike = DEFAULT_SEVERITY,
    order: int = 3,
    max_log_gain: float = math.log(3.0),
) -> Array:
    """Smooth multiplicative intensity non-uniformity (coil sensitivity).

    The image is multiplied by ``exp(f)``, ``f`` a polynomial of degree
    ``order`` in ``(y, x)`` (both scaled to [-1, 1] over the image) with no
    constant term, coefficients drawn from ``U(-1, 1)`` by ``key``, and then
    scaled so that ``max |f|`` over the object (pixels with ``image > 0``) is
    ``severity * max_log_gain``. With the default ``log(3)``, the gain spans at
    most ``[1/sqrt(3), sqrt(3)] = [0.58, 1.73]`` at severity 0.5 and
    ``[1/3, 3]`` at severity 1.

    Args:
        key: PRNG key.
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        order: polynomial degree, ``>= 1``.
        max_log_gain: peak ``|log gain|`` at severity 1.

    Returns:
        ``[H, W]`` image times the field.

    References:
        Van Leemput et al., "Automated model-based bias field correction of MR
        images of the brain", IEEE TMI 18 (1999) (polynomial bias model).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    image = _image(image)
    severity = _severity(severity, image.dtype)
    h, w = image.shape
    powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i) if i + j > 0]
    coefficients = jax.random.uniform(key, (len(powers),), image.dtype, -1.0, 1.0)
    y = jnp.linspace(-1.0, 1.0, h, dtype=image.dtype)[:, None]
    x = jnp.linspace(-1.0, 1.0, w, dtype=image.dtype)[None, :]
    log_field = sum(c * y**i * x**j for c, (i, j) in zip(coefficients, powers, strict=True))
    # Scale on the object, not the corners, so severity means the same
    # whatever the object's size; an all-zero image falls back to all pixels.
    peak = jnp.max(jnp.abs(log_field), where=image > 0, initial=0.0)
    peak = jnp.where(peak > 0, peak, jnp.max(jnp.abs(log_field)))
    log_field = log_field * (severity * max_log_gain / peak)
    return _unless_zero(severity, image, image * jnp.exp(log_field))


def spike(
    key: Array,
    image: ArrayLike,
    *,
    severity: ArrayLike = DEFAULT_SEVERITY,
    num_spikes: int = 1,
    max_amplitude: float = 0.2,
    min_frequency: float = 0.1,
    max_frequency: float = 0.35,
) -> Array:
    """Spike (herringbone) artefact (see :func:`kspace_spikes`).

    Physical parameters: each of ``num_spikes`` spikes adds a stripe pattern
    of amplitude ``severity * max_amplitude * max|image|`` (10% of the maximum
    at the default severity) and random phase; ``key`` draws its k-space
    position at a radius uniform in ``[min_frequency, max_frequency]`` times
    the image size (cycles per image) in a uniform direction, rounded to the
    k-space grid.

    Args:
        key: PRNG key.
        image: ``[H, W]`` image, about [0, 1].
        severity: in [0, 1].
        num_spikes: number of spikes, ``>= 1``.
        max_amplitude: stripe amplitude at severity 1, fraction of
            ``max|image|``.
        min_frequency: smallest spike radius, fraction of the image size.
        max_frequency: largest spike radius, fraction of the image size
            (0.5 is the Nyquist limit).

    Returns:
        ``[H, W]`` magnitude image.
    """
    if num_spikes < 1:
        raise ValueError(f"num_spikes must be >= 1, got {num_spikes}")
    if not 0.0 <= min_frequency <= max_frequency <= 0.5:
        raise ValueError(f"need 0 <= min_frequency <= max_frequency <= 0.5, got {min_frequency}, {max_frequency}")
    image = _image(image)
    severity = _severity(severity, image.dtype)
    h, w = image.shape
    k_radius, k_angle, k_phase = jax.random.split(key, 3)
    radius = jax.random.uniform(k_radius, (num_spikes,), image.dtype, min_frequency, max_frequency)
    angle = jax.random.uniform(k_angle, (num_spikes,), image.dtype, 0.0, 2.0 * jnp.pi)
    frequencies = jnp.stack(
        [jnp.round(radius * h * jnp.sin(angle)), jnp.round(radius * w * jnp.cos(angle))], axis=-1
    ).astype(jnp.int32)
    phase = jax.random.uniform(k_phase, (num_spikes,), image.dtype, 0.0, 2.0 * jnp.pi)
    amplitudes = severity * max_amplitude * _reference(image) * jnp.exp(1j * phase)
    out = kspace_spikes(image, frequencies=frequencies, amplitudes=amplitudes)
    return _unless_zero(severity, image, out)


ARTEFACTS = {
    "noise": noise,
    "ghosting": ghosting,
    "motion": motion,
    "blur": blur,
    "bias_field": bias_field,
    "spike": spike,
}
"""Severity functions by name, each ``f(key, image, *, severity) -> image``."""
