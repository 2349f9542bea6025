"""The models the trainer knows by name, and their configs as JSON.

``config.json`` names a model (a key of :data:`MODELS`) and stores its config
dataclass as a dict; :func:`model_config_from_dict` turns it back, so a
checkpoint loads with no code of the run that made it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmed.losses import autoencoder_loss_fn, vae_loss_fn
from jaxmed.models import AUTOENCODER_PRESETS, PRESETS, VAE, Autoencoder, AutoencoderConfig, VAEConfig
from jaxmed.train.config import config_from_dict
from jaxmed.train.step import LossFn


class ModelSpec(NamedTuple):
    """How the trainer builds, initialises and trains one kind of model.

    Attributes:
      module: the Flax module class, built as ``module(config)``.
      config: its frozen config dataclass.
      presets: named configs.
      init: ``init(key, model, x) -> params`` for a batch ``x`` of one image.
      loss_fn: ``loss_fn(model, *, beta) -> LossFn`` (``beta`` is ignored by
        models without a KL term).
    """

    module: type
    config: type
    presets: dict[str, Any]
    init: Callable[[jax.Array, Any, jax.Array], Any]
    loss_fn: Callable[..., LossFn]


def _init_vae(key: jax.Array, model: VAE, x: jax.Array) -> Any:
    param_key, sample_key = jax.random.split(key)
    return model.init(param_key, x, sample_key)


def _init_autoencoder(key: jax.Array, model: Autoencoder, x: jax.Array) -> Any:
    return model.init(key, x)


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(
        module=VAE, config=VAEConfig, presets=PRESETS, init=_init_vae,
        loss_fn=lambda model, *, beta=1.0: vae_loss_fn(model, beta=beta),
    ),
    "autoencoder": ModelSpec(
        module=Autoencoder, config=AutoencoderConfig, presets=AUTOENCODER_PRESETS,
        init=_init_autoencoder, loss_fn=lambda model, *, beta=1.0: autoencoder_loss_fn(model),
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    """The :data:`MODELS` entry ``name``, with a clear error for unknown names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def get_preset(name: str, preset: str) -> Any:
    """The config of preset ``preset`` of model ``name``."""
    presets = get_model_spec(name).presets
    if preset not in presets:
        raise ValueError(f"model {name!r} has no preset {preset!r}; presets: {sorted(presets)}")
    return presets[preset]


def model_config_to_dict(config: Any) -> dict[str, Any]:
    """A model config as JSON values (tuples become lists, dtypes their names)."""
    out = dataclasses.asdict(config)
    if out.get("dtype") is not None:
        out["dtype"] = jnp.dtype(out["dtype"]).name
    return out


def model_config_from_dict(name: str, data: dict[str, Any]) -> Any:
    """Inverse of :func:`model_config_to_dict` for model ``name``."""
    data = dict(data)
    if data.get("dtype") is not None:
        data["dtype"] = jnp.dtype(data["dtype"])
    return config_from_dict(get_model_spec(name).config, data)
