"""Normality scores of images: log p(x) under a trained VAE, corrected for complexity or by a background model.

A :class:`ScoreSpec` names the estimator (a key of
:data:`jaxmed.likelihood.ESTIMATORS`), its settings and the decision score;
:func:`score_images` estimates log p(x) of a stack of model inputs in
fixed-size batches, one jitted program vmapped over images, and
:func:`normality_scores` turns it into every score of :data:`SCORES`:

* ``"log_px"``: the estimate of log p(x), nats;
* ``"complexity"``: ``log2 P(x) + L(x)``, bits: minus the input-complexity
  corrected score ``S(x) = -log2 P(x) - L(x)`` of Serra et al. (ICLR 2020),
  ``P(x)`` the probability of the image quantised to 8 bits (the density
  times the bin widths, :func:`jaxmed.data.complexity.quantisation_bits`)
  and ``L(x)`` its lossless code length (PNG). A blurred slice is more
  likely under a model of smooth anatomy than a normal one, and it is far
  more compressible still: the correction turns that around;
* ``"likelihood_ratio"``: ``log p(x) - log p_0(x)``, nats, against a
  background model ``p_0`` trained on randomly mutated inputs (Ren et al.,
  NeurIPS 2019): what the image's low-level statistics explain cancels.

Scores are NORMALITY scores: higher = more normal (see
:mod:`jaxmed.tasks.scan_quality.decision`).

Randomness: image ``i`` is scored with ``jax.random.fold_in(key, indices[i])``,
so a slice's score does not depend on the batch it was scored in or on the
other images given.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_SCORE", "SCORES", "SCORE_MEANINGS", "ScoreSpec", "make_score_fn", "normality_scores",
           "score_images"]

# The decision scores, and what each value means (higher = more normal).
SCORES = ("log_px", "complexity", "likelihood_ratio")
# The decision score of jaxmed demo and jaxmed calibrate unless told otherwise: the one that
# holds on subjects the model never saw, blur included (experiments/scan_quality_new_subject.py).
DEFAULT_SCORE = "complexity"
SCORE_MEANINGS = {
    "log_px": "log p(x), nats (minus KL(q(z|x) || N(0, I)) for the match method)",
    "complexity": "log2 P(x) + L(x), bits: minus the complexity-corrected score of Serra et al. (2020), "
                  "P(x) at 8-bit quantisation, L(x) the PNG code length",
    "likelihood_ratio": "log p(x) - log p_background(x), nats (Ren et al. 2019)",
}


@dataclass(frozen=True, kw_only=True)
class ScoreSpec:
    """How normality scores are computed.

    Attributes:
      method: a key of :data:`jaxmed.likelihood.ESTIMATORS` (``"match"`` is
        the -KL match score, not a log-likelihood).
      num_samples: samples (or chains) per image; ignored by ``"match"``.
      chunk_size: samples evaluated at once per image (bounds memory; the
        result does not depend on it); None for all at once.
      batch_size: images per compiled call (the last batch is padded).
      seed: root of the PRNG keys.
      options: estimator options (e.g. ``{"num_steps": 100}`` for AIS).
      score: the decision score, one of :data:`SCORES` (every score is
        computed and reported; this one decides).
    """

    method: str = "importance"
    num_samples: int = 100
    chunk_size: int | None = 25
    batch_size: int = 32
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    score: str = "log_px"

    def __post_init__(self):
        from jaxmed.likelihood import ESTIMATORS

        if self.method not in ESTIMATORS:
            raise ValueError(f"unknown scoring method {self.method!r}; choose from {sorted(ESTIMATORS)}")
        if self.num_samples < 1 or self.batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {self.num_samples}, {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        if self.score not in SCORES:
            raise ValueError(f"unknown decision score {self.score!r}; choose from {SCORES}")
        if self.method == "match" and self.score != "log_px":
            raise ValueError(f"the match score is no likelihood: it has no {self.score!r} form")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "num_samples": self.num_samples, "chunk_size": self.chunk_size,
                "batch_size": self.batch_size, "seed": self.seed, "options": dict(self.options),
                "score": self.score}


def make_score_fn(model: Any, spec: ScoreSpec):
    """A jitted ``score(params, keys [B], images [B, ...]) -> [B]`` normality scores.

    Each image is scored with its own key through
    :func:`jaxmed.likelihood.log_px` (a batch of one, vmapped), so its score
    does not depend on the other images of the batch. Functions made for
    equal models and estimator settings share one compilation per batch
    shape (the spec's seed and batch size are not part of the program).
    """
    sample_free = spec.method == "match"
    return functools.partial(
        _score_batch, model=model, method=spec.method,
        num_samples=None if sample_free else spec.num_samples,
        chunk_size=None if sample_free else spec.chunk_size,
        options=tuple(sorted((k, _hashable(v)) for k, v in spec.options.items())),
    )


def _hashable(value: Any) -> Any:
    """An option value as a static jit argument: arrays and lists (an AIS schedule) as tuples."""
    if isinstance(value, (list, np.ndarray, jax.Array)):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else tuple(array.ravel().tolist())
    return value


@functools.partial(jax.jit, static_argnames=("model", "method", "num_samples", "chunk_size", "options"))
def _score_batch(params, keys, images, *, model, method, num_samples, chunk_size, options):
    from jaxmed.likelihood import log_px
    from jaxmed.models import vae_latent_model

    def one(key, x):
        lvm = vae_latent_model(model, params)
        return log_px(key, lvm, x[None], method=method, num_samples=num_samples, chunk_size=chunk_size,
                      **dict(options))[0]

    return jax.vmap(one)(keys, images)


def score_images(
    key: jax.Array,
    model: Any,
    params: Any,
    images: np.ndarray,
    *,
    spec: ScoreSpec,
    indices: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """Normality scores (log p(x) estimates, nats) of a stack of images.

    Args:
      key: PRNG key; image ``i`` uses ``fold_in(key, indices[i])``.
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      images: ``[N, *image_shape]`` model inputs.
      spec: the estimator and its settings.
      indices: ``[N]`` ints that name each image's key; default ``arange(N)``.
      progress: show a tqdm bar over batches.
      desc: the bar's label.

    Returns:
      float64 ``[N]`` scores; higher = more normal.
    """
    from tqdm.auto import tqdm

    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
        return np.zeros(0)
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if indices.shape != (n,):
        raise ValueError(f"indices must be [{n}], got {indices.shape}")
    score_fn = make_score_fn(model, spec)
    size = min(spec.batch_size, n)
    # One compiled shape: the last batch is padded with image 0, whose extra scores are dropped.
    rows = np.concatenate([np.arange(n), np.zeros(-n % size, np.int64)])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices[rows], jnp.uint32))
    out = [np.asarray(score_fn(params, keys[start : start + size], images[rows[start : start + size]]), np.float64)
           for start in tqdm(range(0, len(rows), size), desc=desc, unit="batch", disable=not progress, leave=False)]
    return np.concatenate(out)[:n]


def normality_scores(
    key: jax.Array,
    model: Any,
    params: Any,
    images: np.ndarray,
    *,
    spec: ScoreSpec,
    background: tuple[Any, Any] | None = None,
    indices: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> dict[str, np.ndarray]:
    """Every score of :data:`SCORES` that applies, for a stack of images (higher = more normal).

    Args:
      key: PRNG key; image ``i`` uses ``fold_in(key, indices[i])``, for the
        model and the background model alike (common random numbers: the
        ratio's estimation noise partly cancels).
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      images: ``[N, H, W, 1]`` model inputs in ``[0, 1]``.
      spec: the estimator.
      background: ``(model, params)`` of a background model, or None (then
        there is no ``"likelihood_ratio"``).
      indices: ``[N]`` ints naming each image's key; default ``arange(N)``.
      progress: tqdm bars.
      desc: the bars' label.

    Returns:
      ``{"log_px": [N], "complexity": [N], "likelihood_ratio": [N]}``
      float64, the last only with a background model; for the match method
      ``{"log_px": [N]}`` only (it is no likelihood).
    """
    from jaxmed.data.complexity import code_lengths, quantisation_bits

    images = np.asarray(images, np.float32)
    log_px = score_images(key, model, params, images, spec=spec, indices=indices, progress=progress, desc=desc)
    out = {"log_px": log_px}
    if spec.method == "match":
        return out
    num_pixels = int(np.prod(images.shape[1:]))
    # log2 P(x) = log p(x) / ln 2 - D log2(255): the density at 8-bit bins.
    out["complexity"] = log_px / np.log(2.0) - quantisation_bits(num_pixels) + code_lengths(images)
    if background is not None:
        bg_model, bg_params = background
        out["likelihood_ratio"] = log_px - score_images(key, bg_model, bg_params, images, spec=spec,
                                                        indices=indices, progress=progress,
                                                        desc=f"{desc} (background)")
    return out
