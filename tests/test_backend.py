"""lossax._backend: XLA:CPU workarounds chosen when a function is lowered, not traced.

One jitted loss, lowered for CPU and exported (no device needed) for TPU and GPU, must
carry each platform's own graph: barriers, 16-bit bit gathers and windowed long rows in
the CPU lowering only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossax
from lossax import _backend as be


def _module(f, platform, *args):
    """The StableHLO of ``f`` lowered for ``platform`` (exported: no device needed)."""
    return jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()


@pytest.mark.parametrize("platform", ["cpu", "tpu", "cuda"])
def test_private_view_is_a_barrier_on_cpu_only(platform):
    x = jax.ShapeDtypeStruct((4, 3), jnp.float32)
    text = _module(lambda a: be.private_view(a, tag=be.Tag.CE_BACKWARD) * 2, platform, x)
    assert ("optimization_barrier" in text) == (platform == "cpu")
    consts = _module(lambda: be.opaque((1.0, 2.0), jnp.float32, tag=be.Tag.SOFT_CAP)[1],
                     platform)
    assert ("optimization_barrier" in consts) == (platform == "cpu")


@pytest.mark.parametrize("platform", ["cpu", "tpu", "cuda"])
def test_integer_label_loss_has_each_platforms_graph(platform):
    # bf16 logits over a long row, value and gradient: on CPU the label is gathered as
    # uint16 bits and the rows are reduced in windows; elsewhere neither.
    def loss(x, y):
        out = lossax.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing=0.1)
        return out.astype(jnp.float32).mean()

    xs = jax.ShapeDtypeStruct((4, be.CPU_LONG_ROW + 8), jnp.bfloat16)
    ys = jax.ShapeDtypeStruct((4,), jnp.int32)
    text = _module(jax.value_and_grad(loss), platform, xs, ys)
    on_cpu = platform == "cpu"
    assert ("reduce_window" in text) == on_cpu
    assert ("bitcast_convert" in text) == on_cpu


def test_the_same_jitted_function_runs_its_cpu_branch_here():
    # Eagerly and under jit on this CPU host the CPU branch runs, with the same numbers.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7)), jnp.bfloat16)
    idx = jnp.array([[1], [6], [0]])
    expected = jnp.take_along_axis(x, idx, axis=-1)
    np.testing.assert_array_equal(be.take_last(x, idx), expected)
    np.testing.assert_array_equal(jax.jit(be.take_last)(x, idx), expected)
    g = jax.grad(lambda a: be.take_last(a, idx).astype(jnp.float32).sum())(x)
    np.testing.assert_array_equal(g, jnp.zeros_like(x).at[jnp.arange(3), idx[:, 0]].set(1))


@pytest.mark.parametrize("platform", ["cpu", "tpu", "cuda"])
def test_fused_loss_takes_its_platforms_block_sizes(platform):
    # The fused kernel's block loop runs V / block times: CPU 2048, TPU 2048 (all rows per
    # block), GPU 4096 classes per block; the loop bounds appear as constants.
    v = 3 * 4096

    def loss(x, w, y):
        return lossax.linear_softmax_cross_entropy(x, y, w).mean()

    args = (jax.ShapeDtypeStruct((64, 16), jnp.float32), jax.ShapeDtypeStruct((16, v),
            jnp.float32), jax.ShapeDtypeStruct((64,), jnp.int32))
    text = _module(loss, platform, *args)
    sizes = {"cpu": be.FUSED_SIZES_CPU, "tpu": be.FUSED_SIZES_TPU,
             "cuda": be.FUSED_SIZES_GPU}[platform]
    assert f"dense<{v // sizes.block}> : tensor<i32>" in text
    others = {s.block for p, s in (("cpu", be.FUSED_SIZES_CPU), ("tpu", be.FUSED_SIZES_TPU),
                                   ("cuda", be.FUSED_SIZES_GPU))
              if p != platform} - {sizes.block}
    for block in others:
        assert f"dense<{v // block}> : tensor<i32>" not in text
