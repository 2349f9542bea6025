"""How complex an image is: the length of its lossless encoding, in bits.

The input-complexity correction of likelihood-based anomaly scores (Serra et
al., 2020) compares a model's code length for an image, ``-log2 P(x)``, with
a generic lossless compressor's, ``L(x)``: an image that is simple (smooth,
blurred, mostly background) is both likely under a model of smooth images and
short for the compressor, so the difference removes what complexity alone
explains. Both code lengths are of the same quantised image: intensities in
``[0, 1]`` rounded to ``levels`` equal steps, the resolution at which the
model's density is turned into a probability (:func:`quantisation_bits`).

References:
  J. Serra, D. Alvarez, V. Gomez, O. Slizovskaia, J. F. Nunez, J. Luque,
  "Input complexity and out-of-distribution detection with likelihood-based
  generative models", ICLR 2020.
"""

from __future__ import annotations

import io
import math
import zlib

import numpy as np

__all__ = ["CODECS", "code_length_bits", "code_lengths", "quantisation_bits", "quantise"]

CODECS = ("png", "zlib")


def quantise(image: np.ndarray, *, levels: int = 256) -> np.ndarray:
    """Intensities in ``[0, 1]`` (clipped) rounded to ``levels`` steps: uint8 ``[H, W]`` (or uint16 above 256 levels).

    Args:
      image: ``[H, W]`` or ``[H, W, 1]``.
      levels: number of intensity steps, 2 to 65536.
    """
    if not 2 <= levels <= 65536:
        raise ValueError(f"levels must be in [2, 65536], got {levels}")
    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected one 2D image [H, W] or [H, W, 1], got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("the image holds NaN or infinite values")
    dtype = np.uint8 if levels <= 256 else np.uint16
    return np.round(np.clip(image, 0.0, 1.0) * (levels - 1)).astype(dtype)


def code_length_bits(image: np.ndarray, *, codec: str = "png", levels: int = 256) -> float:
    """Bits of the lossless encoding of the quantised image.

    Args:
      image: ``[H, W]`` or ``[H, W, 1]`` in ``[0, 1]``.
      codec: ``"png"`` (Pillow, compression level 9: PNG's per-row
        prediction filters, then DEFLATE; the whole file, headers included,
        as Serra et al. count it) or ``"zlib"`` (DEFLATE level 9 of the raw
        pixel bytes).
      levels: intensity steps of the quantisation.

    Returns:
      The code length in bits (8 x the bytes written).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {CODECS}")
    pixels = quantise(image, levels=levels)
    if codec == "zlib":
        return 8.0 * len(zlib.compress(pixels.tobytes(), 9))
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return 8.0 * buffer.tell()


def code_lengths(images: np.ndarray, *, codec: str = "png", levels: int = 256) -> np.ndarray:
    """:func:`code_length_bits` of each image of ``[N, H, W(, 1)]``: float64 ``[N]``."""
    return np.asarray([code_length_bits(x, codec=codec, levels=levels) for x in images], np.float64)


def quantisation_bits(num_pixels: int, *, levels: int = 256) -> float:
    """``-D log2(delta)``: the bits that turn a density into the probability of a quantised image.

    With intensities in ``[0, 1]`` rounded to steps of ``delta = 1 / (levels
    - 1)``, the probability of the quantised image is about ``p(x) *
    delta^D`` for ``D`` pixels, so ``-log2 P(x) = -log2 p(x) + D log2(levels
    - 1)``.
    """
    return num_pixels * math.log2(levels - 1)
