"""The one stable core every lossax kernel builds on.

Validation with clear errors, axis canonicalisation (class axes moved last), the
float32 compute policy, log-sum-exp statistics with masks, and the row validity,
weights and reduction that the plain, fused and sharded losses share.  Backend-specific
choices live in :mod:`lossax._backend`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from . import _backend as be

Axis = int | tuple[int, ...] | None

# Masked logits take this value: exp(-inf) is exactly 0, so masked classes drop out of
# every sum without a branch.
NEG_INF = -jnp.inf


# --------------------------------------------------------------------------------------
# Validation: errors at trace time that name the argument, the value and what is expected.
# --------------------------------------------------------------------------------------


def describe(x: Any) -> str:
    """A short description of an array argument for error messages."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"{type(x).__name__} {x!r}"
    return f"shape {tuple(shape)} and dtype {dtype}"


def as_float_array(x: jax.typing.ArrayLike, name: str) -> jax.Array:
    """Returns ``x`` as a jax array, raising ``TypeError`` unless it is floating point."""
    if isinstance(x, bool) or (
        hasattr(x, "dtype") and not jnp.issubdtype(x.dtype, jnp.inexact)
    ):
        raise TypeError(
            f"{name} must be a floating-point array (float16, bfloat16, float32 or "
            f"float64); got {describe(x)}."
        )
    if isinstance(x, int | np.integer):
        raise TypeError(f"{name} must be a floating-point array; got the integer {x!r}.")
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real floating point; got {describe(x)}.")
    return x


def as_int_array(x: jax.typing.ArrayLike, name: str) -> jax.Array:
    """Returns ``x`` as a jax array, raising ``TypeError`` unless it is integer-valued."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        if isinstance(x, bool) or not isinstance(x, int | np.integer | Sequence):
            raise TypeError(f"{name} must be an integer array; got {describe(x)}.")
        x = np.asarray(x)
        dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{name} must be an integer array of class indices; got {describe(x)}. "
            "For probabilities or one-hot labels use softmax_cross_entropy."
        )
    return jnp.asarray(x)


def as_bool_mask(where: jax.typing.ArrayLike | None, name: str = "where") -> jax.Array | None:
    """Returns ``where`` as a boolean array (or ``None``), or raises ``TypeError``."""
    if where is None:
        return None
    dtype = getattr(where, "dtype", None)
    if dtype is None:
        where = np.asarray(where)
        dtype = where.dtype
    if dtype != jnp.bool_:
        raise TypeError(f"{name} must be a boolean array; got {describe(where)}.")
    return jnp.asarray(where)


def as_real_array(x: Any, name: str) -> jax.Array:
    """A jax array of any real dtype (bool, integer or floating point), or ``TypeError``."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            x = x.astype(np.float32)
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_) or jnp.issubdtype(
        x.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name} must be a real numeric array; got {describe(x)}.")
    return jnp.asarray(x)


def as_target_array(x: Any, name: str) -> jax.Array:
    """Dense targets (one weight per class): a real integer or floating-point array."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be a real numeric array; got {describe(x)}.")
    return jnp.asarray(x)


def check_dense_labels_shape(labels: jax.Array, logits_shape: tuple[int, ...]) -> None:
    """``ValueError`` unless dense ``labels`` broadcast to the logits' shape.

    Integer labels that do not are most likely class indices, one per row: the message
    then points to the integer-label loss.
    """
    try:
        full = jnp.broadcast_shapes(labels.shape, logits_shape)
    except ValueError:
        full = None
    if full != logits_shape:
        hint = ""
        if jnp.issubdtype(labels.dtype, jnp.integer):
            hint = (
                " Dense labels hold one weight per class; for integer class indices (one "
                f"per row, dtype {labels.dtype}) use "
                "softmax_cross_entropy_with_integer_labels."
            )
        raise ValueError(
            f"labels has shape {labels.shape}, which does not broadcast to the logits' "
            f"shape {logits_shape}.{hint}"
        )


def broadcast_shape(main: jax.Array, main_name: str, other: jax.Array,
                    other_name: str) -> tuple[int, ...]:
    """The broadcast shape of two operands, or ``ValueError`` naming both."""
    try:
        return tuple(jnp.broadcast_shapes(main.shape, other.shape))
    except ValueError:
        raise ValueError(
            f"{other_name} has shape {tuple(other.shape)}, which does not broadcast with "
            f"the {main_name}' shape {tuple(main.shape)}."
        ) from None


def check_float_option(value: Any, name: str, *, lo: float, hi: float | None = None,
                       lo_open: bool = False) -> float:
    """Validates a static float option such as ``label_smoothing`` or ``soft_cap``."""
    if isinstance(value, jax.core.Tracer) or isinstance(value, jax.Array):
        raise TypeError(
            f"{name} must be a Python float known at trace time; got {describe(value)}."
        )
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float; got {value!r}.") from None
    bad = (v <= lo) if lo_open else (v < lo)
    if hi is not None:
        bad = bad or v > hi
    if bad or not np.isfinite(v):
        left = "(" if lo_open else "["
        right = f"{hi}]" if hi is not None else "inf)"
        interval = f"{left}{lo}, {right}"
        raise ValueError(f"{name} must be in {interval}; got {value!r}.")
    return v


def check_reduction(reduction: Any) -> str:
    """``reduction`` as given, or an error naming it (it selects code: it must be static)."""
    if not isinstance(reduction, str):
        raise TypeError(
            "reduction must be the Python string 'none', 'sum' or 'mean', known at trace "
            f"time; got {describe(reduction)}. Under jax.jit pass it as a static argument "
            "(static_argnames=('reduction',)) or bind it with functools.partial."
        )
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be one of 'none', 'sum' or 'mean'; got {reduction!r}.")
    return reduction


# --------------------------------------------------------------------------------------
# Axes: canonicalise, then move the class axes last and flatten them.
# --------------------------------------------------------------------------------------


def canonicalize_axes(axis: Axis, ndim: int, *, allow_none: bool = True) -> tuple[int, ...]:
    """Canonical, non-negative class axes; ``ValueError`` naming ``axis`` if out of range."""
    if axis is None:
        if not allow_none:
            raise ValueError("axis must be an int or a tuple of ints; got None.")
        return tuple(range(ndim))
    if isinstance(axis, list):
        axis = tuple(axis)
    items = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in items:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(
                f"axis must be an int or a tuple of ints; got {axis!r} of type "
                f"{type(axis).__name__}."
            ) from None
        if not -ndim <= a < ndim:
            raise ValueError(
                f"axis {a} is out of range for logits with {ndim} dimension(s); "
                f"expected an axis in [{-ndim}, {ndim})."
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis must not repeat an axis; got {axis!r}.")
    if not out:
        raise ValueError("axis must name at least one class axis; got an empty tuple.")
    return tuple(out)


class Layout(NamedTuple):
    """How a ``[..., classes...]`` array maps to the canonical ``[batch..., V]`` form."""

    axes: tuple[int, ...]  # class axes, canonical
    batch_axes: tuple[int, ...]
    batch_shape: tuple[int, ...]
    num_classes: int

    @property
    def perm(self) -> tuple[int, ...]:
        return self.batch_axes + self.axes

    def is_identity(self, ndim: int) -> bool:
        return self.perm == tuple(range(ndim)) and len(self.axes) == 1


def make_layout(shape: tuple[int, ...], axis: Axis, *, allow_none: bool = True) -> Layout:
    axes = canonicalize_axes(axis, len(shape), allow_none=allow_none)
    batch_axes = tuple(i for i in range(len(shape)) if i not in axes)
    return Layout(
        axes=axes,
        batch_axes=batch_axes,
        batch_shape=tuple(shape[i] for i in batch_axes),
        num_classes=int(np.prod([shape[i] for i in axes], dtype=np.int64)),
    )


def to_canonical(x: jax.Array, layout: Layout) -> jax.Array:
    """Moves the class axes of ``x`` (of the logits' rank) last and flattens them."""
    if not layout.is_identity(x.ndim):
        x = jnp.transpose(x, layout.perm)
    return x.reshape((*layout.batch_shape, layout.num_classes))


def split_where(
    where: jax.Array | None, logits_shape: tuple[int, ...], layout: Layout
) -> tuple[jax.Array | None, jax.Array | None]:
    """Splits optax's ``where`` into a per-row mask and a per-class mask.

    ``where`` may have the batch shape (one flag a row) or a shape broadcastable to the
    logits (one flag a class).  Returns ``(row_where, class_where)`` with shapes
    ``batch_shape`` and ``(*batch_shape, V)``; at most one is not ``None``.
    """
    if where is None:
        return None, None
    if where.ndim != len(logits_shape):
        if where.shape != layout.batch_shape:
            try:
                full = jnp.broadcast_shapes(where.shape, layout.batch_shape)
            except ValueError:
                full = None
            if full is not None and len(where.shape) > len(layout.batch_shape):
                raise ValueError(
                    f"where has shape {where.shape}; expected the batch shape "
                    f"{layout.batch_shape} or the logits' shape {tuple(logits_shape)}."
                )
            if full != layout.batch_shape:
                raise ValueError(
                    f"where has shape {where.shape}; expected the batch shape "
                    f"{layout.batch_shape} or a shape broadcastable to the logits' shape "
                    f"{tuple(logits_shape)}."
                )
            where = jnp.broadcast_to(where, layout.batch_shape)
        return where, None
    try:
        full = jnp.broadcast_shapes(where.shape, tuple(logits_shape))
    except ValueError:
        full = None
    if full != tuple(logits_shape):
        raise ValueError(
            f"where has shape {where.shape}; expected the batch shape {layout.batch_shape} "
            f"or a shape broadcastable to the logits' shape {tuple(logits_shape)}."
        )
    # A mask that is constant along every class axis is a per-row mask: cheaper.
    if all(where.shape[a] == 1 for a in layout.axes):
        row = jnp.squeeze(where, layout.axes)
        return jnp.broadcast_to(row, layout.batch_shape), None
    where = jnp.broadcast_to(where, tuple(logits_shape))
    return None, to_canonical(where, layout)


# --------------------------------------------------------------------------------------
# Float policy.
# --------------------------------------------------------------------------------------


def compute_dtype(dtype: Any) -> Any:
    """float32 for float16/bfloat16/float32 inputs; float64 stays float64."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


# --------------------------------------------------------------------------------------
# Collectives over the class axis (no-ops outside shard_map).
# --------------------------------------------------------------------------------------


def pmax(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else lax.pmax(x, axis_name)


def psum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else lax.psum(x, axis_name)


def axis_size(axis_name: Any) -> int:
    """Number of shards of the class axis (1 outside ``shard_map``)."""
    return 1 if axis_name is None else lax.psum(1, axis_name)


def axis_offset(axis_name: Any, num_local: int) -> jax.Array | int:
    """Global index of this shard's first class (shards hold contiguous slices)."""
    return 0 if axis_name is None else lax.axis_index(axis_name) * num_local


# --------------------------------------------------------------------------------------
# shard_map's varying-manual-axes (vma) types, for the kernels' custom VJPs.
# --------------------------------------------------------------------------------------


def varying(a: Any) -> frozenset:
    """The mesh axes along which ``a`` varies inside ``shard_map`` (empty outside it, and
    everywhere when ``check_vma=False``)."""
    if a is None:
        return frozenset()
    t = jax.typeof(a)
    mat = getattr(t, "manual_axis_type", None)  # jax >= 0.9
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(t, "vma", ()))


def vary(tree: Any, names: frozenset) -> Any:
    """Marks every array of ``tree`` as varying along ``names`` (a loop's initial carry
    must have the type of the values the loop puts there)."""
    def one(a):
        missing = tuple(sorted(names - varying(a)))
        if not missing:
            return a
        if hasattr(lax, "pcast"):
            return lax.pcast(a, missing, to="varying")
        return lax.pvary(a, missing)  # pragma: no cover  (older jax)
    return jax.tree.map(one, tree)


def match_varying(ct: jax.Array | None, primal: jax.Array | None) -> jax.Array | None:
    """A cotangent with its primal's vma type: summed over the axes along which only the
    cotangent varies (the transpose of the implicit broadcast of ``primal``), and marked
    varying along those where only the primal does.  A custom VJP must return this type:
    e.g. class weights replicated over a batch axis get the sum over its devices of the
    per-device gradients, which vary there."""
    if ct is None:
        return None
    extra = tuple(sorted(varying(ct) - varying(primal)))
    if extra:
        ct = lax.psum(ct, extra)
    return vary(ct, varying(primal))


def psum_cotangent(ct: Any, axis_name: str | None, sharded: jax.Array) -> Any:
    """The cotangents of a kernel's per-row outputs, summed over ``axis_name`` where the
    transpose of the forward's psums over it would sum them.

    That is where a cotangent varies along the axis (an output made to vary there after
    the kernel, e.g. by class weights typed as varying there: each device's copy of the
    row depends on every shard of the classes), and everywhere when shard_map does not
    check vma types (``check_vma=False``: the cotangent of an output replicated over the
    axis arrives split over its devices).  ``sharded`` is an input sharded over the axis,
    which varies along it whenever vma types are checked.
    """
    if axis_name is None:
        return ct
    unchecked = not varying(sharded)

    def one(c):
        return lax.psum(c, axis_name) if unchecked or axis_name in varying(c) else c
    return jax.tree.map(one, ct)


def finite_or_zero(m: jax.Array) -> jax.Array:
    """A shift that is safe to subtract: a row max of -inf (all masked) becomes 0."""
    return jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))


def mask_classes(x: jax.Array, cls_where: jax.Array | None) -> jax.Array:
    # Masked logits are -inf: exp(-inf) is exactly 0, so they drop out of every sum.
    return x if cls_where is None else jnp.where(cls_where, x, NEG_INF)


class RowStats(NamedTuple):
    lse: jax.Array  # log-sum-exp over unmasked classes, -inf for an empty row
    max: jax.Array  # the (finite-or-zero) shift used
    weighted_nll: jax.Array | None  # sum_j t_j (lse - x_j); +inf with mass on a -inf logit
    weighted_exp: jax.Array | None  # sum_j t_j exp(x_j - lse)
    target_mass: jax.Array | None = None  # sum_j t_j
    # What rounding lse = m + log(s) lost: lse + lse_lo is the log-sum-exp to working
    # precision (0 unless |m| dwarfs log(s), e.g. tied logits of 1e30).  Its true
    # derivative is 0 (it is 0 in exact arithmetic), so it is stop_gradient-ed.
    lse_lo: jax.Array | None = None


def row_stats(
    x: jax.Array,
    *,
    prepare: Any = None,
    cls_where: jax.Array | None = None,
    targets: Any = None,
    target_inputs: tuple = (),
    with_weighted_exp: bool = False,
    uniform_count: Any = None,
    axis_name: str | None = None,
) -> RowStats:
    """Log-sum-exp (and target-weighted sums) over the last axis, computed stably.

    ``x`` is in its input dtype; ``prepare`` maps it to the compute dtype (a cast, and
    the soft cap) and must be non-decreasing, so the row max is taken on the raw values
    (exact in any float dtype) and prepared afterwards.  ``targets(*target_inputs)``
    builds the per-class target weights from raw inputs, so that each pass can read its
    own view of them; ``uniform_count`` instead says the targets are ``1/uniform_count``
    on every class (no class mask).  Every pass is one fused elementwise prologue and a
    reduction: no converted copy of ``x`` is written to memory.  The max shift is
    ``stop_gradient``-ed (it cancels in the math).  With ``axis_name`` the last axis is a
    shard of the classes and only per-row values cross devices.

    The values are primal only: the kernels' custom JVP rules give their derivatives.
    """
    if prepare is None:
        def prepare(v):
            return v.astype(compute_dtype(x.dtype))
    m = prepare(be.row_reduce(mask_classes(x, cls_where), "max"))
    m = lax.stop_gradient(finite_or_zero(pmax(lax.stop_gradient(m), axis_name)))

    def shifted(view):
        xv, wv = view
        return mask_classes(prepare(xv), wv) - m[..., None]
    s = psum(be.row_reduce(jnp.exp(shifted((x, cls_where))), "sum"), axis_name)
    log_s = jnp.log(s)
    lse = m + log_s
    # lse rounds m + log(s): at logits of 1e30 in float32, log(2) of two tied maxima is
    # lost.  (m - lse) is exact (Sterbenz), so lse_lo recovers it; O(N), no [N, V] work.
    # Its true derivative is 0 (it is 0 in exact arithmetic).
    lse_lo = lax.stop_gradient(finite_or_zero((m - lse) + log_s))
    if uniform_count is not None:
        # Uniform targets 1/count on every class (label smoothing with no class mask or
        # weights): sum_j (lse - x_j) / count needs no cap, as every target is > 0
        # (a -inf logit makes the sum +inf, the true value).  Half the work per element
        # of the general pass below (measured 4096 x 32768 fp32: 143 -> ~90 ms forward).
        # Private views of x and of lse on CPU: a broadcast of lse shared with the
        # backward pass is otherwise written out as an [N, V] array.
        xv, lv = be.private_view(x, finite_or_zero(lse), tag=be.Tag.SMOOTHING_PASS)
        gap = psum(be.row_reduce(lv[..., None] - prepare(xv), "sum"), axis_name)
        one = jnp.ones_like(lse)
        return RowStats(lse, m, gap / uniform_count + lse_lo, None, one, lse_lo)
    if targets is None:
        return RowStats(lse, m, None, None, lse_lo=lse_lo)
    # sum_j t_j (lse - x_j), measured from lse (not m: a second broadcast of m shared
    # with the exp pass made XLA:CPU write it out as an [N, V] array), plus lse_lo for
    # what the rounding of lse lost (added per class: scaling the sum of t by it instead
    # made XLA:CPU write a float32 copy of bf16 targets).  The difference is capped at
    # the largest finite float, so that a 0 target on a -inf logit gives 0 (not
    # 0 * inf = NaN) without a select, which would also keep XLA:CPU from fusing this
    # pass.  Target mass on a capped class (a -inf logit) makes the row's value +inf, as
    # is the true loss, whatever the size of that mass.
    lse_safe = finite_or_zero(lse)
    xv, wv, *tv = be.private_view(x, cls_where, *target_inputs, tag=be.Tag.SMOOTHING_PASS)
    t = targets(*tv)
    xm = mask_classes(prepare(xv), wv)
    big = jnp.finfo(m.dtype).max
    raw = lse_safe[..., None] - xm
    d = jnp.minimum(raw, big)
    td = t * (d + lse_lo[..., None])
    # raw - d is +inf on a -inf logit and 0 elsewhere: (t * big) * big overflows to +inf
    # for any t > 0 and stays 0 for t = 0, with no compare or select.
    td = td + td * jnp.minimum(raw - d, big)
    weighted_nll = psum(be.row_reduce(td, "sum"), axis_name)
    mass = psum(be.row_reduce(t, "sum"), axis_name)  # a sibling of the pass above
    we = None
    if with_weighted_exp:
        xv, wv, *tv = be.private_view(x, cls_where, *target_inputs,
                                      tag=be.Tag.LABEL_MASS_PASS)
        e = targets(*tv) * jnp.exp(mask_classes(prepare(xv), wv) - lse_safe[..., None])
        # exp(x - lse - lse_lo) = exp(x - lse) * exp(-lse_lo): an O(N) factor after the sum.
        we = psum(be.row_reduce(e, "sum"), axis_name) * jnp.exp(-lse_lo)
    return RowStats(lse, m, weighted_nll, we, mass, lse_lo)


# --------------------------------------------------------------------------------------
# Custom JVP rules: a linear, rematerialised tangent.
# --------------------------------------------------------------------------------------

_SAVE_NOTHING = jax.checkpoint_policies.nothing_saveable


def nonzero_tangent(t: Any) -> Any:
    """``t``, or ``None`` for a zero tangent: ``None``, a symbolic zero, or ``float0``
    (the tangent of an integer or boolean input)."""
    if t is None or type(t) is SymbolicZero or (
            hasattr(t, "dtype") and t.dtype == jax.dtypes.float0):
        return None
    return t


def linear_tangent(tangent_fn: Callable[..., Any], primals: tuple, tangents: tuple,
                   out: Any) -> Any:
    """The output tangent ``tangent_fn(primals, tangents)``, rematerialised.

    ``tangent_fn`` is linear in the tangents (``None`` for a zero tangent: symbolic
    zeros, integer and boolean inputs); ``primals`` may hold more than the function's
    inputs, such as per-row statistics of its output ``out``.  Under ``jax.checkpoint``
    with a policy that saves nothing, reverse mode transposes it and the backward pass
    recomputes every coefficient (the sigmoids, softplus values, ...) from the primal
    inputs: the residuals are the inputs themselves, never an array the forward pass
    computed.  ``prevent_cse=False``: no barrier on TPU/GPU (on CPU the forward pass
    reads private views of its inputs instead, see :func:`lossax._backend.private_view`).
    """
    nz = tuple(nonzero_tangent(t) for t in tangents)
    if all(t is None for t in nz):
        return jax.tree.map(lambda o: SymbolicZero(jax.typeof(o).to_tangent_aval()), out)
    fn = jax.checkpoint(tangent_fn, policy=_SAVE_NOTHING, prevent_cse=False)
    return fn(primals, nz)


def def_rematerialised_jvp(kernel: Any, tangent_fn: Callable[..., Any], *,
                           mark_differentiated: bool = True) -> None:
    """Gives ``kernel`` (a ``jax.custom_jvp`` whose first, static argument is a config
    named tuple) the JVP ``tangent_fn(cfg, primals, tangents)``, rematerialised by
    :func:`linear_tangent`.  With ``mark_differentiated``, the primal output is
    computed with ``cfg.differentiated=True`` (the layout for a differentiated call)."""

    def jvp(cfg, primals, tangents):
        out = kernel(cfg._replace(differentiated=True) if mark_differentiated else cfg,
                     *primals)
        return out, linear_tangent(functools.partial(tangent_fn, cfg), primals, tangents,
                                   out)

    kernel.defjvp(jvp, symbolic_zeros=True)


def add_terms(*terms: jax.Array | None) -> jax.Array:
    """The sum of the terms that are not ``None`` (at least one is)."""
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    assert out is not None
    return out


# --------------------------------------------------------------------------------------
# Rows that count, their weights, and the reduction: shared by every path.
# --------------------------------------------------------------------------------------


def any_class(cls_where: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Rows with at least one unmasked class (over all shards: one int per row)."""
    if axis_name is None:
        return jnp.any(cls_where, axis=-1)
    return lax.psum(jnp.sum(cls_where, axis=-1, dtype=jnp.int32), axis_name) > 0


def row_valid(shape: tuple[int, ...], row_where: jax.Array | None = None,
              cls_where: jax.Array | None = None, labels: jax.Array | None = None,
              ignore_index: int | None = None, axis_name: str | None = None) -> jax.Array:
    """Rows that count: not masked as a row, with at least one unmasked class, and
    whose label is not ``ignore_index``."""
    valid = jnp.ones(shape, bool) if row_where is None else row_where
    if cls_where is not None:
        valid = valid & any_class(cls_where, axis_name)
    if ignore_index is not None and labels is not None:
        valid = valid & (labels != ignore_index)
    return valid


def label_weights(class_weights: jax.Array, labels: jax.Array, dtype: Any) -> jax.Array:
    """Each row's label weight ``w[y]`` (labels clipped into range: an out-of-range
    label's row is NaN anyway)."""
    w = class_weights.astype(dtype)
    return jnp.take(w, jnp.clip(labels, 0, w.shape[0] - 1))


def row_weights(counted: jax.Array, dtype: Any, labels: jax.Array | None = None,
                class_weights: jax.Array | None = None) -> jax.Array:
    """Each row's weight in ``mean``'s divisor: 1 where it counts (its label's class
    weight, with ``class_weights``), 0 elsewhere."""
    if class_weights is None:
        return counted.astype(dtype)
    return jnp.where(counted, label_weights(class_weights, labels, dtype), 0)


def reduce_rows(loss: jax.Array, weight: jax.Array, reduction: str,
                batch_axes: tuple[str, ...] = ()) -> jax.Array:
    """``none`` / ``sum`` / ``mean`` over rows; ``mean`` divides by the counted weight.

    ``batch_axes``: inside ``shard_map``, the mesh axes the rows are sharded over (the
    sums then run over every shard).  An all-ignored batch gives 0, not NaN.

    >>> import jax.numpy as jnp
    >>> loss, counted = jnp.array([1.0, 3.0, 0.0]), jnp.array([True, True, False])
    >>> float(reduce_rows(loss, counted, "mean")), float(reduce_rows(loss, counted, "sum"))
    (2.0, 4.0)
    >>> float(reduce_rows(jnp.zeros(2), jnp.zeros(2, bool), "mean"))
    0.0
    """
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if batch_axes:
        total = lax.psum(total, batch_axes)
    if reduction == "sum":
        return total
    denom = jnp.sum(weight.astype(total.dtype))
    if batch_axes:
        denom = lax.psum(denom, batch_axes)
    return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1), 0)


def check_ce_options(label_smoothing: Any, z_loss: Any, soft_cap: Any, reduction: Any,
                     ignore_index: Any = None) -> tuple[float, float, float | None]:
    """Validates the cross-entropy options shared by every softmax entry point."""
    alpha = check_float_option(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    z = check_float_option(z_loss, "z_loss", lo=0.0)
    cap = None if soft_cap is None else check_float_option(
        soft_cap, "soft_cap", lo=0.0, lo_open=True
    )
    check_reduction(reduction)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}.")
    return alpha, z, cap

