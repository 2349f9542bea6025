"""A small U-Net for lesion maps (Flax Linen), 2D or 3D.

The network maps a batch of co-registered multi-modal images
``[N, H, W, M]`` (or volumes ``[N, D, H, W, M]``, modalities last) to per-pixel
logits ``[N, H, W, out_channels]``; ``jax.nn.sigmoid`` of channel 0 is the
lesion probability. The spatial rank is read from the input, so one module
serves 2D and 3D.

References:
  Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical
  Image Segmentation. MICCAI 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _max_pool2(x: Array) -> Array:
    """2x max pooling over every spatial axis of ``x`` ``[N, *S, C]``.

    Written as reshape + max because XLA:CPU's gradient of ``nn.max_pool``
    (select-and-scatter) was ~8x slower on 64x64 maps.
    """
    n, *spatial, c = x.shape
    split = [n]
    for s in spatial:
        split += [s // 2, 2]
    x = x.reshape(*split, c)
    return x.max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def _upsample2(x: Array) -> Array:
    """2x nearest-neighbour upsampling over every spatial axis of ``[N, *S, C]``.

    Used with a 3x3 conv instead of ``nn.ConvTranspose``, whose gradient is
    an order of magnitude slower on XLA:CPU (benchmarks/RESULTS.md).
    """
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class ConvBlock(nn.Module):
    """Two (3x3 conv -> GroupNorm -> ReLU) layers.

    Attributes:
      features: output channels.
      norm_groups: GroupNorm groups (must divide ``features``); ``None`` for no
        normalisation.
    """

    features: int
    norm_groups: int | None = 8

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = (3,) * (x.ndim - 2)
        for _ in range(2):
            x = nn.Conv(self.features, kernel, padding="SAME", use_bias=self.norm_groups is None)(x)
            if self.norm_groups is not None:
                x = nn.GroupNorm(num_groups=self.norm_groups)(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """U-Net giving a per-pixel logit map.

    Level ``l`` (0 = full resolution) has ``features * 2**l`` channels; there
    are ``depth`` 2x downsamplings, so every spatial size must be divisible by
    ``2**depth``.

    Attributes:
      features: channels at full resolution.
      depth: number of 2x downsamplings (0 gives a plain conv net).
      out_channels: channels of the output logit map (1 for a lesion map).
      norm_groups: GroupNorm groups, dividing ``features``; ``None`` for none.

    Example:
      >>> model = UNet(features=8, depth=2)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> params = model.init(jax.random.key(0), x)
      >>> model.apply(params, x).shape
      (2, 32, 32, 1)
    """

    features: int = 16
    depth: int = 3
    out_channels: int = 1
    norm_groups: int | None = 8

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f"UNet: features must be >= 1, got {self.features}")
        if self.depth < 0:
            raise ValueError(f"UNet: depth must be >= 0, got {self.depth}")
        if self.out_channels < 1:
            raise ValueError(f"UNet: out_channels must be >= 1, got {self.out_channels}")
        if self.norm_groups is not None and (
            self.norm_groups < 1 or self.features % self.norm_groups
        ):
            raise ValueError(
                f"UNet: norm_groups={self.norm_groups} must be >= 1 and divide "
                f"features={self.features}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Per-pixel logits.

        Args:
          x: ``[N, H, W, M]`` or ``[N, D, H, W, M]`` images, modalities last.

        Returns:
          ``[N, H, W, out_channels]`` (or ``[N, D, H, W, out_channels]``) logits.
        """
        if x.ndim not in (4, 5):
            raise ValueError(
                f"UNet expects [N, H, W, M] or [N, D, H, W, M] input, got shape {x.shape}"
            )
        factor = 2**self.depth
        if any(s % factor for s in x.shape[1:-1]):
            raise ValueError(
                f"UNet: spatial shape {x.shape[1:-1]} must be divisible by "
                f"2**depth = {factor}"
            )
        skips = []
        for level in range(self.depth):
            x = ConvBlock(self.features * 2**level, self.norm_groups)(x)
            skips.append(x)
            x = _max_pool2(x)
        x = ConvBlock(self.features * 2**self.depth, self.norm_groups)(x)
        kernel = (3,) * (x.ndim - 2)
        for level in reversed(range(self.depth)):
            x = nn.Conv(self.features * 2**level, kernel, padding="SAME")(_upsample2(x))
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = ConvBlock(self.features * 2**level, self.norm_groups)(x)
        return nn.Conv(self.out_channels, (1,) * (x.ndim - 2))(x)



@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """A :class:`UNet` and the images it takes, as ``jaxmed train`` stores it.

    Attributes:
      image_shape: ``(H, W, M)`` (or ``(D, H, W, M)``): the spatial shape
        and the number of modalities of one sample.
      features, depth, norm_groups: as :class:`UNet`.
    """

    image_shape: tuple[int, ...]
    features: int = 8
    depth: int = 3
    norm_groups: int | None = 8

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        if len(self.image_shape) not in (3, 4) or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, M) or (D, H, W, M), got {self.image_shape}")
        factor = 2**self.depth
        if any(s % factor for s in self.image_shape[:-1]):
            raise ValueError(f"spatial shape {self.image_shape[:-1]} not divisible by 2**depth = {factor}")
        self.make_module()  # validates features, depth and norm_groups

    def make_module(self) -> UNet:
        """The network: ``[N, *image_shape]`` -> lesion logits ``[N, *spatial, 1]``."""
        return UNet(features=self.features, depth=self.depth, norm_groups=self.norm_groups)


# 64x64 T2/ADC/DWI phantoms (experiments/masked_region.py), and a test-sized net.
UNET_PRESETS: dict[str, UNetConfig] = {
    "lesion64": UNetConfig(image_shape=(64, 64, 3), features=8, depth=3),
    "tiny": UNetConfig(image_shape=(16, 16, 3), features=4, depth=1, norm_groups=4),
}
