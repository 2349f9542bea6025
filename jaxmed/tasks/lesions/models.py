"""The lesion model: the localiser and the classifier on its map, as one network (`LesionNet`).

``LesionNet(x)`` runs :class:`jaxmed.models.MultiModalLocaliser` (per-modality
maps and their fusion) and :class:`jaxmed.models.MapClassifier` on the images
and the fused probability map. Its parameters are ``{"params":
{"localiser": ..., "classifier": ...}}``: phase 1 trains a localiser alone,
whose parameters become the ``"localiser"`` entry (`join_params`), and the
classifier's encoder starts from the localiser's U-Net encoder
(:func:`jaxmed.models.encoder_params_from_unet`).

Inference helpers are jitted over fixed-size chunks of exams
(`predict_localiser`, `predict_lesions`) with a progress bar; with
``mirror=True`` they average the prediction of each exam and of its
left-right mirror (test-time augmentation, as nnU-Net and the PI-CAI
baselines do), which makes the prediction exactly mirror-equivariant. It
suits models trained with the mirror (`ExamAugment.flip_probability`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.losses.ordinal import cumulative_link_log_probs
from jaxmed.models import (
    LocaliserConfig,
    MapClassifierConfig,
    encoder_params_from_unet,
)

__all__ = ["LesionNet", "init_classifier", "init_localiser", "join_params", "predict_lesions", "predict_localiser"]

_CHUNK = 32


class LesionNet(nn.Module):
    """Localiser, then classifier on the images and the fused map.

    Attributes:
      localiser: the localiser's config.
      classifier: the classifier's config.
    """

    localiser: LocaliserConfig
    classifier: MapClassifierConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
        """``x [N, *S, M]`` -> ``{"fused": [N, *S, 1], "maps": [N, *S, M], "prob": [N, *S], "score": [N],
        "cumulative_logits": [N, K - 1], ...}``."""
        loc = self.localiser.make_module().clone(parent=self, name="localiser")
        out = loc(x, deterministic=deterministic, with_maps=True)
        prob = jax.nn.sigmoid(out["fused"][..., 0])
        cls = self.classifier.make_module().clone(parent=self, name="classifier")
        return {"fused": out["fused"], "maps": out["maps"], "prob": prob,
                **cls(x, prob, deterministic=deterministic)}


def init_localiser(key: jax.Array, config: LocaliserConfig) -> Any:
    """Fresh localiser variables ``{"params": ...}``."""
    x = jnp.zeros((1, *config.image_shape), jnp.float32)
    return jax.jit(config.make_module().init)(key, x)


def init_classifier(key: jax.Array, config: MapClassifierConfig, localiser_params: Any,
                    image_shape: tuple[int, ...]) -> Any:
    """Classifier variables with the encoder taken from a localiser's U-Net (the map's kernel at 0)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(config.make_module().init)(key, x, x[..., 0])
    params = dict(variables["params"])
    params["encoder"] = encoder_params_from_unet(localiser_params["params"]["unet"], params["encoder"])
    return {"params": params}


def join_params(localiser: Any, classifier: Any) -> Any:
    """`LesionNet` variables from a localiser's and a classifier's."""
    return {"params": {"localiser": localiser["params"], "classifier": classifier["params"]}}


def _chunks(arrays: dict[str, np.ndarray], fn, *, desc: str, progress: bool) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    n = len(next(iter(arrays.values())))
    size = min(_CHUNK, n)
    outs = []
    for start in tqdm(range(0, n, size), desc=desc, unit="chunk", disable=not progress):
        rows = np.arange(start, start + size) % n  # whole chunks: one compiled shape
        out = jax.device_get(fn({k: v[rows] for k, v in arrays.items()}))
        outs.append({k: v[: min(size, n - start)] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


# The left-right axis of the outputs (images [N, *S, M] flip on axis -2); others are per exam.
_MIRROR_AXES = {"prob": -1, "maps": -2}


def _mirror_averaged(fn, x: jax.Array, mirror: bool) -> dict[str, jax.Array]:
    """``fn(x)``, or with ``mirror`` the mean of ``fn(x)`` and ``fn``'s outputs on the mirrored ``x``, mirrored back."""
    out = fn(x)
    if not mirror:
        return out
    flipped = fn(jnp.flip(x, axis=-2))
    return {k: (v + (jnp.flip(flipped[k], axis=_MIRROR_AXES[k]) if k in _MIRROR_AXES else flipped[k])) / 2
            for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("config", "mirror"))
def _localiser_fn(params, x, *, config: LocaliserConfig, mirror: bool):
    def fn(x):
        out = config.make_module().apply(params, x, with_maps=True)
        return {"prob": jax.nn.sigmoid(out["fused"][..., 0]), "maps": jax.nn.sigmoid(out["maps"])}

    return _mirror_averaged(fn, x, mirror)


def predict_localiser(params: Any, config: LocaliserConfig, images: np.ndarray, *, mirror: bool = False,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Fused and per-modality lesion probabilities: ``{"prob": [n, *S], "maps": [n, *S, M]}``.

    Args:
      mirror: average each exam's prediction with its left-right mirror's (module docstring).
    """
    return _chunks({"x": images}, lambda b: _localiser_fn(params, b["x"], config=config, mirror=mirror),
                   desc="localiser", progress=progress)


@functools.partial(jax.jit, static_argnames=("localiser", "classifier", "mirror"))
def _lesion_fn(params, x, *, localiser, classifier, mirror: bool):
    def fn(x):
        out = LesionNet(localiser=localiser, classifier=classifier).apply(params, x)
        log_probs = cumulative_link_log_probs(out["cumulative_logits"])
        return {"prob": out["prob"], "maps": jax.nn.sigmoid(out["maps"]),
                "significant": jax.nn.sigmoid(out["cumulative_logits"][:, 0]), "grade_probs": jnp.exp(log_probs)}

    return _mirror_averaged(fn, x, mirror)


def predict_lesions(params: Any, localiser: LocaliserConfig, classifier: MapClassifierConfig, images: np.ndarray,
                    *, mirror: bool = False, progress: bool = False) -> dict[str, np.ndarray]:
    """The whole model: ``prob [n, *S]``, ``maps [n, *S, M]``, ``significant [n]`` (P(class >= 1)),
    ``grade_probs [n, K]`` (class probabilities; class ``k`` is grade group ``k + 1``).

    Args:
      mirror: average each exam's outputs with its left-right mirror's (module docstring).
    """
    return _chunks({"x": images},
                   lambda b: _lesion_fn(params, b["x"], localiser=localiser, classifier=classifier, mirror=mirror),
                   desc="lesion model", progress=progress)
