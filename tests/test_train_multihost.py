"""Two JAX processes on 127.0.0.1 train like one process with four devices.

The test starts this file twice as a worker (``python test_train_multihost.py
--worker ...``), each process with 2 simulated CPU devices, joined by
``jax.distributed`` with Gloo collectives: 4 devices in all. Each worker reads
only its half of every global batch, trains a few steps with the library's
fit loop (checkpointing through Orbax from both processes) and writes its
parameters. The test runs the same problem in-process on the 4 simulated
devices of tests/conftest.py and compares.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NUM_EXAMPLES, BATCH_SIZE, STEPS, SEED = 64, 16, 6, 3
WORKER_TIMEOUT_S = 150


def _problem():
    """Data, model, loss, optimiser: identical in the test and in the workers."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxmed.train import OptimConfig, TrainConfig, make_optimizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, 6)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(6,)).astype(np.float32))

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))[:, 0]

    model = MLP()

    def loss_fn(params, batch, key):
        # Key-dependent input noise: both runs must also agree on the keys.
        noisy = batch["x"] + 0.05 * jax.random.normal(key, batch["x"].shape)
        err = model.apply(params, noisy) - batch["y"]
        return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}

    params = model.init(jax.random.key(1), x[:1])
    config = TrainConfig(steps=STEPS, batch_size=BATCH_SIZE, seed=SEED, log_every=1,
                         eval_every=0, checkpoint_every=3, keep=2)
    tx = make_optimizer(OptimConfig(learning_rate=0.05), total_steps=STEPS)
    return {"x": x, "y": y}, params, loss_fn, config, tx


def _train(run_dir: Path | None):
    """Trains on all devices of all processes; returns params and the rows read."""
    import jax

    from jaxmed.data.batching import batch_indices
    from jaxmed.train import (
        Checkpointer,
        TrainState,
        fit,
        jit_train_step,
        make_mesh,
        make_train_step,
    )

    data, params, loss_fn, config, tx = _problem()
    mesh = make_mesh()
    rows_read = []

    def batch_fn(step):
        rows = batch_indices(step, num_examples=NUM_EXAMPLES, batch_size=BATCH_SIZE, seed=SEED,
                             process_index=jax.process_index(), process_count=jax.process_count())
        rows_read.append(rows.tolist())
        return {"x": data["x"][rows], "y": data["y"][rows]}

    state = TrainState.create(params=params, tx=tx, key=jax.random.key(SEED))
    checkpointer = Checkpointer(run_dir, keep=config.keep) if run_dir is not None else None
    result = fit(state, train_step=jit_train_step(make_train_step(loss_fn), mesh), batch_fn=batch_fn,
                 config=config, mesh=mesh, checkpointer=checkpointer,
                 metrics_path=run_dir / "metrics.jsonl" if run_dir is not None else None,
                 progress=False)
    if checkpointer is not None:
        checkpointer.close()
    host_params = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), result.state.params)
    return host_params, rows_read, [r["loss"] for r in result.records]


def _worker(process_id: int, port: int, out: Path) -> None:
    from jaxmed.train import initialize_distributed

    initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id, timeout_s=60)
    import jax

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    params, rows, losses = _train(out / "run")
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out / f"params_{process_id}.npz", **flat)
    (out / f"rows_{process_id}.json").write_text(json.dumps({"rows": rows, "losses": losses}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    import jax

    from jaxmed.data.batching import batch_indices
    from jaxmed.train import Checkpointer

    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    # Two processes at once: not the test run's compilation cache (tests/conftest.py).
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    workers = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(port), str(tmp_path)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = []
    try:
        for w in workers:
            logs.append(w.communicate(timeout=WORKER_TIMEOUT_S)[0])
    finally:
        for w in workers:  # never leave a worker hanging on a dead peer
            if w.poll() is None:
                w.kill()
                w.communicate()
    for i, w in enumerate(workers):
        assert w.returncode == 0, f"worker {i} failed:\n{logs[i][-4000:] if i < len(logs) else ''}"

    # The reference: one process, the 4 devices of tests/conftest.py.
    assert jax.device_count() == 4
    ref_params, ref_rows, ref_losses = _train(None)
    ref_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(ref_params)}

    for i in range(2):
        got = np.load(tmp_path / f"params_{i}.npz")
        assert sorted(got.files) == sorted(ref_flat)
        for name, value in ref_flat.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    info = [json.loads((tmp_path / f"rows_{i}.json").read_text()) for i in range(2)]
    np.testing.assert_allclose(info[0]["losses"], ref_losses, rtol=1e-5)
    assert info[0]["losses"] == info[1]["losses"]  # metrics are global, equal on both

    # Each process read only its own contiguous half of each global batch.
    for step in range(STEPS):
        whole = batch_indices(step, num_examples=NUM_EXAMPLES, batch_size=BATCH_SIZE, seed=SEED)
        assert info[0]["rows"][step] == whole[: BATCH_SIZE // 2].tolist()
        assert info[1]["rows"][step] == whole[BATCH_SIZE // 2 :].tolist()
        assert ref_rows[step] == whole.tolist()

    # Both processes wrote one checkpoint set together; it holds the final parameters.
    checkpointer = Checkpointer(tmp_path / "run", keep=2)
    assert checkpointer.all_steps() == [3, STEPS]
    restored = checkpointer.restore_params()
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored):
        np.testing.assert_array_equal(np.asarray(leaf), np.load(tmp_path / "params_0.npz")[jax.tree_util.keystr(path)])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("PROCESS_ID", "PORT", "OUT"), required=True)
    args = parser.parse_args()
    process_id, port, out = args.worker
    _worker(int(process_id), int(port), Path(out))
