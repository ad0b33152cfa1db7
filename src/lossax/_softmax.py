"""Softmax cross-entropy: integer and dense labels, each one custom-JVP kernel.

Both kernels work on the canonical ``[batch..., V]`` layout (class axes moved last and
flattened by the public wrappers) and return per-row float32 values.  A call runs:
public wrapper (validation, canonical layout) -> :func:`integer_label_rows` or
:func:`dense_label_rows` (the kernel, class weights, each row's weight) ->
:func:`lossax._numerics.reduce_rows` and the output dtype.  :mod:`lossax.sharded`
validates global arrays once and calls the ``*_rows`` entries inside ``shard_map``.

Derivatives: each kernel is a :func:`jax.custom_jvp` whose tangent is written by hand,
linear in the input tangents, and rematerialised (:func:`jax.checkpoint` saving
nothing).  Forward mode evaluates it; reverse mode transposes it, so the backward pass
recomputes ``softmax(x)`` from the logits and the per-row log-sum-exp: the residuals
are the inputs and per-row values, never an ``[N, V]`` array.  Every mode works
(``jvp``, ``grad``, ``jacfwd``, ``linearize``, ``hessian``), and derivatives of any
order are exact: the tangent is ordinary JAX code, differentiated in turn.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _backend as be
from . import _numerics as nx

# --------------------------------------------------------------------------------------
# Shared pieces of both kernels.
# --------------------------------------------------------------------------------------


class SoftmaxConfig(NamedTuple):
    """Static options of a kernel (hashable: a ``nondiff_argnums`` argument)."""

    ignore_index: int | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    soft_cap: float | None = None
    axis_name: str | None = None
    with_label_mass: bool = False  # dense kernel: also return sum_j t_j p_j (poly loss)


def _capped(x: jax.Array, cfg: SoftmaxConfig) -> jax.Array:
    """The logits in the compute dtype, through the soft cap when one is set."""
    xc = x.astype(nx.compute_dtype(x.dtype))
    if cfg.soft_cap is not None:
        # Gemma 2's soft cap: cap * tanh(x / cap), applied before the softmax.  The
        # constant is opaque on CPU: as a literal XLA:CPU wrote its broadcasts out as
        # [N, V] arrays for the exp pass (measured: 2 x 512 MiB).
        cap = be.opaque((cfg.soft_cap,), xc.dtype, tag=be.Tag.SOFT_CAP)[0]
        xc = cap * jnp.tanh(xc / cap)
    return xc


def _cap_slope(xc: jax.Array, cfg: SoftmaxConfig) -> jax.Array | None:
    # d/dx cap*tanh(x/cap) = 1 - tanh(x/cap)^2 = 1 - (capped/cap)^2.
    if cfg.soft_cap is None:
        return None
    return 1 - jnp.square(xc / cfg.soft_cap)


def _class_count(
    cls_where: jax.Array | None, num_local: int, axis_name: str | None, dtype: Any
) -> jax.Array | float:
    """Number of unmasked classes per row, over all shards of the class axis."""
    if cls_where is None:
        return float(num_local * nx.axis_size(axis_name))
    return nx.psum(jnp.sum(cls_where, axis=-1, dtype=dtype), axis_name)


def _uniform(
    cls_where: jax.Array | None, count: jax.Array | float, shape: tuple[int, ...], dtype: Any
) -> jax.Array:
    """Label smoothing's uniform target: 1/count on every unmasked class."""
    if cls_where is None:
        return jnp.full(shape, 1.0 / count, dtype)  # count is a Python number here
    return jnp.where(cls_where, 1.0 / jnp.maximum(count, 1)[..., None], 0).astype(dtype)


def _smooth_targets(cls_where, count, shape, cdt, class_weights=None):
    """Label smoothing's target: 1/count per unmasked class, times its class weight."""
    u = _uniform(cls_where, count, shape, cdt)
    if class_weights is not None:
        u = u * class_weights.astype(cdt).reshape((1,) * (len(shape) - 1) + (shape[-1],))
    return u


def _remat(fn):
    """``fn`` rematerialised: under reverse mode its primal values (softmax) are
    recomputed in the backward pass, so only its inputs are residuals."""
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable,
                          static_argnums=(0,))


def _neg_logp(lse_safe, lse_lo, xm, keep):
    """``-log p_j = lse - x_j`` where ``keep`` (0 elsewhere, not 0 * inf at second order)."""
    return jnp.where(keep, (lse_safe[..., None] - xm) + lse_lo[..., None], 0)


# --------------------------------------------------------------------------------------
# Integer labels.
# --------------------------------------------------------------------------------------


def _int_label_info(cfg: SoftmaxConfig, labels: jax.Array, num_local: int):
    """(local index, on this shard?, out of range?) per row."""
    labels = labels.astype(jnp.int32)
    num_global = num_local * nx.axis_size(cfg.axis_name)
    local = labels - nx.axis_offset(cfg.axis_name, num_local)
    on_shard = (local >= 0) & (local < num_local)
    out_of_range = (labels < 0) | (labels >= num_global)
    if cfg.ignore_index is not None:
        out_of_range = out_of_range & (labels != cfg.ignore_index)
    return local, on_shard, out_of_range


def _int_valid(cfg: SoftmaxConfig, labels, row_where, cls_where):
    return nx.row_valid(labels.shape, row_where, cls_where, labels, cfg.ignore_index,
                        cfg.axis_name)


def _label_gather(cfg: SoftmaxConfig, a: jax.Array, local, on_shard, *, linear=False) -> jax.Array:
    """Each row's entry of ``a`` at its label (0 on the shards that do not hold it),
    gathered in ``a``'s dtype: O(N).  ``linear``: ``a`` is a tangent (a plain gather,
    which reverse mode transposes into a scatter of one value per row)."""
    idx = jnp.clip(local, 0, a.shape[-1] - 1)[..., None]
    take = functools.partial(jnp.take_along_axis, axis=-1) if linear else be.take_last
    picked = take(a, idx)[..., 0]
    return jnp.where(on_shard, picked, jnp.zeros_like(picked))


def _label_select(d: jax.Array, local, cdt) -> jax.Array:
    """``d`` at each row's label column as a masked sum (0 where no column matches)."""
    hit = lax.broadcasted_iota(jnp.int32, d.shape, d.ndim - 1) == local[..., None]
    return jnp.sum(jnp.where(hit, d.astype(cdt), 0), axis=-1)


def _finish_rows(loss, valid, out_of_range, *, tangent=False):
    loss = jnp.where(valid, loss, 0)
    # A label outside [0, V) that is not ignore_index gives NaN: loud, never silent.  In
    # a tangent it is a factor, so that reverse mode carries the NaN to the gradient.
    if tangent:
        return loss * jnp.where(valid & out_of_range, jnp.nan, 1).astype(loss.dtype)
    return jnp.where(valid & out_of_range, jnp.nan, loss)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _int_ce(cfg: SoftmaxConfig, x, labels, row_where, cls_where, class_weight_pair=None):
    """Per-row ``(loss, lse, lse_lo)``, float32 (float64 for float64 logits).

    ``class_weight_pair``: ``None``, or ``(w_y [batch], class weights of this shard [V])`` when
    class weights meet label smoothing (PyTorch): the loss is then
    ``w_y ((1-a) (lse - x_y) + z lse^2) + a/V sum_j w_j (lse - x_j)``.
    """
    num_local = x.shape[-1]
    cdt = nx.compute_dtype(x.dtype)
    local, on_shard, out_of_range = _int_label_info(cfg, labels, num_local)
    valid = _int_valid(cfg, labels, row_where, cls_where)
    alpha = cfg.label_smoothing
    count = _class_count(cls_where, num_local, cfg.axis_name, cdt)
    w_row, w_local = (None, None) if class_weight_pair is None else class_weight_pair
    uniform = uniform_count = None
    if alpha and cls_where is None and w_local is None:
        uniform_count = count  # the cheaper pass for plain smoothing
    elif alpha:
        uniform = functools.partial(_smooth_targets, cls_where, count, x.shape, cdt)
    stats = nx.row_stats(
        x, prepare=functools.partial(_capped, cfg=cfg), cls_where=cls_where, targets=uniform,
        target_inputs=() if w_local is None else (w_local,), uniform_count=uniform_count,
        axis_name=cfg.axis_name,
    )
    lse, m = stats.lse, stats.max
    # The label logit is gathered in the input dtype and converted afterwards (O(N)),
    # from its own view on CPU (keeps the reductions' converts fused).
    x_view = be.private_view(x, tag=be.Tag.LABEL_GATHER)
    label_logit = _capped(_label_gather(cfg, x_view, local, on_shard), cfg)
    label_logit = nx.psum(label_logit, cfg.axis_name)
    # lse - x_y, written as (m - x_y) + log(s) so large logits do not cancel (log(s) is
    # (lse - m) + lse_lo: lse alone may have rounded it away).
    loss = (m - label_logit) + ((lse - m) + stats.lse_lo)
    if alpha:
        loss = (1 - alpha) * loss
    if cfg.z_loss:
        loss = loss + cfg.z_loss * jnp.square(lse)
    if w_row is not None:
        loss = w_row.astype(cdt) * loss
    if alpha:
        # PyTorch's smoothing: target (1-a)*onehot + a/V, so the loss gains a times the
        # mean of (lse - x_j) over unmasked classes, without building a one-hot (+inf
        # where a -inf logit gets smoothing mass; see row_stats).
        loss = loss + alpha * stats.weighted_nll
    return _finish_rows(loss, valid, out_of_range), lse, stats.lse_lo


def _int_tangent(cfg: SoftmaxConfig, x, labels, row_where, cls_where, class_weight_pair, lse,
                 lse_lo, dx, dw_row, dw_local):
    # With x~ = cap(x), p = softmax(x~) over the unmasked classes and u_j = w_j / count
    # the smoothing target (w_j = 1 without class weights):
    #   d lse  = sum_j p_j dx~_j
    #   d main = ((1 - a) + 2 z lse) d lse - (1 - a) dx~_y,  main = (1-a)(lse - x~_y) + z lse^2
    #   d loss = w_y d main + dw_y main + a (sum_j u_j d lse - sum_j u_j dx~_j)
    #            + a sum_j du_j (lse - x~_j)
    # Reverse mode transposes this: dx~_j = (c p_j - a g u_j) - (1 - a) g w_y [j = y],
    # the label term a scatter of one value per row (never an [N, V] one-hot).
    num_local = x.shape[-1]
    cdt = nx.compute_dtype(x.dtype)
    alpha, z = cfg.label_smoothing, cfg.z_loss
    local, on_shard, out_of_range = _int_label_info(cfg, labels, num_local)
    valid = _int_valid(cfg, labels, row_where, cls_where)
    count = _class_count(cls_where, num_local, cfg.axis_name, cdt)
    w_row, w_local = (None, None) if class_weight_pair is None else class_weight_pair
    w_row = None if w_row is None else w_row.astype(cdt)
    lse_safe = nx.finite_or_zero(lse)
    xv = be.private_view(x, tag=be.Tag.CE_BACKWARD)
    xc = _capped(xv, cfg)
    xm = nx.mask_classes(xc, cls_where)
    slope = _cap_slope(xc, cfg)
    psum = functools.partial(nx.psum, axis_name=cfg.axis_name)
    t_loss = jnp.zeros_like(lse)
    t_lse = jnp.zeros_like(lse)
    u = None
    if alpha and (dx is not None or dw_row is not None or dw_local is not None):
        u = _smooth_targets(cls_where, count, x.shape, cdt, w_local)
    if dx is not None:
        dxc = dx.astype(cdt) if slope is None else dx.astype(cdt) * slope
        # p = exp(x~ - lse - lse_lo): the O(N) factor exp(-lse_lo) applies after the sum.
        q = jnp.exp(xm - lse_safe[..., None])
        t_lse = psum(jnp.sum(q * dxc, axis=-1)) * jnp.exp(-lse_lo)
        # dx~_y: the label's tangent (O(N)).  Reverse mode turns the gather into a
        # scatter of one value per row into the gradient.  XLA:CPU has no 16-bit
        # scatter (it scatters into a float32 [N, V] array): there a select on the
        # label's column instead, which stays inside the gradient's fusion.
        def gather(d):
            return _label_gather(cfg, d, local, on_shard, linear=True).astype(cdt)
        if jnp.dtype(dx.dtype).itemsize == 2:
            d_label = be.on_cpu(lambda d: _label_select(d, local, cdt), gather, dx)
        else:
            d_label = gather(dx)
        if slope is not None:
            d_label = d_label * _cap_slope(
                _capped(_label_gather(cfg, xv, local, on_shard), cfg), cfg)
        d_label = psum(d_label)
        d_main = ((1 - alpha) + 2 * z * lse_safe) * t_lse - (1 - alpha) * d_label
        t_loss = d_main if w_row is None else w_row * d_main
        if alpha:
            mass = 1.0 if w_local is None else psum(jnp.sum(u, axis=-1))
            t_loss = t_loss + alpha * (mass * t_lse - psum(jnp.sum(u * dxc, axis=-1)))
    if dw_row is not None:
        x_label = psum(_capped(_label_gather(cfg, xv, local, on_shard), cfg))
        main = (1 - alpha) * ((lse_safe - x_label) + lse_lo) + z * jnp.square(lse_safe)
        t_loss = t_loss + dw_row.astype(cdt) * main
    if dw_local is not None:
        du = _smooth_targets(cls_where, count, x.shape, cdt, dw_local)
        keep = True if cls_where is None else cls_where
        t_loss = t_loss + alpha * psum(
            jnp.sum(du * _neg_logp(lse_safe, lse_lo, xm, keep), axis=-1))
    return _finish_rows(t_loss, valid, out_of_range, tangent=True), t_lse


def _int_ce_jvp(cfg: SoftmaxConfig, primals, tangents):
    x, labels, row_where, cls_where, class_weight_pair = primals
    dx, d_pair = nx.nonzero_tangent(tangents[0]), tangents[4]
    dw_row, dw_local = ((None, None) if class_weight_pair is None
                        else map(nx.nonzero_tangent, d_pair))
    _, lse, lse_lo = out = _int_ce(cfg, *primals)
    if dx is None and dw_row is None and dw_local is None:
        zeros = jnp.zeros_like(lse)
        return out, (zeros, zeros, zeros)
    t_loss, t_lse = _remat(_int_tangent)(cfg, x, labels, row_where, cls_where,
                                         class_weight_pair, lse, lse_lo, dx, dw_row, dw_local)
    return out, (t_loss, t_lse, jnp.zeros_like(lse_lo))


_int_ce.defjvp(_int_ce_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------
# Dense labels (any distribution, or any weights, over the classes).
# --------------------------------------------------------------------------------------


def _dense_targets(cfg: SoftmaxConfig, y, cls_where, count, shape, cdt):
    t = y.astype(cdt)
    if cls_where is not None:
        t = jnp.where(cls_where, t, 0)
    if cfg.label_smoothing:
        t = (1 - cfg.label_smoothing) * t + cfg.label_smoothing * _uniform(
            cls_where, count, shape, cdt
        )
    return t


def _dense_valid(cfg: SoftmaxConfig, shape, row_where, cls_where):
    return nx.row_valid(shape, row_where, cls_where, axis_name=cfg.axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _dense_ce(cfg: SoftmaxConfig, x, y, row_where, cls_where):
    """Per-row ``(loss, lse, label_mass, target_mass, lse_lo)``: the loss, the log-sum-exp,
    ``sum_j t_j p_j`` (with ``with_label_mass``, else 0), ``T = sum_j t_j`` and lse_lo."""
    cdt = nx.compute_dtype(x.dtype)
    count = _class_count(cls_where, x.shape[-1], cfg.axis_name, cdt)
    targets = functools.partial(_dense_targets, cfg, cls_where=cls_where, count=count,
                                shape=x.shape, cdt=cdt)
    stats = nx.row_stats(
        x, prepare=functools.partial(_capped, cfg=cfg), cls_where=cls_where,
        targets=targets, target_inputs=(y,), with_weighted_exp=cfg.with_label_mass,
        axis_name=cfg.axis_name,
    )
    lse = stats.lse
    # -sum_j t_j log p_j = sum_j t_j (lse - x_j): every term >= 0 for t >= 0, and
    # 0 * (-inf) terms (t_j = 0 on a -inf logit) count as 0, while any target mass on a
    # -inf logit makes the loss +inf (see row_stats).
    loss = stats.weighted_nll
    if cfg.z_loss:
        loss = loss + cfg.z_loss * jnp.square(lse)
    valid = _dense_valid(cfg, lse.shape, row_where, cls_where)
    loss = jnp.where(valid, loss, 0)
    label_mass = stats.weighted_exp if cfg.with_label_mass else jnp.zeros_like(lse)
    label_mass = jnp.where(valid, label_mass, 0)
    return loss, lse, label_mass, stats.target_mass, stats.lse_lo


def _dense_tangent(cfg: SoftmaxConfig, x, y, row_where, cls_where, lse, lse_lo, label_mass, mass,
                   dx, dy):
    # With x~ = cap(x), p = softmax(x~), t the (smoothed, masked) targets, T = sum_j t_j,
    # M = sum_j t_j p_j:
    #   d lse  = sum_j p_j dx~_j
    #   d loss = (T + 2 z lse) d lse - sum_j t_j dx~_j + (1 - a) sum_j dy_j (lse - x~_j)
    #   d M    = sum_j t_j p_j dx~_j - M d lse + (1 - a) sum_j dy_j p_j
    #   d T    = (1 - a) sum_j dy_j
    # (dy on unmasked classes only).  Reverse mode transposes this.
    cdt = nx.compute_dtype(x.dtype)
    count = _class_count(cls_where, x.shape[-1], cfg.axis_name, cdt)
    valid = _dense_valid(cfg, lse.shape, row_where, cls_where)
    keep_rows = valid[..., None]
    lse_safe = nx.finite_or_zero(lse)
    e_lo = jnp.exp(-lse_lo)
    psum = functools.partial(nx.psum, axis_name=cfg.axis_name)
    xv, yv = be.private_view(x, y, tag=be.Tag.CE_BACKWARD_TARGETS)
    xc = _capped(xv, cfg)
    xm = nx.mask_classes(xc, cls_where)
    q = jnp.exp(xm - lse_safe[..., None])  # p = q * exp(-lse_lo)
    zeros = jnp.zeros_like(lse)
    t_loss, t_lse, t_label_mass, t_mass = zeros, zeros, zeros, zeros
    if dx is not None:
        slope = _cap_slope(xc, cfg)
        dxc = dx.astype(cdt) if slope is None else dx.astype(cdt) * slope
        t = _dense_targets(cfg, yv, cls_where, count, x.shape, cdt)
        t_lse = psum(jnp.sum(q * dxc, axis=-1)) * e_lo
        t_loss = (mass + 2 * cfg.z_loss * lse_safe) * t_lse - psum(jnp.sum(t * dxc, axis=-1))
        if cfg.with_label_mass:
            t_label_mass = psum(jnp.sum(t * q * dxc, axis=-1)) * e_lo - label_mass * t_lse
    if dy is not None:
        a = cfg.label_smoothing
        keep = keep_rows if cls_where is None else keep_rows & cls_where
        dyc = jnp.where(keep, dy.astype(cdt), 0)
        t_loss = t_loss + (1 - a) * psum(
            jnp.sum(dyc * _neg_logp(lse_safe, lse_lo, xm, keep), axis=-1))
        if cfg.with_label_mass:
            t_label_mass = t_label_mass + (1 - a) * psum(jnp.sum(dyc * q, axis=-1)) * e_lo
        dyt = dy.astype(cdt) if cls_where is None else jnp.where(cls_where, dy.astype(cdt), 0)
        t_mass = (1 - a) * psum(jnp.sum(dyt, axis=-1))
    t_loss = jnp.where(valid, t_loss, 0)
    t_label_mass = jnp.where(valid, t_label_mass, 0)
    return t_loss, t_lse, t_label_mass, t_mass


def _dense_ce_jvp(cfg: SoftmaxConfig, primals, tangents):
    x, y, row_where, cls_where = primals
    dx = nx.nonzero_tangent(tangents[0])
    dy = nx.nonzero_tangent(tangents[1]) if jnp.issubdtype(y.dtype, jnp.inexact) else None
    out = _dense_ce(cfg, *primals)
    _, lse, label_mass, mass, lse_lo = out
    if dx is None and dy is None:
        zeros = jnp.zeros_like(lse)
        return out, (zeros,) * 5
    tangents_out = _remat(_dense_tangent)(cfg, x, y, row_where, cls_where, lse, lse_lo,
                                          label_mass, mass, dx, dy)
    return out, (*tangents_out, jnp.zeros_like(lse_lo))


_dense_ce.defjvp(_dense_ce_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    class_weights: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
    return_lse: bool = False,
    vocab_axis_name: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy between logits and integer class labels.

    A drop-in for :func:`optax.losses.softmax_cross_entropy_with_integer_labels`:

    .. math::
        \ell_i = \log \sum_j e^{x_{ij}} - x_{i y_i}

    with keyword-only options for large-vocabulary training.  All defaults reproduce
    optax exactly.

    Args:
      logits: Unnormalised log-probabilities, ``[..., num_classes]`` (floating point).
      labels: Integer class indices of the batch shape ``[...]``, in ``[0, num_classes)``.
      axis: The class axis, or a tuple of class axes (a label then indexes the
        flattened class axes, in order).
      where: Boolean mask of the batch shape (rows to include) or of the logits' shape
        (classes to include; excluded classes are ``-inf``). A row with nothing included
        gives loss 0 and gradient 0.
      ignore_index: Rows whose label equals it give loss 0 and gradient 0 and are left
        out of ``reduction="mean"`` (PyTorch's ``ignore_index``; commonly -100).
      label_smoothing: ``a`` in ``[0, 1]``; the target is ``(1-a)·onehot + a/V`` over the
        ``V`` unmasked classes (PyTorch's definition).
      z_loss: Adds ``z_loss · lse²`` per row (PaLM's auxiliary loss).
      soft_cap: If set, logits pass through ``soft_cap · tanh(x / soft_cap)`` first.
      class_weights: ``[num_classes]`` weights (PyTorch's ``weight=``): a row's loss is
        scaled by its label's weight, and ``mean`` divides by the summed weights of the
        counted rows.  With ``label_smoothing`` the smoothing term weighs each class by
        its own weight, ``a/V · sum_j w_j (lse - x_j)``, as PyTorch does.
      reduction: ``"none"`` (per-row, the default), ``"sum"`` or ``"mean"`` over counted
        rows (not ignored, not masked); an all-ignored batch gives 0.
      return_lse: Also return the per-row log-sum-exp (float32), for logging.
      vocab_axis_name: Inside ``shard_map``: the mesh axis over which the classes are
        sharded (contiguous slices, labels global).  Only per-row values cross devices.

    Returns:
      The loss, of the batch shape (or a scalar with a reduction), in the logits' dtype;
      with ``return_lse``, a pair ``(loss, lse)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([1, 0])
      >>> loss = lossax.softmax_cross_entropy_with_integer_labels(logits, labels)
      >>> print(loss.round(4))  # log 4 = 1.3863; log(e^2 + 3) - 2 = 0.3408
      [1.3863 0.3408]
      >>> labels = jnp.array([1, -100])  # the second row is ignored
      >>> print(lossax.softmax_cross_entropy_with_integer_labels(
      ...     logits, labels, ignore_index=-100, reduction="mean").round(4))
      1.3863

    Note:
      Computed in float32 for float16/bfloat16 logits (returned in their dtype), with a
      ``stop_gradient``-ed max shift, and never NaN where the loss is finite.  A label
      outside ``[0, num_classes)`` that is not ``ignore_index`` gives NaN (loss and
      gradient) in a counted row; jit cannot raise on values.  Where ``label_smoothing``
      puts target mass on a class whose logit is ``-inf`` the loss is ``+inf``: mask such
      classes with ``where`` instead.  The derivative is a hand-written
      ``jax.custom_jvp``, so every autodiff mode works (``jax.grad``, ``jax.jvp``,
      ``jax.jacfwd``, ``jax.linearize``, ``jax.hessian``); the backward pass recomputes
      the softmax from the logits and the per-row log-sum-exp, the only residuals.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction,
                                        ignore_index)
    layout = nx.make_layout(logits.shape, axis, allow_none=False)
    if labels.shape != layout.batch_shape:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape "
            f"{layout.batch_shape} of logits with shape {logits.shape} and axis={axis!r}."
        )
    row_where, cls_where = nx.split_where(where, logits.shape, layout)
    x = nx.to_canonical(logits, layout)
    cfg = SoftmaxConfig(ignore_index=ignore_index, label_smoothing=alpha, z_loss=z,
                        soft_cap=cap, axis_name=vocab_axis_name)
    if class_weights is not None:
        class_weights = nx.as_float_array(class_weights, "class_weights")
        num_global = layout.num_classes * nx.axis_size(vocab_axis_name)
        if class_weights.shape != (num_global,):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected ({num_global},), "
                "one weight per class."
            )
    loss, lse, weight = integer_label_rows(cfg, x, labels, row_where, cls_where, class_weights)
    out = nx.reduce_rows(loss, weight, reduction).astype(logits.dtype)
    return (out, lse) if return_lse else out


def integer_label_rows(
    cfg: SoftmaxConfig, x: jax.Array, labels: jax.Array, row_where: jax.Array | None,
    cls_where: jax.Array | None, class_weights: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The integer-label kernel on validated, canonical arrays (no validation here).

    ``x`` is ``[batch..., V]`` (this shard's classes under ``cfg.axis_name``), ``labels``
    global class indices, ``class_weights`` the global ``[V]`` weights or ``None``.
    Returns per-row ``(loss, lse, weight)`` in the compute dtype: the loss with its class
    weight applied, and each row's weight in ``mean``'s divisor.  The public wrapper
    and :mod:`lossax.sharded` (inside ``shard_map``) reduce them.
    """
    counted = nx.row_valid(labels.shape, row_where, cls_where, labels, cfg.ignore_index,
                           cfg.axis_name)
    class_weight_pair = w_row = None
    if class_weights is not None:
        w = class_weights.astype(nx.compute_dtype(x.dtype))
        w_row = nx.label_weights(w, labels, w.dtype)
        if cfg.label_smoothing:
            # PyTorch weighs the smoothing term per class, sum_j w_j (lse - x_j), not by
            # the label's weight: the kernel takes both weights.
            num_local = x.shape[-1]
            w_local = w
            if cfg.axis_name is not None:
                w_local = lax.dynamic_slice_in_dim(
                    w, lax.axis_index(cfg.axis_name) * num_local, num_local
                )
            class_weight_pair = (w_row, w_local)
    loss, lse, _ = _int_ce(cfg, x, labels, row_where, cls_where, class_weight_pair)
    weight = counted.astype(loss.dtype)
    if w_row is not None:
        weight = jnp.where(counted, w_row, 0)
        if class_weight_pair is None:
            loss = loss * jnp.where(counted, w_row, 1)
    return loss, lse, weight


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: str = "none",
    return_lse: bool = False,
    vocab_axis_name: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy between logits and dense labels (one-hot or soft).

    A drop-in for :func:`optax.losses.softmax_cross_entropy`:

    .. math::
        \ell_i = -\sum_j y_{ij} \log \mathrm{softmax}(x_i)_j

    Unlike optax, a class with label 0 and logit ``-inf`` contributes 0 (not NaN), as in
    :func:`optax.losses.safe_softmax_cross_entropy`.

    Args:
      logits: Unnormalised log-probabilities, ``[..., num_classes]`` (floating point).
      labels: Target weights broadcastable to the logits' shape (usually a probability
        distribution per row).  Differentiable.
      axis: The class axis, a tuple of class axes, or ``None`` for all axes.
      where: Boolean mask of the batch shape or of the logits' shape (see
        :func:`softmax_cross_entropy_with_integer_labels`).
      label_smoothing: ``a``; the target becomes ``(1-a)·labels + a/V`` (PyTorch).
      z_loss: Adds ``z_loss · lse²`` per row.
      soft_cap: If set, logits pass through ``soft_cap · tanh(x / soft_cap)`` first.
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the rows that count.
      return_lse: Also return the per-row log-sum-exp (float32).
      vocab_axis_name: Inside ``shard_map``: the mesh axis the classes are sharded over.

    Returns:
      The loss of the batch shape (or a scalar with a reduction) in the logits' dtype;
      with ``return_lse``, a pair ``(loss, lse)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([[0.0, 0.0], [0.0, -jnp.inf]])
      >>> labels = jnp.array([[0.5, 0.5], [1.0, 0.0]])
      >>> print(lossax.softmax_cross_entropy(logits, labels).round(4))  # log 2, 0
      [0.6931 0.    ]

    Note:
      float32 accumulation for float16/bfloat16 logits.  A hand-written ``jax.custom_jvp``
      (every autodiff mode works) whose backward pass keeps only the inputs and per-row
      statistics; the labels are differentiable.
    """
    loss, lse, _ = _dense_call(
        logits, labels, axis, where, label_smoothing=label_smoothing, z_loss=z_loss,
        soft_cap=soft_cap, reduction=reduction, vocab_axis_name=vocab_axis_name,
    )
    return (loss, lse) if return_lse else loss


def _dense_call(
    logits, labels, axis, where, *, label_smoothing=0.0, z_loss=0.0, soft_cap=None,
    reduction="none", vocab_axis_name=None, with_label_mass=False,
):
    """Validates, canonicalises and runs the dense kernel.

    Returns ``(output, lse, (row loss, label mass, labels, row_where, cls_where))``.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_target_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction)
    nx.check_dense_labels_shape(labels, logits.shape)
    layout = nx.make_layout(logits.shape, axis)
    row_where, cls_where = nx.split_where(where, logits.shape, layout)
    x = nx.to_canonical(logits, layout)
    y = nx.to_canonical(jnp.broadcast_to(labels, logits.shape), layout)
    cfg = SoftmaxConfig(label_smoothing=alpha, z_loss=z, soft_cap=cap,
                        axis_name=vocab_axis_name, with_label_mass=with_label_mass)
    loss, lse, mass, weight = dense_label_rows(cfg, x, y, row_where, cls_where)
    out = nx.reduce_rows(loss, weight, reduction).astype(logits.dtype)
    return out, lse, (loss, mass, y, row_where, cls_where)


def dense_label_rows(
    cfg: SoftmaxConfig, x: jax.Array, y: jax.Array, row_where: jax.Array | None,
    cls_where: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The dense-label kernel on validated, canonical arrays (no validation here).

    Returns per-row ``(loss, lse, label mass, weight)`` in the compute dtype (the label
    mass ``sum_j y_j p_j`` with ``cfg.with_label_mass``, else 0; the weight 1 for a row
    that counts, else 0), for the public wrappers and :mod:`lossax.sharded` to reduce.
    """
    loss, lse, mass, _, _ = _dense_ce(cfg, x, y, row_where, cls_where)
    weight = nx.row_valid(loss.shape, row_where, cls_where, axis_name=cfg.axis_name)
    return loss, lse, mass, weight.astype(loss.dtype)


def safe_softmax_cross_entropy(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    r"""Softmax cross-entropy that treats ``0 · log 0`` as 0; same as optax's.

    Kept for drop-in users of :func:`optax.losses.safe_softmax_cross_entropy`: lossax's
    :func:`softmax_cross_entropy` is already safe, and this calls it over the last axis.

    Args:
      logits: ``[..., num_classes]`` floating-point logits.
      labels: Target distributions broadcastable to the logits' shape.

    Returns:
      The per-example loss ``[...]`` in the logits' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([0.0, -jnp.inf, 0.0])
      >>> print(lossax.safe_softmax_cross_entropy(logits, jnp.array([1.0, 0.0, 0.0])).round(4))
      0.6931
    """
    return softmax_cross_entropy(logits, labels)


def poly_loss_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 2.0,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Poly-1 loss: cross-entropy plus ``epsilon`` times ``1 - p_t``; same as optax's.

    .. math::
        \ell_i = -\sum_j y_{ij} \log p_{ij} + \epsilon \sum_j y_{ij} (1 - p_{ij})

    Args:
      logits: ``[..., num_classes]`` floating-point logits.
      labels: Target distributions broadcastable to the logits' shape.
      epsilon: Coefficient of the first polynomial term (2.0 for ImageNet, per the paper).
      axis: Class axis, tuple of axes, or ``None``.
      where: Boolean mask of the batch shape or of the logits' shape.

    Returns:
      The per-example loss of the batch shape, in the logits' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([0.0, 0.0])  # p = (0.5, 0.5)
      >>> labels = jnp.array([1.0, 0.0])
      >>> print(lossax.poly_loss_cross_entropy(logits, labels, epsilon=2.0).round(4))
      1.6931

    Note:
      One custom-JVP kernel computes the cross-entropy and ``sum_j y_j p_j`` together.
    """
    out, _, (ce, mass, y, row_where, cls_where) = _dense_call(
        logits, labels, axis, where, with_label_mass=True
    )
    t = y.astype(mass.dtype)
    if cls_where is not None:
        t = jnp.where(cls_where, t, 0)
    total = jnp.sum(t, axis=-1)  # sum_j y_j
    total = jnp.where(nx.row_valid(total.shape, row_where, cls_where), total, 0)
    epsilon = jnp.asarray(epsilon)
    if not jnp.issubdtype(epsilon.dtype, jnp.inexact):
        epsilon = epsilon.astype(mass.dtype)
    return (ce + epsilon.astype(mass.dtype) * (total - mass)).astype(out.dtype)
