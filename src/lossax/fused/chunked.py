"""Chunked implementation: the vocabulary in blocks, the rows in tiles, never [N, V].

Forward: for each block of ``block`` classes (outer loop) and each tile of rows (inner
loop), the tile's logits ``x_t @ W[:, block] (+ bias)`` are computed in float32 and
folded into per-row running statistics: the max, the sum of exponentials relative to
it (online log-sum-exp), the label's logit and, for label smoothing, the (class-weighted)
sum of the logits relative to the max.  The custom VJP keeps ``x``, ``weights``,
``bias``, ``labels``, ``where``, the class weights and O(N) per-row values (log-sum-exp);
the backward recomputes each tile's logits and accumulates ``dx`` (float32, ``[N, D]``)
and the block's ``dW`` (float32, ``[D, block]``), written once per block into ``dW`` in
``weights``' dtype.  Peak extra memory is ``O(N * D + D * block + tile * block)``,
independent of ``V``.

The last block (and tile) may be shorter: it is a separate, statically shaped step, so
nothing is padded, masked or computed twice.

Cost: four matmuls of ``x @ W``'s size for forward + backward (one forward, the
recomputation, ``dx`` and ``dW``), against three when the logits are materialised; in
exchange the ``[N, V]`` logits, their float32 gradient and their page faults are gone.

With ``axis_name`` (inside ``shard_map``), ``weights`` holds a contiguous slice of the
classes; only per-row statistics cross devices in the forward (``pmax``/``psum`` of
``O(N)`` values), and the backward ``psum``s ``dx`` (``O(N * D)``, inherent to tensor
parallelism); ``dW`` and ``dbias`` stay local.

XLA:CPU only, bfloat16 weights: XLA:CPU has no bfloat16 dynamic-update-slice, so ``dW``
is gathered in a uint16 buffer the size of ``W`` (never a float32 one) and converted at
the end; see ``_cpu_bf16``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _numerics as nx
from . import _common
from ._common import Options

# Measured on XLA:CPU (2 cores, jax 0.10, N=4096, D=1024, V=32768 float32, forward +
# backward, interleaved with the materialised path): the loop's matmuls run at ~0.87 of
# one big matmul's time per flop with tiles of 512 rows x 2048 classes (256 x 4096 and
# 1024 x 2048 were no faster; 1024-class blocks were 20% slower), and the elementwise
# work is nearly free beside them.  Temporaries: 32 MiB whatever V (6% of the logits at
# V=32768).
CPU_BLOCK = 2048
CPU_TILE_ELEMENTS = 1 << 20
# GPU/TPU (not measured here): bigger tiles keep the matrix units busy; 64 MiB of
# float32 logits per tile.
ACCEL_BLOCK = 8192
ACCEL_TILE_ELEMENTS = 1 << 24


def default_block(num_classes: int) -> int:
    """Classes per block: the measured default, or all classes when fewer."""
    block = CPU_BLOCK if jax.default_backend() == "cpu" else ACCEL_BLOCK
    return max(1, min(block, num_classes))


def tile_rows(num_rows: int, block: int) -> int:
    """Rows per tile, so that a tile's ``rows x block`` logits stay small.

    The rows are split into tiles of near-equal size (multiples of 8 where possible),
    so that the last, shorter tile is not tiny.
    """
    elements = CPU_TILE_ELEMENTS if jax.default_backend() == "cpu" else ACCEL_TILE_ELEMENTS
    cap = max(8, elements // max(block, 1))
    if num_rows <= cap:
        return max(num_rows, 1)
    tiles = -(-num_rows // cap)
    rows = -(-num_rows // tiles)
    return min(cap, -(-rows // 8) * 8)


class _Step(NamedTuple):
    """Where a step starts: ``start`` (a Python int for a static step, else traced),
    ``index`` (the loop counter, traced) and the loop's ``count`` of ``size``-long steps."""

    start: Any
    index: Any = None
    count: int = 1
    size: int = 0


def _steps(total: int, size: int, body: Callable, carry: Any) -> Any:
    """Runs ``carry = body(step, length, carry)`` over ``[0, total)`` in steps of ``size``.

    Full steps run in a ``fori_loop`` (traced start, static ``length``); a shorter last
    step runs once more with its own static length and start.
    """
    full, tail = divmod(total, size)
    if full == 1:
        carry = body(_Step(0), size, carry)
    elif full > 1:
        carry = lax.fori_loop(
            0, full, lambda i, c: body(_Step(i * size, i, full, size), size, c), carry
        )
    if tail:
        carry = body(_Step(full * size), tail, carry)
    return carry


# XLA:CPU (jax 0.10) has no bfloat16 dynamic-slice or dynamic-update-slice: its float
# normalisation converts the whole operand to float32 around each one (a float32 copy
# of all of W to read a block of it; a full rewrite of dW for each block written).
# There, bfloat16 blocks are read with one static slice per block (lax.switch), and dW
# is accumulated in its raw 16 bits (uint16, whose dynamic-update-slice is in place).
def _cpu_bf16(dtype: Any) -> bool:
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def _slice(a: jax.Array | None, step: _Step, length: int, axis: int) -> jax.Array | None:
    """``length`` entries of ``a`` along ``axis`` from ``step.start``."""
    if a is None:
        return None
    if isinstance(step.start, int):
        if step.start == 0 and a.shape[axis] == length:
            return a
        return lax.slice_in_dim(a, step.start, step.start + length, axis=axis)
    if _cpu_bf16(a.dtype):
        branches = [
            functools.partial(lax.slice_in_dim, start_index=k * step.size,
                              limit_index=(k + 1) * step.size, axis=axis)
            for k in range(step.count)
        ]
        return lax.switch(step.index, branches, a)
    return lax.dynamic_slice_in_dim(a, step.start, length, axis)


def _put(a: jax.Array, update: jax.Array, step: _Step, axis: int) -> jax.Array:
    """``a`` with ``update`` written at ``step.start`` along ``axis``."""
    if a.shape == update.shape:
        return update.astype(a.dtype)
    return lax.dynamic_update_slice_in_dim(a, update.astype(a.dtype), step.start, axis)


def _grad_buffer(like: jax.Array) -> jax.Array:
    """A zero buffer to write a gradient into, block by block (see ``_cpu_bf16``)."""
    return jnp.zeros(like.shape, jnp.uint16 if _cpu_bf16(like.dtype) else like.dtype)


def _put_grad(buf: jax.Array, update: jax.Array, step: _Step, axis: int) -> jax.Array:
    """Writes a float32 block of a gradient into ``buf`` in the parameter's dtype."""
    if buf.dtype == jnp.uint16:
        update = lax.bitcast_convert_type(update.astype(jnp.bfloat16), jnp.uint16)
    return _put(buf, update, step, axis)


def _grad_value(buf: jax.Array, dtype: Any) -> jax.Array:
    return lax.bitcast_convert_type(buf, dtype) if buf.dtype != dtype else buf


def _tile_logits(opts: Options, x_t, w_b, b_b, acc):
    """A tile's logits in float32: ``cap(x_t @ w_b + b_b)``."""
    z = _common.matmul(x_t, w_b, (1, 0), acc)
    if b_b is not None:
        z = z + b_b.astype(acc)[None, :]
    return _common.cap(z, opts.soft_cap)


def _block_weights(weights: jax.Array, step: _Step, length: int, dtype: Any) -> jax.Array:
    # One block of W, converted to the matmul dtype if needed: never a copy of all of W.
    return _slice(weights, step, length, 1).astype(dtype)


def _varying(*arrays) -> frozenset:
    return frozenset().union(*(nx.varying(a) for a in arrays))


def _sizes(opts: Options, n: int, v: int) -> tuple[int, int]:
    block = default_block(v) if opts.block_size is None else min(opts.block_size, v)
    return block, tile_rows(n, block)


# --------------------------------------------------------------------------------------
# The kernel.
#
# ``cw`` is ``None``, or (when class weights meet label smoothing) the triple
# ``(w_row [N], w_sum [], w_local [V_local])``: each row's label weight, the sum of all
# class weights, and this device's slice of them.  The loss of a row is then PyTorch's
#   w_y ((1 - a) (lse - z_y) + z_loss lse^2) + a / V sum_j w_j (lse - z_j),
# and with w = 1 (no class weights) the plain label-smoothed loss.
# --------------------------------------------------------------------------------------

_FMAX = float(np.finfo(np.float32).max)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(opts: Options, x, weights, bias, labels, row_where, cw):
    out, _ = _fused_fwd(opts, x, weights, bias, labels, row_where, cw)
    return out


def _local_stats(opts: Options, x, weights, bias, local, w_local):
    """Per-row statistics over this device's classes, one tile of logits at a time:
    the max ``m``, ``s = sum_j exp(z_j - m)``, the label's logit, and (for smoothing)
    ``sz = sum_j w_j (z_j - m)`` and the total class weight seen (with ``m`` read as 0
    while it is -inf)."""
    n, v = x.shape[0], weights.shape[1]
    acc = nx.compute_dtype(x.dtype)
    block, rows = _sizes(opts, n, v)
    smoothing = bool(opts.label_smoothing)

    def block_step(cb, bsz, carry):
        m, s, lab, sz, seen = carry
        w_b = _block_weights(weights, cb, bsz, x.dtype)
        b_b = _slice(bias, cb, bsz, 0)
        cw_b = _slice(w_local, cb, bsz, 0)

        def tile_step(rt, tsz, carry):
            m, s, lab, sz = carry
            zc = _tile_logits(opts, _slice(x, rt, tsz, 0), w_b, b_b, acc)
            m_old, s_old = _slice(m, rt, tsz, 0), _slice(s, rt, tsz, 0)
            # Online log-sum-exp: the new max (no gradient: it cancels), the old sum
            # rescaled to it; exp(-inf - shift) = 0 covers rows with nothing seen yet.
            m_new = jnp.maximum(m_old, lax.stop_gradient(jnp.max(zc, axis=1)))
            shift = nx.finite_or_zero(m_new)
            s_new = s_old * jnp.exp(m_old - shift) + jnp.sum(
                jnp.exp(zc - shift[:, None]), axis=1
            )
            # The label's logit, where it falls in this block: a gather of one value per
            # row (a select over the tile would be one more pass over it).
            col = _slice(local, rt, tsz, 0) - cb.start
            here = (col >= 0) & (col < bsz)
            picked = jnp.take_along_axis(zc, jnp.clip(col, 0, bsz - 1)[:, None], axis=1)
            lab_t = _slice(lab, rt, tsz, 0) + jnp.where(here, picked[:, 0], 0)
            m, s, lab = _put(m, m_new, rt, 0), _put(s, s_new, rt, 0), _put(lab, lab_t, rt, 0)
            if smoothing:
                # sum_j w_j (z_j - shift), moved to the new shift: differences of logits,
                # never their absolute size, so large logits do not cancel.
                d = zc - shift[:, None]
                if cw_b is None:
                    part = jnp.sum(d, axis=1)
                else:  # a zero weight on a -inf logit counts 0, not 0 * inf = NaN
                    part = jnp.sum(cw_b[None, :] * jnp.maximum(d, -_FMAX), axis=1)
                moved = _slice(sz, rt, tsz, 0) - (shift - nx.finite_or_zero(m_old)) * seen
                sz = _put(sz, moved + part, rt, 0)
            return m, s, lab, sz

        m, s, lab, sz = _steps(n, rows, tile_step, (m, s, lab, sz))
        if smoothing:
            seen = seen + (bsz if cw_b is None else jnp.sum(cw_b))
        return m, s, lab, sz, seen

    zeros = jnp.zeros((n,), acc)
    init = (jnp.full((n,), -jnp.inf, acc), zeros, zeros, zeros, jnp.zeros((), acc))
    init = nx.vary(init, _varying(x, weights, bias, local, w_local))
    return _steps(v, block, block_step, init)


def _fused_fwd(opts: Options, x, weights, bias, labels, row_where, cw):
    num_local = weights.shape[1]
    num_global = num_local * nx.axis_size(opts.axis_name)
    local, valid, out_of_range = _common.label_info(opts, labels, row_where, num_local)
    w_row, w_sum, w_local = (None, num_global, None) if cw is None else cw
    m, s, label_logit, sz, seen = _local_stats(opts, x, weights, bias, local, w_local)
    # Combine the shards' statistics: O(N) values cross devices.
    m_all = m if opts.axis_name is None else lax.pmax(lax.stop_gradient(m), opts.axis_name)
    shift = lax.stop_gradient(nx.finite_or_zero(m_all))
    s = nx.psum(s * jnp.exp(m - shift), opts.axis_name)
    log_s = jnp.log(s)
    lse = shift + log_s
    lse_lo = log_s - (lse - shift)  # what rounding lse lost (used by the backward)
    label_logit = nx.psum(label_logit, opts.axis_name)
    nll = (shift - label_logit) + log_s  # lse - z_y, without cancelling large logits
    alpha = opts.label_smoothing
    main = (1 - alpha) * nll if alpha else nll
    if opts.z_loss:
        main = main + opts.z_loss * jnp.square(lse)
    loss = main if w_row is None else w_row * main
    if alpha:
        # sum_j w_j (lse - z_j) = w_sum log(s) - sum_j w_j (z_j - shift).
        sz = nx.psum(sz - (shift - nx.finite_or_zero(m)) * seen, opts.axis_name)
        loss = loss + (alpha / num_global) * (w_sum * log_s - sz)
    loss = jnp.where(valid, loss, 0)
    # A label outside [0, V) that is not ignore_index gives NaN: loud, never silent.
    loss = jnp.where(valid & out_of_range, jnp.nan, loss)
    res = (x, weights, bias, labels, row_where, cw, lse, lse_lo, None if cw is None else main)
    return (loss, lse), res


def _fused_bwd(opts: Options, res, cts):
    # With z = cap(x @ W + b), p = softmax(z) and w_y, w_j, w_sum the class weights
    # (all 1, w_sum = V, without them), per row:
    #   dz_j = (g_lse + g (w_y (1 - a) + 2 z_loss w_y lse + a w_sum / V)) p_j
    #          - g w_y (1 - a) [j = y] - g a w_j / V,
    # times the cap's derivative 1 - (z_j / cap)^2; then dx = dz @ W^T, dW = x^T @ dz,
    # db = sum over rows of dz; each tile's z is recomputed from x and W.  With class
    # weights: d w_y = g main, d w_sum = g a lse / V, d w_j = -sum over rows g a z_j / V.
    x, weights, bias, labels, row_where, cw, lse, lse_lo, main = res
    g_rep = cts[0]
    # The forward's psums transpose to psums, as in JAX's own rule, where the cotangents
    # vary over the vocabulary axis (class weights typed as varying there) or arrive
    # split over its devices (shard_map(check_vma=False), which itself sums those of
    # replicated inputs such as x).
    g_loss, g_lse = nx.psum_cotangent(cts, opts.axis_name, weights)
    n, d = x.shape
    v = weights.shape[1]
    acc = nx.compute_dtype(x.dtype)
    block, rows = _sizes(opts, n, v)
    num_global = v * nx.axis_size(opts.axis_name)
    w_row, w_sum, w_local = (None, num_global, None) if cw is None else cw
    local, valid, out_of_range = _common.label_info(opts, labels, row_where, v)

    def masked(g):
        g = jnp.where(valid, g.astype(acc), 0)
        return jnp.where(valid & out_of_range, jnp.nan, g)

    g_loss, g_rep = masked(g_loss), masked(g_rep)
    g_lse = jnp.where(jnp.isfinite(lse), g_lse.astype(acc), 0)
    lse_safe = nx.finite_or_zero(lse)
    alpha = opts.label_smoothing
    g_y = g_loss if w_row is None else g_loss * w_row
    coef = g_lse + g_y * ((1 - alpha) + 2 * opts.z_loss * lse_safe)
    if alpha:
        coef = coef + (alpha / num_global) * g_loss * w_sum
    coef = coef * jnp.exp(-lse_lo)  # p = exp(z - lse - lse_lo)
    g_label = (1 - alpha) * g_y
    g_uniform = (alpha / num_global) * g_loss

    def block_step(cb, bsz, carry):
        dx, dw, db, dcw = carry
        w_b = _block_weights(weights, cb, bsz, x.dtype)
        b_b = _slice(bias, cb, bsz, 0)
        cw_b = _slice(w_local, cb, bsz, 0)

        def tile_step(rt, tsz, carry):
            dx, dw_b, db_b, dcw_b = carry
            x_t = _slice(x, rt, tsz, 0)
            zc = _tile_logits(opts, x_t, w_b, b_b, acc)
            p = jnp.exp(zc - _slice(lse_safe, rt, tsz, 0)[:, None])
            hit = lax.broadcasted_iota(jnp.int32, zc.shape, 1) == (
                _slice(local, rt, tsz, 0) - cb.start
            )[:, None]
            dz = _slice(coef, rt, tsz, 0)[:, None] * p - jnp.where(
                hit, _slice(g_label, rt, tsz, 0)[:, None], 0
            )
            if alpha:
                u = _slice(g_uniform, rt, tsz, 0)[:, None]
                dz = dz - (u if cw_b is None else u * cw_b[None, :])
                if dcw_b is not None:
                    dcw_b = dcw_b - jnp.sum(u * jnp.maximum(zc, -_FMAX), axis=0)
            if opts.soft_cap is not None:
                dz = dz * (1 - jnp.square(zc / opts.soft_cap))
            dz_mm = dz.astype(x.dtype)  # the matmuls in the inputs' dtype
            dx_t = _slice(dx, rt, tsz, 0) + _common.matmul(dz_mm, w_b, (1, 1), acc)
            # x_t^T, materialised (the barrier stops XLA folding it back into the dot):
            # XLA:CPU's fast matmul path takes no transposed left operand.
            x_tt = lax.optimization_barrier(jnp.transpose(x_t))
            dw_b = dw_b + _common.matmul(x_tt, dz_mm, (1, 0), acc)
            if db_b is not None:
                db_b = db_b + jnp.sum(dz, axis=0)
            return _put(dx, dx_t, rt, 0), dw_b, db_b, dcw_b

        def zeros(present):
            return None if present is None else jnp.zeros((bsz,), acc)

        tile_init = (dx, jnp.zeros((d, bsz), acc), zeros(bias), zeros(w_local))
        tile_init = nx.vary(tile_init, names)
        dx, dw_b, db_b, dcw_b = _steps(n, rows, tile_step, tile_init)
        # The block's dW, accumulated in float32 over the tiles, written once.
        dw = _put_grad(dw, dw_b, cb, 1)
        if db is not None:
            db = _put_grad(db, db_b, cb, 0)
        if dcw is not None:
            dcw = _put(dcw, dcw_b, cb, 0)
        return dx, dw, db, dcw

    names = _varying(x, weights, bias, local, w_local, coef, g_label, lse_safe)
    init = (jnp.zeros((n, d), acc), _grad_buffer(weights),
            None if bias is None else _grad_buffer(bias),
            None if w_local is None else jnp.zeros(w_local.shape, acc))
    dx, dw, db, dcw = _steps(v, block, block_step, nx.vary(init, names))
    dw = _grad_value(dw, weights.dtype)
    db = None if bias is None else _grad_value(db, bias.dtype)
    # With vma types, each cotangent is summed over the axes along which it varies and
    # its primal does not: dx over the vocabulary axis (O(N * D), inherent to tensor
    # parallelism), dW over batch axes when x is sharded over the rows.
    dx = nx.match_varying(dx.astype(x.dtype), x)
    dw = nx.match_varying(dw, weights)
    db = nx.match_varying(db, bias)
    dcw_all = None
    if cw is not None:
        # Per-row values computed alike on every device take the cotangents as they
        # came (g_rep), not summed over the devices.
        d_row = (g_rep * main).astype(w_row.dtype)
        d_sum = jnp.sum(g_rep * (alpha / num_global) * lse_safe).astype(jnp.result_type(w_sum))
        dcw_all = tuple(
            nx.match_varying(c, p)
            for c, p in zip((d_row, d_sum, dcw.astype(w_local.dtype)), cw, strict=True)
        )
    return dx, dw, db, None, None, dcw_all


_fused.defvjp(_fused_fwd, _fused_bwd)


def linear_softmax_cross_entropy(
    x: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    bias: jax.Array | None,
    row_where: jax.Array | None,
    class_weights: jax.Array | None,
    opts: Options,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, lse)`` for flattened, validated arguments (see ``_common``)."""
    num_local = weights.shape[1]
    num_global = num_local * nx.axis_size(opts.axis_name)
    cw = None
    if class_weights is not None and opts.label_smoothing:
        cw = _common.smoothing_weights(class_weights, labels, opts, num_local,
                                       nx.compute_dtype(x.dtype))
    loss, lse = _fused(opts, x, weights, bias, labels, row_where, cw)
    out = _common.finish(loss, labels, row_where, class_weights, opts, num_global, x.dtype,
                         scaled=cw is not None)
    return out, lse
