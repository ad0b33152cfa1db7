"""Test configuration shared by every lossax test.

Set before JAX initialises: 8 fake CPU devices (for the sharded losses), strict dtype
promotion and rank promotion "raise" (lossax must not rely on implicit promotion).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The suite compiles ~2000 small programs: LLVM's cheap pipeline saves ~20% of its time.
# XLA's own passes (fusion, buffer assignment: the graphs and the memory figures the
# tests check) run as always; only the machine code is less optimised.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = _flags.strip()
# One compilation cache for this run, shared by its pytest-xdist workers (each would
# otherwise compile the same small programs again): new for every run, so a run is
# never faster for a previous one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"lossax-tests-jax-cache-{_run}")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# A fixed, bounded hypothesis profile keeps CI within its time limit.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
