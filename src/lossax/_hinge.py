"""The hinge family: binary hinge, squared hinge and perceptron (element-wise), and
multiclass hinge (Crammer-Singer and Weston-Watkins), squared multiclass hinge and
multiclass perceptron (one pass over each row); each one custom-JVP kernel.

Each kernel's tangent is linear in the input tangents and rematerialised
(:func:`lossax._numerics.linear_tangent`), so every autodiff mode works; reverse mode, the
transposed tangent, keeps the inputs and, for the multiclass losses, one value per row.
Subgradients at the kinks follow JAX's autodiff of optax's formulas: ``max(0, z)`` has
derivative 1/2 at ``z = 0``, and a row maximum shared by several classes splits its
gradient equally between them.  The losses are piecewise linear (or quadratic), so their
second derivatives are 0 (or constant) almost everywhere.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _backend as be
from . import _numerics as nx


def _check_margin(margin: Any) -> float:
    if isinstance(margin, jax.core.Tracer | jax.Array):
        raise TypeError(f"margin must be a Python float known at trace time; got "
                        f"{nx.describe(margin)}.")
    if isinstance(margin, bool) or not isinstance(margin, int | float | np.integer
                                                  | np.floating):
        raise TypeError(f"margin must be a float; got {margin!r}.")
    m = float(margin)
    if not math.isfinite(m):
        raise ValueError(f"margin must be finite; got {margin!r}.")
    return m


def _step(z: jax.Array) -> jax.Array:
    """d max(0, z) / dz as JAX's autodiff has it: 1, 0, and 1/2 at z = 0 (NaN at NaN)."""
    return (jnp.sign(z) + 1) * 0.5


# --------------------------------------------------------------------------------------
# Binary: hinge, squared hinge, perceptron.
# --------------------------------------------------------------------------------------


class _BinCfg(NamedTuple):
    margin: float = 1.0
    squared: bool = False
    differentiated: bool = False  # the primal of the JVP rule


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _binary(cfg: _BinCfg, x, t):
    cdt = nx.compute_dtype(x.dtype)
    if cfg.differentiated:
        # Private views and opaque constants keep a following sum fused apart from the
        # backward pass: see _backend.opaque.  (Not differentiated: plain constants.)
        x_, t_ = be.private_view(x, t, tag=be.Tag.HINGE_INPUTS)
        m, zero = be.opaque((cfg.margin, 0.0), cdt, tag=be.Tag.HINGE_CONSTS)
    else:
        x_, t_, m, zero = x, t, cfg.margin, 0.0
    h = jnp.maximum(m - x_.astype(cdt) * t_.astype(cdt), zero)
    loss = h * h if cfg.squared else h
    return loss.astype(x.dtype)


def _binary_tangent(cfg: _BinCfg, primals, tangents):
    # z = m - x t:  dL = L'(z) (-t dx - x dt),  with L'(z) = step(z) (hinge) or
    # 2 max(0, z) (squared).  One fused element-wise expression in reverse mode.
    x, t = primals
    dx, dt = tangents
    cdt = nx.compute_dtype(x.dtype)
    xc, tc = x.astype(cdt), t.astype(cdt)
    z = cfg.margin - xc * tc
    dz = 2 * jnp.maximum(z, 0) if cfg.squared else _step(z)
    tx = None if dx is None else -tc * dz * dx.astype(cdt)
    tt = None if dt is None else -xc * dz * dt.astype(cdt)
    return nx.add_terms(tx, tt).astype(x.dtype)


nx.def_rematerialised_jvp(_binary, _binary_tangent)


def _binary_call(x, t, cfg, *, equal_shapes=False):
    x = nx.as_float_array(x, "predictor_outputs")
    t = nx.as_real_array(t, "targets")
    if equal_shapes and x.shape != t.shape:
        raise ValueError(
            f"predictor_outputs and targets must have the same shape (as optax checks); "
            f"got {tuple(x.shape)} and {tuple(t.shape)}."
        )
    shape = nx.broadcast_shape(x, "predictor_outputs", t, "targets")
    return _binary(cfg, jnp.broadcast_to(x, shape), jnp.broadcast_to(t, shape))


def hinge_loss(
    predictor_outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
) -> jax.Array:
    r"""Binary hinge loss, element-wise; same as :func:`optax.losses.hinge_loss`.

    .. math::
        \ell = \max(0, m - s\,t)

    Args:
      predictor_outputs: Floating-point scores ``s`` of the decision function ``[...]``.
      targets: Targets ``t`` in ``{-1, +1}``, broadcastable with the scores (any real
        dtype; float targets are differentiable).  Values are not checked (jit cannot
        raise on values): the formula is applied as is, so ``{0, 1}`` labels must be
        mapped to ``{-1, +1}`` first (``2 * y - 1``).
      margin: The margin ``m`` (finite), 1 by default.

    Returns:
      The element-wise loss of the broadcast shape, in the scores' dtype.

    Raises:
      TypeError: non-floating scores, non-numeric targets, or a non-float margin.
      ValueError: shapes that do not broadcast, or a non-finite margin.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> scores = jnp.array([2.0, 0.5, -0.5])
      >>> targets = jnp.array([1.0, 1.0, 1.0])
      >>> print(lossax.hinge_loss(scores, targets))  # max(0, 1 - s)
      [0.  0.5 1.5]
      >>> print(lossax.hinge_loss(scores, targets, margin=2.0))
      [0.  1.5 2.5]

    Note:
      Computed in float32 for float16/bfloat16.  At the kink ``s t = m`` the gradient is
      half of ``-t``, as JAX's autodiff of optax's ``jnp.maximum`` gives.  The
      derivative is a custom JVP (every autodiff mode) whose backward, the transposed
      JVP, is one fused element-wise expression of the inputs.
    """
    return _binary_call(predictor_outputs, targets, _BinCfg(_check_margin(margin), False))


def squared_hinge_loss(
    predictor_outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
) -> jax.Array:
    r"""Squared binary hinge loss, element-wise.

    .. math::
        \ell = \max(0, m - s\,t)^2

    Keras's ``squared_hinge`` is this averaged over the last axis (and maps ``{0, 1}``
    targets to ``{-1, +1}``); this one is element-wise like :func:`hinge_loss`.

    Args:
      predictor_outputs: Floating-point scores ``s`` ``[...]``.
      targets: Targets ``t`` in ``{-1, +1}``, broadcastable with the scores; values are
        not checked, the formula is applied as is.
      margin: The margin ``m`` (finite), 1 by default.

    Returns:
      The element-wise loss of the broadcast shape, in the scores' dtype.

    Raises:
      TypeError: non-floating scores, non-numeric targets, or a non-float margin.
      ValueError: shapes that do not broadcast, or a non-finite margin.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> print(lossax.squared_hinge_loss(jnp.array([2.0, 0.5, -0.5]),
      ...                                 jnp.array([1.0, 1.0, -1.0])))  # (1 - s t)^2
      [0.   0.25 0.25]

    Note:
      Computed in float32 for float16/bfloat16; differentiable everywhere (gradient
      ``-2 t max(0, m - s t)``).  A custom JVP: every autodiff mode.
    """
    return _binary_call(predictor_outputs, targets, _BinCfg(_check_margin(margin), True))


def perceptron_loss(
    predictor_outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Binary perceptron loss, element-wise; same as :func:`optax.losses.perceptron_loss`.

    .. math::
        \ell = \max(0, -s\,t)

    Args:
      predictor_outputs: Floating-point scores ``s`` ``[...]``.
      targets: Targets ``t`` in ``{-1, +1}`` of the same shape (as optax requires);
        values are not checked, the formula is applied as is.

    Returns:
      The element-wise loss, in the scores' dtype.

    Raises:
      TypeError: non-floating scores or non-numeric targets.
      ValueError: shapes that differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> print(lossax.perceptron_loss(jnp.array([2.0, -0.5]), jnp.array([1.0, 1.0])))
      [0.  0.5]

    Note:
      The hinge kernel with margin 0.  At ``s t = 0`` the gradient is half of ``-t``,
      as optax's autodiff gives.  A custom JVP: every autodiff mode.
    """
    return _binary_call(predictor_outputs, targets, _BinCfg(0.0, False), equal_shapes=True)


# --------------------------------------------------------------------------------------
# Multiclass: Crammer-Singer and Weston-Watkins, plain or squared; perceptron.
# --------------------------------------------------------------------------------------


class _MultiCfg(NamedTuple):
    margin: float = 1.0
    form: str = "crammer_singer"
    squared: bool = False


def _label_info(labels: jax.Array, num_classes: int):
    lab = labels.astype(jnp.int32)
    oob = (lab < 0) | (lab >= num_classes)
    return lab, oob, jnp.clip(lab, 0, num_classes - 1)


def _label_score(s: jax.Array, idx: jax.Array) -> jax.Array:
    # Gathered in the input dtype, then converted: O(N).  (From the raw input: a second
    # private view of the scores made XLA:CPU write a float32 copy of bfloat16 scores.)
    sy = jnp.take_along_axis(s, idx[..., None], axis=-1)[..., 0]
    return sy.astype(nx.compute_dtype(s.dtype))


# Class indices up to 2^24 are exact in float32: the forward pass then marks the label's
# class with arithmetic on a float iota (|j - y| is 0 only there), which XLA:CPU fuses
# into the row reduction, where an integer compare-and-select would be written out as a
# whole [N, V] array first.
_FLOAT_IOTA_MAX = 2**24


def _cs_scores(cfg: _MultiCfg, sc: jax.Array, lab: jax.Array, margin: Any) -> jax.Array:
    """``z_j = s_j + m [j != y]``: the label's own entry is ``s_y``, so ``max z >= s_y``."""
    if cfg.margin == 0:
        return sc
    num = sc.shape[-1]
    if num <= _FLOAT_IOTA_MAX:
        off = jnp.abs(lax.broadcasted_iota(sc.dtype, sc.shape, sc.ndim - 1)
                      - lab.astype(sc.dtype)[..., None])
        return sc + margin * jnp.sign(off)  # sign(|j - y|) = [j != y]
    iota = lax.broadcasted_iota(jnp.int32, sc.shape, sc.ndim - 1)
    return sc + jnp.where(iota == lab[..., None], 0, margin).astype(sc.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _multi(cfg: _MultiCfg, s, labels):
    """``(loss, r)``: the loss and one value per row for the derivative rule, the row
    maximum of ``z`` (Crammer-Singer) or the label's score (Weston-Watkins)."""
    # XLA:CPU fuses each row pass into one YNNPACK reduction only if it shares nothing
    # with the backward pass: hence the private views and the opaque constants (see
    # _backend.opaque).
    cdt = nx.compute_dtype(s.dtype)
    num = s.shape[-1]
    lab, oob, idx = _label_info(labels, num)
    sy = _label_score(s, idx)
    sv = be.private_view(s, tag=be.Tag.MULTI_HINGE_SCORES).astype(cdt)
    m, zero = be.opaque((cfg.margin, 0.0), cdt, tag=be.Tag.MULTI_HINGE_CONSTS)
    if cfg.form == "crammer_singer":
        r = be.row_reduce(_cs_scores(cfg, sv, lab, m), "max")
        d = r - sy
        loss = d * d if cfg.squared else d
    else:
        # sum_{j != y} max(0, m + s_j - s_y) / V: the j = y term is exactly max(0, m)
        # (s_y - s_y = 0), so it is summed with the others and subtracted, with no
        # per-class select.
        h = jnp.maximum(m + sv - sy[..., None], zero)
        own = max(cfg.margin, 0.0)
        if cfg.squared:
            h, own = h * h, own * own
        loss = (be.row_reduce(h, "sum") - own) / num
        r = sy
    # A label outside [0, V) gives NaN (loss and gradient): jit cannot raise on values.
    loss = jnp.where(oob, jnp.nan, loss)
    return loss.astype(s.dtype), r


@functools.partial(_multi.defjvp, symbolic_zeros=True)
def _multi_jvp(cfg: _MultiCfg, primals, tangents):
    s, labels = primals
    out = _multi(cfg, s, labels)
    return out, nx.linear_tangent(functools.partial(_multi_tangent, cfg),
                                  (s, labels, out[1]), tangents, out)


def _multi_tangent(cfg: _MultiCfg, primals, tangents):
    # Crammer-Singer, z_j = s_j + m [j != y], M = max_j z_j:
    #   dL = c (sum_j p_j ds_j - ds_y),  p_j = [z_j = M] / #{k: z_k = M}  (a tie for the
    #   maximum splits the gradient equally, as JAX's max does), c = 1 or 2 (M - s_y);
    #   dM = sum_j p_j ds_j.
    # Weston-Watkins, a_j = dh/dz at z_j = m + s_j - s_y (step(z), or 2 max(0, z)):
    #   dL = (1 / V) (sum_j a_j ds_j - (sum_j a_j) ds_y)  (the j = y term cancels);
    #   d s_y = ds_y.
    # Reverse mode transposes the row sums to broadcasts of the row's cotangent and the
    # label's gather to an O(N) scatter into the output: no [N, V] temporary, the plan
    # of JAX's own autodiff of optax's formula without its compare-and-convert arrays.
    # The row values are recomputed from the inputs and r (one value per row, kept from
    # the forward pass).
    s, labels, r = primals
    ds = tangents[0].astype(nx.compute_dtype(s.dtype))
    cdt = ds.dtype
    num = s.shape[-1]
    lab, oob, idx = _label_info(labels, num)
    ds_y = jnp.take_along_axis(ds, idx[..., None], axis=-1)[..., 0]
    # A NaN row value (an invalid label) makes the row's derivative NaN.
    r_nan = jnp.where(oob, jnp.nan, r)
    sc = s.astype(cdt)
    if cfg.form == "crammer_singer":
        onehot = lax.broadcasted_iota(jnp.int32, s.shape, s.ndim - 1) == lab[..., None]
        z = jnp.where(onehot, sc, sc + cfg.margin)  # bit for bit the forward's z
        # [z_j = M] in the output dtype (0 and 1 are exact), so that the [N, V] buffer the
        # count sums and reverse mode scales is the output's own: XLA:CPU writes it
        # there and scales it in place (piecewise constant: derivative 0).
        marks = lax.stop_gradient(jnp.where(z == r_nan[..., None], 1.0, 0.0).astype(s.dtype))
        marks = marks.astype(cdt)
        # A per-row select (NaN: an invalid label) between the row reduction and the
        # broadcast of its result: without it XLA:CPU fuses the two and writes the
        # broadcast (the scaled marks) as a whole [N, V] array.
        count = jnp.where(oob, jnp.nan, be.row_reduce(marks, "sum"))
        dmx = jnp.sum(marks * ds, axis=-1) / count
        dloss = dmx - ds_y
        if cfg.squared:
            dloss = 2 * (r_nan - _label_score(s, idx)) * dloss
        return dloss.astype(s.dtype), dmx
    z = cfg.margin + sc - r_nan[..., None]
    act = 2 * jnp.maximum(z, 0) if cfg.squared else _step(z)
    # Written as sum_j a_j (ds_j - ds_y): reverse mode then sums the output itself (the
    # transpose of ds_y's broadcast) for the label's entry, as one reduction over the
    # buffer it writes, with no separate pass for sum_j a_j.
    dloss = jnp.sum(act * (ds - ds_y[..., None]), axis=-1) / num
    return dloss.astype(s.dtype), ds_y


_FORMS = ("crammer_singer", "weston_watkins")


def _multi_call(scores, labels, cfg_kw):
    scores = nx.as_float_array(scores, "scores")
    labels = nx.as_int_array(labels, "labels")
    if scores.ndim == 0:
        raise ValueError("scores must have a class axis (last); got a scalar.")
    if labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; expected the batch shape "
            f"{tuple(scores.shape[:-1])} of scores with shape {tuple(scores.shape)} "
            "(one integer class index per row)."
        )
    if scores.shape[-1] == 0:
        raise ValueError("scores must have at least one class; got 0 along the last axis.")
    return _multi(_MultiCfg(**cfg_kw), scores, labels)[0]


def _check_form(form: Any) -> str:
    if form not in _FORMS:
        raise ValueError(f"form must be 'crammer_singer' or 'weston_watkins'; got {form!r}.")
    return form


def multiclass_hinge_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
    form: str = "crammer_singer",
) -> jax.Array:
    r"""Multiclass hinge loss; by default the same as optax's (Crammer-Singer).

    .. math::
        \text{crammer\_singer:}\quad
        \ell_i = \max_j \left(s_{ij} + m\,[j \ne y_i]\right) - s_{i y_i}

        \text{weston\_watkins:}\quad
        \ell_i = \frac{1}{V} \sum_{j \ne y_i} \max(0,\; m + s_{ij} - s_{i y_i})

    Weston-Watkins divides by the number of classes ``V``, as PyTorch's
    ``MultiMarginLoss`` does, so the numbers match PyTorch's (``p=1``,
    ``reduction="none"``).

    Args:
      scores: Floating-point scores ``[..., num_classes]`` (classes on the last axis).
      labels: Integer class indices of the batch shape ``[...]``, in
        ``[0, num_classes)``.
      margin: The margin ``m`` (finite), 1 by default.
      form: ``"crammer_singer"`` (optax's) or ``"weston_watkins"`` (PyTorch's).

    Returns:
      The per-example loss of the batch shape, in the scores' dtype.

    Raises:
      TypeError: non-floating scores, non-integer labels, or a non-float margin.
      ValueError: labels not of the batch shape, no class axis, an unknown ``form``, or
        a non-finite margin.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> scores = jnp.array([[3.0, 2.5, 0.0], [1.0, 2.0, 0.0]])
      >>> labels = jnp.array([0, 0])
      >>> # max(3, 2.5 + 1, 0 + 1) - 3 = 0.5;  max(1, 2 + 1, 0 + 1) - 1 = 2
      >>> print(lossax.multiclass_hinge_loss(scores, labels))
      [0.5 2. ]
      >>> # (max(0, 1 + 2.5 - 3) + max(0, 1 + 0 - 3)) / 3 = 0.5 / 3;  (2 + 0) / 3
      >>> import numpy as np
      >>> with np.printoptions(precision=4):
      ...     print(lossax.multiclass_hinge_loss(scores, labels, form="weston_watkins"))
      [0.1667 0.6667]

    Note:
      Computed in float32 for float16/bfloat16, one pass over each row forward.  A
      label outside ``[0, num_classes)`` gives NaN (jit cannot raise on values).
      Subgradients follow optax's autodiff: a maximum shared by several classes splits
      the gradient equally, and ``max(0, z)`` has derivative 1/2 at 0.  The derivative
      is a custom JVP (every autodiff mode) whose backward, the transposed JVP, keeps
      only the inputs and one value per row.
    """
    return _multi_call(scores, labels, dict(margin=_check_margin(margin),
                                            form=_check_form(form), squared=False))


def multiclass_squared_hinge_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
    form: str = "crammer_singer",
) -> jax.Array:
    r"""Squared multiclass hinge loss.

    .. math::
        \text{crammer\_singer:}\quad
        \ell_i = \left(\max_j \left(s_{ij} + m\,[j \ne y_i]\right) - s_{i y_i}\right)^2

        \text{weston\_watkins:}\quad
        \ell_i = \frac{1}{V} \sum_{j \ne y_i} \max(0,\; m + s_{ij} - s_{i y_i})^2

    Weston-Watkins matches PyTorch's ``MultiMarginLoss(p=2)`` (divided by ``V``).

    Args:
      scores: Floating-point scores ``[..., num_classes]``.
      labels: Integer class indices of the batch shape, in ``[0, num_classes)``.
      margin: The margin ``m`` (finite), 1 by default.
      form: ``"crammer_singer"`` or ``"weston_watkins"``.

    Returns:
      The per-example loss of the batch shape, in the scores' dtype.

    Raises:
      TypeError: non-floating scores, non-integer labels, or a non-float margin.
      ValueError: labels not of the batch shape, an unknown ``form``, or a non-finite
        margin.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> scores = jnp.array([[3.0, 2.5, 0.0], [1.0, 2.0, 0.0]])
      >>> labels = jnp.array([0, 0])
      >>> print(lossax.multiclass_squared_hinge_loss(scores, labels))  # 0.5^2, 2^2
      [0.25 4.  ]
      >>> import numpy as np
      >>> with np.printoptions(precision=4):  # 0.25 / 3, 4 / 3
      ...     print(lossax.multiclass_squared_hinge_loss(scores, labels, form="weston_watkins"))
      [0.0833 1.3333]

    Note:
      As :func:`multiclass_hinge_loss`; a label outside ``[0, num_classes)`` gives NaN.
    """
    return _multi_call(scores, labels, dict(margin=_check_margin(margin),
                                            form=_check_form(form), squared=True))


def multiclass_perceptron_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Multiclass perceptron loss; same as :func:`optax.losses.multiclass_perceptron_loss`.

    .. math::
        \ell_i = \max_j s_{ij} - s_{i y_i}

    Args:
      scores: Floating-point scores ``[..., num_classes]``.
      labels: Integer class indices of the batch shape, in ``[0, num_classes)``.

    Returns:
      The per-example loss of the batch shape, in the scores' dtype.

    Raises:
      TypeError: non-floating scores or non-integer labels.
      ValueError: labels not of the batch shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> scores = jnp.array([[3.0, 2.5, 0.0], [1.0, 2.0, 0.0]])
      >>> print(lossax.multiclass_perceptron_loss(scores, jnp.array([0, 0])))  # 0, 2 - 1
      [0. 1.]

    Note:
      The Crammer-Singer kernel with margin 0 (a tie for the maximum splits the
      gradient, as optax's autodiff does).  A label outside ``[0, num_classes)`` gives
      NaN.  A custom JVP: every autodiff mode.
    """
    return _multi_call(scores, labels, dict(margin=0.0, form="crammer_singer",
                                            squared=False))
