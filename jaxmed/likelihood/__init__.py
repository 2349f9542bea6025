"""log p(x) estimators for latent-variable models (knows nothing of Flax).

A model is any :class:`LatentVariableModel` (``log_prior``, ``log_likelihood``,
``proposal``, each for one example). :func:`log_px` estimates log p(x) for a batch
by one of :data:`ESTIMATORS`; the per-example estimators are public too, and so
are the Gaussian formulas (:func:`standard_normal_log_prob`,
:func:`diag_normal_log_prob`, :func:`diag_normal_sample`,
:func:`kl_to_standard_normal`) that ``jaxmed.models`` shares with them.
"""

from jaxmed.likelihood._gaussian import (
    diag_normal_log_prob,
    diag_normal_sample,
    kl_to_standard_normal,
    standard_normal_log_prob,
)
from jaxmed.likelihood.ais import (
    SCHEDULES,
    AISInfo,
    AISState,
    BDMCResult,
    ais_kernel,
    ais_log_px,
    annealing_schedule,
    bdmc,
    reverse_ais_log_px,
)
from jaxmed.likelihood.diagnostics import (
    Diagnostics,
    effective_sample_size,
    log_mean_standard_error,
    psis_khat,
)
from jaxmed.likelihood.estimate import ESTIMATORS, log_px
from jaxmed.likelihood.importance import importance_log_px, mc_log_px
from jaxmed.likelihood.interface import LatentVariableModel
from jaxmed.likelihood.match import match_log_px
from jaxmed.likelihood.mcmc import mcmc_log_px
from jaxmed.likelihood.numpyro_model import NumPyroLatentModel, numpyro_latent_model

__all__ = [
    "AISInfo",
    "AISState",
    "BDMCResult",
    "Diagnostics",
    "ESTIMATORS",
    "LatentVariableModel",
    "NumPyroLatentModel",
    "SCHEDULES",
    "ais_kernel",
    "ais_log_px",
    "annealing_schedule",
    "bdmc",
    "diag_normal_log_prob",
    "diag_normal_sample",
    "effective_sample_size",
    "importance_log_px",
    "kl_to_standard_normal",
    "log_mean_standard_error",
    "log_px",
    "match_log_px",
    "mc_log_px",
    "mcmc_log_px",
    "numpyro_latent_model",
    "psis_khat",
    "reverse_ais_log_px",
    "standard_normal_log_prob",
]
