"""Test configuration shared by every test module.

Four simulated CPU devices are requested before JAX is imported, so that
data-parallel code can be checked against one device in the same process.
Computations that are not sharded still run on device 0.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

# The run's compiled programs are kept on disk until it ends: many tests build
# the same step or model again (every CLI call recompiles), and a cache hit
# skips XLA's compilation. A new folder for every test process (each
# pytest-xdist worker), removed at its end; set in the environment, so that a
# process a test starts uses it too (tests that start several at once take
# it out of their environment: JAX's cache files are not written atomically).
_CACHE = tempfile.mkdtemp(prefix="jaxmed-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
