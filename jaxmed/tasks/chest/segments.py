"""Image segments of a chest radiograph: windows inside the body regions, at (near) full resolution.

The method (``shared/seeds/003_*``, claims 1, 4-12): segments are defined
inside each identified body region at a resolution reduced by at most 20%
against the radiograph; they overlap; each lung is covered by at least two;
no segment holds more than one lung; a finding lies whole in at least one;
image information outside a segment's region is replaced by a fixed value.

Regions come as one label map ``[H, W]`` (:data:`REGION_LABELS`: 0
background, 1 right lung, 2 left lung, 3 heart; the patient's sides, so the
right lung is on the image's left). A segment is a square window of
``SegmentConfig.window`` radiograph pixels with a *kind*
(:data:`SEGMENT_KINDS`) that names its region; its pixels outside that
region (dilated by ``margin``) are set to ``fill_value``, and it is resized
by ``scale`` (>= 0.8) to ``segment_size`` pixels.

The layout (:func:`segment_layout`), from the region masks, per image:

* each lung: a grid of ``rows_per_lung`` x ``cols_per_lung`` windows over the
  lung's bounding box (widened by ``margin`` on every side), evenly spaced from its top (left) edge to its bottom
  (right) edge, so consecutive windows overlap and together cover the box
  when it is at most ``rows * window`` tall (``cols * window`` wide); a box
  narrower than the window gets the window centred on it, so the window
  reaches no further towards the other lung than half the difference;
* the heart: ``heart_segments`` (0 or 1) window centred on the heart;
* heart-lung overlap: with ``overlap_segments``, one window per lung centred
  on the heart's border with that lung (the heart's lateral edge on that
  side, at the heart's mid-height); its region is the heart and that lung.

Training draws (:func:`training_windows`) jitter the layout windows and add
one window per finding placed at random so that the finding's bounding box
lies inside it (whole, when it fits in a window). Extraction
(:func:`extract_segments`) is ``jax.vmap`` over ``lax.dynamic_slice``
(:func:`jaxmed.data.merge.extract_windows`): static window size, dynamic
corners, no Python loop over windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmed.data.merge import clamp_corners, extract_windows

Array = jax.Array

__all__ = [
    "REGION_LABELS",
    "SEGMENT_KINDS",
    "Layout",
    "SegmentConfig",
    "extract_segments",
    "kind_masks",
    "region_labels",
    "segment_layout",
    "segment_targets",
    "training_windows",
]

REGION_LABELS: tuple[str, ...] = ("background", "right_lung", "left_lung", "heart")
"""Values of a region label map: index = label."""
SEGMENT_KINDS: tuple[str, ...] = ("right_lung", "left_lung", "heart", "right_overlap", "left_overlap")
"""Segment kinds by code; ``*_overlap``: the heart and that lung (where they meet)."""
_RIGHT, _LEFT, _HEART = 1, 2, 3
# Region labels each kind shows.
_KIND_LABELS = ((_RIGHT,), (_LEFT,), (_HEART,), (_RIGHT, _HEART), (_LEFT, _HEART))


@dataclass(frozen=True, kw_only=True)
class SegmentConfig:
    """How segments are laid out, drawn for training and extracted.

    Attributes:
      segment_size: side of a segment as the classifier sees it, pixels. The
        default window (340 pixels at 0.39 mm: 133 mm) is wider than the
        widest phantom lung (about 130 mm), so one column covers a lung.
      scale: segment pixels per radiograph pixel, in ``[0.8, 1]`` (at most
        20% resolution lost); the window is ``round(segment_size / scale)``
        radiograph pixels.
      rows_per_lung, cols_per_lung: the grid of windows per lung
        (``rows * cols >= 2``: each lung in at least two segments).
      heart_segments: windows centred on the heart (0 or 1).
      overlap_segments: one window per lung on the heart's border with it.
      margin: region masks are dilated by this many pixels before blanking
        (keeps the pleural edge in view).
      fill_value: the value of a segment's pixels outside its region.
      min_region_fraction: a window whose region covers less than this
        fraction of it is not valid (an empty or missing region).
      jitter: training: largest random shift of a layout window, pixels.
      label_fraction: training: a segment is positive for a finding when it
        shows at least this fraction of the finding's pixels; between
        ``ignore_fraction`` and it, the segment is left out of the loss
        (it shows a part too small to call).
      ignore_fraction: see ``label_fraction``.
    """

    segment_size: int = 272
    scale: float = 0.8
    rows_per_lung: int = 3
    cols_per_lung: int = 1
    heart_segments: int = 1
    overlap_segments: bool = True
    margin: int = 8
    fill_value: float = 0.0
    min_region_fraction: float = 0.02
    jitter: int = 32
    label_fraction: float = 0.5
    ignore_fraction: float = 0.05

    def __post_init__(self):
        if self.segment_size < 8:
            raise ValueError(f"SegmentConfig.segment_size must be >= 8, got {self.segment_size}")
        if not 0.8 <= self.scale <= 1.0:
            raise ValueError(f"SegmentConfig.scale must be in [0.8, 1] (at most 20% resolution lost), got {self.scale}")
        if self.segment_size / self.window < 0.8 - 1e-9:
            raise ValueError(f"SegmentConfig: segment_size {self.segment_size} / window {self.window} is below 0.8")
        if min(self.rows_per_lung, self.cols_per_lung) < 1 or self.rows_per_lung * self.cols_per_lung < 2:
            raise ValueError(f"SegmentConfig: each lung needs at least two segments (rows_per_lung * cols_per_lung "
                             f">= 2), got {self.rows_per_lung} x {self.cols_per_lung}")
        if self.heart_segments not in (0, 1):
            raise ValueError(f"SegmentConfig.heart_segments must be 0 or 1, got {self.heart_segments}")
        if self.margin < 0 or self.jitter < 0:
            raise ValueError(f"SegmentConfig: margin and jitter must be >= 0, got {self.margin}, {self.jitter}")
        if not 0.0 <= self.min_region_fraction < 1.0:
            raise ValueError(f"SegmentConfig.min_region_fraction must be in [0, 1), got {self.min_region_fraction}")
        if not 0.0 <= self.ignore_fraction <= self.label_fraction <= 1.0:
            raise ValueError("SegmentConfig: need 0 <= ignore_fraction <= label_fraction <= 1, got "
                             f"{self.ignore_fraction}, {self.label_fraction}")

    @property
    def window(self) -> int:
        """Side of a window in radiograph pixels: ``round(segment_size / scale)``."""
        return int(round(self.segment_size / self.scale))

    @property
    def kinds(self) -> np.ndarray:
        """``[K]`` int32 kind codes (:data:`SEGMENT_KINDS`) of the layout's windows, in order."""
        per_lung = self.rows_per_lung * self.cols_per_lung
        kinds = [0] * per_lung + [1] * per_lung + [2] * self.heart_segments
        kinds += [3, 4] if self.overlap_segments else []
        return np.asarray(kinds, np.int32)

    @property
    def num_segments(self) -> int:
        """Windows in the layout of one radiograph."""
        return len(self.kinds)


class Layout(NamedTuple):
    """Windows of one radiograph.

    Attributes:
      corners: ``[K, 2]`` int32 ``(row, column)`` of each window's first
        pixel, inside the image.
      kinds: ``[K]`` int32 codes into :data:`SEGMENT_KINDS`.
      valid: ``[K]`` bool: the window's region covers at least
        ``min_region_fraction`` of it.
    """

    corners: Array
    kinds: Array
    valid: Array


def region_labels(right_lung: Array, left_lung: Array, heart: Array) -> Array:
    """The label map (:data:`REGION_LABELS`) of three masks ``[H, W]`` (lungs win where masks meet)."""
    labels = jnp.where(heart, _HEART, 0)
    labels = jnp.where(left_lung, _LEFT, labels)
    return jnp.where(right_lung, _RIGHT, labels).astype(jnp.uint8)


def _dilate(mask: Array, radius: int) -> Array:
    """Binary dilation by a square of side ``2 radius + 1`` (separable max filter)."""
    if radius == 0:
        return mask
    x = mask.astype(jnp.float32)
    size = 2 * radius + 1
    x = lax.reduce_window(x, -jnp.inf, lax.max, (size, 1), (1, 1), "SAME")
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, size), (1, 1), "SAME")
    return x > 0


def kind_masks(labels: Array, *, margin: int) -> Array:
    """``[len(SEGMENT_KINDS), H, W]`` bool: the region each kind shows.

    Each region is dilated by ``margin``, less the pixels of a lung the kind
    does not show: a segment never shows a pixel of a lung that is not its
    own (the heart segment none), however close the lungs come.
    """
    right_lung, left_lung = labels == _RIGHT, labels == _LEFT
    right, left, heart = (_dilate(m, margin) for m in (right_lung, left_lung, labels == _HEART))
    return jnp.stack([right & ~left_lung, left & ~right_lung, heart & ~right_lung & ~left_lung,
                      (right | heart) & ~left_lung, (left | heart) & ~right_lung])


def _extent(mask: Array) -> tuple[Array, Array, Array, Array, Array]:
    """``(r0, r1, c0, c1, any)``: the bounding box ``[r0, r1) x [c0, c1)`` of a mask (0s when empty)."""
    rows, cols = jnp.any(mask, axis=1), jnp.any(mask, axis=0)
    h, w = mask.shape
    r0, c0 = jnp.argmax(rows), jnp.argmax(cols)
    r1, c1 = h - jnp.argmax(rows[::-1]), w - jnp.argmax(cols[::-1])
    return r0, r1, c0, c1, jnp.any(rows)


def _spread(start: Array, stop: Array, n: int, window: int) -> Array:
    """``n`` window starts from ``start`` to ``stop - window``, evenly; centred when the span is shorter."""
    span = stop - start
    if n == 1:
        return (start + (span - window) // 2)[None]
    fractions = jnp.arange(n, dtype=jnp.float32) / (n - 1)
    spread = start + jnp.round(fractions * (span - window).astype(jnp.float32)).astype(jnp.int32)
    centred = jnp.broadcast_to(start + (span - window) // 2, (n,))
    return jnp.where(span >= window, spread, centred).astype(jnp.int32)


def segment_layout(labels: Array, config: SegmentConfig) -> Layout:
    """The windows of one radiograph from its region label map (see the module docstring).

    Pure and jittable (``config`` static); ``jax.vmap`` over images.

    Args:
      labels: ``[H, W]`` region labels (:data:`REGION_LABELS`), ``H, W >= window``.
      config: the layout.

    Returns:
      The :class:`Layout`, ``K = config.num_segments`` windows in the order
      of ``config.kinds``.
    """
    h, w = labels.shape
    win = config.window
    if win > min(h, w):
        raise ValueError(f"segment windows of {win} pixels do not fit a {h}x{w} radiograph")
    corners = []
    pad = config.margin  # a predicted lung edge a few pixels inside the true one stays covered
    for value in (_RIGHT, _LEFT):
        r0, r1, c0, c1, _ = _extent(labels == value)
        rows = _spread(r0 - pad, r1 + pad, config.rows_per_lung, win)
        cols = _spread(c0 - pad, c1 + pad, config.cols_per_lung, win)
        grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
        corners.append(grid)
    hr0, hr1, hc0, hc1, _ = _extent(labels == _HEART)
    h_mid, c_mid = (hr0 + hr1) // 2, (hc0 + hc1) // 2
    if config.heart_segments:
        corners.append(jnp.stack([h_mid - win // 2, c_mid - win // 2])[None])
    if config.overlap_segments:
        # The right lung lies on the image's left: its border with the heart is the heart's left edge.
        corners.append(jnp.stack([jnp.stack([h_mid - win // 2, hc0 - win // 2]),
                                  jnp.stack([h_mid - win // 2, hc1 - win // 2])]))
    corners = clamp_corners(jnp.concatenate(corners).astype(jnp.int32), image_shape=(h, w), window=(win, win))
    kinds = jnp.asarray(config.kinds)
    return Layout(corners, kinds, _valid(labels, corners, kinds, config))


def _valid(labels: Array, corners: Array, kinds: Array, config: SegmentConfig) -> Array:
    """Windows whose own region (undilated) covers at least ``min_region_fraction`` of them."""
    masks = kind_masks(labels, margin=0)
    win = config.window

    def fraction(corner, kind):
        window = lax.dynamic_slice(masks, (kind, corner[0], corner[1]), (1, win, win))
        return jnp.mean(window.astype(jnp.float32))

    present = jax.vmap(fraction)(corners, kinds) >= max(config.min_region_fraction, 1.0 / (win * win))
    return present


def training_windows(
    key: Array,
    labels: Array,
    finding_masks: Array,
    finding_valid: Array,
    finding_lung: Array,
    config: SegmentConfig,
) -> Layout:
    """Windows drawn for training one radiograph: the jittered layout, and one window around each finding.

    The layout windows are shifted by up to ``config.jitter`` pixels per axis.
    Finding slot ``f`` adds a window in that finding's lung (kind 0 or 1)
    with its corner drawn uniformly among those that hold the finding's
    bounding box whole; a box larger than the window gets it centred. An
    unused slot adds a window drawn the same way around a random pixel of a
    random lung (drawn uniformly over that lung), so that where a window
    sits in the lung tells nothing about a finding (a jittered layout copy
    would: the classifier would learn that off-layout windows are positive).

    Args:
      key: PRNG key.
      labels: ``[H, W]`` region labels.
      finding_masks: ``[F, H, W]`` bool.
      finding_valid: ``[F]`` bool.
      finding_lung: ``[F]`` int, 0 right, 1 left (as the chest phantom's ``finding_lung``).
      config: the layout.

    Returns:
      A :class:`Layout` of ``config.num_segments + F`` windows, the finding
      windows last.
    """
    h, w = labels.shape
    win = config.window
    layout = segment_layout(labels, config)
    k_jitter, k_find, k_pick, k_spare = jax.random.split(key, 4)
    shift = jax.random.randint(k_jitter, layout.corners.shape, -config.jitter, config.jitter + 1)
    corners = clamp_corners(layout.corners + shift, image_shape=(h, w), window=(win, win))

    def window_around(key, r0, r1, c0, c1):
        u = jax.random.uniform(key, (2,))

        def axis(lo_edge, hi_edge, size, u):
            lo = jnp.maximum(hi_edge - win, 0)
            hi = jnp.minimum(lo_edge, size - win)
            drawn = lo + jnp.floor(u * (hi - lo + 1).astype(jnp.float32)).astype(jnp.int32)
            centred = (lo_edge + hi_edge) // 2 - win // 2
            return jnp.where(hi >= lo, jnp.minimum(drawn, hi), centred)

        return jnp.stack([axis(r0, r1, h, u[0]), axis(c0, c1, w, u[1])])

    def finding_window(key, mask):
        r0, r1, c0, c1, _ = _extent(mask)
        return window_around(key, r0, r1, c0, c1)

    def spare_window(key, lung):
        k_pixel, k_window = jax.random.split(key)
        mask = labels == (lung + _RIGHT)
        noise = jax.random.gumbel(k_pixel, (h, w))
        flat = jnp.argmax(jnp.where(mask, noise, -jnp.inf))  # uniform over the lung's pixels
        r, c = flat // w, flat % w
        return window_around(k_window, r, r + 1, c, c + 1)

    num_slots = finding_masks.shape[0]
    found = jax.vmap(finding_window)(jax.random.split(k_find, num_slots), finding_masks)
    spare_lung = jax.random.randint(k_pick, (num_slots,), 0, 2)
    spare = jax.vmap(spare_window)(jax.random.split(k_spare, num_slots), spare_lung)
    found = jnp.where(finding_valid[:, None], found, spare)
    found_kinds = jnp.where(finding_valid, jnp.clip(finding_lung, 0, 1), spare_lung)
    corners = clamp_corners(jnp.concatenate([corners, found]), image_shape=(h, w), window=(win, win))
    kinds = jnp.concatenate([layout.kinds, found_kinds.astype(jnp.int32)])
    return Layout(corners, kinds, _valid(labels, corners, kinds, config))


def extract_segments(image: Array, labels: Array, layout: Layout, config: SegmentConfig) -> Array:
    """The segments of one radiograph: windows at the layout's corners, blanked outside their regions, rescaled.

    Args:
      image: ``[H, W, C]`` radiograph.
      labels: ``[H, W]`` region labels.
      layout: the windows (:func:`segment_layout` or :func:`training_windows`).
      config: the segments' settings.

    Returns:
      ``[K, s, s, C]`` float32 segments, ``s = config.segment_size``; a
      pixel outside the window's region (dilated by ``margin``) is
      ``fill_value``.
    """
    win, size = config.window, config.segment_size
    masks = kind_masks(labels, margin=config.margin)
    windows = extract_windows(image.astype(jnp.float32), layout.corners, window=(win, win))
    shown = jax.vmap(lambda corner, kind: lax.dynamic_slice(masks, (kind, corner[0], corner[1]), (1, win, win))[0])(
        layout.corners, layout.kinds)
    segments = jnp.where(shown[..., None], windows, jnp.float32(config.fill_value))
    if size != win:
        # Area-weighted (antialiased) resampling: the classifier sees the window, not aliased samples of it.
        segments = jax.image.resize(segments, (segments.shape[0], size, size, segments.shape[-1]), "linear",
                                    antialias=True)
    return segments


def segment_targets(
    labels: Array,
    finding_masks: Array,
    finding_valid: Array,
    finding_type: Array,
    layout: Layout,
    config: SegmentConfig,
) -> dict[str, Array]:
    """What each window shows of each finding, and the segment's training targets.

    Args:
      labels: ``[H, W]`` region labels.
      finding_masks: ``[F, H, W]`` bool.
      finding_valid: ``[F]`` bool.
      finding_type: ``[F]`` int type codes (-1 where not valid).
      layout: the windows.
      config: the segments' settings.

    Returns:
      ``{"fraction": [K, F]`` float32 share of each finding's pixels visible
      in each window (inside the window and its dilated region; 0 for
      unused slots), ``"whole": [K, F]`` bool (all of them), ``"label":
      [K]`` float32 1 when some finding shows at least ``label_fraction``,
      ``"weight": [K]`` float32 (0 for windows that are not valid or that
      show between ``ignore_fraction`` and ``label_fraction`` of a finding
      and none above), ``"finding_type": [K]`` int32 (the type of the
      finding shown most, -1 for negatives)``}``.
    """
    win = config.window
    masks = kind_masks(labels, margin=config.margin)
    total = jnp.sum(finding_masks, axis=(1, 2), dtype=jnp.int32)

    def shown(corner, kind):
        region = lax.dynamic_slice(masks, (kind, corner[0], corner[1]), (1, win, win))
        found = lax.dynamic_slice(finding_masks, (0, corner[0], corner[1]), (finding_masks.shape[0], win, win))
        return jnp.sum(found & region, axis=(1, 2), dtype=jnp.int32)

    counts = jax.vmap(shown)(layout.corners, layout.kinds)
    usable = finding_valid & (total > 0)
    fraction = jnp.where(usable[None], counts / jnp.maximum(total, 1)[None], 0.0).astype(jnp.float32)
    whole = usable[None] & (counts == total[None])
    best = jnp.max(fraction, axis=1)
    label = (best >= config.label_fraction).astype(jnp.float32)
    unsure = (best > config.ignore_fraction) & (label == 0)
    weight = (layout.valid & ~unsure).astype(jnp.float32)
    kind_of = jnp.take(finding_type, jnp.argmax(fraction, axis=1))
    return {"fraction": fraction, "whole": whole, "label": label, "weight": weight,
            "finding_type": jnp.where(label > 0, kind_of, -1).astype(jnp.int32)}

