"""Code lengths of images (jaxmed.data.complexity), against bounds and decoders that are not ours."""

import io
import math
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxmed.data.complexity import code_length_bits, code_lengths, quantisation_bits, quantise


def test_quantise_by_hand():
    image = np.array([[0.0, 0.5, 1.0], [-0.2, 0.001, 1.7]])
    np.testing.assert_array_equal(quantise(image), [[0, 128, 255], [0, 0, 255]])
    assert quantise(image[..., None]).dtype == np.uint8
    np.testing.assert_array_equal(quantise(image, levels=2), [[0, 0, 1], [0, 0, 1]])  # 0.5 rounds to even
    with pytest.raises(ValueError, match="NaN"):
        quantise(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="one 2D image"):
        quantise(np.zeros((2, 2, 2)))


def test_png_is_lossless_and_counted_whole(rng):
    image = rng.uniform(size=(32, 32, 1))
    bits = code_length_bits(image, codec="png")
    # Encode the same pixels with Pillow and decode them: the bytes are a PNG of exactly the quantised image.
    buffer = io.BytesIO()
    Image.fromarray(quantise(image)).save(buffer, format="PNG", compress_level=9)
    assert bits == 8 * buffer.tell()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))), quantise(image))
    assert code_length_bits(image, codec="zlib") == 8 * len(zlib.compress(quantise(image).tobytes(), 9))


def test_code_lengths_follow_the_information_in_the_image(rng):
    d = 64 * 64
    noise = rng.integers(0, 256, size=(64, 64)) / 255.0  # 8 bits of entropy per pixel
    smooth = np.outer(np.linspace(0, 1, 64), np.ones(64))
    constant = np.full((64, 64), 0.3)
    for codec in ("png", "zlib"):
        # No lossless code is shorter than the entropy of i.i.d. uniform bytes (bar a few bytes of luck).
        assert code_length_bits(noise, codec=codec) >= 8 * d - 64
        assert code_length_bits(constant, codec=codec) < 0.25 * d  # headers and a run of one value
        assert code_length_bits(constant, codec=codec) < code_length_bits(smooth, codec=codec) < 0.5 * 8 * d
    np.testing.assert_array_equal(code_lengths(np.stack([noise, constant])),
                                  [code_length_bits(noise), code_length_bits(constant)])


def test_quantisation_bits():
    assert quantisation_bits(4096) == pytest.approx(4096 * math.log2(255))
    assert quantisation_bits(10, levels=2) == 0.0
