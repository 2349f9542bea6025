"""Intensity transforms: percentile clipping, z-score, min-max, windowing.

Each function takes one image (any number of dimensions) as a ``jnp`` array and
returns an array of the same shape, in float32 unless the input is float64.
They are pure, jittable and vmappable. Where a ``mask`` is accepted, the
statistics (percentiles, mean and standard deviation, minimum and maximum) are
taken over the pixels where the mask is true only (e.g. the foreground of a
brain MRI, whose large zero background would otherwise dominate them); the
transform itself is applied to every pixel, and pixels outside the mask are
set to ``background`` when that is given.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = ["clip_percentiles", "minmax", "window", "zscore"]

_WINDOW_FUNCTIONS = ("linear", "linear_exact")


def _as_float(image: ArrayLike) -> Array:
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.floating):
        image = image.astype(jnp.float32)
    return image


def _check_mask(image: Array, mask: ArrayLike | None) -> Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    return mask.astype(bool)


def _fill_outside(out: Array, mask: Array | None, background: float | None) -> Array:
    if mask is None or background is None:
        return out
    return jnp.where(mask, out, jnp.asarray(background, out.dtype))


def clip_percentiles(
    image: ArrayLike,
    *,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: ArrayLike | None = None,
) -> Array:
    """Clips an image to two of its own percentiles.

    Args:
        image: ``[...]`` image, any shape.
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], ``>= lower``.
        mask: optional boolean ``[...]`` (same shape); the percentiles are
            those of ``image[mask]`` (linear interpolation, as
            ``np.percentile``). An empty mask gives NaN bounds.

    Returns:
        ``[...]`` the image clipped to ``[p_lower, p_upper]``, everywhere
        (inside and outside the mask).
    """
    if not 0.0 <= lower <= upper <= 100.0:
        raise ValueError(f"need 0 <= lower <= upper <= 100, got lower={lower}, upper={upper}")
    image = _as_float(image)
    mask = _check_mask(image, mask)
    q = jnp.asarray([lower, upper], image.dtype)
    if mask is None:
        lo, hi = jnp.percentile(image, q)
    else:
        # NaN marks the pixels to ignore: shapes stay static under jit.
        lo, hi = jnp.nanpercentile(jnp.where(mask, image, jnp.nan), q)
    return jnp.clip(image, lo, hi)


def zscore(
    image: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    background: float | None = None,
    eps: float = 1e-8,
) -> Array:
    """Z-score normalisation: ``(image - mean) / std``.

    Args:
        image: ``[...]`` image, any shape.
        mask: optional boolean ``[...]``; mean and (population, ``ddof=0``)
            standard deviation are taken over ``image[mask]``.
        background: if given (with ``mask``), the value written outside the mask.
        eps: added to the standard deviation so a constant image gives zeros,
            not NaN.

    Returns:
        ``[...]`` normalised image (zero mean, unit std over the mask).
    """
    image = _as_float(image)
    mask = _check_mask(image, mask)
    mean = jnp.mean(image, where=mask)
    std = jnp.std(image, where=mask)
    return _fill_outside((image - mean) / (std + eps), mask, background)


def minmax(
    image: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    background: float | None = None,
    lower: float = 0.0,
    upper: float = 1.0,
    eps: float = 1e-8,
) -> Array:
    """Min-max normalisation: maps ``[min, max]`` of the image to ``[lower, upper]``.

    Args:
        image: ``[...]`` image, any shape.
        mask: optional boolean ``[...]``; min and max are taken over
            ``image[mask]``, so pixels outside it may map outside
            ``[lower, upper]`` (no clipping).
        background: if given (with ``mask``), the value written outside the mask.
        lower: output value of the minimum.
        upper: output value of the maximum.
        eps: added to ``max - min`` so a constant image maps to ``lower``.

    Returns:
        ``[...]`` rescaled image.
    """
    image = _as_float(image)
    mask = _check_mask(image, mask)
    if mask is None:
        lo, hi = jnp.min(image), jnp.max(image)
    else:
        lo = jnp.min(image, where=mask, initial=jnp.inf)
        hi = jnp.max(image, where=mask, initial=-jnp.inf)
    out = lower + (image - lo) * ((upper - lower) / (hi - lo + eps))
    return _fill_outside(out, mask, background)


def window(
    image: ArrayLike,
    *,
    level: float,
    width: float,
    lower: float = 0.0,
    upper: float = 1.0,
    function: str = "linear",
) -> Array:
    """Display windowing (window level/centre and width), as for CT.

    Values below the window map to ``lower``, above it to ``upper``, linearly
    in between. ``function`` picks the DICOM definition (PS3.3 C.11.2.1.2):

    * ``"linear"`` (the DICOM default, VOI LUT Function ``LINEAR``): the
      window is ``(level - 0.5) +/- (width - 1) / 2``; needs ``width >= 1``.
    * ``"linear_exact"`` (``LINEAR_EXACT``): the window is
      ``level +/- width / 2``; needs ``width > 0``.

    Args:
        image: ``[...]`` image in modality units (e.g. Hounsfield units).
        level: window centre, in the image's units (e.g. 40 HU for soft tissue).
        width: window width, in the image's units (e.g. 400 HU).
        lower: output value at and below the bottom of the window.
        upper: output value above the top of the window.
        function: ``"linear"`` or ``"linear_exact"``.

    Returns:
        ``[...]`` windowed image in ``[lower, upper]``.

    References:
        DICOM PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3.2 (LINEAR_EXACT).
    """
    if function not in _WINDOW_FUNCTIONS:
        raise ValueError(f"function must be one of {_WINDOW_FUNCTIONS}, got {function!r}")
    if function == "linear":
        if width < 1:
            raise ValueError(f"window width must be >= 1 for 'linear' windowing, got {width}")
        centre, span = level - 0.5, width - 1.0
    else:
        if width <= 0:
            raise ValueError(f"window width must be > 0 for 'linear_exact' windowing, got {width}")
        centre, span = level, width
    image = _as_float(image)
    if span == 0:
        # A one-unit LINEAR window is a step: below-or-at the centre -> lower.
        return jnp.where(image <= centre, lower, upper).astype(image.dtype)
    t = jnp.clip((image - centre) / span + 0.5, 0.0, 1.0)
    return lower + t * (upper - lower)
