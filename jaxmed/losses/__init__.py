"""jaxmed.losses: training objectives, written for one example and vmapped."""

from jaxmed.losses.classification import (
    ClassifierLossConfig,
    finding_map_loss,
    make_classifier_loss,
    presence_type_losses,
)
from jaxmed.losses.elbo import (
    AutoencoderLossConfig,
    VAELossConfig,
    autoencoder_loss_fn,
    negative_elbo,
    vae_loss_fn,
)
from jaxmed.losses.localiser import LocaliserLossConfig, localiser_pixel_loss, make_localiser_loss
from jaxmed.losses.ordinal import cumulative_link_log_probs, cumulative_link_nll
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
    "LocaliserLossConfig",
    "localiser_pixel_loss",
    "make_localiser_loss",
    "cumulative_link_log_probs",
    "cumulative_link_nll",
    "ClassifierLossConfig",
    "finding_map_loss",
    "make_classifier_loss",
    "presence_type_losses",
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
