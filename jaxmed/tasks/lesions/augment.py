"""Random acquisition changes of preprocessed mpMRI exams, drawn per step: what differs between sites.

Sites differ in what the preprocessing cannot remove: the T2 intensity
curve and echo time (contrast), the receive-coil bias field, the noise, the
b-value (the DWI's lesion contrast; ADC values shift a little with it), the
acquisition's resolution (a coarser grid, resampled onto the T2 grid, is a
blur) and what registration leaves of the motion between the T2 and the
diffusion series. `augment_exam` imitates these on one preprocessed exam
(channels T2, ADC, DWI as `jaxmed.tasks.lesions.preprocess.normalise_channels`
gives them):

* ADC and DWI together: shifted in-plane against T2 by up to
  ``shift_voxels`` along each in-plane axis (uniform, linear interpolation);
* T2 and DWI, each: mapped to [0, 1] over the covered voxels, raised to a
  power ``gamma`` (log-uniform in ``gamma_range``), multiplied by a smooth
  random bias field ``exp(bias * F)`` (``F`` a sum of random low-frequency
  plane waves, unit variance), blurred in-plane (below), plus Gaussian noise
  of std up to ``noise_std``, then z-scored again over the covered voxels;
* ADC: multiplied by a factor in ``1 +- adc_scale``, blurred, plus noise of
  std up to ``noise_std`` (1e-3 mm^2/s);
* ADC and DWI, first, given the lesion mask: each lesion's deviation from
  the tissue around it scaled by a factor uniform in ``lesion_contrast``
  (a lower b-value, partial volume on a coarser grid: the lesions' evidence
  fades while the anatomy stays);
* the blur: a Gaussian of std uniform in ``blur_sigma`` (voxels) over the
  two in-plane axes, one std for T2 and one for the diffusion pair (one
  acquisition), normalised by the blurred coverage so that uncovered voxels
  do not darken the edge (shift likewise);
* a left-right mirror with probability ``flip_probability`` (images and target alike).

Voxels no series covered stay 0. Pure and jittable; a batch is vmapped with
one key per exam (`augment_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["ExamAugment", "augment_batch", "augment_exam"]

_WAVES = 4


@dataclass(frozen=True, kw_only=True)
class ExamAugment:
    """Per-exam training augmentation (module docstring); ``ExamAugment(enabled=False)`` changes nothing.

    Attributes:
      enabled: apply it.
      gamma_range: ``(low, high)`` of the T2/DWI intensity power.
      bias: std of the log bias field.
      bias_cycles: largest spatial frequency of the bias, cycles per field of view.
      noise_std: largest added noise std (T2/DWI in [0, 1] units; ADC in 1e-3 mm^2/s).
      adc_scale: largest relative change of the ADC values.
      blur_sigma: ``(low, high)`` of the in-plane blur's std, voxels.
      lesion_contrast: ``(low, high)`` of the factor on the lesions' ADC and DWI contrast (needs their
        mask). The default's 0.44 is the training sites' own spread: site B's lesions show 0.44 of site A's
        DWI d' (``experiments/lesions_site_contrast.py``; the test site is not looked at).
      shift_voxels: largest in-plane shift of ADC and DWI against T2, voxels, per axis.
      flip_probability: probability of the left-right mirror.
    """

    enabled: bool = True
    gamma_range: tuple[float, float] = (0.6, 1.6)
    bias: float = 0.3
    bias_cycles: float = 1.0
    noise_std: float = 0.04
    adc_scale: float = 0.08
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    lesion_contrast: tuple[float, float] = (0.44, 1.0)
    shift_voxels: float = 1.0
    flip_probability: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "gamma_range", tuple(float(g) for g in self.gamma_range))
        object.__setattr__(self, "blur_sigma", tuple(float(g) for g in self.blur_sigma))
        object.__setattr__(self, "lesion_contrast", tuple(float(g) for g in self.lesion_contrast))
        lo, hi = self.gamma_range
        if not 0 < lo <= hi:
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, got {self.gamma_range}")
        lo, hi = self.blur_sigma
        if not 0 <= lo <= hi:
            raise ValueError(f"blur_sigma must be (low, high) with 0 <= low <= high, got {self.blur_sigma}")
        lo, hi = self.lesion_contrast
        if not 0 <= lo <= hi <= 1:
            raise ValueError("lesion_contrast must be (low, high) with 0 <= low <= high <= 1, "
                             f"got {self.lesion_contrast}")
        amounts = (self.bias, self.bias_cycles, self.noise_std, self.adc_scale, self.shift_voxels)
        if min(amounts) < 0 or not 0 <= self.flip_probability <= 1:
            raise ValueError(f"ExamAugment: amounts must be >= 0 and flip_probability in [0, 1], got {self}")


def _bias_field(key, shape, cycles):
    """A unit-variance random field of a few plane waves of at most ``cycles`` cycles over the grid: ``[*shape]``."""
    kf, kp = jax.random.split(key)
    frequencies = jax.random.uniform(kf, (_WAVES, len(shape)), minval=-cycles, maxval=cycles)
    phases = jax.random.uniform(kp, (_WAVES,), maxval=2 * jnp.pi)
    grids = jnp.meshgrid(*(jnp.linspace(0.0, 1.0, n) for n in shape), indexing="ij")
    arg = sum(frequencies[:, a].reshape(-1, *[1] * len(shape)) * grids[a][None] for a in range(len(shape)))
    return jnp.sqrt(2.0 / _WAVES) * jnp.sum(jnp.cos(2 * jnp.pi * arg + phases.reshape(-1, *[1] * len(shape))), 0)


def _gaussian_inplane(x, sigma, radius: int):
    """``x`` ``[*S]`` convolved over its last two axes with a Gaussian of std ``sigma`` voxels (traced), truncated at
    ``radius`` voxels and normalised to sum 1; zeros beyond the edges."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    weights = weights / jnp.sum(weights)
    for axis in (-1, -2):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(x, pad)
        x = sum(weights[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis % x.ndim)
                for i in range(2 * radius + 1))
    return x


def _local_mean(v, weight, sigma, radius: int):
    """The ``weight``-weighted Gaussian mean of ``v`` around each voxel (in-plane); ``v`` where no weight is near."""
    weight = weight.astype(v.dtype)
    num, den = _gaussian_inplane(v * weight, sigma, radius), _gaussian_inplane(weight, sigma, radius)
    return jnp.where(den > 1e-6, num / jnp.maximum(den, 1e-6), v)


def _blur_inplane(v, covered, sigma, radius: int):
    """``v`` ``[*S]`` blurred over its last two axes by a Gaussian of std ``sigma`` voxels (traced), truncated
    at ``radius`` voxels, normalised by the blurred coverage: covered voxels only, uncovered ones 0."""
    return jnp.where(covered, _local_mean(v, covered, sigma, radius), 0.0)


def _fade_lesions(v, covered, lesion, factor):
    """``v`` with each lesion's deviation from its surroundings scaled by ``factor``: ``v + (1 - factor) s (b - v)``,
    ``b`` the mean of the covered non-lesion voxels around (Gaussian, 3 voxels), ``s`` 1 in the lesion mask and
    its 1-voxel Gaussian blur outside it (so that the partial-volume rim around the mask fades too)."""
    background = _local_mean(v, covered & (lesion < 0.5), 3.0, 9)
    inside = (lesion >= 0.5).astype(v.dtype)
    soft = jnp.maximum(inside, jnp.clip(_gaussian_inplane(inside, 1.0, 3), 0.0, 1.0))
    return jnp.where(covered, v + (1.0 - factor) * soft * (background - v), 0.0)


def _shift_inplane(v, covered, offset):
    """``v`` ``[*S]`` moved by ``offset`` (2 voxels, traced) over its last two axes: ``out[x] = v[x - offset]``,
    linear interpolation, normalised by the moved coverage; where nothing covered moves in, ``v`` stays."""
    grids = jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in v.shape), indexing="ij")
    coords = list(grids)
    coords[-2] = coords[-2] - offset[0]
    coords[-1] = coords[-1] - offset[1]
    mask = covered.astype(v.dtype)
    num = jax.scipy.ndimage.map_coordinates(v * mask, coords, order=1, mode="constant")
    den = jax.scipy.ndimage.map_coordinates(mask, coords, order=1, mode="constant")
    return jnp.where(covered, jnp.where(den > 1e-2, num / jnp.maximum(den, 1e-2), v), 0.0)


def _rezscore(v, covered):
    mean = jnp.mean(v, where=covered)
    std = jnp.std(v, where=covered)
    return jnp.where(covered, (v - mean) / (std + 1e-6), 0.0)


def augment_exam(key: jax.Array, image: jax.Array, target: jax.Array, config: ExamAugment,
                 lesion: jax.Array | None = None):
    """One exam's images ``[*S, 3]`` and target ``[*S]``, changed as the module docstring says; ``lesion``
    (``[*S]``, default none) the lesion mask whose ADC and DWI contrast ``lesion_contrast`` fades."""
    if not config.enabled:
        return image, target
    keys = jax.random.split(key, 10)  # 0-2 the channels, 3-4 the blurs (T2; ADC and DWI), 5 the shift, 6 the
    # lesion contrast, 9 the flip
    spatial = image.shape[:-1]
    sigma_lo, sigma_hi = config.blur_sigma
    radius = math.ceil(3 * sigma_hi)
    sigmas = [jax.random.uniform(keys[3 if c == 0 else 4], minval=sigma_lo, maxval=sigma_hi) for c in range(3)]
    offset = jax.random.uniform(keys[5], (2,), minval=-config.shift_voxels, maxval=config.shift_voxels)
    fade = lesion is not None and config.lesion_contrast[0] < 1.0
    contrast = jax.random.uniform(keys[6], minval=config.lesion_contrast[0], maxval=config.lesion_contrast[1])

    def blur(v, covered, c):
        return _blur_inplane(v, covered, sigmas[c], radius) if radius > 0 else v

    out = []
    for c in range(image.shape[-1]):
        v = image[..., c]
        covered = v != 0
        if c > 0 and fade:  # the diffusion series' lesion contrast, in the T2 grid the mask is drawn in
            v = _fade_lesions(v, covered, lesion, contrast)
        if c > 0 and config.shift_voxels > 0:  # the diffusion series against T2
            v = _shift_inplane(v, covered, offset)
        k_gamma, k_bias, k_noise, k_level = jax.random.split(keys[c], 4)
        level = jax.random.uniform(k_level) * config.noise_std
        if c == 1:  # ADC: quantitative; a small scale change, the blur and noise
            factor = 1.0 + config.adc_scale * jax.random.uniform(k_gamma, minval=-1.0, maxval=1.0)
            v = blur(v * factor, covered, c) + level * jax.random.normal(k_noise, spatial)
            out.append(jnp.where(covered, v, 0.0))
            continue
        lo = jnp.min(jnp.where(covered, v, jnp.inf))
        hi = jnp.max(jnp.where(covered, v, -jnp.inf))
        u = jnp.clip((v - lo) / (hi - lo + 1e-6), 0.0, 1.0)
        log_lo, log_hi = jnp.log(config.gamma_range[0]), jnp.log(config.gamma_range[1])
        gamma = jnp.exp(jax.random.uniform(k_gamma, minval=log_lo, maxval=log_hi))
        u = jnp.power(u + 1e-6, gamma) * jnp.exp(config.bias * _bias_field(k_bias, spatial, config.bias_cycles))
        u = blur(u, covered, c) + level * jax.random.normal(k_noise, spatial)
        out.append(_rezscore(u, covered))
    image = jnp.stack(out, axis=-1)
    flip = jax.random.bernoulli(keys[9], config.flip_probability)
    image = jnp.where(flip, jnp.flip(image, axis=-2), image)
    target = jnp.where(flip, jnp.flip(target, axis=-1), target)
    return image, target


def augment_batch(key: jax.Array, image: jax.Array, target: jax.Array, config: ExamAugment,
                  lesion: jax.Array | None = None):
    """`augment_exam` of each exam of a batch (``[N, *S, 3]``, ``[N, *S]``, ``lesion`` ``[N, *S]`` or none),
    exam ``i`` with ``fold_in(key, i)``."""
    if not config.enabled:
        return image, target
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(image.shape[0]))
    if lesion is None:
        return jax.vmap(lambda k, x, y: augment_exam(k, x, y, config))(keys, image, target)
    return jax.vmap(lambda k, x, y, m: augment_exam(k, x, y, config, m))(keys, image, target, lesion)
