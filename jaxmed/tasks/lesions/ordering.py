"""Orders of exams for training: by similarity to a reference site, and by the model's uncertainty.

**Similarity.** An exam's embedding is the localiser's bottleneck features,
averaged over space, for each modality image (the U-Net's encoder half,
:class:`jaxmed.models.UNetEncoder`, run with the localiser's weights),
concatenated. A second site's exam ``b`` is ranked by the squared maximum
mean discrepancy between the point mass at its embedding and the reference
site's embeddings ``a_1..a_n``, with a Gaussian kernel ``k``::

    MMD^2(delta_b, P_ref) = k(b, b) - 2/n sum_i k(b, a_i) + 1/n^2 sum_ij k(a_i, a_j)

(smallest first: the most reference-like exams enter first). ``k(b, b) = 1``
and the last term is the same for every ``b``, so the ranking is that of
the kernel mean embedding's witness ``mean_i k(b, a_i)``. Embeddings are
standardised by the reference's mean and std; the bandwidth is the median
pairwise distance (the median heuristic). Why MMD rather than an optimal
transport distance: it has a closed form (no solver or entropic bias to
tune), is differentiable and cheap for hundreds of exams, and for a single
exam against a set it reduces to a kernel density, which is what
"similar to the reference site" means here; `mmd2` between whole sites
reports how far apart they are.

**Uncertainty.** ``T`` Monte Carlo dropout samples ``p_t`` of the fused
lesion probability map (`mc_dropout_probs`); per pixel, with ``H`` the
binary entropy,

    BALD = H[E_t p_t] - E_t H[p_t]      (mutual information of label and weights)
    predictive entropy = H[E_t p_t],

summed over the exam's pixels (nats). The most uncertain exams rank first.

References:
  Gretton et al. A kernel two-sample test. JMLR 13, 2012.
  Gal, Islam, Ghahramani. Deep Bayesian active learning with image data. ICML 2017 (BALD).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.models import LocaliserConfig, UNetEncoder
from jaxmed.models.localiser import modality_inputs

__all__ = ["bald", "exam_embeddings", "gaussian_kernel", "mc_dropout_probs", "median_bandwidth", "mmd2",
           "predictive_entropy", "similarity_order", "uncertainty_order"]

_CHUNK = 32
_EPS = 1e-7


def _chunked(fn, x: np.ndarray, *, desc: str, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    n = len(x)
    size = min(_CHUNK, n)
    out = []
    for start in tqdm(range(0, n, size), desc=desc, unit="chunk", disable=not progress):
        rows = np.arange(start, start + size) % n
        out.append(np.asarray(fn(jnp.asarray(x[rows])))[: min(size, n - start)])
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("config",))
def _embed(unet_params, x, *, config: LocaliserConfig):
    encoder = UNetEncoder(config.features, config.depth, config.norm_groups)
    n, *_, m = x.shape
    features = encoder.apply({"params": unet_params}, modality_inputs(x))  # [M * N, *s, C]
    pooled = jnp.mean(features, axis=tuple(range(1, features.ndim - 1)))
    return jnp.moveaxis(pooled.reshape(m, n, -1), 0, 1).reshape(n, -1)


def exam_embeddings(params, config: LocaliserConfig, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Per-exam embeddings from a localiser: ``[n, M * C]`` (module docstring).

    Args:
      params: the localiser's variables.
      config: its config.
      images: ``[n, *S, M]``.
      progress: a progress bar.
    """
    unet = {k: v for k, v in params["params"]["unet"].items() if k in {f"ConvBlock_{i}" for i in range(config.depth + 1)}}
    return _chunked(lambda x: _embed(unet, x, config=config), images, desc="embeddings", progress=progress)


def gaussian_kernel(x: jax.Array, y: jax.Array, bandwidth: float) -> jax.Array:
    """``exp(-|x_i - y_j|^2 / (2 h^2))``: ``[n, d], [m, d] -> [n, m]``."""
    d2 = jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2 * x @ y.T
    return jnp.exp(-jnp.maximum(d2, 0.0) / (2 * bandwidth**2))


def median_bandwidth(x: np.ndarray) -> float:
    """The median pairwise Euclidean distance between distinct rows (the median heuristic)."""
    x = np.asarray(x, np.float64)
    d2 = np.sum(x**2, -1)[:, None] + np.sum(x**2, -1)[None, :] - 2 * x @ x.T
    d = np.sqrt(np.maximum(d2[np.triu_indices(len(x), 1)], 0.0))
    return float(np.median(d)) if d.size and np.median(d) > 0 else 1.0


def mmd2(x: np.ndarray, y: np.ndarray, *, bandwidth: float) -> float:
    """Unbiased squared MMD between samples ``x [n, d]`` and ``y [m, d]`` (Gretton et al. 2012, eq. 3)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    n, m = len(x), len(y)
    kxx, kyy, kxy = gaussian_kernel(x, x, bandwidth), gaussian_kernel(y, y, bandwidth), gaussian_kernel(x, y, bandwidth)
    off = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1)) + (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * jnp.mean(kxy))


def similarity_order(candidates: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ranked by ``MMD^2(delta_b, P_ref)``, smallest (most similar) first.

    Args:
      candidates: ``[n, d]`` embeddings of the exams to order.
      reference: ``[m, d]`` embeddings of the reference site.

    Returns:
      ``(order, scores)``: indices into ``candidates``, and each candidate's
      ``MMD^2`` (in input order).
    """
    mean, std = reference.mean(0), reference.std(0) + 1e-6
    a, b = (reference - mean) / std, (candidates - mean) / std
    h = median_bandwidth(np.concatenate([a, b]))
    kaa = float(jnp.mean(gaussian_kernel(jnp.asarray(a), jnp.asarray(a), h)))
    scores = 1.0 - 2.0 * np.asarray(jnp.mean(gaussian_kernel(jnp.asarray(b), jnp.asarray(a), h), axis=1)) + kaa
    return np.argsort(scores, kind="stable"), scores


@functools.partial(jax.jit, static_argnames=("config", "num_samples"))
def _mc(params, x, key, *, config: LocaliserConfig, num_samples: int):
    model = config.make_module()

    def one(k):
        return jax.nn.sigmoid(model.apply(params, x, deterministic=False, rngs={"dropout": k})[..., 0])

    return jax.vmap(one)(jax.random.split(key, num_samples))  # [T, N, *S]


def mc_dropout_probs(key: jax.Array, params, config: LocaliserConfig, images: np.ndarray, *, num_samples: int,
                     progress: bool = False) -> np.ndarray:
    """``num_samples`` Monte Carlo dropout samples of the fused probability map: ``[T, n, *S]``.

    The samples of all exams are vmapped; chunk ``c`` uses ``fold_in(key, c)``.
    """
    if config.dropout == 0:
        raise ValueError("Monte Carlo dropout needs a localiser trained with dropout > 0")
    n = len(images)
    size = min(_CHUNK, n)
    out = []
    from tqdm.auto import tqdm

    for c, start in enumerate(tqdm(range(0, n, size), desc="MC dropout", unit="chunk", disable=not progress)):
        rows = np.arange(start, start + size) % n
        probs = _mc(params, jnp.asarray(images[rows]), jax.random.fold_in(key, c), config=config,
                    num_samples=num_samples)
        out.append(np.asarray(probs)[:, : min(size, n - start)])
    return np.concatenate(out, axis=1)


def _binary_entropy(p):
    p = jnp.clip(p, _EPS, 1 - _EPS)
    return -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """``sum over pixels of H[E_t p_t]``, nats: ``[T, n, *S] -> [n]``."""
    probs = jnp.asarray(probs)
    h = _binary_entropy(jnp.mean(probs, axis=0))
    return np.asarray(jnp.sum(h.reshape(h.shape[0], -1), axis=1))


def bald(probs: np.ndarray) -> np.ndarray:
    """``sum over pixels of H[E_t p_t] - E_t H[p_t]``, nats: ``[T, n, *S] -> [n]`` (>= 0 by Jensen)."""
    probs = jnp.asarray(probs)
    mi = _binary_entropy(jnp.mean(probs, axis=0)) - jnp.mean(_binary_entropy(probs), axis=0)
    return np.asarray(jnp.sum(mi.reshape(mi.shape[0], -1), axis=1))


def uncertainty_order(probs: np.ndarray, *, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Exams ranked by ``"bald"`` or ``"entropy"``, most uncertain first: ``(order, scores)``."""
    if kind not in ("bald", "entropy"):
        raise ValueError(f"kind must be 'bald' or 'entropy', got {kind!r}")
    scores = bald(probs) if kind == "bald" else predictive_entropy(probs)
    return np.argsort(-scores, kind="stable"), scores
