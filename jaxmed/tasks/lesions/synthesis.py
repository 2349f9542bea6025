"""Abnormality by synthesis: mask part of an exam, fill it in with a network trained on normal exams, compare.

An inpainting network (a :class:`jaxmed.models.UNet` with ``M`` outputs)
sees the exam's images with one patch blanked (0) and the patch's mask as an
extra channel, and predicts the images; it is trained on lesion-free exams
only, with the squared error inside the patch (:func:`jaxmed.losses.masked_mean`),
the patch drawn per example and step from the grid below. At test time a
sliding grid of patches (side ``patch``, stride ``stride``; `patch_masks`)
covers the image; every patch is filled in (the ``K`` masks are a
``jax.vmap`` axis, one batched call), and a pixel's synthesis error is the
mean over the patches covering it of the squared difference between input
and synthesis, averaged over modalities. The anomaly map is that error
smoothed by a 3x3 (3x3x3) mean; where the network cannot predict the tissue
from its surroundings, e.g. a lesion, it is large.

Some places are hard to fill in for every exam (the edges of the rectum's
gas, the organ's rim), so the error is judged against normal exams:
`anomaly_probabilities` divides it by the mean error of normal validation
exams at the same place of the canonical grid (plus a tenth of its mean over
the grid), and maps the ratio to [0, 1] by ``1 - exp(-r / q)``, ``q`` the
ratio's 99th percentile over the normal exams, for PI-CAI's candidate
extraction.

References:
  The patent text of the lesions task (``shared/seeds/001_*``), FIG. 5-7:
  an incomplete image, its synthesis by a network trained on normal images,
  and their difference.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.losses import masked_mean
from jaxmed.models import UNet

__all__ = ["InpaintConfig", "anomaly_maps", "anomaly_probabilities", "init_inpainter", "inpaint_loss",
           "patch_masks"]

_CHUNK = 8


@dataclass(frozen=True, kw_only=True)
class InpaintConfig:
    """The inpainting network and its patches.

    Attributes:
      patch: side of a masked patch, pixels (each spatial axis; capped at its size).
      stride: step of the sliding grid (None: half the patch).
      features, depth: of its U-Net.
    """

    patch: int = 12
    stride: int | None = None
    features: int = 8
    depth: int = 3

    def __post_init__(self):
        if self.patch < 2 or (self.stride is not None and self.stride < 1):
            raise ValueError(f"need patch >= 2 and stride >= 1, got {self.patch}, {self.stride}")
        UNet(features=self.features, depth=self.depth, norm_groups=min(8, self.features))  # validates them

    def make_module(self, num_modalities: int) -> UNet:
        return UNet(features=self.features, depth=self.depth, out_channels=num_modalities,
                    norm_groups=min(8, self.features))


def patch_masks(shape: tuple[int, ...], *, patch: int, stride: int | None = None) -> np.ndarray:
    """The sliding grid of square (cubic) patches: bool ``[K, *shape]``.

    Along an axis of size ``n`` with side ``p = min(patch, n)`` the patches
    start at ``0, s, 2s, ...`` and a last one ends at the edge, so every
    pixel is covered; ``s`` is ``stride`` (default ``p // 2``).
    """
    starts = []
    for n in shape:
        p = min(patch, n)
        s = stride or max(1, p // 2)
        axis = list(range(0, n - p + 1, s))
        if axis[-1] != n - p:
            axis.append(n - p)
        starts.append([(a, p) for a in axis])
    masks = []
    for corner in itertools.product(*starts):
        m = np.zeros(shape, bool)
        m[tuple(slice(a, a + p) for a, p in corner)] = True
        masks.append(m)
    return np.stack(masks)


def _inputs(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``x [N, *S, M]`` with the patch blanked, and the mask as a channel: ``[N, *S, M + 1]``."""
    m = mask[..., None].astype(x.dtype)
    return jnp.concatenate([x * (1 - m), m], axis=-1)


def init_inpainter(key: jax.Array, config: InpaintConfig, image_shape: tuple[int, ...]) -> Any:
    """Fresh inpainting variables for images ``image_shape = (*S, M)``."""
    x = jnp.zeros((1, *image_shape[:-1], image_shape[-1] + 1), jnp.float32)
    return jax.jit(config.make_module(image_shape[-1]).init)(key, x)


@functools.lru_cache(maxsize=8)
def inpaint_loss(config: InpaintConfig, shape: tuple[int, ...], num_modalities: int):
    """``loss_fn(params, batch, key)``: squared synthesis error inside one random grid patch per exam."""
    masks = jnp.asarray(patch_masks(shape, patch=config.patch, stride=config.stride))
    model = config.make_module(num_modalities)

    def loss_fn(params, batch, key):
        x = batch["image"]
        mask = masks[jax.random.randint(key, (x.shape[0],), 0, masks.shape[0])]
        pred = model.apply(params, _inputs(x, mask))
        errors = jax.vmap(lambda p, t, m: masked_mean(jnp.mean((p - t) ** 2, axis=-1), m))(pred, x, mask)
        loss = jnp.mean(errors)
        return loss, {"patch_mse": loss}

    return loss_fn


def _smooth(a: jax.Array) -> jax.Array:
    """3x3 (3x3x3) mean over the spatial axes of ``[N, *S]``, edges by the mean of what lies inside."""
    window = (1,) + (3,) * (a.ndim - 1)
    total = jax.lax.reduce_window(a, 0.0, jax.lax.add, window, (1,) * a.ndim, "SAME")
    count = jax.lax.reduce_window(jnp.ones_like(a), 0.0, jax.lax.add, window, (1,) * a.ndim, "SAME")
    return total / count


@functools.partial(jax.jit, static_argnames=("config",))
def _anomaly(params, x, masks, *, config: InpaintConfig):
    model = config.make_module(x.shape[-1])

    def one(mask):
        mask = jnp.broadcast_to(mask[None], x.shape[:-1])
        pred = model.apply(params, _inputs(x, mask))
        return jnp.where(mask, jnp.mean((pred - x) ** 2, axis=-1), 0.0)

    errors = jax.vmap(one)(masks)  # [K, N, *S]
    covered = jnp.sum(masks, axis=0).astype(x.dtype)
    return _smooth(jnp.sum(errors, axis=0) / covered[None])


def anomaly_maps(params, config: InpaintConfig, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Synthesis-error anomaly maps ``[n, *S]`` of images ``[n, *S, M]`` (module docstring)."""
    from tqdm.auto import tqdm

    masks = jnp.asarray(patch_masks(images.shape[1:-1], patch=config.patch, stride=config.stride))
    n = len(images)
    size = min(_CHUNK, n)
    out = []
    for start in tqdm(range(0, n, size), desc="synthesis", unit="chunk", disable=not progress):
        rows = np.arange(start, start + size) % n
        out.append(np.asarray(_anomaly(params, jnp.asarray(images[rows]), masks, config=config))[: min(size, n - start)])
    return np.concatenate(out)


def anomaly_probabilities(maps: np.ndarray, normal_maps: np.ndarray) -> tuple[np.ndarray, float]:
    """Synthesis errors relative to normal exams' at the same place, in [0, 1] (module docstring).

    Args:
      maps: ``[n, *S]`` anomaly maps (`anomaly_maps`).
      normal_maps: ``[m, *S]`` anomaly maps of normal (lesion-free) exams, not trained on.

    Returns:
      ``(probabilities [n, *S], q)``: ``1 - exp(-r / q)`` with ``r = a / (e + mean(e) / 10)``,
      ``e`` the normal exams' mean map and ``q`` the 99th percentile of their ``r``.
    """
    normal_maps = np.asarray(normal_maps, np.float64)
    expected = normal_maps.mean(axis=0)
    expected = expected + 0.1 * float(expected.mean()) + 1e-12
    q = float(np.percentile(normal_maps / expected, 99.0))
    q = q if q > 0 else 1.0
    return (1.0 - np.exp(-np.asarray(maps) / expected / q)).astype(np.float32), q
