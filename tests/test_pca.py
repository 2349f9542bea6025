"""PCA baseline against scikit-learn."""

import jax
import numpy as np
from sklearn.decomposition import PCA as SkPCA

from jaxmed.models.pca import fit_pca, pca_reconstruction_error


def test_matches_sklearn(rng):
    images = rng.normal(size=(40, 6, 5)).astype(np.float32) @ rng.normal(size=(5, 5)).astype(np.float32)
    pca = fit_pca(images, num_components=7)
    ref = SkPCA(n_components=7, svd_solver="full").fit(images.reshape(40, -1))
    np.testing.assert_allclose(pca.explained_variance, ref.explained_variance_, rtol=1e-4)
    # Components are defined up to sign.
    np.testing.assert_allclose(np.abs(pca.components @ ref.components_.T), np.eye(7), atol=1e-4)
    test = rng.normal(size=(9, 6, 5)).astype(np.float32)
    flat = test.reshape(9, -1)
    expected = ((flat - ref.inverse_transform(ref.transform(flat))) ** 2).mean(axis=1)
    got = jax.vmap(pca_reconstruction_error, in_axes=(None, 0))(pca, test)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_in_subspace_has_zero_error(rng):
    basis = rng.normal(size=(3, 20)).astype(np.float32)
    images = rng.normal(size=(30, 3)).astype(np.float32) @ basis
    pca = fit_pca(images, num_components=3)
    inside = np.array([0.5, -1.0, 2.0], np.float32) @ basis
    assert float(pca_reconstruction_error(pca, inside)) < 1e-8 * float((inside**2).mean()) + 1e-9
