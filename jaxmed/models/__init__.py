"""jaxmed.models: the VAE, autoencoder, lesion U-Net, linear-Gaussian model and their configs."""
from jaxmed.models.linear_gaussian import LinearGaussian
from jaxmed.models.classifier import CLASSIFIER_PRESETS, ClassifierConfig, ConvClassifier
from jaxmed.models.pooling import AttentionPooling, max_pooling, noisy_or_pooling
from jaxmed.models.unet import UNET_PRESETS, UNet, UNetConfig
from jaxmed.models.localiser import FUSIONS, LOCALISER_PRESETS, LocaliserConfig, MultiModalLocaliser, fuse_logits
from jaxmed.models.map_classifier import (
    MAP_CLASSIFIER_PRESETS,
    MapClassifier,
    MapClassifierConfig,
    UNetEncoder,
    encoder_params_from_unet,
)
from jaxmed.models.autoencoder import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig
from jaxmed.models.observation import LIKELIHOODS
from jaxmed.models.vae import PRESETS, VAE, VAEConfig
from jaxmed.models.vae_latent import VAELatentModel, vae_latent_model
from jaxmed.models.transformer import (
    Transformer,
    TransformerConfig,
    greedy_decode,
    greedy_decode_uncached,
    make_attn_mask,
)

__all__ = [
    "FUSIONS",
    "LOCALISER_PRESETS",
    "LocaliserConfig",
    "MultiModalLocaliser",
    "fuse_logits",
    "MAP_CLASSIFIER_PRESETS",
    "MapClassifier",
    "MapClassifierConfig",
    "UNetEncoder",
    "encoder_params_from_unet",
    "CLASSIFIER_PRESETS",
    "AttentionPooling",
    "ClassifierConfig",
    "ConvClassifier",
    "max_pooling",
    "noisy_or_pooling",
    "AUTOENCODER_PRESETS",
    "LIKELIHOODS",
    "PRESETS",
    "UNET_PRESETS",
    "VAE",
    "Autoencoder",
    "AutoencoderConfig",
    "LinearGaussian",
    "UNet",
    "UNetConfig",
    "VAEConfig",
    "VAELatentModel",
    "vae_latent_model",
    "Transformer",
    "TransformerConfig",
    "greedy_decode",
    "greedy_decode_uncached",
    "make_attn_mask",
]
