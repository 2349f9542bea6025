"""Principal-component reconstruction error: the classical anomaly baseline.

An image far from the normal images' principal subspace reconstructs badly.
The demo reports this baseline beside the VAE, fitted on the same training
images and scored on the same test images.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class PCA(NamedTuple):
    """A fitted principal subspace.

    Attributes:
      mean: ``[d]`` mean of the flattened training images.
      components: ``[k, d]`` orthonormal principal directions, by decreasing
        explained variance.
      explained_variance: ``[k]`` variance along each direction (ddof=1).
    """

    mean: Array
    components: Array
    explained_variance: Array


def fit_pca(images: Array, *, num_components: int) -> PCA:
    """Fit PCA to a batch of images by a thin SVD of the centred data.

    Args:
      images: ``[n, ...]`` images; each is flattened to ``d`` values.
      num_components: ``k <= min(n, d)``.

    Returns:
      :class:`PCA`.
    """
    x = jnp.reshape(images, (images.shape[0], -1))
    n, d = x.shape
    if not 0 < num_components <= min(n, d):
        raise ValueError(f"num_components must be in [1, {min(n, d)}], got {num_components}")
    mean = x.mean(axis=0)
    _, s, vt = jnp.linalg.svd(x - mean[None, :], full_matrices=False)
    return PCA(mean, vt[:num_components], s[:num_components] ** 2 / (n - 1))


def pca_reconstruction_error(pca: PCA, image: Array) -> Array:
    """Mean squared error of ONE image's projection onto the subspace.

    Args:
      pca: from :func:`fit_pca`.
      image: one image of the shape the PCA was fitted on.

    Returns:
      Scalar: mean over pixels of (image - reconstruction)^2; higher means
      more abnormal.
    """
    x = jnp.ravel(image) - pca.mean
    residual = x - pca.components.T @ (pca.components @ x)
    return jnp.mean(residual**2)
