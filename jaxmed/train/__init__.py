"""jaxmed.train: train state, jitted steps over a device mesh, multi-host,
Orbax checkpoints and the fit loop.

Typical use::

    mesh = make_mesh(config.devices)
    tx = make_optimizer(optim, total_steps=config.steps)
    state = TrainState.create(params=params, tx=tx, key=jax.random.key(seed))
    step = jit_train_step(make_train_step(loss_fn), mesh)
    result = fit(state, train_step=step, batch_fn=batch_fn, config=config, mesh=mesh,
                 checkpointer=Checkpointer(run_dir), metrics_path=run_dir / "metrics.jsonl")
"""

from jaxmed.train.checkpoint import (
    Checkpointer,
    config_differences,
    load_config,
    load_model,
    load_preprocessing,
    save_config,
    save_preprocessing,
)
from jaxmed.train.config import OptimConfig, TrainConfig, config_from_dict
from jaxmed.train.distributed import initialize_distributed
from jaxmed.train.loop import FitResult, NonFiniteLossError, fit, make_evaluator
from jaxmed.train.metrics_log import plot_loss_curve, read_metrics
from jaxmed.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from jaxmed.train.parallel import (
    DATA_AXIS,
    batch_sharding,
    jit_eval_step,
    jit_train_step,
    local_batch_slice,
    make_mesh,
    replicate,
    replicated_sharding,
    shard_batch,
)
from jaxmed.train.phase import params_digest, run_phase
from jaxmed.train.registry import MODELS, ModelSpec
from jaxmed.train.run import RunConfig, train_model
from jaxmed.train.sources import ImageSplits, load_image_splits
from jaxmed.train.state import TrainState
from jaxmed.train.step import make_eval_step, make_train_step

__all__ = [
    "DATA_AXIS",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Checkpointer",
    "FitResult",
    "ImageSplits",
    "ModelSpec",
    "NonFiniteLossError",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "TrainState",
    "batch_sharding",
    "config_differences",
    "config_from_dict",
    "fit",
    "initialize_distributed",
    "jit_eval_step",
    "jit_train_step",
    "load_config",
    "load_image_splits",
    "load_model",
    "load_preprocessing",
    "local_batch_slice",
    "make_evaluator",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "params_digest",
    "plot_loss_curve",
    "read_metrics",
    "replicate",
    "replicated_sharding",
    "run_phase",
    "save_config",
    "save_preprocessing",
    "shard_batch",
    "train_model",
]
