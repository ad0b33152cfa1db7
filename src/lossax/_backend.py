"""Every backend-specific choice in lossax, made when a function is lowered.

XLA:CPU needs workarounds that TPUs and GPUs do not, and that cost them time, bytes or
compile time (a TPU compile of the CPU graph of the integer-label cross-entropy ran for
over 400 s).  So each workaround is a pair of implementations chosen with
:func:`jax.lax.platform_dependent`: one for a CPU lowering and one for every other
platform.  The choice follows the platform a function is *lowered* for, not the one
that traced it, so one ``jax.jit`` function is right for CPU, GPU and TPU alike, ahead of
time included (``jax.jit(f).trace(...).lower(lowering_platforms=("tpu",))``).  Only the
chosen branch reaches the compiler.

Nothing else in lossax asks which backend it is on; the workarounds are:

* :func:`private_view`: an ``optimization_barrier`` that gives a pass over an input its
  own view of it (XLA:CPU otherwise writes a float32 copy of a 16-bit input shared by two
  fusions, or the broadcast of a shared constant, as a whole array);
* :func:`opaque`: scalar constants through such a barrier;
* :func:`take_last`: a gather of 16-bit floats as their bits;
* :func:`row_reduce`: long rows reduced in windows (XLA:CPU emits a fused exp-and-sum over
  a row of more than 32768 classes as a slow single-threaded loop);
* :func:`fused_sizes`: the fused linear cross-entropy's block sizes (CPU, TPU, GPU).

Barrier tags: XLA's CSE merges identical barriers, so views that must stay distinct
take distinct tags, all named in :class:`Tag`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def _eager_platform(args: tuple) -> str | None:
    """The platform of the arguments' device when no argument is a tracer, else None.

    ``lax.platform_dependent`` called eagerly reads its platform index back to the host
    to pick a branch, a host read in every eager call; eager calls pick it here instead.
    """
    leaves = jax.tree.leaves(args)
    if any(isinstance(a, jax.core.Tracer) for a in leaves):
        return None
    arrays = [a for a in leaves if isinstance(a, jax.Array)]
    return (next(iter(arrays[0].devices())).platform if arrays
            else jax.default_backend())


def _dispatch(args: tuple, **branches: Callable[..., Any]) -> Any:
    """``lax.platform_dependent(*args, **branches)``, without a host read when eager."""
    platform = _eager_platform(args)
    if platform is None:
        return lax.platform_dependent(*args, **branches)
    return branches.get(platform, branches["default"])(*args)


def on_cpu(cpu: Callable[..., Any], other: Callable[..., Any], *args: Any) -> Any:
    """``cpu(*args)`` where lowered for CPU, ``other(*args)`` on every other platform."""
    return _dispatch(args, cpu=cpu, default=other)


class Tag(enum.IntEnum):
    """The optimization-barrier tags (each view that must stay distinct has its own)."""

    # Softmax cross-entropy.
    SMOOTHING_PASS = 1  # the label-smoothing / dense-target pass of row_stats
    LABEL_MASS_PASS = 2  # the poly loss's sum_j t_j p_j pass
    LABEL_GATHER = 3  # the label logit's gather
    SOFT_CAP = 4  # the soft cap's constants
    CE_BACKWARD = 5  # the backward pass over the logits
    CE_BACKWARD_TARGETS = 6  # the dense backward's labels
    # Binary cross-entropy, focal loss.
    BCE_BOUNDS = 10  # the clamp bounds of the undifferentiated loss (no `clamp` op)
    BCE_INPUTS = 11
    BCE_CONSTS = 12
    BCE_OPTIONS = 13
    FOCAL_INPUTS = 14
    FOCAL_CONSTS = 15
    FOCAL_ALPHA = 16
    FOCAL_GAMMA = 17
    BCE_BACKWARD = 18
    FOCAL_BACKWARD = 19
    FOCAL_BOUNDS = 20
    # Cross-entropy on probabilities.
    PROB_BCE_INPUTS = 21
    PROB_BCE_CONSTS = 22
    PROB_CCE_INPUTS = 23
    PROB_CCE_CONSTS = 24
    PROB_BACKWARD = 25
    # Hinge family.
    HINGE_INPUTS = 31
    HINGE_CONSTS = 32
    HINGE_BACKWARD = 33
    MULTI_HINGE_SCORES = 34
    MULTI_HINGE_CONSTS = 35
    MULTI_HINGE_BACKWARD = 36
    # Top-k accuracy.
    TOP_K_LOGITS = 41
    TOP_K_CONSTS = 42


def _barrier(arrays: tuple, tag: Tag) -> tuple:
    # One barrier per array: a barrier's outputs all take the union of its inputs'
    # shard_map (vma) types, which would change the types of the replicated ones.
    return tuple(None if a is None else lax.optimization_barrier((a, jnp.int32(int(tag))))[0]
                 for a in arrays)


def private_view(*arrays: Any, tag: Tag) -> Any:
    """The arrays, through an ``optimization_barrier`` on CPU (identity elsewhere).

    On XLA:CPU (jax 0.10) the result is the same buffers as values that XLA treats as
    distinct: it converts float16/bfloat16 inside a reduction only while no other fusion
    reads the same input, and otherwise writes a float32 copy of the whole array first
    (measured: 512 MiB extra at 4096 x 32768).  Giving each pass over an input its own
    view keeps every convert inside its fusion.  Use on inputs only: a barrier on a
    computed expression would materialise it.  ``None`` entries pass through.
    """
    out = on_cpu(lambda *a: _barrier(a, tag), lambda *a: a, *arrays)
    return out[0] if len(arrays) == 1 else tuple(out)


def opaque(values: tuple[float, ...], dtype: Any, tag: Tag) -> list[jax.Array]:
    """Scalar constants that XLA:CPU cannot merge with equal ones (plain elsewhere).

    XLA:CPU fuses a loss that is summed afterwards into one pass only if its expression
    shares nothing with the backward pass, not even an equal scalar constant broadcast
    to the input's shape (it then writes the broadcast out as a whole array).
    """
    arr = jnp.asarray(values, dtype)
    arr = on_cpu(lambda a: _barrier((a,), tag)[0], lambda a: a, arr)
    return [arr[i] for i in range(len(values))]


@jax.custom_jvp
def take_last(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``take_along_axis(x, idx, axis=-1)``; on CPU, 16-bit floats are gathered as bits.

    XLA:CPU (jax 0.10) otherwise rewrites the gather to read the float32 convert that a
    reduction pass over ``x`` also needs, and writes that convert out as a whole
    ``[N, V]`` array (measured: 512 MiB at 4096 x 32768 bfloat16).  On TPU the bits
    gather stays a full-size op, so it is CPU only.  The derivative is the gather's.
    """
    def plain(x, idx):
        return jnp.take_along_axis(x, idx, axis=-1)

    if not (jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize == 2):
        return plain(x, idx)

    def bits(x, idx):
        b = jnp.take_along_axis(lax.bitcast_convert_type(x, jnp.uint16), idx, axis=-1)
        return lax.bitcast_convert_type(b, x.dtype)

    return on_cpu(bits, plain, x, idx)


@take_last.defjvp
def _take_last_jvp(primals, tangents):
    x, idx = primals
    return take_last(x, idx), jnp.take_along_axis(tangents[0], idx, axis=-1)


# On XLA:CPU a fused exp-and-row-sum over rows longer than 32768 classes is emitted as a
# slow single-threaded loop (measured with jax 0.10: 2048 x 131072 fp32 takes 614 ms in one
# pass and 79 ms in windows).  Longer rows are reduced in windows of CPU_ROW_WINDOW classes
# with `lax.reduce_window`, whose padding of the tail is virtual (slicing or `jnp.pad`
# made XLA write a copy of the logits), and the per-window results are then reduced.
# 16384 was the most even choice over V in 36864 ... 262144, divisible or not.
CPU_LONG_ROW = 32768
CPU_ROW_WINDOW = 16384


def _windowed(x: jax.Array, kind: str, window: int) -> jax.Array:
    v = x.shape[-1]
    nb = -(-v // window)
    dims = (1,) * (x.ndim - 1) + (window,)
    padding = ((0, 0),) * (x.ndim - 1) + ((0, nb * window - v),)
    if kind == "max":
        init, op, reduce_all = jnp.array(-jnp.inf, x.dtype), lax.max, jnp.max
    else:
        init, op, reduce_all = jnp.array(0, x.dtype), lax.add, jnp.sum
    return reduce_all(lax.reduce_window(x, init, op, dims, dims, padding), axis=-1)


def row_reduce(x: jax.Array, kind: str) -> jax.Array:
    """``max`` or ``sum`` over the last axis (windowed for long rows on CPU).

    Not for differentiated values: use it on values whose derivative a custom rule
    gives (the windowed reduction's transpose is slow on CPU).
    """
    reduce_all = jnp.max if kind == "max" else jnp.sum
    v = x.shape[-1]
    if v == 0:  # no classes: an empty row (max -inf, sum 0), as optax's sums give
        return jnp.full(x.shape[:-1], -jnp.inf if kind == "max" else 0, x.dtype)
    if v <= CPU_LONG_ROW:
        return reduce_all(x, axis=-1)
    return on_cpu(lambda a: _windowed(a, kind, CPU_ROW_WINDOW),
                  lambda a: reduce_all(a, axis=-1), x)


class FusedSizes(NamedTuple):
    """Block sizes of the fused linear cross-entropy on one platform."""

    block: int  # classes per block of W
    tile_elements: int  # rows x classes of one tile of logits (rows kernel)
    scalar_tile_elements: int  # rows x V of one tile of logits (scalar kernel)


# Measured on XLA:CPU (2 cores, jax 0.10, N=4096, D=1024, V=32768 float32): tiles of 512
# rows x 2048 classes run the loop's matmuls at ~0.87 of one big matmul's time per flop.
FUSED_SIZES_CPU = FusedSizes(block=2048, tile_elements=1 << 20, scalar_tile_elements=1 << 23)
# TPU and GPU, from the deviceless compiles of `python -m benchmarks --target` (N=8192,
# D=4096, V=131072 bf16).  Rows kernel: all 8192 rows per block of classes, so W's
# gradient is written once per block instead of accumulated over tiles of rows (bytes:
# TPU v5e 27 GB with 2048-class blocks against 44 GB in 2048-row tiles of 8192 classes;
# H100 55 GB with 4096-class blocks, where XLA:GPU writes each block's logits out).
# Scalar kernel: tiles of 2^28 logits (2048 rows at V = 131072): each tile reads W twice
# and updates the float32 dW accumulator, so fewer, larger tiles move fewer bytes (v5e:
# 126 GB in 16 tiles, 47 GB in 4, with 2.1 GiB of temporaries either way).
FUSED_SIZES_TPU = FusedSizes(block=2048, tile_elements=1 << 24, scalar_tile_elements=1 << 28)
FUSED_SIZES_GPU = FusedSizes(block=4096, tile_elements=1 << 25, scalar_tile_elements=1 << 28)


def fused_sizes(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(sizes, on_cpu, *args)`` with the sizes of the platform it is lowered for."""
    return _dispatch(
        args, cpu=lambda *a: fn(FUSED_SIZES_CPU, True, *a),
        tpu=lambda *a: fn(FUSED_SIZES_TPU, False, *a),
        default=lambda *a: fn(FUSED_SIZES_GPU, False, *a))


def cpu_bf16_blocks(dtype: Any) -> bool:
    """True for bfloat16, whose blocks XLA:CPU must slice statically (use inside the
    CPU branch of :func:`on_cpu` only): it has no bfloat16 dynamic-slice or
    dynamic-update-slice, and converts the whole operand to float32 around each one."""
    return jnp.dtype(dtype) == jnp.bfloat16
