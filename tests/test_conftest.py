"""The suite's own configuration (tests/conftest.py) keeps what the tests inspect true.

The suite compiles with cheaper code generation than users get; the programs tests
inspect through ``Lowered.compile`` must still be the ones users' XLA builds.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import lossax

# 256 x 40000 float32 (the blocked CPU path): XLA's older fusion emitters give this
# program 7264 bytes of temporaries, the default ones 7168.
_PROGRAM = """
import collections, json, re, jax, jax.numpy as jnp, lossax
def inspected():
    xs = jax.ShapeDtypeStruct((256, 40000), jnp.float32)
    ys = jax.ShapeDtypeStruct((256,), jnp.int32)
    f = lambda a, b: lossax.softmax_cross_entropy_with_integer_labels(a, b).sum()
    c = jax.jit(jax.value_and_grad(f)).lower(xs, ys).compile()
    text = c.as_text()
    ops = collections.Counter(re.findall(r" = \\S+ ([a-z][\\w-]*)\\(", text))
    return {"temp": c.memory_analysis().temp_size_in_bytes, "ops": dict(sorted(ops.items()))}
"""


def test_inspected_programs_are_the_ones_xla_defaults_build():
    scope = {}
    exec(_PROGRAM, scope)
    here = scope["inspected"]()
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_PLATFORMS"] = "cpu"
    child = subprocess.run(
        [sys.executable, "-c", _PROGRAM + "\nprint(json.dumps(inspected()))"],
        env=env, capture_output=True, text=True, check=True)
    assert here == json.loads(child.stdout.splitlines()[-1])


def test_jitted_calls_compute_what_the_inspected_program_computes():
    # The executed (cheaply compiled) and the inspected program agree on values.
    x = jax.random.normal(jax.random.key(0), (64, 40000)) * 4
    y = jnp.arange(64, dtype=jnp.int32) * 7
    f = jax.value_and_grad(lambda a: lossax.softmax_cross_entropy_with_integer_labels(
        a, y).sum())
    inspected = jax.jit(f).lower(x).compile()
    (a, ga), (b, gb) = jax.jit(f)(x), inspected(x)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-9)
