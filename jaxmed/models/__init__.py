"""jaxmed.models."""
from jaxmed.models.linear_gaussian import LinearGaussian
from jaxmed.models.unet import UNET_PRESETS, UNet, UNetConfig
from jaxmed.models.autoencoder import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig
from jaxmed.models.observation import LIKELIHOODS
from jaxmed.models.vae import PRESETS, VAE, VAEConfig
from jaxmed.models.vae_latent import VAELatentModel, vae_latent_model
