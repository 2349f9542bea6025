"""Multi-process (multi-host) start-up.

Call :func:`initialize_distributed` at the very start of an entry point,
before any JAX computation: it is the one place in jaxmed that changes JAX's
global configuration, which is why library modules never call it.
"""

from __future__ import annotations

import os

import jax

# Environment variables read when the arguments are not given. JAX itself
# reads JAX_COORDINATOR_ADDRESS; the other two follow its naming.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Joins a multi-process JAX run, if one is asked for.

    Arguments win over the environment variables ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. With none of them set this
    is a single-process run and nothing happens. On CPU the cross-process
    collectives use Gloo (they are unavailable otherwise).

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: number of processes in the run.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      timeout_s: how long to wait for all processes to connect, in seconds.

    Returns:
      True if ``jax.distributed`` was initialised (now or before), False for a
      single-process run.

    Raises:
      ValueError: some but not all of the three settings are given, or they
        are inconsistent.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if address is None and count is None and index is None:
        return False
    if address is None or count is None or index is None:
        raise ValueError(
            "a multi-process run needs the coordinator address, the number of "
            f"processes and the process id (arguments or {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got address={address!r}, "
            f"num_processes={count!r}, process_id={index!r}"
        )
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count}), got {index}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        address, num_processes=count, process_id=index, initialization_timeout=timeout_s
    )
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
