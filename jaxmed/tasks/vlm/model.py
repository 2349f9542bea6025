"""The vision-language model: image patch tokens and instruction tokens into a prefix-LM, three heads.

The sequence is ``[image tokens; instruction tokens; answer tokens]``
(:func:`jaxmed.models.transformer.make_attn_mask`: image and instruction
attend to each other fully, the answer causally). Image tokens are the
radiograph cut into ``patch_size`` patches, each encoded by

* ``encoder="autoencoder"``: a trained :class:`jaxmed.models.Autoencoder` of
  one patch (frozen unless ``finetune_encoder``), its features projected to
  the model width; or
* ``encoder="vit"``: a linear patch embedding trained end to end (a small
  ViT), the comparison; or
* ``encoder="conv"``: a convolutional stem trained end to end (``log2
  patch_size`` stride-2 4x4 convolutions, GroupNorm, ReLU: one token per
  patch; Xiao et al., *Early convolutions help transformers see better*,
  NeurIPS 2021).

Heads (:class:`VisionLanguageModel`):

* text: next-token logits through the tied token embedding;
* segmentation: the hidden state at the answer's ``<seg>`` token, projected to
  a query, against per-patch keys (``mask_subcells``\\ :sup:`2` keys per image
  token, from the image tokens' hidden states): a logit grid of
  ``grid * mask_subcells`` cells a side, bilinearly upsampled to the image;
* landmark: the hidden state at the answer's ``<loc>`` token regressed to
  ``(row, column)`` in [0, 1] of the image extent;
* dense (``dense_classes > 0``, training only): the image tokens' hidden
  states, each to ``mask_subcells``\\ :sup:`2` cells of ``dense_classes``
  logits: the anatomy and finding maps of every training radiograph
  (:data:`jaxmed.tasks.vlm.data.DENSE_MAPS`). It supervises every image token
  at every step, where the mask head learns only from the rows that ask for a
  mask; the instructions are answered without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.models.autoencoder import Autoencoder, AutoencoderConfig
from jaxmed.models.layers import DownConv
from jaxmed.models.transformer import Transformer, TransformerConfig, make_attn_mask

__all__ = ["ENCODERS", "VLMConfig", "VisionLanguageModel", "patchify"]

Array = jax.Array
ENCODERS = ("autoencoder", "vit", "conv")


@dataclass(frozen=True, kw_only=True)
class VLMConfig:
    """Architecture of a :class:`VisionLanguageModel`.

    Attributes:
      vocab_size: the tokenizer's vocabulary size.
      image_size: the square input's side in pixels.
      patch_size: the patches' side; ``image_size`` must be a multiple.
      encoder: ``"autoencoder"`` or ``"vit"`` (module docstring).
      finetune_encoder: train the autoencoder's encoder with the rest (else frozen).
      patch_features: the autoencoder's feature size per patch.
      autoencoder_channels: its encoder/decoder channels.
      stem_channels: the convolutional stem's channels (``encoder="conv"``),
        one stride-2 layer each: ``2**len(stem_channels) == patch_size``.
      width, depth, num_heads, mlp_dim: the transformer.
      prompt_len: instruction tokens (task token included), padded.
      answer_len: answer tokens of short answers (``<bos>`` in, ``<eos>`` out included).
      report_len: answer tokens of reports.
      mask_subcells: mask cells per patch side.
      mask_dim: the size of the mask query and keys.
      dense_classes: maps of the dense auxiliary head (0: no such head).
    """

    vocab_size: int
    image_size: int = 128
    patch_size: int = 16
    encoder: str = "autoencoder"
    finetune_encoder: bool = False
    patch_features: int = 32
    autoencoder_channels: tuple[int, ...] = (16, 32)
    stem_channels: tuple[int, ...] = (16, 32, 64, 128)
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    prompt_len: int = 32
    answer_len: int = 8
    report_len: int = 128
    mask_subcells: int = 4
    mask_dim: int = 32
    dense_classes: int = 0
    dtype: str = field(default="float32")

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if min(self.vocab_size, self.prompt_len, self.answer_len, self.report_len, self.mask_subcells,
               self.mask_dim, self.patch_features) < 1 or self.dense_classes < 0:
            raise ValueError(f"sizes must be >= 1: {self}")
        if self.encoder == "conv" and 2 ** len(self.stem_channels) != self.patch_size:
            raise ValueError(f"a conv stem of {len(self.stem_channels)} stride-2 layers makes patches of "
                             f"{2 ** len(self.stem_channels)} pixels, not patch_size {self.patch_size}")
        if self.patch_size % self.mask_subcells:
            raise ValueError(f"patch_size {self.patch_size} is not a multiple of mask_subcells {self.mask_subcells}")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid**2

    @property
    def prefix_len(self) -> int:
        """Image plus instruction tokens."""
        return self.num_image_tokens + self.prompt_len

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(vocab_size=self.vocab_size, width=self.width, depth=self.depth,
                                 num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                 max_len=self.prefix_len + max(self.answer_len, self.report_len) + 1,
                                 dtype=self.dtype)

    def autoencoder_config(self) -> AutoencoderConfig:
        """The patch autoencoder (``encoder="autoencoder"``)."""
        return AutoencoderConfig(image_shape=(self.patch_size, self.patch_size, 1), feature_dim=self.patch_features,
                                 channels=self.autoencoder_channels)


class ConvStem(nn.Module):
    """``[B, H, W, C]`` -> ``[B, H / 2**L, W / 2**L, channels[-1]]``: L x [4x4 stride-2 conv, GroupNorm, ReLU].

    Attributes:
      channels: each layer's output channels (multiples of 8: GroupNorm of 8-channel groups).
    """

    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for c in self.channels:
            x = DownConv(c, (4, 4), (2, 2))(x)
            x = nn.relu(nn.GroupNorm(num_groups=None, group_size=min(8, c))(x))
        return x


def patchify(images: Array, patch_size: int) -> Array:
    """``[B, H, W, C]`` -> ``[B, (H/p)(W/p), p, p, C]``, patches in row-major order."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p, p, c)


class VisionLanguageModel(nn.Module):
    """Prefix-LM over image patch tokens and an instruction, with text, mask and landmark heads.

    Attributes:
      config: the architecture.
    """

    config: VLMConfig

    def setup(self):
        cfg = self.config
        if cfg.encoder == "autoencoder":
            self.patch_encoder = Autoencoder(cfg.autoencoder_config())
        elif cfg.encoder == "conv":
            self.stem = ConvStem(tuple(cfg.stem_channels))
        self.project = nn.Dense(cfg.width, name="project")
        self.lm = Transformer(cfg.transformer_config())
        self.mask_query = nn.Dense(cfg.mask_dim)
        self.mask_keys = nn.Dense(cfg.mask_subcells**2 * cfg.mask_dim)
        self.landmark_head = nn.Dense(2)
        if cfg.dense_classes:
            self.dense_head = nn.Dense(cfg.mask_subcells**2 * cfg.dense_classes)

    def image_tokens(self, images: Array) -> Array:
        """``[B, H, W, 1]`` -> ``[B, N, width]``."""
        cfg = self.config
        if cfg.encoder == "conv":
            features = self.stem(images.astype(jnp.float32))
            return self.project(features.reshape(features.shape[0], -1, features.shape[-1]))
        patches = patchify(images.astype(jnp.float32), cfg.patch_size)
        if cfg.encoder == "autoencoder":
            features = self.patch_encoder.encode(patches)
            if not cfg.finetune_encoder:
                features = jax.lax.stop_gradient(features)
        else:
            features = patches.reshape(*patches.shape[:2], -1)
        return self.project(features)

    def prefix(self, images: Array, prompt: Array, prompt_mask: Array) -> tuple[Array, Array]:
        """Embedded prefix ``[B, P, width]`` and its input mask ``[B, P]`` (image tokens always valid)."""
        img = self.image_tokens(images)
        x = jnp.concatenate([img, self.lm.embed(prompt).astype(img.dtype)], axis=1)
        valid = jnp.concatenate([jnp.ones(img.shape[:2], bool), prompt_mask.astype(bool)], axis=1)
        return x, valid

    def __call__(self, images: Array, prompt: Array, prompt_mask: Array, answer_in: Array,
                 answer_mask: Array) -> Array:
        """Hidden states ``[B, P + A, width]`` of ``[image; prompt; answer_in]`` (answer causal)."""
        x, valid = self.prefix(images, prompt, prompt_mask)
        x = jnp.concatenate([x, self.lm.embed(answer_in).astype(x.dtype)], axis=1)
        input_mask = jnp.concatenate([valid, answer_mask.astype(bool)], axis=1)
        mask_ar = jnp.concatenate([jnp.zeros(valid.shape, jnp.int32), jnp.ones(answer_mask.shape, jnp.int32)], 1)
        return self.lm(x, make_attn_mask(input_mask, mask_ar))

    def text_logits(self, hidden: Array) -> Array:
        """``[B, T, width]`` -> ``[B, T, vocab]``."""
        return self.lm.logits(hidden)

    def mask_logits(self, image_hidden: Array, query_hidden: Array) -> Array:
        """Mask logits ``[B, image_size, image_size]`` from the image tokens' hidden states and the query's."""
        cfg = self.config
        b, s, g = image_hidden.shape[0], cfg.mask_subcells, cfg.grid
        keys = self.mask_keys(image_hidden).reshape(b, g, g, s, s, cfg.mask_dim)
        query = self.mask_query(query_hidden)
        cells = jnp.einsum("bijuvd,bd->biujv", keys, query) / math.sqrt(cfg.mask_dim)
        cells = cells.reshape(b, g * s, g * s)
        return jax.image.resize(cells, (b, cfg.image_size, cfg.image_size), "linear")

    def dense_logits(self, image_hidden: Array) -> Array:
        """``[B, N, width]`` -> ``[B, C, C, dense_classes]`` logits, ``C = grid * mask_subcells`` cells a side."""
        cfg = self.config
        b, s, g, k = image_hidden.shape[0], cfg.mask_subcells, cfg.grid, cfg.dense_classes
        cells = self.dense_head(image_hidden).reshape(b, g, g, s, s, k).transpose(0, 1, 3, 2, 4, 5)
        return cells.reshape(b, g * s, g * s, k)

    def landmark(self, query_hidden: Array) -> Array:
        """``[B, width]`` -> ``(row, column)`` ``[B, 2]`` in [0, 1] of the image extent."""
        return jax.nn.sigmoid(self.landmark_head(query_hidden))

    def heads(self, images: Array, prompt: Array, prompt_mask: Array, answer_in: Array, answer_mask: Array,
              query_index: Array) -> dict[str, Array]:
        """All three heads in one pass (training and teacher-forced prediction).

        Args:
          query_index: ``[B]`` the answer position whose hidden state queries
            the mask and landmark heads (that of ``<seg>`` / ``<loc>``).

        Returns:
          ``{"text": [B, A, vocab], "mask": [B, H, W], "landmark": [B, 2]}``
          (text logits at the answer positions), and ``"dense"``
          ``[B, C, C, dense_classes]`` when the model has that head.
        """
        cfg = self.config
        hidden = self(images, prompt, prompt_mask, answer_in, answer_mask)
        n, p = cfg.num_image_tokens, cfg.prefix_len
        answer_hidden = hidden[:, p:]
        query = jnp.take_along_axis(answer_hidden, query_index[:, None, None], axis=1)[:, 0]
        out = {"text": self.text_logits(answer_hidden), "mask": self.mask_logits(hidden[:, :n], query),
               "landmark": self.landmark(query)}
        if cfg.dense_classes:
            out["dense"] = self.dense_logits(hidden[:, :n])
        return out
