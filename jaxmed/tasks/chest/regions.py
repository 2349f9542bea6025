"""Body regions of a chest radiograph: a U-Net for the right lung, left lung and heart at a reduced size.

The network (:class:`jaxmed.models.UNet`, 4 output classes: background and
:data:`~jaxmed.tasks.chest.segments.REGION_LABELS`) sees the radiograph
resized to ``input_size`` pixels (256 by default); its class probabilities
are resized back to the radiograph's grid (bilinear) and the most probable
class of each pixel is the region label map at full resolution.

Training targets are soft: the fraction of each low-resolution pixel that
each full-resolution mask covers (the one-hot masks resized with
antialiasing), so the network learns where a boundary lies inside a pixel,
which the bilinear upsampling of its probabilities then keeps.

Intensities: every radiograph, phantom or real, is mapped to ``[0, 1]`` by
:func:`normalise_radiograph` (0.5th and 99.5th percentiles) before anything
sees it, so that the window a DICOM file stores does not matter; training
also draws random gamma, contrast and brightness changes per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxmed.io.radiograph import normalise_radiograph
from jaxmed.models import UNet

Array = jax.Array

__all__ = [
    "NUM_CLASSES",
    "RegionNetConfig",
    "downsample",
    "make_region_loss",
    "normalise_radiograph",
    "region_probabilities",
    "region_targets",
    "regions_from_probabilities",
]

NUM_CLASSES = 4  # background, right lung, left lung, heart


@dataclass(frozen=True, kw_only=True)
class RegionNetConfig:
    """The region U-Net and its training draws.

    Attributes:
      input_size: side of the network's input, pixels; divisible by ``2**depth``.
      features, depth, norm_groups: as :class:`jaxmed.models.UNet`.
      gamma: range of the random gamma applied to training images.
      contrast: range of the random contrast factor (about 0.5).
      brightness: largest random offset added to training images.
    """

    input_size: int = 256
    features: int = 8
    depth: int = 4
    norm_groups: int | None = None
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.08

    def __post_init__(self):
        object.__setattr__(self, "gamma", tuple(float(v) for v in self.gamma))
        object.__setattr__(self, "contrast", tuple(float(v) for v in self.contrast))
        if self.input_size < 16 or self.input_size % 2**self.depth:
            raise ValueError(f"RegionNetConfig.input_size must be >= 16 and divisible by 2**depth = "
                             f"{2**self.depth}, got {self.input_size}")
        if not (0 < self.gamma[0] <= self.gamma[1] and 0 < self.contrast[0] <= self.contrast[1]):
            raise ValueError(f"RegionNetConfig: gamma and contrast must be (min, max) > 0, got {self.gamma}, "
                             f"{self.contrast}")
        if self.brightness < 0:
            raise ValueError(f"RegionNetConfig.brightness must be >= 0, got {self.brightness}")
        self.make_module()  # validates features, depth, norm_groups

    def make_module(self) -> UNet:
        """The network: ``[N, s, s, 1]`` -> ``[N, s, s, 4]`` class logits."""
        return UNet(features=self.features, depth=self.depth, out_channels=NUM_CLASSES, norm_groups=self.norm_groups)


def downsample(image: Array, size: int) -> Array:
    """``[H, W, C]`` -> ``[size, size, C]``, antialiased linear resampling (an area average for integer factors)."""
    return jax.image.resize(image, (size, size, image.shape[-1]), "linear", antialias=True)


def region_targets(labels: Array, size: int) -> Array:
    """Soft targets at the network's size: the fraction of each pixel each class covers.

    Args:
      labels: ``[H, W]`` int region labels.
      size: the network's input side.

    Returns:
      ``[size, size, 4]`` float32, summing to 1 over the last axis.
    """
    onehot = jax.nn.one_hot(labels.astype(jnp.int32), NUM_CLASSES, dtype=jnp.float32)
    soft = downsample(onehot, size)
    return soft / jnp.maximum(jnp.sum(soft, axis=-1, keepdims=True), 1e-6)


def _augment(key: Array, image: Array, config: RegionNetConfig) -> Array:
    """Random gamma, contrast (about 0.5) and brightness of one ``[s, s, 1]`` image in ``[0, 1]``."""
    k1, k2, k3 = jax.random.split(key, 3)
    log_gamma = jax.random.uniform(k1, (), minval=jnp.log(config.gamma[0]), maxval=jnp.log(config.gamma[1]))
    contrast = jax.random.uniform(k2, (), minval=config.contrast[0], maxval=config.contrast[1])
    offset = jax.random.uniform(k3, (), minval=-config.brightness, maxval=config.brightness)
    image = jnp.power(jnp.clip(image, 1e-6, 1.0), jnp.exp(log_gamma))
    return jnp.clip(0.5 + contrast * (image - 0.5) + offset, 0.0, 1.0)


def make_region_loss(model: UNet, config: RegionNetConfig, *, augment: bool = True):
    """The region net's train-step loss ``loss_fn(params, batch, key)``.

    Args:
      model: the U-Net (:meth:`RegionNetConfig.make_module`).
      config: its settings (augmentation ranges).
      augment: draw random intensity changes per example and step.

    Returns:
      A loss over batches ``{"image": [N, s, s, 1], "target": [N, s, s, 4]}``
      (:func:`region_targets`): the mean over pixels and examples of the
      softmax cross-entropy with the soft targets, nats; metric
      ``pixel_accuracy`` (argmax agrees).
    """

    def loss_fn(params, batch, key):
        images = batch["image"].astype(jnp.float32)
        if augment:
            keys = jax.random.split(key, images.shape[0])
            images = jax.vmap(lambda k, x: _augment(k, x, config))(keys, images)
        logits = model.apply(params, images)
        target = batch["target"].astype(jnp.float32)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, target))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(target, -1))
        return loss, {"pixel_accuracy": accuracy}

    return loss_fn


def region_probabilities(model: UNet, params, images: Array) -> Array:
    """Class probabilities ``[N, s, s, 4]`` of network inputs ``[N, s, s, 1]``."""
    return jax.nn.softmax(model.apply(params, images), axis=-1)


def regions_from_probabilities(probs: Array, shape: tuple[int, int]) -> Array:
    """The region label map at full resolution: probabilities resized (bilinear), then the most probable class.

    Args:
      probs: ``[s, s, 4]`` class probabilities of one radiograph.
      shape: ``(H, W)`` of the radiograph's grid.

    Returns:
      ``[H, W]`` uint8 region labels.
    """
    full = jax.image.resize(probs, (*shape, probs.shape[-1]), "linear")
    return jnp.argmax(full, axis=-1).astype(jnp.uint8)
