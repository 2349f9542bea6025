"""A small convolutional image classifier (Flax Linen), for whole images or image segments.

``ConvClassifier`` maps ``[N, H, W, C]`` images to ``[N, num_outputs]``
logits: the input centred and scaled (``(x - input_mean) / input_std``: a
ReLU network without normalisation on inputs in [0, 1] does not learn a small
bright spot, the constant offset swamps it), then per stage a strided
down-sampling convolution (:class:`jaxmed.models.layers.DownConv`,
the implementation measured fastest on XLA:CPU) and a 3x3 convolution, each
followed by an optional normalisation and ReLU; then the mean and the
maximum of the last feature map over space, concatenated (the embedding),
and one dense layer. The maximum keeps a small bright spot visible in a large
image, where the mean alone would dilute it.

How the outputs are read is the caller's convention; the chest task
(:mod:`jaxmed.tasks.chest`) reads channel 0 as a presence logit and channels
``1:`` as type logits (:func:`jaxmed.losses.presence_type_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.layers import NORMS, DownConv, norm_layer

Array = jax.Array

__all__ = ["CLASSIFIER_PRESETS", "ClassifierConfig", "ConvClassifier"]


class ConvClassifier(nn.Module):
    """Strided-convolution stages, global mean + max pooling, a dense head.

    Attributes:
      channels: output channels of each stage; each stage halves the spatial size.
      num_outputs: logits per image.
      norm: normalisation after each convolution, one of
        :data:`jaxmed.models.layers.NORMS` (``"group"``: groups of 8 channels).
        ``"none"`` trains about twice as fast on XLA:CPU.
      input_mean, input_std: the input is ``(x - input_mean) / input_std``
        before the first layer.
      map_head: a 1x1 convolution of the last feature map gives one logit per
        cell (``with_map``), and output 0 is the largest of them (a finding
        anywhere makes the image positive; outputs ``1:`` stay the dense
        head's). Meant for training with a dense finding-map loss beside the
        image labels: image labels alone barely train a small-spot detector
        in a few hundred steps.

    Example:
      >>> model = ConvClassifier(channels=(8, 16), num_outputs=3)
      >>> x = jnp.zeros((2, 32, 32, 1))
      >>> params = model.init(jax.random.key(0), x)
      >>> model.apply(params, x).shape
      (2, 3)
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_outputs: int = 1
    norm: str = "none"
    input_mean: float = 0.0
    input_std: float = 1.0
    map_head: bool = False

    @nn.compact
    def __call__(self, x: Array, *, with_embedding: bool = False, with_map: bool = False
                 ) -> Array | tuple[Array, ...]:
        """Logits, and on request the embedding they are computed from and the finding map.

        Args:
          x: ``[N, H, W, C]`` images, each spatial size divisible by
            ``2 ** len(channels)``.
          with_embedding: also return the embedding.
          with_map: also return the map logits (needs ``map_head``).

        Returns:
          ``[N, num_outputs]`` logits, or a tuple ``(logits[, embedding][,
          map])`` with the embedding ``[N, 2 * channels[-1]]`` (spatial mean,
          then maximum) and the map ``[N, H / 2**S, W / 2**S]`` (a 1x1
          convolution of the last feature map: one logit per cell, for a
          dense auxiliary loss; ``S = len(channels)``).
        """
        if with_map and not self.map_head:
            raise ValueError("ConvClassifier: with_map=True needs map_head=True")
        if x.ndim != 4:
            raise ValueError(f"ConvClassifier expects [N, H, W, C] input, got shape {x.shape}")
        factor = 2 ** len(self.channels)
        if any(s % factor for s in x.shape[1:3]):
            raise ValueError(f"ConvClassifier: spatial shape {x.shape[1:3]} not divisible by 2**stages = {factor}")
        x = (x - self.input_mean) / self.input_std
        for i, c in enumerate(self.channels):
            x = DownConv(c, (4, 4), (2, 2), name=f"down_{i}")(x)
            x = nn.relu(norm_layer(self.norm, None)(x))
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(x)
            x = nn.relu(norm_layer(self.norm, None)(x))
        embedding = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
        logits = nn.Dense(self.num_outputs, name="head")(embedding)
        cell_logits = None
        if self.map_head:
            cell_logits = nn.Conv(1, (1, 1), name="map")(x)[..., 0]
            # The presence logit is the map's largest cell: a finding anywhere makes the image positive.
            logits = jnp.concatenate([jnp.max(cell_logits, axis=(1, 2))[:, None], logits[:, 1:]], axis=-1)
        out = (logits, *((embedding,) if with_embedding else ()), *((cell_logits,) if with_map else ()))
        return out if len(out) > 1 else logits


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """A :class:`ConvClassifier` and the images it takes, as a registry config.

    Attributes:
      image_shape: ``(H, W, C)`` of one input.
      channels, num_outputs, norm, input_mean, input_std, map_head: as
        :class:`ConvClassifier` (inputs in [0, 1]: ``input_mean=0.5, input_std=0.25``).
    """

    image_shape: tuple[int, ...]
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_outputs: int = 5
    norm: str = "none"
    input_mean: float = 0.0
    input_std: float = 1.0
    map_head: bool = False

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        factor = 2 ** len(self.channels)
        if any(s % factor for s in self.image_shape[:2]):
            raise ValueError(f"spatial shape {self.image_shape[:2]} not divisible by 2**len(channels) = {factor}")
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if not self.input_std > 0:
            raise ValueError(f"input_std must be > 0, got {self.input_std}")

    def make_module(self) -> ConvClassifier:
        """The network: ``[N, *image_shape]`` -> ``[N, num_outputs]`` logits."""
        return ConvClassifier(channels=self.channels, num_outputs=self.num_outputs, norm=self.norm,
                              input_mean=self.input_mean, input_std=self.input_std, map_head=self.map_head)


# Chest-radiograph segments of 272x272 (presence + 4 finding types), and a test-sized net.
CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    "segment272": ClassifierConfig(image_shape=(272, 272, 1), channels=(16, 32, 64, 128), num_outputs=5,
                                   input_mean=0.5, input_std=0.25, map_head=True),
    "tiny": ClassifierConfig(image_shape=(32, 32, 1), channels=(4, 8), num_outputs=5),
}
