"""Training and evaluation data of the chest task, drawn from the chest-radiograph phantom.

Two kinds of sets, both host arrays:

* region sets (:func:`region_set`): the radiograph at the region net's input
  size and its soft region targets, drawn at twice that size over several
  fields of view;
* radiograph sets (:func:`radiograph_set`): normalised radiographs on the
  working grid with their region label maps and finding masks packed as
  bits (slot ``f`` is bit ``f`` of ``finding_bits``), what the segment
  classifier's train step draws its segments from, and the test sets.

Phantom sample ``i`` of a set comes from ``fold_in(key, i)``
(:func:`jaxmed.data.phantoms.make_dataset`), drawn in chunks so that memory
holds the packed set, not the phantoms' float masks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms import ChestPhantomConfig, sample_chest
from jaxmed.tasks.chest.regions import downsample, normalise_radiograph, region_targets
from jaxmed.tasks.chest.segments import region_labels

__all__ = ["pack_findings", "radiograph_set", "region_set", "unpack_findings"]

_CHUNK = 8  # phantoms per compiled sampler call


def pack_findings(finding_masks: np.ndarray) -> np.ndarray:
    """``[..., F, H, W]`` bool -> ``[..., H, W]`` uint8, slot ``f`` in bit ``f`` (``F <= 8``)."""
    num = finding_masks.shape[-3]
    if num > 8:
        raise ValueError(f"at most 8 finding slots can be packed, got {num}")
    bits = (np.asarray(finding_masks, np.uint8) << np.arange(num, dtype=np.uint8)[:, None, None])
    return np.bitwise_or.reduce(bits, axis=-3).astype(np.uint8) if num else np.zeros(finding_masks.shape[:-3]
                                                                                    + finding_masks.shape[-2:],
                                                                                    np.uint8)


def unpack_findings(bits: jax.Array, num_slots: int) -> jax.Array:
    """Inverse of :func:`pack_findings` for one radiograph: ``[H, W]`` uint8 -> ``[F, H, W]`` bool (jittable)."""
    shifts = jnp.arange(num_slots, dtype=jnp.uint8)[:, None, None]
    return ((bits[None] >> shifts) & 1).astype(bool)


@functools.partial(jax.jit, static_argnames=("size",))
def _region_inputs(images, right, left, heart, *, size):
    def one(image, r, le, h):
        return downsample(normalise_radiograph(image), size), region_targets(region_labels(r, le, h), size)

    return jax.vmap(one)(images, right, left, heart)


def region_set(key: jax.Array, num_per_fov: int, *, size: int, fovs_mm: tuple[float, ...],
               progress: bool = False) -> dict[str, np.ndarray]:
    """Region-net training data: ``num_per_fov`` phantoms per field of view.

    Phantoms are drawn at ``2 * size`` pixels over each field of view (the
    default findings), normalised, and resized to ``size``.

    Args:
      key: PRNG key (field of view ``j`` draws from ``fold_in(key, j)``).
      num_per_fov: phantoms per field of view.
      size: the region net's input side.
      fovs_mm: fields of view, mm.
      progress: a progress bar.

    Returns:
      ``{"image": [N, size, size, 1] float32, "target": [N, size, size, 4] float32}``.
    """
    from tqdm.auto import tqdm

    images, targets = [], []
    shape = (2 * size, 2 * size)
    total = num_per_fov * len(fovs_mm)
    with tqdm(total=total, desc="region phantoms", unit="img", disable=not progress) as bar:
        for j, fov in enumerate(fovs_mm):
            config = ChestPhantomConfig(shape=shape, pixel_spacing_mm=fov / shape[0])
            for start in range(0, num_per_fov, _CHUNK):
                n = min(_CHUNK, num_per_fov - start)
                d = _draw(jax.random.fold_in(key, j), start, n, config)
                x, t = _region_inputs(d["image"], d["right_lung"], d["left_lung"], d["heart"], size=size)
                images.append(np.asarray(x))
                targets.append(np.asarray(t))
                bar.update(n)
    return {"image": np.concatenate(images), "target": np.concatenate(targets)}


def _draw(key, start, n, config):
    """Phantoms ``start .. start + n - 1`` of the stream ``key`` (as ``make_dataset(key, start + n)[start:]``)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(_CHUNK))
    # One compiled chunk shape: draw a whole chunk of keys, keep n.
    out = _sample_keys(keys, config=config)
    return {k: np.asarray(v)[:n] for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("config",))
def _sample_keys(keys, *, config):
    return jax.vmap(lambda k: sample_chest(k, config))(keys)


@jax.jit
def _radiograph_inputs(images, right, left, heart):
    return (jax.vmap(normalise_radiograph)(images).astype(jnp.float16),
            jax.vmap(region_labels)(right, left, heart))


RECORD_FIELDS = ("finding_valid", "finding_type", "finding_lung", "finding_size_mm", "finding_centre_px",
                 "has_finding", "num_findings")


def radiograph_set(key: jax.Array, n: int, config: ChestPhantomConfig, *, progress: bool = False,
                   desc: str = "phantoms") -> dict[str, np.ndarray]:
    """``n`` phantom radiographs on the working grid, packed for training and testing.

    Sample ``i`` is ``sample_chest(fold_in(key, i), config)``, as
    :func:`jaxmed.data.phantoms.make_dataset` draws it.

    Args:
      key: PRNG key.
      n: number of radiographs.
      config: the phantom (its ``shape`` is the working grid).
      progress: a progress bar.
      desc: the bar's label.

    Returns:
      ``{"image": [n, H, W, 1] float16 in [0, 1] (normalised), "labels": [n,
      H, W] uint8 region labels, "finding_bits": [n, H, W] uint8}`` and the
      truth records :data:`RECORD_FIELDS` (``[n, F]`` per slot, ``[n]``
      per radiograph).
    """
    from tqdm.auto import tqdm

    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, n, _CHUNK):
            count = min(_CHUNK, n - start)
            d = _draw(key, start, count, config)
            image, labels = _radiograph_inputs(d["image"], d["right_lung"], d["left_lung"], d["heart"])
            chunk = {"image": np.asarray(image), "labels": np.asarray(labels),
                     "finding_bits": pack_findings(d["finding_masks"])}
            chunk.update({k: d[k] for k in RECORD_FIELDS})
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v)
            bar.update(count)
    return {k: np.concatenate(v) for k, v in parts.items()}
