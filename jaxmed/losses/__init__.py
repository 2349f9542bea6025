"""jaxmed.losses: training objectives, written for one example and vmapped."""

from jaxmed.losses.elbo import (
    AutoencoderLossConfig,
    VAELossConfig,
    autoencoder_loss_fn,
    negative_elbo,
    vae_loss_fn,
)
from jaxmed.losses.masked_region import (
    LesionLossConfig,
    blank_modalities,
    make_lesion_loss,
    make_masked_region_loss,
    masked_mean,
    masked_region_losses,
    weighted_sigmoid_bce,
)

__all__ = [
    "AutoencoderLossConfig",
    "VAELossConfig",
    "autoencoder_loss_fn",
    "negative_elbo",
    "vae_loss_fn",
    "LesionLossConfig",
    "blank_modalities",
    "make_lesion_loss",
    "make_masked_region_loss",
    "masked_mean",
    "masked_region_losses",
    "weighted_sigmoid_bce",
]
