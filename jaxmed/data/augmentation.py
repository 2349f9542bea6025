"""Random transforms of training images, drawn afresh at every step.

An :class:`AugmentConfig` says which transforms a data source applies to each
training image (its defaults apply none); :func:`augment_image` transforms one
image and :func:`augment_batch` a batch, each example with a key of its own,
``fold_in(key, offset + i)`` for row ``i``, so that a global batch split over
processes is augmented exactly as it is on one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["AugmentConfig", "augment_batch", "augment_image"]


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Per-image training augmentation; the defaults change nothing.

    Attributes:
      max_shift: largest whole-pixel shift along each spatial axis (zero
        fill); 0 = no shift.
      flip_probability: probability of a mirror image along the width axis
        (left-right for axial and coronal slices; keep 0 for sagittal slices
        or images that are not left-right symmetric).
      intensity_range: ``(low, high)`` of the uniform intensity factor;
        ``(1, 1)`` = none. Results are clipped to ``[0, 1]``.
      mutation_rate: fraction of pixels replaced by uniform noise in
        ``[0, 1]``, each independently, after the other transforms: the
        input perturbation that trains a *background* model (Ren et al.,
        NeurIPS 2019), one that learns the images' low-level statistics but
        not their semantics. 0 = none.

    References:
      J. Ren, P. J. Liu, E. Fertig, J. Snoek, R. Poplin, M. A. DePristo,
      J. V. Dillon, B. Lakshminarayanan, "Likelihood Ratios for
      Out-of-Distribution Detection", NeurIPS 2019.
    """

    max_shift: int = 0
    flip_probability: float = 0.0
    intensity_range: tuple[float, float] = (1.0, 1.0)
    mutation_rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "intensity_range", tuple(float(v) for v in self.intensity_range))
        if self.max_shift < 0:
            raise ValueError(f"AugmentConfig.max_shift must be >= 0, got {self.max_shift}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"AugmentConfig.flip_probability must be in [0, 1], got {self.flip_probability}")
        if len(self.intensity_range) != 2 or not 0.0 < self.intensity_range[0] <= self.intensity_range[1]:
            raise ValueError(f"AugmentConfig.intensity_range must be (low, high) with 0 < low <= high, "
                             f"got {self.intensity_range}")
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f"AugmentConfig.mutation_rate must be in [0, 1], got {self.mutation_rate}")

    @property
    def is_identity(self) -> bool:
        """True when no transform is applied."""
        return (self.max_shift == 0 and self.flip_probability == 0.0 and self.intensity_range == (1.0, 1.0)
                and self.mutation_rate == 0.0)


def augment_image(
    key: jax.Array,
    image: jax.Array,
    *,
    max_shift: int = 3,
    flip_probability: float = 0.5,
    intensity_range: tuple[float, float] = (0.9, 1.1),
    mutation_rate: float = 0.0,
) -> jax.Array:
    """Random left-right flip, whole-pixel shift, intensity scale and pixel mutation of one image.

    Pure; batch with ``jax.vmap(augment_image)(keys, images)``. The flip
    mirrors the width axis.

    Args:
        key: PRNG key.
        image: ``[H, W, C]`` in ``[0, 1]``.
        max_shift: largest shift along each axis, pixels (zero fill).
        flip_probability: probability of the left-right flip.
        intensity_range: ``(low, high)`` of the uniform intensity factor.
        mutation_rate: fraction of pixels replaced by uniform values in
          ``[0, 1]`` (drawn with ``fold_in(key, 3)``).

    Returns:
        ``[H, W, C]`` in ``[0, 1]``.
    """
    k_flip, k_shift, k_scale = jax.random.split(key, 3)
    image = jnp.where(jax.random.bernoulli(k_flip, flip_probability), image[:, ::-1], image)
    shift = jax.random.randint(k_shift, (2,), -max_shift, max_shift + 1)
    padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    image = jax.lax.dynamic_slice(padded, (max_shift - shift[0], max_shift - shift[1], 0), image.shape)
    low, high = intensity_range
    factor = jax.random.uniform(k_scale, minval=low, maxval=high)
    image = jnp.clip(image * factor, 0.0, 1.0)
    if mutation_rate:
        k_where, k_value = jax.random.split(jax.random.fold_in(key, 3))
        mutated = jax.random.bernoulli(k_where, mutation_rate, image.shape)
        image = jnp.where(mutated, jax.random.uniform(k_value, image.shape, image.dtype), image)
    return image


@functools.partial(jax.jit, static_argnames="config")
def augment_batch(key: jax.Array, images: jax.Array, config: AugmentConfig, offset: jax.Array | int = 0) -> jax.Array:
    """:func:`augment_image` of every image of a batch, as ``config`` says.

    Args:
      key: PRNG key of this batch (e.g. ``fold_in(augment_key, step)``).
      images: ``[N, H, W, C]`` in ``[0, 1]``.
      config: the transforms.
      offset: position of row 0 in the global batch (a process's first row):
        row ``i`` uses ``fold_in(key, offset + i)``.

    Returns:
      ``[N, H, W, C]``; ``images`` unchanged when ``config.is_identity``.
    """
    if config.is_identity:
        return images
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(images.shape[0]))
    one = functools.partial(augment_image, max_shift=config.max_shift, flip_probability=config.flip_probability,
                            intensity_range=config.intensity_range, mutation_rate=config.mutation_rate)
    return jax.vmap(one)(keys, images)
