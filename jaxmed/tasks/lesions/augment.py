"""Random acquisition changes of preprocessed mpMRI exams, drawn per step: what differs between sites.

Sites differ in what the preprocessing cannot remove: the T2 intensity
curve and echo time (contrast), the receive-coil bias field, the noise, the
b-value (the DWI's lesion contrast; ADC values shift a little with it).
`augment_exam` imitates these on one preprocessed exam (channels T2, ADC,
DWI as `jaxmed.tasks.lesions.preprocess.normalise_channels` gives them):

* T2 and DWI, each: mapped to [0, 1] over the covered voxels, raised to a
  power ``gamma`` (log-uniform in ``gamma_range``), multiplied by a smooth
  random bias field ``exp(bias * F)`` (``F`` a sum of random low-frequency
  plane waves, unit variance), plus Gaussian noise of std up to
  ``noise_std``, then z-scored again over the covered voxels;
* ADC: multiplied by a factor in ``1 +- adc_scale``, plus noise of std up to
  ``noise_std`` (1e-3 mm^2/s);
* a left-right mirror with probability ``flip_probability`` (images and target alike).

Voxels no series covered stay 0. Pure and jittable; a batch is vmapped with
one key per exam (`augment_batch`).
"""

from __future__ import annotations

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
      flip_probability: probability of the left-right mirror.
    """

    enabled: bool = True
    gamma_range: tuple[float, float] = (0.6, 1.6)
    bias: float = 0.3
    bias_cycles: float = 1.0
    noise_std: float = 0.04
    adc_scale: float = 0.08
    flip_probability: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "gamma_range", tuple(float(g) for g in self.gamma_range))
        lo, hi = self.gamma_range
        if not 0 < lo <= hi:
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, got {self.gamma_range}")
        if min(self.bias, self.bias_cycles, self.noise_std, self.adc_scale) < 0 or not 0 <= self.flip_probability <= 1:
            raise ValueError(f"ExamAugment: amounts must be >= 0 and flip_probability in [0, 1], got {self}")


def _bias_field(key, shape, cycles):
    """A unit-variance random field of a few plane waves of at most ``cycles`` cycles over the grid: ``[*shape]``."""
    kf, kp = jax.random.split(key)
    frequencies = jax.random.uniform(kf, (_WAVES, len(shape)), minval=-cycles, maxval=cycles)
    phases = jax.random.uniform(kp, (_WAVES,), maxval=2 * jnp.pi)
    grids = jnp.meshgrid(*(jnp.linspace(0.0, 1.0, n) for n in shape), indexing="ij")
    arg = sum(frequencies[:, a].reshape(-1, *[1] * len(shape)) * grids[a][None] for a in range(len(shape)))
    return jnp.sqrt(2.0 / _WAVES) * jnp.sum(jnp.cos(2 * jnp.pi * arg + phases.reshape(-1, *[1] * len(shape))), 0)


def _rezscore(v, covered):
    mean = jnp.mean(v, where=covered)
    std = jnp.std(v, where=covered)
    return jnp.where(covered, (v - mean) / (std + 1e-6), 0.0)


def augment_exam(key: jax.Array, image: jax.Array, target: jax.Array, config: ExamAugment):
    """One exam's images ``[*S, 3]`` and target ``[*S]``, changed as the module docstring says."""
    if not config.enabled:
        return image, target
    keys = jax.random.split(key, 10)
    spatial = image.shape[:-1]
    out = []
    for c in range(image.shape[-1]):
        v = image[..., c]
        covered = v != 0
        k_gamma, k_bias, k_noise, k_level = jax.random.split(keys[c], 4)
        level = jax.random.uniform(k_level) * config.noise_std
        if c == 1:  # ADC: quantitative; a small scale change and noise
            factor = 1.0 + config.adc_scale * jax.random.uniform(k_gamma, minval=-1.0, maxval=1.0)
            v = v * factor + level * jax.random.normal(k_noise, spatial)
            out.append(jnp.where(covered, v, 0.0))
            continue
        lo = jnp.min(jnp.where(covered, v, jnp.inf))
        hi = jnp.max(jnp.where(covered, v, -jnp.inf))
        u = jnp.clip((v - lo) / (hi - lo + 1e-6), 0.0, 1.0)
        log_lo, log_hi = jnp.log(config.gamma_range[0]), jnp.log(config.gamma_range[1])
        gamma = jnp.exp(jax.random.uniform(k_gamma, minval=log_lo, maxval=log_hi))
        u = jnp.power(u + 1e-6, gamma) * jnp.exp(config.bias * _bias_field(k_bias, spatial, config.bias_cycles))
        u = u + level * jax.random.normal(k_noise, spatial)
        out.append(_rezscore(u, covered))
    image = jnp.stack(out, axis=-1)
    flip = jax.random.bernoulli(keys[9], config.flip_probability)
    image = jnp.where(flip, jnp.flip(image, axis=-2), image)
    target = jnp.where(flip, jnp.flip(target, axis=-1), target)
    return image, target


def augment_batch(key: jax.Array, image: jax.Array, target: jax.Array, config: ExamAugment):
    """`augment_exam` of each exam of a batch (``[N, *S, 3]``, ``[N, *S]``), exam ``i`` with ``fold_in(key, i)``."""
    if not config.enabled:
        return image, target
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(image.shape[0]))
    return jax.vmap(lambda k, x, y: augment_exam(k, x, y, config))(keys, image, target)
