"""Check your own losses the way lossax checks its kernels.

Three kinds of tools:

* **float64 NumPy oracles** for every lossax loss, with the same names and arguments
  (``lossax.testing.softmax_cross_entropy_with_integer_labels(logits, labels, ...)``).
  They are written from the formulas with NumPy in float64, independently of the JAX
  kernels, and with ``return_grad=True`` also give the analytic gradient of the summed
  output with respect to the first argument.  Limits are taken where the formula alone
  is undefined but the loss is not: a target of 0 on a class whose logit is ``-inf``
  contributes 0, and logits of ``+inf`` are treated as equal, infinitely large values
  (the softmax is uniform over them).
* :func:`check_custom_vjp`: finite differences (``jax.test_util.check_grads``, reverse
  mode, up to second order) in float64, and optionally ``jax.grad`` against a plain
  reference implementation, for losses with a hand-written ``jax.custom_vjp``.
* Error measures in units of a dtype's epsilon (:func:`ulp_error`) and the adversarial
  numerics table (:func:`adversarial_table`), printed as markdown by::

      python -W ignore::RuntimeWarning -m lossax.testing adversarial-table

Examples:
  >>> import numpy as np
  >>> from lossax import testing
  >>> logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
  >>> loss, grad = testing.softmax_cross_entropy_with_integer_labels(
  ...     logits, np.array([1, 0]), return_grad=True)
  >>> print(loss.round(4))  # log 4, log(e^2 + 3) - 2
  [1.3863 0.3408]
  >>> print(grad[0])  # softmax(x) - onehot(y)
  [ 0.25 -0.75  0.25  0.25]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AdversarialCase",
    "adversarial_cases",
    "adversarial_table",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "check_custom_vjp",
    "format_table",
    "hinge_loss",
    "linear_softmax_cross_entropy",
    "main",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_squared_hinge_loss",
    "perceptron_loss",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "squared_hinge_loss",
    "top_k_accuracy",
    "ulp_error",
]


# --------------------------------------------------------------------------------------
# Small float64 helpers.
# --------------------------------------------------------------------------------------


def _f64(a: Any) -> np.ndarray:
    """Any array (jax, numpy, bfloat16, Python) as a float64 NumPy array."""
    return np.asarray(np.asarray(a).astype(np.float64))


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Runs an oracle with NumPy's floating-point warnings off: infinities and NaNs are
    part of the oracles' contract (limits and undefined values), not accidents."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def _class_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, tuple | list) else (axis,)
    return tuple(int(a) % ndim for a in axes)


def _to_rows(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Moves the class axes last (in order) and flattens them: ``[batch..., V]``."""
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    a = np.transpose(a, batch + axes)
    return a.reshape((*a.shape[: len(batch)], -1))


def _from_rows(g: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`_to_rows` for an array of the logits' shape."""
    batch = tuple(i for i in range(len(shape)) if i not in axes)
    perm = batch + axes
    g = g.reshape(tuple(shape[i] for i in perm))
    return np.transpose(g, np.argsort(perm))


def _masks(where: Any, shape: tuple[int, ...], axes: tuple[int, ...]):
    """``(row mask [batch], class mask [batch, V])`` from an optax-style ``where``."""
    batch_shape = tuple(shape[i] for i in range(len(shape)) if i not in axes)
    v = int(np.prod([shape[i] for i in axes], dtype=np.int64))
    rows = np.ones(batch_shape, bool)
    classes = np.ones((*batch_shape, v), bool)
    if where is not None:
        w = np.asarray(where, bool)
        if w.ndim != len(shape):  # one flag per row
            rows = np.broadcast_to(w, batch_shape).copy()
        else:  # one flag per class
            classes = _to_rows(np.broadcast_to(w, shape), axes).copy()
    return rows, classes


def _xlogy_safe(t: np.ndarray, nll: np.ndarray) -> np.ndarray:
    """``t * nll`` with ``0 * inf = 0`` (a class with no target mass contributes 0)."""
    with np.errstate(invalid="ignore"):
        return np.where(t == 0, 0.0, t * nll)


def _softmax_stats(xm: np.ndarray):
    """Per row over the last axis: ``(lse, p, nll)`` with ``nll_j = lse - x_j``.

    ``+inf`` logits are equal, infinitely large values: ``p`` is uniform over them and
    ``nll`` is ``log k`` there (``k`` of them) and ``+inf`` elsewhere.  A row with no
    finite-or-``+inf`` logit (all ``-inf``) has ``lse = -inf`` and NaN ``p``/``nll``.
    """
    with np.errstate(all="ignore"):
        m = np.max(xm, axis=-1, keepdims=True) if xm.shape[-1] else np.full(
            (*xm.shape[:-1], 1), -np.inf)
        pinf = np.isposinf(xm)
        k = np.sum(pinf, axis=-1, keepdims=True)
        finite_m = np.isfinite(m)
        shift = np.where(finite_m, m, 0.0)
        e = np.exp(xm - shift)
        s = np.sum(e, axis=-1, keepdims=True)
        lse = np.where(finite_m, shift + np.log(s), m)
        p = np.where(finite_m, e / s, np.where(k > 0, pinf / np.maximum(k, 1), np.nan))
        # (m - x_j) + log s: exact for the label when |m| dwarfs log s.
        nll = np.where(finite_m, (shift - xm) + np.log(s),
                       np.where(k > 0, np.where(pinf, np.log(np.maximum(k, 1)), np.inf),
                                np.nan))
    return lse[..., 0], p, nll


def _soft_cap(x: np.ndarray, soft_cap: float | None):
    """``(capped logits, d capped / d x)``."""
    if soft_cap is None:
        return x, np.ones_like(x)
    t = np.tanh(x / soft_cap)
    return soft_cap * t, 1.0 - t * t


def _reduce(loss: np.ndarray, grad: np.ndarray, weight: np.ndarray, reduction: str):
    """Applies lossax's reduction to per-row ``loss`` and its per-row ``grad``."""
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return np.sum(loss), grad
    if reduction != "mean":
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean'; got {reduction!r}.")
    denom = np.sum(weight)
    if denom <= 0:
        return np.float64(0.0), np.zeros_like(grad)
    return np.sum(loss) / denom, grad / denom


def _finish(loss, grad, return_grad):
    loss = np.asarray(loss, np.float64)
    return (loss, np.asarray(grad, np.float64)) if return_grad else loss


# --------------------------------------------------------------------------------------
# Softmax cross-entropy family.
# --------------------------------------------------------------------------------------


def _dense_rows(x, t, row_ok, cls_ok, *, label_smoothing=0.0, z_loss=0.0, soft_cap=None,
                label_mass=False):
    """Per-row dense cross-entropy on ``[batch, V]`` float64 rows and its gradient."""
    xc, dcap = _soft_cap(x, soft_cap)
    xm = np.where(cls_ok, xc, -np.inf)
    count = np.sum(cls_ok, axis=-1, keepdims=True)
    t = np.where(cls_ok, t, 0.0)
    if label_smoothing:
        u = np.where(cls_ok, 1.0 / np.maximum(count, 1), 0.0)
        t = (1 - label_smoothing) * t + label_smoothing * u
    lse, p, nll = _softmax_stats(xm)
    p = np.where(cls_ok, p, 0.0)
    loss = np.sum(_xlogy_safe(t, nll), axis=-1) + z_loss * np.square(lse)
    mass = np.sum(t, axis=-1)
    grad = (mass + 2 * z_loss * lse)[..., None] * p - t
    if label_mass:  # also sum_j t_j p_j and its gradient p_j (t_j - sum_k t_k p_k)
        tp = np.sum(t * p, axis=-1)
        dtp = p * (t - tp[..., None])
    valid = row_ok & np.any(cls_ok, axis=-1)
    loss = np.where(valid, loss, 0.0)
    grad = np.where(valid[..., None], grad * dcap, 0.0)
    if label_mass:
        return loss, grad, np.where(valid, tp, 0.0), np.where(valid[..., None], dtp * dcap, 0.0), \
            np.where(valid, mass, 0.0), valid
    return loss, grad, valid


@_quiet
def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    axis: int | tuple[int, ...] | None = -1,
    where: Any = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: str = "none",
    return_grad: bool = False,
):
    r"""float64 oracle of :func:`lossax.softmax_cross_entropy`.

    .. math::
        \ell_i = -\sum_j t_{ij} \log \mathrm{softmax}(c(x_i))_j + z\,\mathrm{lse}(c(x_i))^2,
        \quad t = (1-a)\,y + a/V, \quad c(x) = s \tanh(x / s)

    Masked classes (``where`` of the logits' shape) are left out; a row with no class
    left, or masked as a row (``where`` of the batch shape), gives 0.

    Args:
      logits: ``[..., num_classes]`` logits (any float dtype; used in float64).
      labels: Target weights broadcastable to the logits' shape.
      axis: Class axis, tuple of axes, or ``None`` for all axes.
      where: Boolean mask of the batch shape (rows) or of the logits' shape (classes).
      label_smoothing: ``a`` in ``[0, 1]``.
      z_loss: ``z``, the coefficient of ``lse^2``.
      soft_cap: ``s``, or ``None`` for no cap.
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` (over the rows that count).
      return_grad: Also return the gradient of the summed output w.r.t. ``logits``.

    Returns:
      The float64 loss of the batch shape (a scalar with a reduction); with
      ``return_grad``, ``(loss, grad)`` with ``grad`` of the logits' shape.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> logits = np.array([[0.0, 0.0], [0.0, -np.inf]])
      >>> labels = np.array([[0.5, 0.5], [1.0, 0.0]])
      >>> print(testing.softmax_cross_entropy(logits, labels).round(4))  # log 2, 0
      [0.6931 0.    ]
    """
    x = _f64(logits)
    axes = _class_axes(axis, x.ndim)
    y = np.broadcast_to(_f64(labels), x.shape)
    row_ok, cls_ok = _masks(where, x.shape, axes)
    loss, grad, valid = _dense_rows(
        _to_rows(x, axes), _to_rows(y, axes), row_ok, cls_ok, label_smoothing=label_smoothing,
        z_loss=z_loss, soft_cap=soft_cap)
    loss, grad = _reduce(loss, grad, valid.astype(np.float64), reduction)
    return _finish(loss, _from_rows(grad, x.shape, axes), return_grad)


@_quiet
def safe_softmax_cross_entropy(logits: Any, labels: Any, *, return_grad: bool = False):
    """float64 oracle of :func:`lossax.safe_softmax_cross_entropy` (last axis).

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.safe_softmax_cross_entropy(
      ...     np.array([0.0, -np.inf, 0.0]), np.array([1.0, 0.0, 0.0])).round(4))
      0.6931
    """
    return softmax_cross_entropy(logits, labels, return_grad=return_grad)


@_quiet
def poly_loss_cross_entropy(
    logits: Any,
    labels: Any,
    *,
    epsilon: float = 2.0,
    axis: int | tuple[int, ...] | None = -1,
    where: Any = None,
    return_grad: bool = False,
):
    r"""float64 oracle of :func:`lossax.poly_loss_cross_entropy`.

    .. math::
        \ell_i = -\sum_j y_{ij} \log p_{ij} + \epsilon \sum_j y_{ij} (1 - p_{ij})

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.poly_loss_cross_entropy(
      ...     np.array([0.0, 0.0]), np.array([1.0, 0.0])).round(4))  # log 2 + 2 * 0.5
      1.6931
    """
    x = _f64(logits)
    axes = _class_axes(axis, x.ndim)
    y = np.broadcast_to(_f64(labels), x.shape)
    row_ok, cls_ok = _masks(where, x.shape, axes)
    ce, dce, tp, dtp, mass, _ = _dense_rows(
        _to_rows(x, axes), _to_rows(y, axes), row_ok, cls_ok, label_mass=True)
    loss = ce + epsilon * (mass - tp)
    grad = dce - epsilon * dtp
    return _finish(loss, _from_rows(grad, x.shape, axes), return_grad)


@_quiet
def softmax_cross_entropy_with_integer_labels(
    logits: Any,
    labels: Any,
    axis: int | tuple[int, ...] = -1,
    where: Any = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    class_weights: Any = None,
    reduction: str = "none",
    return_grad: bool = False,
):
    r"""float64 oracle of :func:`lossax.softmax_cross_entropy_with_integer_labels`.

    .. math::
        \ell_i = (1-a)(\mathrm{lse}_i - c(x_{i y_i})) + a \cdot \mathrm{mean}_j
        (\mathrm{lse}_i - c(x_{ij})) + z\,\mathrm{lse}_i^2

    over the unmasked classes ``j``; times ``class_weights[y_i]``.  Rows whose label is
    ``ignore_index`` give 0 and are not counted by ``"mean"``; a label outside
    ``[0, num_classes)`` gives NaN (loss and gradient).

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
      >>> print(testing.softmax_cross_entropy_with_integer_labels(  # log 4; row 2 ignored
      ...     logits, np.array([1, -100]), ignore_index=-100, reduction="mean").round(4))
      1.3863
    """
    x = _f64(logits)
    axes = _class_axes(axis, x.ndim)
    y = np.asarray(labels).astype(np.int64)
    xr = _to_rows(x, axes)
    v = xr.shape[-1]
    row_ok, cls_ok = _masks(where, x.shape, axes)
    ignored = np.zeros(y.shape, bool) if ignore_index is None else (y == ignore_index)
    bad = ~ignored & ((y < 0) | (y >= v))
    idx = np.clip(y, 0, max(v - 1, 0))
    onehot = np.arange(v) == idx[..., None]
    xc, dcap = _soft_cap(xr, soft_cap)
    xm = np.where(cls_ok, xc, -np.inf)
    lse, p, nll = _softmax_stats(xm)
    p = np.where(cls_ok, p, 0.0)
    with np.errstate(invalid="ignore"):
        # The label's logit is read unmasked (as optax does): nll of a masked label class
        # is lse - x_y, not +inf.
        x_y = np.take_along_axis(xc, idx[..., None], -1)[..., 0]
        nll_y = np.where(np.take_along_axis(cls_ok, idx[..., None], -1)[..., 0],
                         np.take_along_axis(nll, idx[..., None], -1)[..., 0], lse - x_y)
        loss = (1 - label_smoothing) * nll_y
        grad = p - (1 - label_smoothing) * onehot
        if label_smoothing:
            count = np.sum(cls_ok, axis=-1, keepdims=True)
            u = np.where(cls_ok, 1.0 / np.maximum(count, 1), 0.0)
            loss = loss + label_smoothing * np.sum(_xlogy_safe(u, nll), axis=-1)
            grad = grad - label_smoothing * u
        if z_loss:
            loss = loss + z_loss * np.square(lse)
            grad = grad + 2 * z_loss * lse[..., None] * p
    grad = grad * dcap
    counted = row_ok & np.any(cls_ok, axis=-1) & ~ignored
    weight = counted.astype(np.float64)
    if class_weights is not None:
        w = _f64(class_weights)[idx]
        weight = np.where(counted, w, 0.0)
        loss = loss * w
        grad = grad * w[..., None]
    loss = np.where(counted, loss, 0.0)
    grad = np.where(counted[..., None], grad, 0.0)
    loss = np.where(counted & bad, np.nan, loss)
    grad = np.where((counted & bad)[..., None], np.nan, grad)
    loss, grad = _reduce(loss, grad, weight, reduction)
    return _finish(loss, _from_rows(grad, x.shape, axes), return_grad)


# --------------------------------------------------------------------------------------
# Binary losses.
# --------------------------------------------------------------------------------------


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@_quiet
def sigmoid_binary_cross_entropy(logits: Any, labels: Any, *, pos_weight: Any = None,
                                 label_smoothing: float = 0.0, return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.sigmoid_binary_cross_entropy` (element-wise).

    .. math::
        \ell = w\,y'\,\mathrm{softplus}(-x) + (1-y')\,\mathrm{softplus}(x), \qquad
        \partial \ell / \partial x = (1-y')\,\sigma(x) - w\,y'\,\sigma(-x)

    with ``y' = y (1 - a) + a / 2`` and a term whose coefficient is 0 counted as 0 (so
    ``x = +inf, y = 1`` gives 0).

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> loss, grad = testing.sigmoid_binary_cross_entropy(
      ...     np.array([0.0, np.inf]), np.array([1.0, 1.0]), return_grad=True)
      >>> print(loss.round(4), grad)  # log 2, 0; sigmoid(x) - y
      [0.6931 0.    ] [-0.5  0. ]
    """
    x = _f64(logits)
    y = _f64(labels)
    w = np.float64(1.0) if pos_weight is None else _f64(pos_weight)
    x, y, w = np.broadcast_arrays(x, y, w)
    y = y * (1 - label_smoothing) + label_smoothing / 2
    wy = w * y
    loss = _xlogy_safe(wy, _softplus(-x)) + _xlogy_safe(1 - y, _softplus(x))
    grad = (1 - y) * _sigmoid(x) - wy * _sigmoid(-x)
    return _finish(loss, grad, return_grad)


@_quiet
def sigmoid_focal_loss(logits: Any, labels: Any, *, alpha: Any = None, gamma: Any = 2.0,
                       return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.sigmoid_focal_loss` (element-wise).

    .. math::
        \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(x, y), \quad
        1 - p_t = y\,\sigma(-x) + (1-y)\,\sigma(x), \quad
        \alpha_t = \alpha y + (1-\alpha)(1-y)

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.sigmoid_focal_loss(np.array(0.0), np.array(1.0)).round(4))
      0.1733
    """
    x = _f64(logits)
    y = _f64(labels)
    x, y, gamma = np.broadcast_arrays(x, y, _f64(gamma))
    ce = _xlogy_safe(y, _softplus(-x)) + _xlogy_safe(1 - y, _softplus(x))
    s, sn = _sigmoid(x), _sigmoid(-x)
    dce = s - y
    q = s * (1 - y) + sn * y  # 1 - p_t, without cancellation
    dq = s * sn * (1 - 2 * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        qg = np.where(gamma == 0, 1.0, q ** gamma)
        dqg = np.where((dq == 0) | (gamma == 0), 0.0, gamma * q ** (gamma - 1) * dq)
    loss = _xlogy_safe(qg, ce)
    grad = _xlogy_safe(qg, dce) + _xlogy_safe(dqg, ce)
    if alpha is not None:
        a = _f64(alpha)
        w = a * y + (1 - a) * (1 - y)
        loss, grad = w * loss, w * grad
    return _finish(loss, grad, return_grad)


def _clip_eps(probabilities: Any, eps: float | None) -> float:
    if eps is not None:
        return float(eps)
    dtype = getattr(probabilities, "dtype", np.float64)
    return float(jnp.finfo(dtype if jnp.issubdtype(dtype, jnp.floating) else np.float64).eps)


@_quiet
def binary_cross_entropy(probs: Any, labels: Any, *, eps: float | None = None,
                         return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.binary_cross_entropy` on probabilities.

    .. math::
        \ell = -y \log p' - (1-y) \log(1-p'), \quad p' = \mathrm{clip}(p, \epsilon,
        1 - \epsilon), \quad
        \partial \ell / \partial p = \frac{p' - y}{p' (1 - p')}\,[\epsilon \le p \le
        1 - \epsilon]

    ``eps`` defaults to the machine epsilon of ``probs``' dtype (float64 for lists).

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.binary_cross_entropy(np.array([0.5, 0.0, 1.0]),
      ...                                    np.array([1.0, 0.0, 0.0]), eps=0.01).round(4))
      [0.6931 0.0101 4.6052]
    """
    e = _clip_eps(probs, eps)
    p = _f64(probs)
    y = _f64(labels)
    p, y = np.broadcast_arrays(p, y)
    pc = np.clip(p, e, 1 - e)
    loss = -(y * np.log(pc) + (1 - y) * np.log1p(-pc))
    grad = np.where((p >= e) & (p <= 1 - e), (1 - y) / (1 - pc) - y / pc, 0.0)
    return _finish(loss, grad, return_grad)


@_quiet
def categorical_cross_entropy(probs: Any, labels: Any, axis: Any = -1, where: Any = None, *,
                              eps: float | None = None, return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.categorical_cross_entropy` on probabilities.

    .. math::
        \ell_i = -\sum_j y_{ij} \log \mathrm{clip}(p_{ij}, \epsilon, 1 - \epsilon)

    over the included classes (``where``), 0 for an excluded row; the gradient is
    ``-y / p'`` inside the clip and 0 outside.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.categorical_cross_entropy(
      ...     np.array([[0.4, 0.4, 0.2]]), np.array([[0.0, 1.0, 0.0]])).round(3))  # -ln 0.4
      [0.916]
    """
    e = _clip_eps(probs, eps)
    p = _f64(probs)
    axes = _class_axes(axis, p.ndim)
    y = np.broadcast_to(_f64(labels), p.shape)
    row_ok, cls_ok = _masks(where, p.shape, axes)
    pr, yr = _to_rows(p, axes), _to_rows(y, axes)
    pc = np.clip(pr, e, 1 - e)
    keep = cls_ok & row_ok[..., None]
    loss = np.sum(np.where(keep, -yr * np.log(pc), 0.0), axis=-1)
    grad = np.where(keep & (pr >= e) & (pr <= 1 - e), -yr / pc, 0.0)
    return _finish(loss, _from_rows(grad, p.shape, axes), return_grad)


# --------------------------------------------------------------------------------------
# Hinge and perceptron losses.
# --------------------------------------------------------------------------------------


def _relu_grad(z: np.ndarray) -> np.ndarray:
    """Subgradient of ``max(0, z)``: 1 above 0, 1/2 at 0 (JAX's ``jnp.maximum``), 0 below."""
    return np.where(z > 0, 1.0, np.where(z == 0, 0.5, 0.0))


@_quiet
def hinge_loss(predictor_outputs: Any, targets: Any, *, margin: float = 1.0,
               return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.hinge_loss`: :math:`\max(0, m - s t)`.

    The gradient at the kink ``s t = m`` is ``-t / 2``.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.hinge_loss(np.array([0.5, 2.0, -1.0]), np.array([1.0, 1.0, 1.0])))
      [0.5 0.  2. ]
    """
    s, t = np.broadcast_arrays(_f64(predictor_outputs), _f64(targets))
    z = margin - s * t
    return _finish(np.maximum(0.0, z), -t * _relu_grad(z), return_grad)


@_quiet
def squared_hinge_loss(predictor_outputs: Any, targets: Any, *, margin: float = 1.0,
                       return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.squared_hinge_loss`: :math:`\max(0, m - s t)^2`.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.squared_hinge_loss(np.array([0.5, -1.0]), np.array([1.0, 1.0])))
      [0.25 4.  ]
    """
    s, t = np.broadcast_arrays(_f64(predictor_outputs), _f64(targets))
    z = np.maximum(0.0, margin - s * t)
    return _finish(np.square(z), -2 * t * z, return_grad)


@_quiet
def perceptron_loss(predictor_outputs: Any, targets: Any, *, return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.perceptron_loss`: :math:`\max(0, -s t)`.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.perceptron_loss(np.array([0.5, -2.0]), np.array([1.0, 1.0])))
      [0. 2.]
    """
    s, t = np.broadcast_arrays(_f64(predictor_outputs), _f64(targets))
    z = -s * t
    return _finish(np.maximum(0.0, z), -t * _relu_grad(z), return_grad)


def _onehot(labels: Any, v: int) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64)
    return np.arange(v) == y[..., None]


def _max_split(z: np.ndarray) -> np.ndarray:
    """Gradient of ``max`` over the last axis: split equally between tied maxima."""
    top = z == np.max(z, axis=-1, keepdims=True)
    return top / np.sum(top, axis=-1, keepdims=True)


def _bad_label_nan(loss, grad, labels, v):
    y = np.asarray(labels)
    bad = (y < 0) | (y >= v)
    return np.where(bad, np.nan, loss), np.where(bad[..., None], np.nan, grad)


def _multiclass_hinge(scores, labels, margin, form, squared):
    s = _f64(scores)
    v = s.shape[-1]
    oh = _onehot(np.clip(labels, 0, v - 1), v)
    s_y = np.sum(np.where(oh, s, 0.0), axis=-1, keepdims=True)
    if form == "crammer_singer":
        z = s + margin * ~oh
        h = np.max(z, axis=-1) - s_y[..., 0]
        g = _max_split(z) - oh
        if squared:
            h, g = np.square(h), 2 * h[..., None] * g
    elif form == "weston_watkins":
        z = np.where(oh, -np.inf, margin + s - s_y)
        zp = np.maximum(0.0, z)
        dz = 2 * zp if squared else _relu_grad(z)
        h = np.sum(np.square(zp) if squared else zp, axis=-1) / v
        g = dz / v
        g = g - oh * np.sum(g, axis=-1, keepdims=True)
    else:
        raise ValueError(f"form must be 'crammer_singer' or 'weston_watkins'; got {form!r}.")
    return _bad_label_nan(h, g, labels, v)


@_quiet
def multiclass_hinge_loss(scores: Any, labels: Any, *, margin: float = 1.0,
                          form: str = "crammer_singer", return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.multiclass_hinge_loss`.

    .. math::
        \text{crammer\_singer:}\ \max_j (s_j + m [j \ne y]) - s_y, \qquad
        \text{weston\_watkins:}\ \tfrac{1}{V} \sum_{j \ne y} \max(0, m + s_j - s_y)

    Tied maxima split the gradient; ``max(0, z)`` has derivative 1/2 at 0; a label
    outside ``[0, V)`` gives NaN.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.multiclass_hinge_loss(np.array([[2.0, 1.5, 0.0]]), np.array([0])))
      [0.5]
    """
    h, g = _multiclass_hinge(scores, labels, margin, form, squared=False)
    return _finish(h, g, return_grad)


@_quiet
def multiclass_squared_hinge_loss(scores: Any, labels: Any, *, margin: float = 1.0,
                                  form: str = "crammer_singer", return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.multiclass_squared_hinge_loss`.

    Crammer-Singer: the square of the multiclass hinge loss; Weston-Watkins:
    :math:`\tfrac{1}{V} \sum_{j \ne y} \max(0, m + s_j - s_y)^2`.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.multiclass_squared_hinge_loss(
      ...     np.array([[2.0, 1.5, 0.0]]), np.array([0])))
      [0.25]
    """
    h, g = _multiclass_hinge(scores, labels, margin, form, squared=True)
    return _finish(h, g, return_grad)


@_quiet
def multiclass_perceptron_loss(scores: Any, labels: Any, *, return_grad: bool = False):
    r"""float64 oracle of :func:`lossax.multiclass_perceptron_loss`: :math:`\max_j s_j - s_y`.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.multiclass_perceptron_loss(np.array([[2.0, 3.0]]), np.array([0])))
      [1.]
    """
    h, g = _multiclass_hinge(scores, labels, 0.0, "crammer_singer", squared=False)
    return _finish(h, g, return_grad)


@_quiet
def top_k_accuracy(logits: Any, labels: Any, k: int = 1, axis: Any = -1, where: Any = None):
    """float64 oracle of :func:`lossax.top_k_accuracy`: 1 where the label is in the top k.

    A label counts as in the top ``k`` when fewer than ``k`` included classes score
    strictly higher (ties do not count; ``±inf`` compare as numbers).  A NaN score in
    any included class of a row, the label's or another's, makes the row a miss, for
    every ``k``; a NaN in an excluded class is ignored.  An excluded label class is a
    miss, an excluded row gives 0, a label outside ``[0, num_classes)`` gives NaN.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> print(testing.top_k_accuracy(np.array([[0.1, 0.5, 0.4]]), np.array([2]), k=2))
      [1.]
    """
    x = _f64(logits)
    axes = _class_axes(axis, x.ndim)
    xr = _to_rows(x, axes)
    v = xr.shape[-1]
    y = np.asarray(labels).astype(np.int64)
    row_ok, cls_ok = _masks(where, x.shape, axes)
    idx = np.clip(y, 0, v - 1)[..., None]
    x_y = np.take_along_axis(xr, idx, -1)
    above = (xr > x_y) & cls_ok & (np.arange(v) != idx)
    hit = (np.sum(above, axis=-1) < k) & ~np.any(np.isnan(xr) & cls_ok, axis=-1)
    hit &= np.take_along_axis(cls_ok, idx, -1)[..., 0]
    out = np.where(row_ok, hit.astype(np.float64), 0.0)
    return np.where(row_ok & ((y < 0) | (y >= v)), np.nan, out)


@_quiet
def linear_softmax_cross_entropy(x: Any, labels: Any, weights: Any, *, bias: Any = None,
                                 where: Any = None, return_grad: bool = False, **options: Any):
    r"""float64 oracle of :func:`lossax.linear_softmax_cross_entropy`.

    :func:`softmax_cross_entropy_with_integer_labels` of the float64 logits
    ``x @ weights + bias`` (``where`` is per row; ``options`` are those of that oracle:
    ``ignore_index``, ``label_smoothing``, ``z_loss``, ``soft_cap``, ``class_weights``,
    ``reduction``).  The gradient is with respect to ``x``; that with respect to the
    weights is ``x^T`` times the gradient with respect to the logits.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> x = np.array([[1.0, 0.0]])
      >>> w = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
      >>> print(testing.linear_softmax_cross_entropy(x, np.array([0]), w).round(4))
      [0.3408]
    """
    xf, wf = _f64(x), _f64(weights)
    z = xf @ wf + (0.0 if bias is None else _f64(bias))
    if where is not None:
        where = np.broadcast_to(np.asarray(where, bool), z.shape[:-1])
    loss, dz = softmax_cross_entropy_with_integer_labels(z, labels, where=where,
                                                         return_grad=True, **options)
    return _finish(loss, dz @ wf.T, return_grad)


# --------------------------------------------------------------------------------------
# Inputs for the generic tests (lossax's own suite runs every public function on them).
# --------------------------------------------------------------------------------------

# How each public function takes its inputs:
#   int:         (logits [..., V], integer labels [...])
#   dense:       (logits [..., V], target distributions [..., V])
#   prob_dense:  (probabilities [..., V], target distributions [..., V])
#   binary:      (logits [...], labels in [0, 1] [...])            element-wise
#   prob_binary: (probabilities [...], labels in [0, 1] [...])     element-wise
#   pm1:         (scores [...], targets in {-1, +1} [...])         element-wise
#   linear:      (x [..., D], integer labels [...], weights [D, V])
_KIND = {
    "softmax_cross_entropy_with_integer_labels": "int",
    "softmax_cross_entropy": "dense",
    "safe_softmax_cross_entropy": "dense",
    "poly_loss_cross_entropy": "dense",
    "categorical_cross_entropy": "prob_dense",
    "sigmoid_binary_cross_entropy": "binary",
    "sigmoid_focal_loss": "binary",
    "binary_cross_entropy": "prob_binary",
    "hinge_loss": "pm1",
    "squared_hinge_loss": "pm1",
    "perceptron_loss": "pm1",
    "multiclass_hinge_loss": "int",
    "multiclass_squared_hinge_loss": "int",
    "multiclass_perceptron_loss": "int",
    "top_k_accuracy": "int",
    "linear_softmax_cross_entropy": "linear",
}

# A static option that changes the computation (a new trace is expected), per function.
_OPTION_VARIANT = {
    "softmax_cross_entropy_with_integer_labels": {"label_smoothing": 0.1},
    "softmax_cross_entropy": {"z_loss": 1e-3},
    "safe_softmax_cross_entropy": None,
    "poly_loss_cross_entropy": {"axis": 0},
    "categorical_cross_entropy": {"eps": 1e-3},
    "sigmoid_binary_cross_entropy": {"label_smoothing": 0.1},
    "sigmoid_focal_loss": {"gamma": 1.0},
    "binary_cross_entropy": {"eps": 1e-3},
    "hinge_loss": {"margin": 2.0},
    "squared_hinge_loss": {"margin": 2.0},
    "perceptron_loss": None,
    "multiclass_hinge_loss": {"form": "weston_watkins"},
    "multiclass_squared_hinge_loss": {"margin": 0.5},
    "multiclass_perceptron_loss": None,
    "top_k_accuracy": {"k": 2},
    "linear_softmax_cross_entropy": {"z_loss": 1e-3},
}

# Functions that are not differentiable (piecewise constant): no gradient checks.
_NOT_A_LOSS = frozenset({"top_k_accuracy"})


def _example_inputs(name: str, batch_shape: tuple[int, ...] = (3,), num_classes: int = 5,
                    dtype: Any = jnp.float32, seed: int = 0, hidden: int = 4):
    """``(args, kwargs)``: valid random inputs for the public function ``name``."""
    kind = _KIND[name]
    r = np.random.default_rng(seed)
    full = (*batch_shape, num_classes)

    def fl(a):
        return jnp.asarray(np.asarray(a, np.float32)).astype(dtype)

    def dist(shape):
        return r.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)

    def ints():
        return jnp.asarray(r.integers(0, num_classes, batch_shape, dtype=np.int32))
    if kind == "int":
        return (fl(r.standard_normal(full) * 2), ints()), {}
    if kind == "dense":
        return (fl(r.standard_normal(full) * 2), jnp.asarray(dist(full))), {}
    if kind == "prob_dense":
        return (fl(dist(full)), jnp.asarray(dist(full))), {}
    if kind == "binary":
        return (fl(r.standard_normal(full) * 2),
                jnp.asarray(r.uniform(0, 1, full), jnp.float32)), {}
    if kind == "prob_binary":
        return (fl(r.uniform(0.05, 0.95, full)),
                jnp.asarray(r.uniform(0, 1, full), jnp.float32)), {}
    if kind == "pm1":
        return (fl(r.standard_normal(full) * 2),
                jnp.asarray(r.choice([-1.0, 1.0], full), jnp.float32)), {}
    if kind == "linear":
        return (fl(r.standard_normal((*batch_shape, hidden))), ints(),
                fl(r.standard_normal((hidden, num_classes)))), {}
    raise KeyError(name)


# --------------------------------------------------------------------------------------
# Gradient checks.
# --------------------------------------------------------------------------------------


def _as_float64_arg(a: Any) -> Any:
    a = jnp.asarray(a)
    return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.inexact) else a


def check_custom_vjp(
    loss: Callable[..., Any],
    args: Sequence[Any],
    *,
    order: int = 2,
    modes: Sequence[str] = ("rev",),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    reference: Callable[..., Any] | None = None,
    reference_rtol: float = 1e-9,
    reference_atol: float = 1e-12,
    jit: bool = True,
) -> None:
    """Checks a loss's gradients (for instance a hand-written ``jax.custom_vjp``).

    In float64 (x64 is enabled for the duration of the call, and every floating-point
    argument is cast to float64):

    1. ``jax.test_util.check_grads(loss, args, order, modes)``: the VJP (and, with
       ``order=2``, the VJP of the VJP, as ``jax.hessian`` uses it) against central
       finite differences.  Reverse mode only by default, since a ``custom_vjp`` has no
       forward mode.
    2. With ``reference`` (a plain, autodiff-able implementation of the same loss): the
       gradient of ``sum(loss(*args))`` with respect to every argument equals that of
       ``sum(reference(*args))`` within ``reference_rtol``/``reference_atol``.

    Every argument in ``args`` is differentiated: close over integer labels and static
    options with :func:`functools.partial`.

    Args:
      loss: The function to check; returns an array (any shape).
      args: Its floating-point arguments.
      order: Highest derivative order for the finite-difference check (1 or 2).
      modes: ``check_grads`` modes; add ``"fwd"`` for losses without a custom VJP.
      atol: Absolute tolerance of the finite-difference check (``check_grads``' default
        when ``None``).
      rtol: Relative tolerance of the finite-difference check.
      eps: Finite-difference step.
      reference: Plain implementation to compare ``jax.grad`` against.
      reference_rtol: Relative tolerance of the reference comparison.
      reference_atol: Absolute tolerance of the reference comparison.
      jit: Compile ``loss`` and ``reference`` with :func:`jax.jit` first (much faster:
        the finite differences call them many times).

    Raises:
      AssertionError: If a check fails.

    Examples:
      >>> import functools
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> from lossax import testing
      >>> labels = jnp.array([1, 0])
      >>> loss = functools.partial(lossax.softmax_cross_entropy_with_integer_labels,
      ...                          labels=labels)
      >>> def reference(x):
      ...     return -jnp.take_along_axis(jax.nn.log_softmax(x), labels[:, None], -1)[:, 0]
      >>> testing.check_custom_vjp(loss, (jnp.array([[0.5, -1.0], [2.0, 0.0]]),),
      ...                          reference=reference)
    """
    from jax import test_util

    if jit:
        loss = jax.jit(loss)
        reference = None if reference is None else jax.jit(reference)
    with jax.enable_x64(True):
        args64 = tuple(_as_float64_arg(a) for a in args)
        test_util.check_grads(loss, args64, order=order, modes=tuple(modes), atol=atol,
                              rtol=rtol, eps=eps)
        if reference is None:
            return
        argnums = tuple(range(len(args64)))

        def summed(f):
            return lambda *a: jnp.sum(jnp.asarray(f(*a)).astype(jnp.float64))
        got = jax.grad(summed(loss), argnums=argnums)(*args64)
        want = jax.grad(summed(reference), argnums=argnums)(*args64)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(w), rtol=reference_rtol, atol=reference_atol,
                err_msg=f"gradient w.r.t. argument {i} differs from the reference's")


# --------------------------------------------------------------------------------------
# Error measures.
# --------------------------------------------------------------------------------------


@_quiet
def ulp_error(actual: Any, reference: Any, dtype: Any, scale: Any = 1.0) -> np.ndarray:
    r"""Element-wise error in units of ``dtype``'s epsilon, relative to ``scale``.

    .. math::
        e = \frac{|a - r|}{\epsilon_\mathrm{dtype} \cdot \mathrm{scale}}

    ``scale`` carries the conditioning: ``1 + |loss| + |label logit|`` for a loss (an
    input rounded to the dtype moves the loss by that much), ``1 + |g|`` for a gradient.
    Equal values (including equal infinities) give 0; a NaN or infinite ``actual``
    where ``reference`` is finite, or the wrong infinity, gives ``inf``; where
    ``reference`` is NaN (undefined), the error is NaN.  A reference beyond ``dtype``'s
    range counts as the infinity it rounds to.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> one_ulp = float(np.finfo(np.float32).eps)
      >>> print(testing.ulp_error(np.array([1.0 + one_ulp, np.nan, np.inf]),
      ...                         np.array([1.0, 1.0, np.inf]), np.float32).tolist())
      [1.0, inf, 0.0]
    """
    a = _f64(actual)
    r = _round_overflow(_f64(reference), dtype)
    eps = float(jnp.finfo(dtype).eps)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - r) / (eps * _f64(scale))
    err = np.where(a == r, 0.0, err)
    err = np.where(~np.isfinite(a) & (a != r), np.inf, err)
    return np.where(np.isnan(r), np.nan, err)


def _round_overflow(r: np.ndarray, dtype: Any) -> np.ndarray:
    """``r`` with values that round to infinity in ``dtype`` replaced by that infinity."""
    big = float(jnp.finfo(dtype).max)
    ulp_max = big - float(np.nextafter(np.asarray(big, dtype), np.asarray(0, dtype)))
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(r) >= big + ulp_max / 2, np.sign(r) * np.inf, r)


# --------------------------------------------------------------------------------------
# The adversarial numerics table.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdversarialCase:
    """One row of the adversarial table.

    Attributes:
      name: What the case stresses.
      function: The lossax function's public name (its oracle has the same name here).
      dtype: The logits' dtype name.
      args: Positional inputs as float64/int NumPy arrays; the first (logits, scores or
        probabilities) is rounded to ``dtype``, float labels too.
      kwargs: Keyword options passed to lossax and the oracle.
      optax: The optax function with the same semantics (``None`` if there is none or
        the options are lossax-only).
    """

    name: str
    function: str
    dtype: str
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    optax: str | None = None


def _row(values, cls=None):
    return np.array(values, dtype=cls or np.float64)


def adversarial_cases() -> list[AdversarialCase]:
    """The adversarial inputs: extreme logits per dtype, ``-inf`` rows, huge V in float16,
    fractional labels, labels of exactly 0 and 1 on probabilities.

    Cases for functions that this version of lossax does not export are left out.
    """
    import lossax

    big = {"float16": 1e4, "bfloat16": 1e4, "float32": 1e30}
    cases: list[AdversarialCase] = []
    int_ce = "softmax_cross_entropy_with_integer_labels"
    dense_ce = "softmax_cross_entropy"
    # Moderately large float32 logits, with ties and near-ties at the top.
    for b in (1e2, 1e4):
        x = _row([[b, b, b - 1, 0.0, -b], [b, -b, b / 2, 1.0, 0.0], [-b, b - 0.5, b, 0.0, 2.0]])
        cases.append(AdversarialCase(f"logits ±{b:g}, near-ties", int_ce, "float32",
                                     (x, np.array([0, 1, 1])), optax=int_ce))
    for dt, b in big.items():
        x = _row([[b, -b, 0.0, 1.0, -1.0],
                  [b, -b, 0.0, 1.0, -1.0],
                  [b, b, -b, -b, 0.0],
                  [-b, -b, -b, -b, -b],
                  [b, b - b / 64, 0.0, -b, 1.0]])
        y = np.array([0, 1, 0, 2, 1])
        cases.append(AdversarialCase(f"logits ±{b:g}", int_ce, dt, (x, y), optax=int_ce))
        t = np.zeros_like(x)
        t[np.arange(5), y] = 1.0
        cases.append(AdversarialCase(f"logits ±{b:g}, one-hot labels", dense_ce, dt, (x, t),
                                     optax=dense_ce))
        cases.append(AdversarialCase(
            f"logits ±{b:g}, label_smoothing=0.1, z_loss=1e-4", int_ce, dt, (x, y),
            {"label_smoothing": 0.1, "z_loss": 1e-4}))
        cases.append(AdversarialCase(f"logits ±{b:g}, soft_cap=30", int_ce, dt, (x, y),
                                     {"soft_cap": 30.0}))
    ninf = -np.inf
    x = _row([[0.0, ninf, 1.0, ninf], [ninf, ninf, 3.0, ninf], [2.0, ninf, ninf, ninf],
              [ninf, 5.0, ninf, ninf], [1e30, ninf, -1e30, 0.0]])
    y = np.array([0, 2, 0, 1, 2])
    cases.append(AdversarialCase("-inf logits (label finite)", int_ce, "float32", (x, y),
                                 optax=int_ce))
    cases.append(AdversarialCase("all -inf but the label's logit", int_ce, "float32",
                                 (x[1:4], y[1:4]), optax=int_ce))
    cases.append(AdversarialCase("label on a -inf logit (loss +inf)", int_ce, "float32",
                                 (x[:3], np.array([1, 0, 3])), optax=int_ce))
    t = np.zeros_like(x)
    t[np.arange(5), y] = 1.0
    cases.append(AdversarialCase("-inf logits, one-hot labels (0 · -inf)", dense_ce,
                                 "float32", (x, t), optax=dense_ce))
    soft = _row([[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                 [0.0, 1.0, 0.0, 0.0], [0.25, 0.0, 0.25, 0.5]])
    cases.append(AdversarialCase("-inf logits, fractional labels", dense_ce, "float32",
                                 (x, soft), optax=dense_ce))
    xp = _row([[np.inf, 0.0, -1.0], [np.inf, np.inf, 0.0], [0.0, np.inf, 1.0]])
    cases.append(AdversarialCase("+inf logit on the label (limit 0 or log k)", int_ce,
                                 "float32", (xp, np.array([0, 1, 1])), optax=int_ce))
    for dt in ("float16", "bfloat16", "float32"):
        r = np.random.default_rng(0)
        x = r.standard_normal((4, 7)) * 4
        soft = r.dirichlet(np.ones(7) * 0.5, size=4)
        cases.append(AdversarialCase("fractional labels", dense_ce, dt, (x, soft),
                                     optax=dense_ce))
        cases.append(AdversarialCase("fractional labels, poly loss", "poly_loss_cross_entropy",
                                     dt, (x, soft), optax="poly_loss_cross_entropy"))
    # Huge V in float16: the row sum of exp(x - max) reaches V > 65504, which overflows
    # float16 if it is accumulated in the input dtype.
    v = 131072
    r = np.random.default_rng(1)
    x = np.concatenate([np.zeros((1, v)), r.uniform(-0.5, 0.5, (1, v))])
    y = np.array([3, v - 1])
    cases.append(AdversarialCase(f"V = {v} (sum of exp > float16 max)", int_ce, "float16",
                                 (x, y), optax=int_ce))
    cases.append(AdversarialCase(f"V = {v}, uniform labels", dense_ce, "float16",
                                 (x, np.full((2, v), 1.0 / v)), optax=dense_ce))
    n = 65536
    x = r.uniform(-1.0, 1.0, (n, 4))
    cases.append(AdversarialCase(f"mean over {n} rows (sum > float16 max)", int_ce,
                                 "float16", (x, r.integers(0, 4, n)), {"reduction": "mean"}))
    # Binary losses.
    for dt, b in big.items():
        x = _row([b, -b, b, -b, 0.0, 1.0, b / 2])
        yb = _row([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5])
        for fn, kw in (("sigmoid_binary_cross_entropy", {}),
                       ("sigmoid_focal_loss", {"gamma": 2.0}),
                       ("sigmoid_focal_loss", {"alpha": 0.25, "gamma": 0.5})):
            opts = ", ".join(f"{k}={val}" for k, val in kw.items())
            cases.append(AdversarialCase(f"logits ±{b:g}, labels 0/1/0.5{', ' if kw else ''}"
                                         f"{opts}", fn, dt, (x, yb), kw, optax=fn))
        for fn in ("hinge_loss", "squared_hinge_loss", "perceptron_loss"):
            cases.append(AdversarialCase(f"outputs ±{b:g}", fn, dt,
                                         (x, _row([1, -1, -1, 1, 1, -1, 1])),
                                         optax=fn if hasattr(_optax_losses(), fn) else None))
    xi = _row([np.inf, -np.inf, np.inf, -np.inf, 0.0])
    yi = _row([1.0, 0.0, 0.0, 1.0, 0.5])
    cases.append(AdversarialCase("logits ±inf, labels 0/1", "sigmoid_binary_cross_entropy",
                                 "float32", (xi, yi), optax="sigmoid_binary_cross_entropy"))
    for dt in ("float16", "bfloat16", "float32"):
        eps = float(jnp.finfo(dt).eps)
        p = _row([0.0, 1.0, 0.0, 1.0, 0.5, eps, 1 - eps / 2, 1e-4])
        yp = _row([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3])
        cases.append(AdversarialCase("probabilities 0/1 and near, labels 0/1/0.3",
                                     "binary_cross_entropy", dt, (p, yp), {"eps": eps}))
        pr = _row([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [eps, 1 - eps, 0.0], [0.2, 0.3, 0.5]])
        lr = _row([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]])
        cases.append(AdversarialCase("probabilities 0/1 and near, fractional labels",
                                     "categorical_cross_entropy", dt, (pr, lr), {"eps": eps}))
    for dt, b in big.items():
        s = _row([[b, -b, 0.0, 1.0], [-b, -b, b, b], [0.0, 0.5, 1.0, 1.5]])
        lab = np.array([0, 2, 1])
        for fn in ("multiclass_hinge_loss", "multiclass_squared_hinge_loss",
                   "multiclass_perceptron_loss"):
            cases.append(AdversarialCase(f"scores ±{b:g}", fn, dt, (s, lab),
                                         optax=fn if hasattr(_optax_losses(), fn) else None))
    # Fused linear + softmax cross-entropy: logits x @ W of the same extremes.
    for dt, b in big.items():
        x = _row([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
        w = _row([[b, -b, 0.0, 1.0, 0.0], [b, b, -b, 0.0, 2.0]])
        cases.append(AdversarialCase(f"logits x @ W up to ±{2 * b:g}",
                                     "linear_softmax_cross_entropy", dt,
                                     (x, np.array([0, 1, 2, 4]), w)))
    public = set(getattr(lossax, "__all__", ()))
    return [c for c in cases if c.function in public]


def _optax_losses():
    try:
        import optax
    except ImportError:  # pragma: no cover
        return None
    return optax.losses


def _label_logit(case: AdversarialCase, ref_args: list) -> np.ndarray:
    """Per output element: the magnitude of the logits the label selects."""
    x, labels = ref_args[0], case.args[1]
    with np.errstate(invalid="ignore"):
        if case.function == "linear_softmax_cross_entropy":
            x = x @ ref_args[2]  # the logits
        if case.function in ("softmax_cross_entropy", "poly_loss_cross_entropy"):
            t = np.broadcast_to(_f64(labels), x.shape)
            return np.sum(_xlogy_safe(t, np.abs(x)), axis=-1)
        if np.issubdtype(np.asarray(labels).dtype, np.integer) and x.ndim > np.ndim(labels):
            idx = np.clip(labels, 0, x.shape[-1] - 1)[..., None]
            return np.abs(np.take_along_axis(x, idx, -1)[..., 0])
        if case.function in ("binary_cross_entropy", "categorical_cross_entropy"):
            return np.float64(0.0)  # probabilities: no logit to round
        return np.abs(x)


def _grad_scale(case: AdversarialCase, ref_args: list, gref: np.ndarray) -> np.ndarray:
    """``1 + |g|``; for the fused loss ``1 + |dL/dz| @ |W|^T``, the conditioning of the
    matmul that maps the logits' gradient to that of ``x``."""
    if case.function == "linear_softmax_cross_entropy":
        x, labels, w = ref_args[:3]
        _, gz = softmax_cross_entropy_with_integer_labels(x @ w, labels, return_grad=True,
                                                          **case.kwargs)
        return 1 + np.abs(gz) @ np.abs(w).T
    return 1 + np.where(np.isfinite(gref), np.abs(gref), 0)


def _reduced(case: AdversarialCase) -> bool:
    return case.kwargs.get("reduction", "none") != "none"


def _evaluate(fn, args):
    """``(output, vjp with ones w.r.t. the first argument)`` as float64 NumPy arrays."""
    def first(x0):
        return fn(x0, *args[1:])
    out, vjp = jax.vjp(first, args[0])
    (grad,) = vjp(jnp.ones_like(out))
    return _f64(out), _f64(grad)


def _measure(case: AdversarialCase, out, grad, ref, gref, ref_args, dtype):
    if out is None:
        return None
    scale = 1 + np.abs(ref) + _label_logit(case, ref_args) if not _reduced(case) else (
        1 + np.abs(ref))
    loss_err = ulp_error(out, ref, dtype, np.where(np.isfinite(scale), scale, 1.0))
    grad_err = ulp_error(grad, gref, dtype, _grad_scale(case, ref_args, gref))
    ref_ok = np.isfinite(_round_overflow(ref, dtype))
    gref_ok = np.isfinite(_round_overflow(gref, dtype))
    finite = bool(np.all(np.isfinite(out)[ref_ok]) and np.all(np.isfinite(grad)[gref_ok]))
    return {"loss_ulp": _nanmax(loss_err), "grad_ulp": _nanmax(grad_err), "finite": finite}


def _nanmax(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    a = a[~np.isnan(a)]
    return float(np.max(a)) if a.size else float("nan")


def evaluate_case(case: AdversarialCase, *, with_optax: bool = True) -> dict[str, Any]:
    """Runs one case through lossax, optax (where comparable) and the float64 oracle.

    Returns a dict with ``case``, ``function``, ``dtype``, ``reference_finite`` (all,
    some or none of the oracle's losses are finite), ``lossax`` and ``optax`` (each
    ``None`` or a dict of ``loss_ulp``, ``grad_ulp`` — the largest :func:`ulp_error`
    over the outputs, and over the gradient's elements — and ``finite``: finite wherever
    the oracle is).  ``with_optax=False`` skips optax.
    """
    import lossax

    dtype = jnp.dtype(case.dtype)
    args = []
    for a in case.args:
        a = np.asarray(a)
        args.append(jnp.asarray(a).astype(dtype) if np.issubdtype(a.dtype, np.floating)
                    else jnp.asarray(a.astype(np.int32)))
    # The oracle sees exactly the rounded inputs.
    ref_args = [_f64(a) if jnp.issubdtype(a.dtype, jnp.floating) else np.asarray(a)
                for a in args]
    oracle = globals()[case.function]
    ref, gref = oracle(*ref_args, **case.kwargs, return_grad=True)
    fn = getattr(lossax, case.function, None)
    if fn is None:  # not (yet) re-exported at the top level
        from lossax import fused
        fn = getattr(fused, case.function)
    fn = functools.partial(fn, **case.kwargs)
    out, grad = _evaluate(jax.jit(fn), args)
    row = {"case": case.name, "function": case.function, "dtype": case.dtype}
    finite = np.isfinite(_round_overflow(ref, dtype))
    row["reference_finite"] = "all" if finite.all() else ("none" if not finite.any() else "some")
    row["lossax"] = _measure(case, out, grad, ref, gref, ref_args, dtype)
    row["optax"] = None
    losses = _optax_losses()
    if with_optax and case.optax is not None and losses is not None:
        ofn = getattr(losses, case.optax)
        if _reduced(case):
            ofn = lambda *a, _f=ofn: jnp.mean(_f(*a))
        with _relaxed_promotion():
            oout, ograd = _evaluate(jax.jit(functools.partial(ofn, **case.kwargs)), args)
        row["optax"] = _measure(case, oout, ograd, ref, gref, ref_args, dtype)
    return row


@contextlib.contextmanager
def _relaxed_promotion():
    """optax relies on standard promotion; run it under the default rules."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def adversarial_table(cases: Sequence[AdversarialCase] | None = None) -> list[dict[str, Any]]:
    """Evaluates every adversarial case (see :func:`evaluate_case`); one dict per row."""
    return [evaluate_case(c) for c in (adversarial_cases() if cases is None else cases)]


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "**inf**"
    return f"{v:.1f}" if v < 1e4 else f"{v:.1e}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`adversarial_table` as a markdown table."""
    head = ("| function | case | dtype | ref finite | lossax loss | lossax grad | lossax "
            "finite | optax loss | optax grad | optax finite |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [f"`{r['function']}`", r["case"], r["dtype"], r["reference_finite"]]
        for who in ("lossax", "optax"):
            m = r[who]
            if m is None:
                cells += ["n/a"] * 3
            else:
                cells += [_fmt(m["loss_ulp"]), _fmt(m["grad_ulp"]),
                          "yes" if m["finite"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TABLE_PREAMBLE = """\
# Adversarial numerics

Each case feeds extreme inputs to lossax and to the optax function with the same
semantics, and compares both with a float64 NumPy oracle (`lossax.testing`) evaluated on
exactly the same (rounded) inputs.  Errors are in units of the output dtype's epsilon
(float16 2^-10, bfloat16 2^-7, float32 2^-23):

* loss: max over outputs of |loss - ref| / (eps · (1 + |ref| + |label logit|)), the
  scale being the conditioning (rounding a logit of size L to the dtype moves the loss
  by up to eps·L);
* gradient: max over elements of |g - g_ref| / (eps · (1 + |g_ref|)), the gradient of
  the summed loss with respect to the logits (scores, probabilities); for the fused
  linear loss, the gradient with respect to x relative to 1 + |dL/dz| · |W|ᵀ;
* finite: the output and gradient are finite wherever the reference's are.

"—" means the reference is undefined (NaN) everywhere, "n/a" that optax has no such
function or option.  Regenerate with
`python -W ignore::RuntimeWarning -m lossax.testing adversarial-table > docs/adversarial.md`.

"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lossax.testing adversarial-table`` prints the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv != ["adversarial-table"]:
        print("usage: python -m lossax.testing adversarial-table", file=sys.stderr)
        return 2
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    print(_TABLE_PREAMBLE + format_table(adversarial_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
