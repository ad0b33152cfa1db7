"""float64 NumPy oracles: one per lossax loss, with the same name and arguments.

Each is written from the loss's formula with NumPy in float64, independently of the JAX
kernels, and with ``return_grad=True`` also gives the analytic gradient of the summed
output with respect to the first argument.  Limits are taken where the formula alone is
undefined but the loss is not: a target of 0 on a class whose logit is ``-inf``
contributes 0, and logits of ``+inf`` are treated as equal, infinitely large values (the
softmax is uniform over them).  The fused :func:`linear_softmax_cross_entropy` is the
integer-label oracle of the float64 logits ``x @ W + b``: one cross-entropy oracle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = [
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "hinge_loss",
    "linear_softmax_cross_entropy",
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
    v = math.prod(a.shape[len(batch):])  # not -1: an empty batch has rows of V classes
    return a.reshape((*a.shape[: len(batch)], v))


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
        \ell_i = w_{y_i} \big((1-a)(\mathrm{lse}_i - c(x_{i y_i})) + z\,\mathrm{lse}_i^2\big)
        + \frac{a}{V_i} \sum_j w_j (\mathrm{lse}_i - c(x_{ij}))

    over the ``V_i`` unmasked classes ``j`` of row ``i``, with ``w`` the
    ``class_weights`` (1 without them): PyTorch's ``cross_entropy(weight=,
    label_smoothing=)``, in which the smoothing term weighs each class by its own weight.
    ``"mean"`` divides by ``sum_i w_{y_i}`` over the counted rows.  Rows whose label is
    ``ignore_index`` give 0 and are not counted; a label outside ``[0, num_classes)``
    gives NaN (loss and gradient).  The gradient with respect to ``c(x_i)`` is
    ``w_{y_i} (((1-a) + 2 z lse_i) p_i - (1-a) onehot(y_i)) + a (sum_j t_ij p_i - t_i)``
    with ``t_ij = w_j / V_i``.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
      >>> print(testing.softmax_cross_entropy_with_integer_labels(  # log 4; row 2 ignored
      ...     logits, np.array([1, -100]), ignore_index=-100, reduction="mean").round(4))
      1.3863
      >>> # w_0 (1 - a) log 2 + a/2 (w_0 + w_1) log 2 = (1/2 + 1) log 2
      >>> print(testing.softmax_cross_entropy_with_integer_labels(
      ...     np.array([[0.0, 0.0]]), np.array([0]), label_smoothing=0.5,
      ...     class_weights=np.array([1.0, 3.0])).round(4))
      [1.0397]
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
    w = np.ones(v) if class_weights is None else _f64(class_weights)
    w_y = w[idx]
    a = label_smoothing
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
        # The label's term, weighted by the label's class weight.
        loss = (1 - a) * nll_y
        grad = (1 - a) * (p - onehot)
        if z_loss:
            loss = loss + z_loss * np.square(lse)
            grad = grad + 2 * z_loss * lse[..., None] * p
        loss = w_y * loss
        grad = w_y[..., None] * grad
        if a:
            # The smoothing term: target t_j = w_j / V_i on each unmasked class.
            count = np.sum(cls_ok, axis=-1, keepdims=True)
            t = np.where(cls_ok, w / np.maximum(count, 1), 0.0)
            loss = loss + a * np.sum(_xlogy_safe(t, nll), axis=-1)
            grad = grad + a * (np.sum(t, axis=-1, keepdims=True) * p - t)
    grad = grad * dcap
    counted = row_ok & np.any(cls_ok, axis=-1) & ~ignored
    weight = np.where(counted, w_y, 0.0)
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
