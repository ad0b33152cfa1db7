"""Chunked implementation: never the [N, V] logits; two kernels behind one entry point.

**Rows** (``reduction="none"``, ``return_lse``, or inside ``shard_map``): four matmuls'
work for forward + backward and O(N) residuals.  The forward walks the vocabulary in
blocks (outer loop) and the rows in tiles (inner loop); each tile's logits
``x_t @ W[:, block] (+ bias)`` are computed in float32 and folded into per-row running
statistics: the max, the sum of exponentials relative to it (online log-sum-exp), the
label's logit and, for label smoothing, the (class-weighted) sum of the logits relative
to the max.  A ``jax.custom_vjp`` keeps the inputs and per-row values; its backward
recomputes each tile's logits and accumulates ``dx`` (float32, ``[N, D]``) and the
block's ``dW`` (float32, ``[D, block]``), written once per block.  Peak extra memory is
``O(N * D + D * block + tile * block)``, independent of ``V``.

**Scalar** (``reduction="mean"`` or ``"sum"``): three matmuls.  Each tile of rows takes
its logits over the whole vocabulary at once (``[tile, V]``, float32), its loss and the
gradient of those logits (lossax's softmax kernel), then ``dx`` and ``dW`` from them:
the gradients are computed in the forward pass, as Liger's fused loss does.  It is a
``jax.custom_jvp`` whose tangent is the inner product of those gradients with the input
tangents, so reverse mode scales the stored gradients by the cotangent (its price: a
float32 accumulator the size of ``W`` for ``dW``, whatever ``W``'s dtype),
forward mode works, and so do higher derivatives (the gradients are ordinary JAX code,
differentiated in turn).  Only the gradients asked for are computed: a frozen ``W``
costs two matmuls.

**Tiles of rows are strided**: tile ``t`` holds rows ``t, t + T, t + 2T, ...`` (``x``
viewed as ``[N / T, T, D]``, sliced along the middle axis).  Nothing ever slices the
row axis, so under data parallelism (``x`` sharded over its rows by ``jax.jit``) each
device computes its own rows, with no gather of ``x``, the logits or the gradients.

Sizes (classes per block, rows per tile) are chosen when the function is lowered
(:mod:`lossax._backend`): small tiles for XLA:CPU, large ones for TPUs and GPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _backend as be
from .. import _numerics as nx
from .. import _softmax
from . import _common
from ._common import Options

_FMAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------------------
# Sizes and tiles.
# --------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """Static sizes of one lowering: classes per block, row tiles, and the platform."""

    block: int  # classes per block (rows kernel)
    tiles: int  # T: row tiles (strided); the rows are padded to a multiple of T
    cpu: bool  # XLA:CPU: static slices of 16-bit blocks, a materialised transpose


def _tile_count(n: int, rows_cap: int) -> int:
    """T row tiles of at most ``rows_cap`` rows, T dividing ``n`` where one is near."""
    t0 = max(1, -(-n // max(rows_cap, 1)))
    if t0 == 1:
        return 1
    for t in range(t0, 2 * t0 + 1):
        if n % t == 0:
            return t
    return t0  # no divisor near: the rows are padded (a copy of x)


def _rows_plan(opts: Options, n: int, v: int, sizes: be.FusedSizes, cpu: bool) -> _Plan:
    block = sizes.block if opts.block_size is None else opts.block_size
    block = max(1, min(block, v))
    return _Plan(block, _tile_count(n, max(8, sizes.tile_elements // block)), cpu)


def _scalar_plan(opts: Options, n: int, v: int, sizes: be.FusedSizes, cpu: bool) -> _Plan:
    # A tile's logits span the whole vocabulary: scalar_tile_elements / V rows.
    rows_cap = max(8, sizes.scalar_tile_elements // max(v, 1))
    if opts.block_size is not None:  # tests: small tiles through block_size
        rows_cap = max(1, opts.block_size)
    return _Plan(v, _tile_count(n, rows_cap), cpu)


def _padded_rows(n: int, tiles: int) -> int:
    return -(-n // tiles) * tiles


def _strided(a: jax.Array | None, tiles: int, fill: Any = 0) -> jax.Array | None:
    """``a`` (rows first) as ``[N / T, T, ...]``: tile ``t`` is ``[:, t]``."""
    if a is None:
        return None
    n = a.shape[0]
    pad = _padded_rows(n, tiles) - n
    if pad:
        a = jnp.concatenate([a, jnp.full((pad, *a.shape[1:]), fill, a.dtype)])
    return a.reshape(-1, tiles, *a.shape[1:])


def _unstrided(a: jax.Array, n: int) -> jax.Array:
    return a.reshape(-1, *a.shape[2:])[:n]


def _tile(a: jax.Array | None, t: Any, plan: _Plan) -> jax.Array | None:
    """Tile ``t`` (an int, or traced inside a loop) of a strided array ``[R, T, ...]``."""
    if a is None:
        return None
    if isinstance(t, int) or plan.tiles == 1:
        return a[:, t if isinstance(t, int) else 0]
    if plan.cpu and be.cpu_bf16_blocks(a.dtype):  # see _slice
        return lax.switch(t, [functools.partial(lambda k, b: b[:, k], k)
                              for k in range(plan.tiles)], a)
    return lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)


def _put_tile(a: jax.Array, update: jax.Array, t: Any, plan: _Plan) -> jax.Array:
    if plan.tiles == 1:
        return update.astype(a.dtype)[:, None]
    return lax.dynamic_update_index_in_dim(a, update.astype(a.dtype), t, axis=1)


def _over_tiles(plan: _Plan, body: Callable, carry: Any) -> Any:
    """``carry = body(t, carry)`` for each row tile."""
    if plan.tiles == 1:
        return body(0, carry)
    return lax.fori_loop(0, plan.tiles, body, carry)


class _Step(NamedTuple):
    """Where a block starts: ``start`` (a Python int for a static step, else traced),
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


def _slice(a: jax.Array | None, step: _Step, length: int, axis: int,
           plan: _Plan) -> jax.Array | None:
    """``length`` entries of ``a`` along ``axis`` from ``step.start``.

    XLA:CPU (jax 0.10) has no bfloat16 dynamic-slice: its float normalisation converts
    the whole operand to float32 around each one.  There, bfloat16 blocks are read with
    one static slice per block (``lax.switch``).
    """
    if a is None:
        return None
    if isinstance(step.start, int):
        if step.start == 0 and a.shape[axis] == length:
            return a
        return lax.slice_in_dim(a, step.start, step.start + length, axis=axis)
    if plan.cpu and be.cpu_bf16_blocks(a.dtype):
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


def _grad_buffer(like: jax.Array, plan: _Plan) -> jax.Array:
    """A zero buffer to write a gradient into, block by block.

    XLA:CPU has no bfloat16 dynamic-update-slice either (a full rewrite of the buffer for
    each block written): there a bfloat16 gradient is gathered in its raw 16 bits
    (uint16, whose dynamic-update-slice is in place) and converted at the end.
    """
    bits = plan.cpu and be.cpu_bf16_blocks(like.dtype)
    return jnp.zeros(like.shape, jnp.uint16 if bits else like.dtype)


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


def _varying(*arrays) -> frozenset:
    return frozenset().union(*(nx.varying(a) for a in arrays))


def _per_platform(fn: Callable, plan_of: Callable, *args: Any) -> Any:
    """``fn(plan, *args)`` with the plan of the platform the function is lowered for."""
    return be.fused_sizes(lambda sizes, cpu, *a: fn(plan_of(sizes, cpu), *a), *args)


# --------------------------------------------------------------------------------------
# The rows kernel (four matmuls, O(N) residuals).
#
# ``weight_parts`` is ``None``, or (when class weights meet label smoothing) the triple
# ``(w_row [N], w_sum [], w_local [V_local])``: each row's label weight, the sum of all
# class weights, and this device's slice of them.  The loss of a row is then PyTorch's
#   w_y ((1 - a) (lse - z_y) + z_loss lse^2) + a / V sum_j w_j (lse - z_j),
# and with w = 1 (no class weights) the plain label-smoothed loss.
# --------------------------------------------------------------------------------------


def _local_stats(plan: _Plan, opts: Options, x3, weights, bias, local2, w_local):
    """Per-row statistics ``[R, T]`` over this device's classes, one tile of logits at a
    time: the max ``m``, ``s = sum_j exp(z_j - m)``, the label's logit, and (for
    smoothing) ``sz = sum_j w_j (z_j - m)`` and the total class weight seen (with ``m``
    read as 0 while it is -inf)."""
    v = weights.shape[1]
    acc = nx.compute_dtype(x3.dtype)
    smoothing = bool(opts.label_smoothing)

    def block_step(cb, bsz, carry):
        m, s, lab, sz, seen = carry
        w_b = _slice(weights, cb, bsz, 1, plan).astype(x3.dtype)
        b_b = _slice(bias, cb, bsz, 0, plan)
        w_local_b = _slice(w_local, cb, bsz, 0, plan)

        def tile_step(t, carry):
            m, s, lab, sz = carry
            zc = _tile_logits(opts, _tile(x3, t, plan), w_b, b_b, acc)
            m_old, s_old = _tile(m, t, plan), _tile(s, t, plan)
            # Online log-sum-exp: the new max (no gradient: it cancels), the old sum
            # rescaled to it; exp(-inf - shift) = 0 covers rows with nothing seen yet.
            m_new = jnp.maximum(m_old, lax.stop_gradient(jnp.max(zc, axis=1)))
            shift = nx.finite_or_zero(m_new)
            s_new = s_old * jnp.exp(m_old - shift) + jnp.sum(
                jnp.exp(zc - shift[:, None]), axis=1
            )
            # The label's logit, where it falls in this block: a gather of one value per
            # row (a select over the tile would be one more pass over it).
            col = _tile(local2, t, plan) - cb.start
            here = (col >= 0) & (col < bsz)
            picked = jnp.take_along_axis(zc, jnp.clip(col, 0, bsz - 1)[:, None], axis=1)
            lab_t = _tile(lab, t, plan) + jnp.where(here, picked[:, 0], 0)
            m, s = _put_tile(m, m_new, t, plan), _put_tile(s, s_new, t, plan)
            lab = _put_tile(lab, lab_t, t, plan)
            if smoothing:
                # sum_j w_j (z_j - shift), moved to the new shift: differences of logits,
                # never their absolute size, so large logits do not cancel.
                d = zc - shift[:, None]
                if w_local_b is None:
                    part = jnp.sum(d, axis=1)
                else:  # a zero weight on a -inf logit counts 0, not 0 * inf = NaN
                    part = jnp.sum(w_local_b[None, :] * jnp.maximum(d, -_FMAX), axis=1)
                moved = _tile(sz, t, plan) - (shift - nx.finite_or_zero(m_old)) * seen
                sz = _put_tile(sz, moved + part, t, plan)
            return m, s, lab, sz

        m, s, lab, sz = _over_tiles(plan, tile_step, (m, s, lab, sz))
        if smoothing:
            seen = seen + (bsz if w_local_b is None else jnp.sum(w_local_b))
        return m, s, lab, sz, seen

    # Per-row arrays shaped (and, on Explicit mesh axes, sharded) like the rows.
    zeros = jnp.zeros_like(local2, dtype=acc)
    init = (jnp.full_like(local2, -jnp.inf, dtype=acc), zeros, zeros, zeros,
            jnp.zeros((), acc))
    init = nx.vary(init, _varying(x3, weights, bias, local2, w_local))
    return _steps(v, plan.block, block_step, init)


def _rows_forward(plan: _Plan, opts: Options, x, weights, bias, labels, row_where, weight_parts):
    n = x.shape[0]
    num_local = weights.shape[1]
    num_global = num_local * nx.axis_size(opts.axis_name)
    local, valid, out_of_range = _common.label_info(opts, labels, row_where, num_local)
    w_row, w_sum, w_local = (None, num_global, None) if weight_parts is None else weight_parts
    x3, local2 = _strided(x, plan.tiles), _strided(local, plan.tiles)
    stats = _local_stats(plan, opts, x3, weights, bias, local2, w_local)
    m, s, label_logit, sz = (_unstrided(a, n) for a in stats[:4])
    seen = stats[4]
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
    return loss, lse, lse_lo, main


def _rows_backward(plan: _Plan, opts: Options, x, weights, bias, labels, row_where, weight_parts,
                   lse, lse_lo, main, g_rep, g_loss, g_lse):
    # With z = cap(x @ W + b), p = softmax(z) and w_y, w_j, w_sum the class weights
    # (all 1, w_sum = V, without them), per row:
    #   dz_j = (g_lse + g (w_y (1 - a) + 2 z_loss w_y lse + a w_sum / V)) p_j
    #          - g w_y (1 - a) [j = y] - g a w_j / V,
    # times the cap's derivative 1 - (z_j / cap)^2; then dx = dz @ W^T, dW = x^T @ dz,
    # db = sum over rows of dz; each tile's z is recomputed from x and W.  With class
    # weights: d w_y = g main, d w_sum = g a lse / V, d w_j = -sum over rows g a z_j / V.
    n, d = x.shape
    v = weights.shape[1]
    acc = nx.compute_dtype(x.dtype)
    num_global = v * nx.axis_size(opts.axis_name)
    w_row, w_sum, w_local = (None, num_global, None) if weight_parts is None else weight_parts
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
    tiles = plan.tiles
    x3 = _strided(x, tiles)
    local2, coef2, g_label2, lse2, g_uniform2 = (
        _strided(a, tiles) for a in (local, coef, g_label, lse_safe, g_uniform))
    names = _varying(x, weights, bias, local, w_local, coef, g_label, lse_safe)

    def block_step(cb, bsz, carry):
        dx3, dw, db, d_w_local = carry
        w_b = _slice(weights, cb, bsz, 1, plan).astype(x.dtype)
        b_b = _slice(bias, cb, bsz, 0, plan)
        w_local_b = _slice(w_local, cb, bsz, 0, plan)

        def tile_step(t, carry):
            dx3, dw_b, db_b, d_w_local_b = carry
            x_t = _tile(x3, t, plan)
            zc = _tile_logits(opts, x_t, w_b, b_b, acc)
            p = jnp.exp(zc - _tile(lse2, t, plan)[:, None])
            hit = lax.broadcasted_iota(jnp.int32, zc.shape, 1) == (
                _tile(local2, t, plan) - cb.start
            )[:, None]
            dz = _tile(coef2, t, plan)[:, None] * p - jnp.where(
                hit, _tile(g_label2, t, plan)[:, None], 0
            )
            if alpha:
                u = _tile(g_uniform2, t, plan)[:, None]
                dz = dz - (u if w_local_b is None else u * w_local_b[None, :])
                if d_w_local_b is not None:
                    d_w_local_b = d_w_local_b - jnp.sum(u * jnp.maximum(zc, -_FMAX), axis=0)
            if opts.soft_cap is not None:
                dz = dz * (1 - jnp.square(zc / opts.soft_cap))
            dz_mm = dz.astype(x.dtype)  # the matmuls in the inputs' dtype
            dx_t = _tile(dx3, t, plan) + _common.matmul(dz_mm, w_b, (1, 1), acc)
            x_tt = jnp.transpose(x_t)
            if plan.cpu:
                # x_t^T, materialised (the barrier stops XLA folding it back into the
                # dot): XLA:CPU's fast matmul path takes no transposed left operand.
                x_tt = lax.optimization_barrier(x_tt)
            dw_b = dw_b + _common.matmul(x_tt, dz_mm, (1, 0), acc, replicated=True)
            if db_b is not None:
                db_b = db_b + jnp.sum(dz, axis=0)
            return _put_tile(dx3, dx_t, t, plan), dw_b, db_b, d_w_local_b

        def zeros(present):
            return None if present is None else jnp.zeros((bsz,), acc)

        tile_init = (dx3, jnp.zeros((d, bsz), acc), zeros(bias), zeros(w_local))
        tile_init = nx.vary(tile_init, names)
        dx3, dw_b, db_b, d_w_local_b = _over_tiles(plan, tile_step, tile_init)
        # The block's dW, accumulated in float32 over the tiles, written once.
        dw = _put_grad(dw, dw_b, cb, 1)
        if db is not None:
            db = _put_grad(db, db_b, cb, 0)
        if d_w_local is not None:
            d_w_local = _put(d_w_local, d_w_local_b, cb, 0)
        return dx3, dw, db, d_w_local

    init = (jnp.zeros_like(x3, dtype=acc), _grad_buffer(weights, plan),
            None if bias is None else _grad_buffer(bias, plan),
            None if w_local is None else jnp.zeros(w_local.shape, acc))
    dx3, dw, db, d_w_local = _steps(v, plan.block, block_step, nx.vary(init, names))
    dx = _unstrided(dx3, n)
    dw = _grad_value(dw, weights.dtype)
    db = None if bias is None else _grad_value(db, bias.dtype)
    d_weight_parts = None
    if weight_parts is not None:
        # Per-row values computed alike on every device take the cotangents as they
        # came (g_rep), not summed over the devices.
        d_row = (g_rep * main).astype(w_row.dtype)
        d_sum = jnp.sum(g_rep * (alpha / num_global) * lse_safe).astype(jnp.result_type(w_sum))
        d_weight_parts = (d_row, d_sum, d_w_local.astype(w_local.dtype))
    return dx, dw, db, d_weight_parts


def _rows_plan_of(opts: Options, n: int, v: int):
    return lambda sizes, cpu: _rows_plan(opts, n, v, sizes, cpu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows(opts: Options, x, weights, bias, labels, row_where, weight_parts):
    out, _ = _rows_fwd(opts, x, weights, bias, labels, row_where, weight_parts)
    return out


def _rows_fwd(opts: Options, x, weights, bias, labels, row_where, weight_parts):
    plan_of = _rows_plan_of(opts, x.shape[0], weights.shape[1])
    loss, lse, lse_lo, main = _per_platform(
        lambda plan, *a: _rows_forward(plan, opts, *a), plan_of,
        x, weights, bias, labels, row_where, weight_parts)
    res = (x, weights, bias, labels, row_where, weight_parts, lse, lse_lo,
           None if weight_parts is None else main)
    return (loss, lse), res


def _rows_bwd(opts: Options, res, cts):
    x, weights, bias, labels, row_where, weight_parts, lse, lse_lo, main = res
    g_rep = cts[0]
    # The forward's psums transpose to psums, as in JAX's own rule, where the cotangents
    # vary over the vocabulary axis (class weights typed as varying there) or arrive
    # split over its devices (shard_map(check_vma=False), which itself sums those of
    # replicated inputs such as x).
    g_loss, g_lse = nx.psum_cotangent(cts, opts.axis_name, weights)
    plan_of = _rows_plan_of(opts, x.shape[0], weights.shape[1])

    def backward(plan, *args):
        return _rows_backward(plan, opts, *args)
    dx, dw, db, d_weight_parts = _per_platform(
        backward, plan_of, x, weights, bias, labels, row_where, weight_parts, lse, lse_lo, main,
        g_rep, g_loss, g_lse)
    # With vma types, each cotangent is summed over the axes along which it varies and
    # its primal does not: dx over the vocabulary axis (O(N * D), inherent to tensor
    # parallelism), dW over batch axes when x is sharded over the rows.
    dx = nx.match_varying(dx.astype(x.dtype), x)
    dw = nx.match_varying(dw, weights)
    db = nx.match_varying(db, bias)
    if d_weight_parts is not None:
        d_weight_parts = tuple(nx.match_varying(c, p)
                               for c, p in zip(d_weight_parts, weight_parts, strict=True))
    return dx, dw, db, None, None, d_weight_parts


_rows.defvjp(_rows_fwd, _rows_bwd)


def _forward_mode_error(*arrays: Any) -> None:
    if any(isinstance(a, jax.interpreters.ad.JVPTracer) for a in arrays if a is not None):
        raise TypeError(
            "lossax.linear_softmax_cross_entropy: forward-mode autodiff (jax.jvp, "
            "jax.jacfwd) of the chunked per-row loss is not available (its derivative is "
            "a jax.custom_vjp).  Use implementation='reference' (materialises the logits; "
            "every mode), or reduction='mean' or 'sum' without return_lse outside "
            "shard_map and lossax.sharded (the three-matmul kernel: every mode).  Reverse "
            "mode and jax.hessian work."
        )


# --------------------------------------------------------------------------------------
# The scalar kernel (three matmuls: the gradients in the forward pass).
# --------------------------------------------------------------------------------------


class _Want(NamedTuple):
    """Which gradients to compute (the inputs whose tangents are not symbolic zeros)."""

    x: bool = False
    weights: bool = False
    bias: bool = False
    class_weights: bool = False

    def any(self) -> bool:
        return self.x or self.weights or self.bias or self.class_weights


def _denominator(opts: Options, labels, row_where, class_weights, dtype):
    """``mean``'s divisor: the counted rows' weights (1, or the label's class weight)."""
    counted = nx.row_valid(labels.shape, row_where, None, labels, opts.ignore_index)
    return jnp.sum(nx.row_weights(counted, dtype, labels, class_weights))


def _scalar_forward(plan: _Plan, opts: Options, want: _Want, x, weights, bias, labels,
                    row_where, class_weights):
    """``(loss, (dx, dW, db, d class_weights))``: the reduced loss and the gradients in
    ``want`` (``None`` for the others), in float32, one tile of rows at a time."""
    n, d = x.shape
    v = weights.shape[1]
    acc = nx.compute_dtype(x.dtype)
    tiles = plan.tiles
    x3 = _strided(x, tiles)
    y2 = _strided(labels, tiles)
    # Padding rows (to a multiple of T) are masked out.
    row_where2 = None
    if row_where is not None or _padded_rows(n, tiles) != n:
        row_where2 = _strided(nx.row_valid((n,), row_where), tiles, fill=False)
    w_mm = weights.astype(x.dtype)
    total_weight = _denominator(opts, labels, row_where, class_weights, acc)
    if opts.reduction == "mean":
        scale = jnp.where(total_weight > 0, 1 / jnp.where(total_weight > 0, total_weight, 1),
                          0).astype(acc)
    else:
        scale = jnp.ones((), acc)

    softmax_config = _softmax.SoftmaxConfig(
        ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss, soft_cap=opts.soft_cap)

    def tile_loss(z, y, row_where_t, class_weights_t):
        # The tile's summed loss: lossax's softmax kernel on the tile's logits, so every
        # option means exactly what it means there.
        loss, _, weight = _softmax.integer_label_rows(softmax_config, z, y, row_where_t, None,
                                                      class_weights_t)
        return nx.reduce_rows(loss, weight, "sum")

    def input_grads(x_t, dz_mm, dw):
        """``(dz @ W^T, dW + x_t^T @ dz)``, each only if wanted."""
        dx_t = _common.matmul(dz_mm, w_mm, (1, 1), acc) if want.x else None
        if want.weights:
            x_tt = jnp.transpose(x_t)
            if plan.cpu:
                # XLA:CPU's fast matmul path takes no transposed left operand: the
                # barrier materialises x_t^T (XLA would fold it back into the dot).
                x_tt = lax.optimization_barrier(x_tt)
            dw = dw + _common.matmul(x_tt, dz_mm, (1, 0), acc, replicated=True)
        return dx_t, dw

    def tile_step(t, carry):
        total, dx3, dw, db, d_class_weights = carry
        x_t = _tile(x3, t, plan)
        z = _common.matmul(x_t, w_mm, (1, 0), acc)
        if bias is not None:
            z = z + bias.astype(acc)[None, :]
        y_t, row_where_t = _tile(y2, t, plan), _tile(row_where2, t, plan)
        if not want.any():
            total = total + tile_loss(z, y_t, row_where_t, class_weights)
            return total, dx3, dw, db, d_class_weights
        if want.class_weights:
            part, vjp = jax.vjp(lambda z, w: tile_loss(z, y_t, row_where_t, w), z,
                                 class_weights)
            dz, d_class_weights_t = vjp(scale.astype(part.dtype))
            d_class_weights = d_class_weights + d_class_weights_t.astype(acc)
        else:
            part, vjp = jax.vjp(lambda z: tile_loss(z, y_t, row_where_t, class_weights), z)
            (dz,) = vjp(scale.astype(part.dtype))
        dz_mm = dz.astype(x.dtype)  # the matmuls in the inputs' dtype
        dx_t, dw = input_grads(x_t, dz_mm, dw)
        if want.x:
            dx3 = _put_tile(dx3, dx_t, t, plan)
        if want.bias:
            db = db + jnp.sum(dz, axis=0)
        return total + part, dx3, dw, db, d_class_weights

    def zeros(flag, shape):
        return jnp.zeros(shape, acc) if flag else None

    init = (jnp.zeros((), acc), jnp.zeros_like(x3, dtype=acc) if want.x else None,
            zeros(want.weights, (d, v)),
            zeros(want.bias, (v,)), zeros(want.class_weights, (v,)))
    total, dx3, dw, db, d_class_weights = _over_tiles(plan, tile_step, init)
    loss = total * scale
    if want.class_weights and opts.reduction == "mean":
        # d (total / W) = d total / W - total / W^2 d W, with W = sum of counted weights.
        _, vjp = jax.vjp(lambda w: _denominator(opts, labels, row_where, w, acc),
                         class_weights)
        (dden,) = vjp(-(total * scale * scale).astype(total_weight.dtype))
        d_class_weights = d_class_weights + dden.astype(acc)
    dx = None if dx3 is None else _unstrided(dx3, n)
    return loss, (dx, dw, db, d_class_weights)


def _scalar_plan_of(opts: Options, n: int, v: int):
    return lambda sizes, cpu: _scalar_plan(opts, n, v, sizes, cpu)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _scalar(opts: Options, x, weights, bias, labels, row_where, class_weights):
    # Not differentiated: the rows kernel's forward (one matmul's work, W read once per
    # block), reduced in float32.
    loss, _ = _rows_loss(opts, x, weights, bias, labels, row_where, class_weights,
                         nx.compute_dtype(x.dtype))
    return loss


def _scalar_jvp(opts: Options, primals, tangents):
    # loss(x, W, b, w): its tangent is <grad, tangent> summed over the inputs; reverse
    # mode transposes it into the gradients times the cotangent.
    x, weights, bias, labels, row_where, class_weights = primals
    dx, dw, db, _, _, d_class_weights = (nx.nonzero_tangent(t) for t in tangents)
    want = _Want(dx is not None, dw is not None, db is not None, d_class_weights is not None)
    if not want.any():
        loss = _scalar(opts, *primals)
        return loss, jnp.zeros_like(loss)
    plan_of = _scalar_plan_of(opts, x.shape[0], weights.shape[1])
    loss, grads = _per_platform(
        lambda plan, *a: _scalar_forward(plan, opts, want, *a), plan_of,
        x, weights, bias, labels, row_where, class_weights)
    acc = loss.dtype
    tangent = jnp.zeros((), acc)
    for g, t in zip(grads, (dx, dw, db, d_class_weights), strict=True):
        if t is not None:
            tangent = tangent + jnp.sum(g * t.astype(acc))
    return loss, tangent


_scalar.defjvp(_scalar_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------


def uses_scalar_kernel(opts: Options, return_lse: bool) -> bool:
    """The three-matmul kernel serves a scalar loss without lse, outside shard_map."""
    return opts.reduction != "none" and not return_lse and opts.axis_name is None


def linear_softmax_cross_entropy(
    x: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    bias: jax.Array | None,
    row_where: jax.Array | None,
    class_weights: jax.Array | None,
    opts: Options,
    return_lse: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """``(loss, lse)`` for flattened, validated arguments (see ``_common``); ``lse`` is
    ``None`` from the scalar kernel (``return_lse=False`` with a reduction)."""
    if uses_scalar_kernel(opts, return_lse):
        return _scalar(opts, x, weights, bias, labels, row_where, class_weights), None
    _forward_mode_error(x, weights, bias, class_weights)
    return _rows_loss(opts, x, weights, bias, labels, row_where, class_weights, x.dtype)


def _rows_loss(opts: Options, x, weights, bias, labels, row_where, class_weights,
               out_dtype) -> tuple[jax.Array, jax.Array]:
    """The rows kernel, its class weights and reduction: ``(loss, lse)``."""
    num_local = weights.shape[1]
    weight_parts = None
    if class_weights is not None and opts.label_smoothing:
        weight_parts = _common.smoothing_weights(class_weights, labels, opts, num_local,
                                                 nx.compute_dtype(x.dtype))
    loss, lse = _rows(opts, x, weights, bias, labels, row_where, weight_parts)
    out = _common.finish(loss, labels, row_where, class_weights, opts, out_dtype,
                         scaled=weight_parts is not None)
    return out, lse

