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

from jaxmed.losses import LesionLossConfig, autoencoder_loss_fn, make_lesion_loss, vae_loss_fn
from jaxmed.models import (
    AUTOENCODER_PRESETS,
    PRESETS,
    UNET_PRESETS,
    VAE,
    Autoencoder,
    AutoencoderConfig,
    UNetConfig,
    VAEConfig,
)
from jaxmed.train.config import config_from_dict
from jaxmed.train.step import LossFn


class ModelSpec(NamedTuple):
    """How the trainer builds, initialises and trains one kind of model.

    Attributes:
      build: ``build(config) -> flax.linen.Module``.
      config: its frozen config dataclass (with an ``image_shape`` field).
      presets: named configs.
      default_preset: the preset used when none is named.
      init: ``init(key, model, x) -> params`` for a batch ``x`` of one image.
      loss_fn: ``loss_fn(model, config, run) -> LossFn``: the training loss,
        from the model, its config and the :class:`jaxmed.train.run.RunConfig`
        (its ``beta`` for a VAE, its lesion-loss fields for a U-Net).
      targets: batch entries besides ``"image"`` that the loss needs (the
        data source must provide them).
    """

    build: Callable[[Any], Any]
    config: type
    presets: dict[str, Any]
    default_preset: str
    init: Callable[[jax.Array, Any, jax.Array], Any]
    loss_fn: Callable[[Any, Any, Any], LossFn]
    targets: tuple[str, ...] = ()


def _init_vae(key: jax.Array, model: VAE, x: jax.Array) -> Any:
    param_key, sample_key = jax.random.split(key)
    return model.init(param_key, x, sample_key)


def _init_plain(key: jax.Array, model: Any, x: jax.Array) -> Any:
    return model.init(key, x)


def _lesion_loss(model: Any, config: UNetConfig, run: Any) -> LossFn:
    loss_config = LesionLossConfig(masked=run.masked_regions, cell=run.region_cell, pos_weight=run.pos_weight)
    return make_lesion_loss(model.apply, loss_config, shape=config.image_shape[:-1],
                            num_modalities=config.image_shape[-1])


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(
        build=VAE, config=VAEConfig, presets=PRESETS, default_preset="reference64", init=_init_vae,
        loss_fn=lambda model, config, run: vae_loss_fn(model, beta=run.beta),
    ),
    "autoencoder": ModelSpec(
        build=Autoencoder, config=AutoencoderConfig, presets=AUTOENCODER_PRESETS, default_preset="reference64",
        init=_init_plain, loss_fn=lambda model, config, run: autoencoder_loss_fn(model),
    ),
    # Lesion maps from multi-modal images: plain or masked-region training (jaxmed.losses).
    "unet": ModelSpec(
        build=UNetConfig.make_module, config=UNetConfig, presets=UNET_PRESETS, default_preset="lesion64",
        init=_init_plain, loss_fn=_lesion_loss, targets=("lesion_mask",),
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
