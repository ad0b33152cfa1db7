"""Softmax cross-entropy: integer and dense labels, each one custom-VJP kernel.

Both kernels work on the canonical ``[batch..., V]`` layout (class axes moved last and
flattened by the public wrappers) and return per-row float32 values; the wrappers apply
class weights, reductions and the output dtype.  Residuals are the inputs themselves plus
per-row statistics (log-sum-exp, target mass, class count): never an ``[N, V]`` array.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _numerics as nx

# --------------------------------------------------------------------------------------
# Shared pieces of both kernels.
# --------------------------------------------------------------------------------------


class _Cfg(NamedTuple):
    """Static options of a kernel (hashable: a ``nondiff_argnums`` argument)."""

    ignore_index: int | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    soft_cap: float | None = None
    block: int | None = None
    axis_name: str | None = None
    with_label_mass: bool = False  # dense kernel: also return sum_j t_j p_j (poly loss)


def _capped(x: jax.Array, cfg: _Cfg) -> jax.Array:
    """The logits in the compute dtype, through the soft cap when one is set."""
    xc = x.astype(nx.compute_dtype(x.dtype))
    if cfg.soft_cap is not None:
        # Gemma 2's soft cap: cap * tanh(x / cap), applied before the softmax.
        # The constants come through a barrier: as literals XLA:CPU wrote their
        # broadcasts out as [N, V] arrays for the exp pass (measured: 2 x 512 MiB).
        cap = nx.private_view(jnp.asarray(cfg.soft_cap, xc.dtype), tag=9)
        xc = cap * jnp.tanh(xc / cap)
    return xc


_masked = nx.mask_classes


def _cap_derivative(xc: jax.Array, cfg: _Cfg) -> jax.Array | None:
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


def _row_valid(
    row_where: jax.Array | None, cls_where: jax.Array | None, shape: tuple[int, ...],
    axis_name: str | None = None,
) -> jax.Array:
    """Rows that count: not masked as a row, and with at least one unmasked class."""
    valid = jnp.ones(shape, bool) if row_where is None else row_where
    if cls_where is not None:
        if axis_name is None:
            valid = valid & jnp.any(cls_where, axis=-1)
        else:  # an unmasked class on any shard: one int per row crosses devices
            local = jnp.sum(cls_where, axis=-1, dtype=jnp.int32)
            valid = valid & (lax.psum(local, axis_name) > 0)
    return valid


# --------------------------------------------------------------------------------------
# Integer labels.
# --------------------------------------------------------------------------------------


def _int_label_info(cfg: _Cfg, labels: jax.Array, num_local: int):
    """(local index, on this shard?, counted-as-label?, out of range?) per row."""
    labels = labels.astype(jnp.int32)
    num_global = num_local * nx.axis_size(cfg.axis_name)
    local = labels - nx.axis_offset(cfg.axis_name, num_local)
    on_shard = (local >= 0) & (local < num_local)
    not_ignored = (
        jnp.ones(labels.shape, bool) if cfg.ignore_index is None else labels != cfg.ignore_index
    )
    out_of_range = not_ignored & ((labels < 0) | (labels >= num_global))
    return local, on_shard, not_ignored, out_of_range


def _smooth_targets(cls_where, count, shape, cdt, cw=None):
    """Label smoothing's target: 1/count per unmasked class, times its class weight."""
    u = _uniform(cls_where, count, shape, cdt)
    if cw is not None:
        u = u * cw.astype(cdt).reshape((1,) * (len(shape) - 1) + (shape[-1],))
    return u


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _int_ce(cfg: _Cfg, x, labels, row_where, cls_where, weights=None):
    out, _ = _int_ce_fwd(cfg, x, labels, row_where, cls_where, weights)
    return out


def _int_ce_fwd(cfg: _Cfg, x, labels, row_where, cls_where, weights=None):
    # weights: None, or (row weight w_y [batch], class weights of this shard [V]) when
    # class weights meet label smoothing (PyTorch): the loss is then
    # w_y ((1-a) (lse - x_y) + z lse^2) + a/V sum_j w_j (lse - x_j).
    num_local = x.shape[-1]
    cdt = nx.compute_dtype(x.dtype)
    local, on_shard, not_ignored, out_of_range = _int_label_info(cfg, labels, num_local)
    valid = _row_valid(row_where, cls_where, labels.shape, cfg.axis_name) & not_ignored
    alpha = cfg.label_smoothing
    count = _class_count(cls_where, num_local, cfg.axis_name, cdt)
    rw, cw = (None, None) if weights is None else weights
    uniform = uniform_count = None
    if alpha and cls_where is None and cw is None:
        uniform_count = count  # the cheaper pass for plain smoothing
    elif alpha:
        uniform = functools.partial(_smooth_targets, cls_where, count, x.shape, cdt)
    stats = nx.row_stats(
        x, prepare=functools.partial(_capped, cfg=cfg), cls_where=cls_where, targets=uniform,
        target_inputs=() if cw is None else (cw,), uniform_count=uniform_count,
        block=cfg.block, axis_name=cfg.axis_name,
    )
    lse = stats.lse
    # The label logit is gathered in the input dtype and converted afterwards (O(N)).
    idx = jnp.clip(local, 0, num_local - 1)[..., None]
    x_view = nx.private_view(x, tag=5)  # see private_view: keeps the reductions' converts fused
    label_logit = _capped(nx.take_last(x_view, idx)[..., 0], cfg)
    label_logit = nx.psum(jnp.where(on_shard, label_logit, 0), cfg.axis_name)
    # lse - x_y, written as (m - x_y) + log(s) so large logits do not cancel (log(s) is
    # (lse - m) + lse_lo: lse alone may have rounded it away).
    loss = (stats.max - label_logit) + ((lse - stats.max) + stats.lse_lo)
    if alpha:
        loss = (1 - alpha) * loss
    if cfg.z_loss:
        loss = loss + cfg.z_loss * jnp.square(lse)
    main = loss  # the part a row weight scales
    if rw is not None:
        loss = rw.astype(cdt) * loss
    smass = None
    if alpha:
        # PyTorch's smoothing: target (1-a)*onehot + a/V, so the loss gains a times the
        # mean of (lse - x_j) over unmasked classes, without building a one-hot (+inf
        # where a -inf logit gets smoothing mass; see row_stats).
        loss = loss + alpha * stats.weighted_nll
        if cw is not None:
            smass = stats.target_mass  # sum_j u_j: the mean unmasked class weight
    loss = jnp.where(valid, loss, 0)
    # A label outside [0, V) that is not ignore_index gives NaN: loud, never silent.
    loss = jnp.where(valid & out_of_range, jnp.nan, loss)
    extra = None if weights is None else (rw, cw, main, smass)
    return (loss, lse), (x, labels, row_where, cls_where, lse, stats.lse_lo, count, extra)


def _int_ce_bwd(cfg: _Cfg, res, cts):
    # d loss / d x_j = (1 + 2 z lse) p_j - (1 - a) [j = y] - a u_j, times the cap's
    # derivative; d lse / d x_j = p_j.  p = softmax(x) over unmasked classes.
    x, labels, row_where, cls_where, lse, lse_lo, count, extra = res
    # Inside shard_map: g_rep as each device got it scales the per-row weight (computed
    # alike on every shard of the classes); the psummed cotangents give the logits' and
    # the class weights' slices.
    g_rep = cts[0]
    g_loss, g_lse = nx.psum_cotangent(cts, cfg.axis_name, x)
    cdt = nx.compute_dtype(x.dtype)
    num_local = x.shape[-1]
    xc = _capped(nx.private_view(x, tag=6), cfg)
    local, _, not_ignored, out_of_range = _int_label_info(cfg, labels, num_local)
    valid = _row_valid(row_where, cls_where, labels.shape, cfg.axis_name) & not_ignored

    def counted(g):
        g = jnp.where(valid, g.astype(cdt), 0)
        return jnp.where(valid & out_of_range, jnp.nan, g)

    g_loss = counted(g_loss)
    g_lse = jnp.where(jnp.isfinite(lse), g_lse.astype(cdt), 0)
    lse_safe = nx.finite_or_zero(lse)
    # p = exp(x - lse - lse_lo); the O(N) factor exp(-lse_lo) is folded into coef.
    q = jnp.exp(_masked(xc, cls_where) - lse_safe[..., None])
    alpha = cfg.label_smoothing
    rw, cw, main, smass = (None,) * 4 if extra is None else extra
    g_row = g_loss if rw is None else g_loss * rw.astype(cdt)  # scales onehot and z parts
    coef = g_lse + g_row * ((1 - alpha) + 2 * cfg.z_loss * lse_safe)
    if alpha:
        coef = coef + (alpha * g_loss) * (1.0 if smass is None else smass)
    coef = coef * jnp.exp(-lse_lo)
    onehot = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == local[..., None]
    dx = coef[..., None] * q - jnp.where(onehot, ((1 - alpha) * g_row)[..., None], 0)
    if alpha:
        u = _smooth_targets(cls_where, count, x.shape, cdt, cw)
        dx = dx - (alpha * g_loss)[..., None] * u
    dcap = _cap_derivative(xc, cfg)
    if dcap is not None:
        dx = dx * dcap
    d_weights = None
    if extra is not None:
        # d loss / d w_y = (1-a)(lse - x_y) + z lse^2;
        # d loss / d w_j = a / V (lse - x_j), summed over the counted rows.
        d_rw = (counted(g_rep) * main).astype(rw.dtype)
        keep = valid[..., None] if cls_where is None else valid[..., None] & cls_where
        # where before the product: a 0 * inf cotangent would be NaN at second order.
        neg_logp = jnp.where(
            keep, (lse_safe[..., None] - _masked(xc, cls_where)) + lse_lo[..., None], 0)
        cnt = count if cls_where is None else jnp.maximum(count, 1)
        d_cw = jnp.sum((alpha * g_loss / cnt)[..., None] * neg_logp,
                       axis=tuple(range(x.ndim - 1)))
        # Each with its primal's vma type: e.g. class weights replicated over a batch
        # axis get their gradient summed over its devices.
        d_weights = (nx.match_varying(d_rw, rw), nx.match_varying(d_cw.astype(cw.dtype), cw))
    return nx.match_varying(dx.astype(x.dtype), x), None, None, None, d_weights


_int_ce.defvjp(_int_ce_fwd, _int_ce_bwd)


# --------------------------------------------------------------------------------------
# Dense labels (any distribution, or any weights, over the classes).
# --------------------------------------------------------------------------------------


def _dense_targets(cfg: _Cfg, y, cls_where, count, shape, cdt):
    t = y.astype(cdt)
    if cls_where is not None:
        t = jnp.where(cls_where, t, 0)
    if cfg.label_smoothing:
        t = (1 - cfg.label_smoothing) * t + cfg.label_smoothing * _uniform(
            cls_where, count, shape, cdt
        )
    return t


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense_ce(cfg: _Cfg, x, y, row_where, cls_where):
    out, _ = _dense_ce_fwd(cfg, x, y, row_where, cls_where)
    return out


def _dense_ce_fwd(cfg: _Cfg, x, y, row_where, cls_where):
    cdt = nx.compute_dtype(x.dtype)
    count = _class_count(cls_where, x.shape[-1], cfg.axis_name, cdt)
    targets = functools.partial(_dense_targets, cfg, cls_where=cls_where, count=count,
                                shape=x.shape, cdt=cdt)
    stats = nx.row_stats(
        x, prepare=functools.partial(_capped, cfg=cfg), cls_where=cls_where,
        targets=targets, target_inputs=(y,), with_weighted_exp=cfg.with_label_mass,
        block=cfg.block, axis_name=cfg.axis_name,
    )
    lse = stats.lse
    mass = stats.target_mass  # T = sum_j t_j
    # -sum_j t_j log p_j = sum_j t_j (lse - x_j): every term >= 0 for t >= 0, and
    # 0 * (-inf) terms (t_j = 0 on a -inf logit) count as 0, while any target mass on a
    # -inf logit makes the loss +inf (see row_stats).
    loss = stats.weighted_nll
    if cfg.z_loss:
        loss = loss + cfg.z_loss * jnp.square(lse)
    valid = _row_valid(row_where, cls_where, lse.shape, cfg.axis_name)
    loss = jnp.where(valid, loss, 0)
    label_mass = stats.weighted_exp if cfg.with_label_mass else jnp.zeros_like(lse)
    label_mass = jnp.where(valid, label_mass, 0)
    res = (x, y, row_where, cls_where, lse, stats.lse_lo, mass, label_mass, count)
    return (loss, lse, label_mass), res


def _dense_ce_bwd(cfg: _Cfg, res, cts):
    # d loss / d x_j = (T + 2 z lse) p_j - t_j;  d lse / d x_j = p_j;
    # d (sum_j t_j p_j) / d x_j = p_j (t_j - sum_k t_k p_k);  all times the cap's derivative.
    # d loss / d y_j = (1 - a)(lse - x_j);  d (sum_k t_k p_k) / d y_j = (1 - a) p_j.
    x, y, row_where, cls_where, lse, lse_lo, mass, label_mass, count = res
    g_loss, g_lse, g_mass = nx.psum_cotangent(cts, cfg.axis_name, x)
    cdt = nx.compute_dtype(x.dtype)
    valid = _row_valid(row_where, cls_where, lse.shape, cfg.axis_name)
    g_loss = jnp.where(valid, g_loss.astype(cdt), 0)
    g_mass = jnp.where(valid, g_mass.astype(cdt), 0)
    g_lse = jnp.where(jnp.isfinite(lse), g_lse.astype(cdt), 0)
    lse_safe = nx.finite_or_zero(lse)
    xv, yv = nx.private_view(x, y, tag=8)
    t = _dense_targets(cfg, yv, cls_where, count, x.shape, cdt)
    xc = _capped(xv, cfg)
    xm = _masked(xc, cls_where)
    # p = exp(x - lse - lse_lo) = q * exp(-lse_lo): the O(N) factor goes into coef.
    q = jnp.exp(xm - lse_safe[..., None])
    e_lo = jnp.exp(-lse_lo)
    coef = g_loss * mass + g_lse
    if cfg.z_loss:
        coef = coef + g_loss * (2 * cfg.z_loss * lse_safe)
    dx = (coef * e_lo)[..., None] * q - g_loss[..., None] * t
    if cfg.with_label_mass:
        dx = dx + (g_mass * e_lo)[..., None] * q * (t - label_mass[..., None])
    dcap = _cap_derivative(xc, cfg)
    if dcap is not None:
        dx = dx * dcap
    dy = None
    if jnp.issubdtype(y.dtype, jnp.inexact):
        keep = valid[..., None] if cls_where is None else valid[..., None] & cls_where
        # where before the product: on a masked class lse - x is +inf, and at second
        # order the cotangent of g_loss would get 0 * inf = NaN from it.
        neg_logp = jnp.where(keep, (lse_safe[..., None] - xm) + lse_lo[..., None], 0)
        dy = g_loss[..., None] * neg_logp
        if cfg.with_label_mass:
            dy = dy + (g_mass * e_lo)[..., None] * q
        dy = jnp.where(keep, (1 - cfg.label_smoothing) * dy, 0).astype(y.dtype)
        # Labels shared by the rows (e.g. one target over the classes, broadcast) and
        # replicated over a batch axis get their gradient summed over its devices.
        dy = nx.match_varying(dy, y)
    return nx.match_varying(dx.astype(x.dtype), x), dy, None, None


_dense_ce.defvjp(_dense_ce_fwd, _dense_ce_bwd)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def _check_options(label_smoothing, z_loss, soft_cap, reduction, ignore_index=None):
    alpha = nx.check_float_option(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    z = nx.check_float_option(z_loss, "z_loss", lo=0.0)
    cap = None if soft_cap is None else nx.check_float_option(
        soft_cap, "soft_cap", lo=0.0, lo_open=True
    )
    nx.check_reduction(reduction)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}.")
    return alpha, z, cap


def _reduce(loss, weight, reduction):
    """``none`` / ``sum`` / ``mean`` over rows; ``mean`` divides by the counted weight."""
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    denom = jnp.sum(weight)
    # An all-ignored batch gives 0, not NaN; computed in the graph, no host sync.
    return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1), 0)


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
      classes with ``where`` instead.  The gradient is a ``jax.custom_vjp`` (residuals:
      the inputs and per-row log-sum-exp), so forward-mode ``jax.jvp``/``jacfwd`` is not
      available; reverse-over-reverse (``jax.hessian`` via ``jacrev``) is.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = _check_options(label_smoothing, z_loss, soft_cap, reduction, ignore_index)
    layout = nx.make_layout(logits.shape, axis, allow_none=False)
    if labels.shape != layout.batch_shape:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape "
            f"{layout.batch_shape} of logits with shape {logits.shape} and axis={axis!r}."
        )
    row_where, cls_where = nx.split_where(where, logits.shape, layout)
    x = nx.to_canonical(logits, layout)
    cfg = _Cfg(
        ignore_index=ignore_index, label_smoothing=alpha, z_loss=z, soft_cap=cap,
        block=nx.default_block(layout.num_classes), axis_name=vocab_axis_name,
    )
    counted = _row_valid(row_where, cls_where, labels.shape, vocab_axis_name)
    if ignore_index is not None:
        counted = counted & (labels != ignore_index)
    weights = w_row = None
    if class_weights is not None:
        w = nx.as_float_array(class_weights, "class_weights")
        num_global = layout.num_classes * nx.axis_size(vocab_axis_name)
        if w.shape != (num_global,):
            raise ValueError(
                f"class_weights has shape {w.shape}; expected ({num_global},), one weight "
                "per class."
            )
        w = w.astype(nx.compute_dtype(logits.dtype))
        w_row = jnp.take(w, jnp.clip(labels, 0, num_global - 1))
        if alpha:
            # PyTorch weighs the smoothing term per class, sum_j w_j (lse - x_j), not by
            # the label's weight: the kernel takes both weights.
            w_local = w
            if vocab_axis_name is not None:
                w_local = lax.dynamic_slice_in_dim(
                    w, lax.axis_index(vocab_axis_name) * layout.num_classes, layout.num_classes
                )
            weights = (w_row, w_local)
    loss, lse = _int_ce(cfg, x, labels, row_where, cls_where, weights)
    weight = counted.astype(loss.dtype)
    if w_row is not None:
        weight = jnp.where(counted, w_row, 0)
        if weights is None:
            loss = loss * jnp.where(counted, w_row, 1)
    out = _reduce(loss, weight, reduction).astype(logits.dtype)
    return (out, lse) if return_lse else out


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
      float32 accumulation for float16/bfloat16 logits; a custom VJP whose residuals are
      the inputs and per-row statistics.  Forward-mode autodiff is not available.
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
    if not hasattr(labels, "dtype"):
        labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.number) or jnp.issubdtype(
        labels.dtype, jnp.complexfloating
    ):
        raise TypeError(f"labels must be a real numeric array; got {nx.describe(labels)}.")
    labels = jnp.asarray(labels)
    where = nx.as_bool_mask(where)
    alpha, z, cap = _check_options(label_smoothing, z_loss, soft_cap, reduction)
    try:
        full = jnp.broadcast_shapes(labels.shape, logits.shape)
    except ValueError:
        full = None
    if full != logits.shape:
        raise ValueError(
            f"labels has shape {labels.shape}, which does not broadcast to the logits' "
            f"shape {logits.shape}."
        )
    layout = nx.make_layout(logits.shape, axis)
    row_where, cls_where = nx.split_where(where, logits.shape, layout)
    x = nx.to_canonical(logits, layout)
    y = nx.to_canonical(jnp.broadcast_to(labels, logits.shape), layout)
    cfg = _Cfg(
        label_smoothing=alpha, z_loss=z, soft_cap=cap,
        block=nx.default_block(layout.num_classes), axis_name=vocab_axis_name,
        with_label_mass=with_label_mass,
    )
    loss, lse, mass = _dense_ce(cfg, x, y, row_where, cls_where)
    weight = _row_valid(row_where, cls_where, loss.shape, vocab_axis_name).astype(loss.dtype)
    out = _reduce(loss, weight, reduction).astype(logits.dtype)
    return out, lse, (loss, mass, y, row_where, cls_where)


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
      One custom-VJP kernel computes the cross-entropy and ``sum_j y_j p_j`` together.
    """
    out, _, (ce, mass, y, row_where, cls_where) = _dense_call(
        logits, labels, axis, where, with_label_mass=True
    )
    t = y.astype(mass.dtype)
    if cls_where is not None:
        t = jnp.where(cls_where, t, 0)
    total = jnp.sum(t, axis=-1)  # sum_j y_j
    total = jnp.where(_row_valid(row_where, cls_where, total.shape), total, 0)
    epsilon = jnp.asarray(epsilon)
    if not jnp.issubdtype(epsilon.dtype, jnp.inexact):
        epsilon = epsilon.astype(mass.dtype)
    return (ce + epsilon.astype(mass.dtype) * (total - mass)).astype(out.dtype)
