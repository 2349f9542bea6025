"""Convolution building blocks shared by the VAE, the autoencoder and friends.

Every layer is channels-last with ONE leading batch axis: ``(B, *spatial, C)``,
where the spatial rank (1, 2 or 3) is read from the kernel. :class:`DownConv`
and :class:`UpConv` hold their parameters in the layout of
``flax.linen.Conv`` / ``flax.linen.ConvTranspose`` and compute with one of the
implementations of :mod:`jaxmed.models.conv` (``impl``; the same function at
different speeds, so a checkpoint does not depend on the implementation
chosen); :class:`ConvEncoder` and :class:`ConvDecoder` stack them into the
trunks of :class:`TrunkConfig`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.conv import DOWN_IMPLS, UP_IMPLS, conv_transpose, strided_conv

Array = jax.Array

NORMS = ("none", "layer", "group")
# What the decoder's raw output goes through to give an image (e.g. a Gaussian mean).
OUTPUT_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"sigmoid": jax.nn.sigmoid, "none": lambda h: h}


def flatten_batch(x: Array, event_shape: tuple[int, ...], what: str) -> tuple[tuple[int, ...], Array]:
    """Splits ``(*batch, *event_shape)`` into ``batch`` and ``(prod(batch), *event_shape)``.

    Raises:
      ValueError: naming ``what`` when the trailing axes are not ``event_shape``.
    """
    n = len(event_shape)
    if x.ndim < n or tuple(x.shape[x.ndim - n :]) != tuple(event_shape):
        raise ValueError(
            f"{what} must have shape (*batch, {', '.join(map(str, event_shape))}), got {x.shape}"
        )
    batch = tuple(x.shape[: x.ndim - n])
    return batch, x.reshape(-1, *event_shape)


def at_least_f32(x: Array) -> Array:
    """Casts bf16/f16 (and integers) up to float32; float32 and float64 pass unchanged."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(jnp.float32, x))


class _ConvWithBias(nn.Module):
    """A ``"SAME"`` convolution op + bias, parameters as ``flax.linen.Conv``.

    Subclasses choose the op (``_op``): :class:`DownConv` and :class:`UpConv`.

    Attributes:
      features: output channels.
      kernel_size: kernel extent per spatial axis.
      strides: stride (down) or up-sampling factor (up) per spatial axis.
      impl: an implementation of the op (same function, different speed).
      dtype: compute dtype; parameters stay ``param_dtype``.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    impl: str = "auto"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    # (x, kernel, *, strides, impl) -> y; a class attribute, not a field.
    _op: ClassVar[Callable[..., Array]]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = self._op(x, kernel, strides=self.strides, impl=self.impl)
        return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


class DownConv(_ConvWithBias):
    """Strided ``"SAME"`` convolution + bias (:func:`strided_conv`; ``impl`` in :data:`DOWN_IMPLS`)."""

    _op = staticmethod(strided_conv)


class UpConv(_ConvWithBias):
    """Transposed ``"SAME"`` convolution + bias (:func:`conv_transpose`; ``impl`` in :data:`UP_IMPLS`).

    Parameters as ``flax.linen.ConvTranspose`` with ``transpose_kernel=False``.
    """

    _op = staticmethod(conv_transpose)


def norm_layer(kind: str, dtype) -> Callable[[Array], Array]:
    """The normalisation ``kind`` (one of :data:`NORMS`) as a layer; ``"none"`` is the identity.

    ``"group"`` normalises groups of 8 channels; ``dtype`` is the computation dtype (None: the input's).
    """
    if kind == "none":
        return lambda x: x
    if kind == "layer":
        return nn.LayerNorm(dtype=dtype)
    if kind == "group":
        return nn.GroupNorm(num_groups=None, group_size=8, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


class ConvEncoder(nn.Module):
    """``len(channels)`` x [strided conv, norm, ReLU], flatten, dense.

    A flat input (``spatial rank 0``) gives an MLP with ``channels`` as widths.

    Attributes:
      channels: output channels (or widths) of the hidden layers.
      kernel_size: kernel extent (all layers, all axes).
      strides: stride of each layer.
      out_features: size of the final dense output.
      norm: one of :data:`NORMS`.
      impl: down-sampling implementation, one of :data:`DOWN_IMPLS`.
      dtype: compute dtype.
    """

    channels: tuple[int, ...]
    kernel_size: int
    strides: tuple[int, ...]
    out_features: int
    norm: str = "none"
    impl: str = "auto"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``(B, *spatial, C)`` -> ``(B, out_features)``."""
        rank = x.ndim - 2
        for i, (c, s) in enumerate(zip(self.channels, self.strides)):
            if rank == 0:
                x = nn.Dense(c, dtype=self.dtype, name=f"dense_{i}")(x)
            else:
                x = DownConv(
                    c, (self.kernel_size,) * rank, (s,) * rank, impl=self.impl, dtype=self.dtype,
                    name=f"conv_{i}",
                )(x)
            x = nn.relu(norm_layer(self.norm, self.dtype)(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.out_features, dtype=self.dtype, name="out")(x)


class ConvDecoder(nn.Module):
    """Dense to the bottleneck grid, ``len(channels) - 1`` x [up-conv, norm, ReLU], up-conv.

    The mirror image of :class:`ConvEncoder` with the same ``channels`` and
    ``strides``: the bottleneck grid is ``spatial / prod(strides)`` with
    ``channels[-1]`` channels, and the last up-convolution maps to
    ``out_channels`` without activation (the caller chooses one).

    Attributes:
      out_shape: ``(*spatial, C)`` of the output (``(D,)`` for flat data).
      channels: as given to the encoder (used in reverse).
      kernel_size: kernel extent.
      strides: as given to the encoder (used in reverse).
      norm: one of :data:`NORMS`.
      impl: up-sampling implementation, one of :data:`UP_IMPLS`.
      dtype: compute dtype.
    """

    out_shape: tuple[int, ...]
    channels: tuple[int, ...]
    kernel_size: int
    strides: tuple[int, ...]
    norm: str = "none"
    impl: str = "auto"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        """``(B, L)`` -> ``(B, *out_shape)``."""
        rank = len(self.out_shape) - 1
        if rank == 0:
            x = z
            for i, c in enumerate(reversed(self.channels)):
                x = nn.relu(norm_layer(self.norm, self.dtype)(nn.Dense(c, dtype=self.dtype, name=f"dense_{i}")(x)))
            return nn.Dense(self.out_shape[0], dtype=self.dtype, name="out")(x)
        factor = math.prod(self.strides)
        grid = tuple(n // factor for n in self.out_shape[:-1])
        x = nn.Dense(math.prod(grid) * self.channels[-1], dtype=self.dtype, name="dense")(z)
        x = nn.relu(norm_layer(self.norm, self.dtype)(x.reshape(z.shape[0], *grid, self.channels[-1])))
        out_channels = (*reversed(self.channels[:-1]), self.out_shape[-1])
        strides = tuple(reversed(self.strides))
        for i, (c, s) in enumerate(zip(out_channels, strides)):
            x = UpConv(
                c, (self.kernel_size,) * rank, (s,) * rank, impl=self.impl, dtype=self.dtype,
                name=f"upconv_{i}",
            )(x)
            if i < len(out_channels) - 1:
                x = nn.relu(norm_layer(self.norm, self.dtype)(x))
        return x


@dataclass(frozen=True, kw_only=True)
class TrunkConfig:
    """The encoder and decoder trunks shared by the VAE and the autoencoder.

    :class:`jaxmed.models.VAEConfig` and :class:`jaxmed.models.AutoencoderConfig`
    extend it with their bottleneck; :meth:`make_encoder` and
    :meth:`make_decoder` build the matching :class:`ConvEncoder` and
    :class:`ConvDecoder`.

    Attributes:
      image_shape: ``(*spatial, channels)`` of one image, channels last, e.g.
        ``(64, 64, 1)`` or ``(32, 32, 32, 1)``; ``(D,)`` for flat features
        where the model takes them (the trunks become MLPs with ``channels``
        as hidden widths).
      channels: encoder channels per down-sampling layer (MLP widths for flat
        input); the decoder mirrors them.
      kernel_size: convolution kernel extent along every spatial axis.
      strides: down-sampling factor of each layer (an int applies to all);
        each spatial size must be divisible by their product.
      output_activation: a key of :data:`OUTPUT_ACTIVATIONS`, applied to the
        decoder output: ``"sigmoid"`` for images in [0, 1], or ``"none"``.
      norm: one of :data:`NORMS` (``"group"``: groups of 8 channels), after
        each hidden layer.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32
        and the models' outputs are at least float32. ``None``: float32.
      down_impl: implementation of the strided convolutions, a key of
        :data:`DOWN_IMPLS`. All compute the same function with the same
        parameters; they differ only in speed.
      up_impl: implementation of the transposed convolutions (:data:`UP_IMPLS`),
        as ``down_impl``.
    """

    # Fewest spatial axes the model takes (0: flat feature vectors too).
    min_spatial_rank: ClassVar[int] = 0

    image_shape: tuple[int, ...]
    channels: tuple[int, ...] = (32, 64, 128, 256)
    kernel_size: int = 4
    strides: int | tuple[int, ...] = 2
    output_activation: str = "sigmoid"
    norm: str = "none"
    dtype: Any = None
    down_impl: str = "auto"
    up_impl: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        strides = self.strides
        strides = (strides,) * len(self.channels) if isinstance(strides, int) else tuple(strides)
        object.__setattr__(self, "strides", strides)
        lo = self.min_spatial_rank
        if not lo + 1 <= len(self.image_shape) <= 4 or min(self.image_shape) < 1:
            raise ValueError(
                f"image_shape must be (*spatial, channels) with {lo}-3 spatial axes, got {self.image_shape}"
            )
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if len(strides) != len(self.channels) or min(strides) < 1:
            raise ValueError(f"need one positive stride per layer ({len(self.channels)}), got {strides}")
        factor = math.prod(strides)
        if len(self.image_shape) > 1 and any(n % factor for n in self.image_shape[:-1]):
            raise ValueError(
                f"spatial shape {self.image_shape[:-1]} not divisible by prod(strides) = {factor}"
            )
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")
        for name, value, known in (
            ("output_activation", self.output_activation, tuple(OUTPUT_ACTIVATIONS)),
            ("norm", self.norm, NORMS),
            ("down_impl", self.down_impl, DOWN_IMPLS),
            ("up_impl", self.up_impl, UP_IMPLS),
        ):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; expected one of {known}")

    @property
    def spatial_rank(self) -> int:
        """Number of spatial axes (0 for flat features)."""
        return len(self.image_shape) - 1

    def make_encoder(self, out_features: int) -> ConvEncoder:
        """The encoder trunk: ``(B, *image_shape)`` -> ``(B, out_features)``."""
        return ConvEncoder(
            channels=self.channels, kernel_size=self.kernel_size, strides=self.strides,
            out_features=out_features, norm=self.norm, impl=self.down_impl, dtype=self.dtype,
        )

    def make_decoder(self) -> ConvDecoder:
        """The decoder trunk: ``(B, L)`` -> ``(B, *image_shape)``, before the output activation."""
        return ConvDecoder(
            out_shape=self.image_shape, channels=self.channels, kernel_size=self.kernel_size,
            strides=self.strides, norm=self.norm, impl=self.up_impl, dtype=self.dtype,
        )
