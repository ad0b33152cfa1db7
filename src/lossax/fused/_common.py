"""Pieces shared by every implementation of the fused linear + cross-entropy.

The implementations receive validated, flattened arguments (``x`` ``[N, D]`` already in
the matmul dtype, ``labels`` ``[N]``, ``weights`` ``[D, V_local]``, ``bias``
``[V_local]`` or ``None``, ``row_where`` ``[N]`` or ``None``) and the static options in
one :class:`Options`, and return ``(loss, lse)``: the loss reduced as asked (per row
``[N]`` for ``"none"``) in ``x``'s dtype and the per-row float32 log-sum-exp.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from .. import _numerics as nx


class Options(NamedTuple):
    """Static options (hashable: a ``nondiff_argnums`` argument of the kernels)."""

    ignore_index: int | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    soft_cap: float | None = None
    reduction: str = "none"
    block_size: int | None = None
    axis_name: Any = None


def label_info(opts: Options, labels: jax.Array, row_where: jax.Array | None, num_local: int):
    """``(local label, valid row, out of range)`` per row.

    ``local`` is the label's index in this shard's slice of the classes (outside
    ``[0, V_local)`` when another shard, or no shard, holds it); ``valid`` rows count
    (not masked by ``where``, not ``ignore_index``); ``out_of_range`` marks a label
    outside ``[0, V)`` that is not ``ignore_index`` (its loss is NaN).
    """
    labels = labels.astype(jnp.int32)
    num_global = num_local * nx.axis_size(opts.axis_name)
    local = labels - nx.axis_offset(opts.axis_name, num_local)
    valid = nx.row_valid(labels.shape, row_where, labels=labels, ignore_index=opts.ignore_index)
    out_of_range = (labels < 0) | (labels >= num_global)
    if opts.ignore_index is not None:
        out_of_range = out_of_range & (labels != opts.ignore_index)
    return local, valid, out_of_range


def smoothing_weights(class_weights: jax.Array, labels: jax.Array, opts: Options,
                      num_local: int, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(w_row, w_sum, w_local)`` for class weights with label smoothing: each row's
    label weight, the sum of all weights, and this device's slice of them."""
    w = class_weights.astype(dtype)
    w_row = nx.label_weights(w, labels, dtype)
    w_local = w
    if opts.axis_name is not None:
        w_local = lax.dynamic_slice_in_dim(w, nx.axis_offset(opts.axis_name, num_local), num_local)
    return w_row, jnp.sum(w), w_local


def finish(
    loss: jax.Array,
    labels: jax.Array,
    row_where: jax.Array | None,
    class_weights: jax.Array | None,
    opts: Options,
    out_dtype: Any,
    *,
    scaled: bool = False,
) -> jax.Array:
    """Class weights and the reduction, exactly as the softmax kernels apply them.

    ``scaled``: the loss already carries the class weights (with label smoothing, where
    PyTorch weighs the smoothing term class by class).
    """
    counted = nx.row_valid(labels.shape, row_where, labels=labels,
                           ignore_index=opts.ignore_index)
    weight = counted.astype(loss.dtype)
    if class_weights is not None:
        w_row = nx.label_weights(class_weights, labels, loss.dtype)
        weight = jnp.where(counted, w_row, 0)
        if not scaled:
            loss = loss * jnp.where(counted, w_row, 1)
    return nx.reduce_rows(loss, weight, opts.reduction).astype(out_dtype)


def matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int], acc: Any, *,
           replicated: bool = False) -> jax.Array:
    """``a`` times ``b`` contracting the given dimensions, accumulated in ``acc``.

    ``replicated``: the product sums over the rows (``dW = x^T dz``); where the rows are
    sharded over an ``Explicit`` mesh axis it is asked for replicated (an all-reduce,
    data parallelism's gradient sum), as sharding in types requires.
    """
    return lax.dot_general(
        a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=acc,
        out_sharding=explicit_replicated(a) if replicated else None,
    )


def explicit_axes(a: jax.Array) -> tuple[str, ...]:
    """The ``Explicit`` mesh axes of ``a``'s type (sharding in types), if any."""
    mesh = jax.typeof(a).sharding.mesh
    if mesh.empty:
        return ()
    return tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
                 if t == AxisType.Explicit)


def explicit_mesh(a: jax.Array) -> contextlib.AbstractContextManager:
    """The mesh of ``a``'s ``Explicit`` axes as the context mesh (the kernels' own
    arrays, zeros and iotas, then live on it), or no context."""
    if not explicit_axes(a):
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(jax.typeof(a).sharding.mesh)


def explicit_replicated(a: jax.Array) -> NamedSharding | None:
    """Replicated over ``a``'s mesh when it has ``Explicit`` axes, else ``None``."""
    if not explicit_axes(a):
        return None
    return NamedSharding(jax.typeof(a).sharding.mesh, P())


def gather_explicit(w: jax.Array | None) -> jax.Array | None:
    """``w`` replicated if it is sharded over ``Explicit`` mesh axes (FSDP's all-gather of
    the weights, which ``jax.jit`` inserts by itself on ``Auto`` axes); its gradient is
    resharded back by autodiff."""
    if w is None or not explicit_axes(w) or all(s is None for s in jax.typeof(w).sharding.spec):
        return w
    return jax.sharding.reshard(w, explicit_replicated(w))


def cap(z: jax.Array, soft_cap: float | None) -> jax.Array:
    # Gemma 2's soft cap, cap * tanh(z / cap), on the float32 logits.
    return z if soft_cap is None else soft_cap * jnp.tanh(z / soft_cap)
