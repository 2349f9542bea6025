"""jaxmed.models: the VAE, autoencoder, lesion U-Net, linear-Gaussian model and their configs."""
from jaxmed.models.linear_gaussian import LinearGaussian
from jaxmed.models.unet import UNET_PRESETS, UNet, UNetConfig
from jaxmed.models.autoencoder import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig
from jaxmed.models.observation import LIKELIHOODS
from jaxmed.models.vae import PRESETS, VAE, VAEConfig
from jaxmed.models.vae_latent import VAELatentModel, vae_latent_model

__all__ = [
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
]
