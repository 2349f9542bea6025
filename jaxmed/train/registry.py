"""The models the trainer knows by name, their training options, and their configs as JSON.

Each :data:`MODELS` entry says how to build, initialise and train one kind of
model. A model's training options are its own frozen loss-config dataclass
(the entry's ``loss``, e.g. :class:`jaxmed.losses.VAELossConfig`), not fields
of the engine's run config: adding a model adds an entry here and nothing to
:class:`jaxmed.train.RunConfig` or :mod:`jaxmed.train.run`.

``config.json`` names a model (a key of :data:`MODELS`) and stores its config
and loss config as dicts; :func:`model_config_from_dict` and
:func:`loss_config_from_dict` turn them back, so a checkpoint loads with no
code of the run that made it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmed.losses import (
    AutoencoderLossConfig,
    ClassifierLossConfig,
    LesionLossConfig,
    LocaliserLossConfig,
    VAELossConfig,
    autoencoder_loss_fn,
    make_classifier_loss,
    make_lesion_loss,
    make_localiser_loss,
    vae_loss_fn,
)
from jaxmed.models import (
    AUTOENCODER_PRESETS,
    CLASSIFIER_PRESETS,
    LOCALISER_PRESETS,
    PRESETS,
    UNET_PRESETS,
    VAE,
    Autoencoder,
    AutoencoderConfig,
    ClassifierConfig,
    LocaliserConfig,
    UNetConfig,
    VAEConfig,
)
from jaxmed.train.config import config_from_dict, replace_fields
from jaxmed.train.step import LossFn


class ModelSpec(NamedTuple):
    """How the trainer builds, initialises and trains one kind of model.

    Attributes:
      build: ``build(config) -> flax.linen.Module``.
      config: its frozen config dataclass (with an ``image_shape`` field).
      presets: named configs.
      default_preset: the preset used when none is named.
      init: ``init(key, model, x) -> params`` for a batch ``x`` of one image.
      loss: the default training options, an instance of the model's frozen
        loss-config dataclass (its type is the one runs of this model take).
      loss_fn: ``loss_fn(model, config, loss) -> LossFn``: the training loss,
        from the model, its config and its loss config.
      targets: batch entries besides ``"image"`` that the loss needs (the
        data source must provide them).
    """

    build: Callable[[Any], Any]
    config: type
    presets: dict[str, Any]
    default_preset: str
    init: Callable[[jax.Array, Any, jax.Array], Any]
    loss: Any
    loss_fn: Callable[[Any, Any, Any], LossFn]
    targets: tuple[str, ...] = ()


def _init_vae(key: jax.Array, model: VAE, x: jax.Array) -> Any:
    param_key, sample_key = jax.random.split(key)
    return model.init(param_key, x, sample_key)


def _init_plain(key: jax.Array, model: Any, x: jax.Array) -> Any:
    return model.init(key, x)


def _lesion_loss(model: Any, config: UNetConfig, loss: LesionLossConfig) -> LossFn:
    return make_lesion_loss(model.apply, loss, shape=config.image_shape[:-1], num_modalities=config.image_shape[-1])


def _localiser_loss(model: Any, config: LocaliserConfig, loss: LocaliserLossConfig) -> LossFn:
    def apply(params, x, key):
        return model.apply(params, x, deterministic=False, with_maps=True, rngs={"dropout": key})

    return make_localiser_loss(apply, loss, shape=config.image_shape[:-1], num_modalities=config.num_modalities)


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(
        build=VAE, config=VAEConfig, presets=PRESETS, default_preset="reference64", init=_init_vae,
        loss=VAELossConfig(), loss_fn=lambda model, config, loss: vae_loss_fn(model, beta=loss.beta),
    ),
    "autoencoder": ModelSpec(
        build=Autoencoder, config=AutoencoderConfig, presets=AUTOENCODER_PRESETS, default_preset="reference64",
        init=_init_plain, loss=AutoencoderLossConfig(),
        loss_fn=lambda model, config, loss: autoencoder_loss_fn(model),
    ),
    # Lesion maps from multi-modal images: plain or masked-region training (jaxmed.losses);
    # lesion pixels are rare, so they weigh 5x in the cross-entropy by default.
    "unet": ModelSpec(
        build=UNetConfig.make_module, config=UNetConfig, presets=UNET_PRESETS, default_preset="lesion64",
        init=_init_plain, loss=LesionLossConfig(masked=False, pos_weight=5.0), loss_fn=_lesion_loss,
        targets=("lesion_mask",),
    ),
    # One localisation map per modality image and their fusion (the lesions task's phase 1).
    "localiser": ModelSpec(
        build=LocaliserConfig.make_module, config=LocaliserConfig, presets=LOCALISER_PRESETS,
        default_preset="mpmri64", init=_init_plain, loss=LocaliserLossConfig(), loss_fn=_localiser_loss,
        targets=("lesion_mask",),
    ),
    # Presence + type of a finding per image or image segment (the chest task's segment classifier).
    "classifier": ModelSpec(
        build=ClassifierConfig.make_module, config=ClassifierConfig, presets=CLASSIFIER_PRESETS,
        default_preset="segment272", init=_init_plain, loss=ClassifierLossConfig(),
        loss_fn=lambda model, config, loss: make_classifier_loss(model.apply, loss),
        targets=("label", "finding_type"),
    ),
}

# Fields of the run config of jaxmed <= 0.1.0 (config.json "run") that were a
# model's training options, and the loss-config field each became.
LEGACY_LOSS_FIELDS = {"beta": "beta", "masked_regions": "masked", "region_cell": "cell", "pos_weight": "pos_weight"}


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


def model_config_with(name: str, preset: str, options: Any = ()) -> Any:
    """The config of preset ``preset`` of model ``name`` with fields replaced.

    Args:
      name: a key of :data:`MODELS`.
      preset: one of its presets.
      options: ``{field: value}`` or ``((field, value), ...)``, values as JSON
        values (lists for tuples, a dtype's name).

    Raises:
      ValueError: unknown names or fields, or values the config refuses.
    """
    base = get_preset(name, preset)
    options = dict(options)
    if not options:
        return base
    return model_config_from_dict(name, {**model_config_to_dict(base), **options})


def loss_config_from_dict(name: str, data: dict[str, Any] | None) -> Any:
    """Model ``name``'s loss config from its JSON form; None or ``{}`` = the defaults.

    Fields not given keep the registry entry's defaults.
    """
    return replace_fields(get_model_spec(name).loss, data or {})
