"""Test configuration shared by every lossax test.

Set before JAX initialises: 8 fake CPU devices (for the sharded losses), strict dtype
promotion and rank promotion "raise" (lossax must not rely on implicit promotion).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The suite compiles ~3000 small programs; compiling is most of its time. Two
# code-generation choices make it ~1.6x faster: LLVM's cheap pipeline, and XLA:CPU's
# older loop emitters for fusions (the default MLIR emitters take ~2x as long to compile
# a small program). The emitters also shift a few fusion and buffer decisions, so every
# program the tests inspect through ``Lowered.compile`` (memory_analysis, as_text) is
# compiled with the emitters users get (below; tests/test_conftest.py checks this
# against a process with XLA's defaults). LOSSAX_TEST_DEFAULT_CODEGEN=1 runs the whole
# suite with XLA's defaults.
_FAST_CODEGEN = ("--xla_backend_optimization_level=0",
                 "--xla_llvm_disable_expensive_passes=true",
                 "--xla_cpu_use_fusion_emitters=false")


def _jaxlib_knows(flags: tuple[str, ...]) -> bool:
    # An XLA flag this jaxlib does not know aborts the process: ask a child first.
    import subprocess
    import sys

    probe = "import jax; jax.numpy.zeros(1).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", probe], env=env,
                          capture_output=True).returncode == 0


# Probed once, by the first process (pytest-xdist's workers inherit the environment).
if "LOSSAX_TEST_DEFAULT_CODEGEN" not in os.environ:
    os.environ["LOSSAX_TEST_DEFAULT_CODEGEN"] = str(int(not _jaxlib_knows(_FAST_CODEGEN)))
if os.environ["LOSSAX_TEST_DEFAULT_CODEGEN"] == "0":
    _flags += "".join(f" {f}" for f in _FAST_CODEGEN if f.split("=")[0] not in _flags)
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

if "--xla_cpu_use_fusion_emitters=false" in os.environ["XLA_FLAGS"]:
    _lowered_compile = jax.stages.Lowered.compile

    def _compile_with_users_emitters(self, compiler_options=None):
        opts = {"xla_cpu_use_fusion_emitters": True, **(compiler_options or {})}
        return _lowered_compile(self, compiler_options=opts)

    jax.stages.Lowered.compile = _compile_with_users_emitters

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
