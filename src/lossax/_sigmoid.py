"""Binary cross-entropy from logits, sigmoid focal loss, and cross-entropy on
probabilities (Keras's ``from_logits=False``): each one custom-VJP kernel.

The logit kernels are element-wise closed forms: ``softplus(±x) = relu(±x) +
log1p(exp(-|x|))`` (never ``log(sigmoid(x))``), with hand-written gradients, so nothing
but the inputs is kept for the backward pass.  Every forward expression is select-free
and shares nothing with its backward pass, so that XLA:CPU fuses a following sum of
the loss into one pass (see :class:`Consts`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _numerics as nx

# --------------------------------------------------------------------------------------
# Element-wise numerics.
# --------------------------------------------------------------------------------------

# log1p(e) / e on [0, 1] as a degree-9 polynomial in e: a weighted Chebyshev
# least-squares fit in float64 (4000 Chebyshev nodes, relative error 5e-9), rounded
# to float32.  Evaluated in float32 it is within 1.6 ulp of log1p over [2^-126, 1]
# (XLA:CPU's own log1p: 2.5 ulp) and 3x faster: with it the float32 binary
# cross-entropy costs one exp and ten multiply-adds per element (measured on 2^22
# elements, jax 0.10, 2 cores: 3.3 ms instead of 9.8 ms with jnp.log1p).
_LOG1P_COEFFS = (
    1.0, -0.49999889731407166, 0.33329665660858154, -0.24951167404651642,
    0.19661018252372742, -0.15263274312019348, 0.10532950609922409,
    -0.05626952648162842, 0.019487686455249786, -0.0031639994122087955,
)


class Consts(NamedTuple):
    """The scalar constants of the element-wise expressions.

    XLA:CPU (jax 0.10) fuses a loss that is summed afterwards, with its whole
    element-wise expression, into one YNNPACK fusion; anything that expression shares
    with the backward pass -- an input read by both (even through a bfloat16
    convert), a common subexpression, or merely an equal scalar constant broadcast to
    the input's shape -- is then written out in full first (measured: one temporary
    of the input's size per shared constant, 14 for the focal loss under
    ``value_and_grad``).  So every custom-VJP forward rule reads private views of its
    inputs and takes its constants from ``consts(dtype, tag)``: values passed through an
    optimization barrier, which XLA cannot merge with the backward's constants.  The
    undifferentiated primal, with no backward pass beside it, uses plain constants,
    which XLA folds.
    """

    zero: Any
    one: Any
    big: Any  # the largest finite float
    coeffs: tuple  # _LOG1P_COEFFS[1:]


def consts(cdt: Any, tag: int | None = None) -> Consts:
    """Python constants (``tag=None``), or opaque ones (see :class:`Consts`)."""
    info = jnp.finfo(cdt)
    vals = (0.0, 1.0, float(info.max), *_LOG1P_COEFFS[1:])
    if tag is not None:
        arr = nx.private_view(jnp.asarray(vals, cdt), tag=tag)
        vals = tuple(arr[i] for i in range(len(vals)))
    return Consts(*vals[:3], tuple(vals[3:]))


def log1p_unit(e: jax.Array, k: Consts | None = None) -> jax.Array:
    """``log1p(e)`` for ``e`` in ``[0, 1]``; float64 uses ``jnp.log1p``."""
    if e.dtype == jnp.float64:
        return jnp.log1p(e)
    c = (k or consts(e.dtype)).coeffs
    acc = e * c[-1] + c[-2]
    for ci in c[-3::-1]:
        acc = acc * e + ci
    return e + e * (e * acc)  # e (1 + e P(e)) = log1p(e)


def softplus_pair(xc: jax.Array, k: Consts | None = None) -> tuple[jax.Array, jax.Array]:
    """``(softplus(x), softplus(-x))`` as ``relu(±x) + log1p(exp(-|x|))``.

    Exact at ``±inf`` (``inf`` and 0), never ``log(sigmoid(x))``.
    """
    k = k or consts(xc.dtype)
    lg = log1p_unit(jnp.exp(-jnp.abs(xc)), k)
    return jnp.maximum(xc, k.zero) + lg, jnp.maximum(-xc, k.zero) + lg


def sigmoid_pair(xc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sigmoid(x), sigmoid(-x))`` from one ``u = exp(-x)``: ``1 / (1 + u)`` and
    ``u / (1 + u)``, each to full relative precision in its tail (neither is formed as
    ``1 - sigmoid``), exact at ``±inf`` (``u`` is capped at the largest float so that
    ``u / (1 + u)`` is 1, not ``inf / inf``)."""
    u = jnp.minimum(jnp.exp(-xc), jnp.finfo(xc.dtype).max)
    d = 1 + u
    return 1 / d, u / d


def weighted_softplus_sum(a: jax.Array, xc: jax.Array, b: jax.Array,
                          k: Consts | None = None) -> jax.Array:
    """``a softplus(x) + b softplus(-x)`` for weights ``a, b >= 0``, with ``0 * inf = 0``.

    Select-free, so that XLA:CPU fuses it into a following sum (a select, a clamp or a
    compare would each make it write the whole array first): the softplus values are
    capped at the largest float ``F``, so the weighted sum ``v`` is finite, and one
    term, exactly 0 for finite ``x``, restores ``+inf`` where an infinite logit meets
    a nonzero weight: ``min(relu(|x| - F), min(v F, F) F)`` is ``inf`` there (``v`` is
    then the weight times ``F``) and 0 where the weight is 0.
    """
    k = k or consts(xc.dtype)
    big, zero = k.big, k.zero
    ax = jnp.abs(xc)
    lg = log1p_unit(jnp.exp(-ax), k)
    v = (a * jnp.minimum(jnp.maximum(xc, zero) + lg, big)
         + b * jnp.minimum(jnp.maximum(-xc, zero) + lg, big))
    at_inf = jnp.maximum(ax - big, zero)  # inf at x = ±inf, else 0
    # 0 for every finite logit: no derivative to carry.
    return v + lax.stop_gradient(jnp.minimum(at_inf, jnp.minimum(v * big, big) * big))


def mul0(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` with ``0 * inf = 0`` (a 0 label weight on an infinite softplus).

    Written so that its autodiff derivatives are the true ones: d/da = b wherever ``b``
    is finite (the forward rules are differentiated under nested differentiation).
    """
    big = jnp.finfo(b.dtype).max
    return a * jnp.where(a == 0, jnp.clip(b, -big, big), b)


# --------------------------------------------------------------------------------------
# Validation shared by the element-wise losses (also used by _hinge).
# --------------------------------------------------------------------------------------


def as_real_array(x: Any, name: str) -> jax.Array:
    """A jax array of any real dtype (bool, integer or floating point)."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            x = x.astype(np.float32)
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_) or jnp.issubdtype(
        x.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name} must be a real numeric array; got {nx.describe(x)}.")
    return jnp.asarray(x)


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


def weight_operand(value: Any, name: str, shape: tuple[int, ...], cdt: Any, *,
                   lo: float | None = None, hi: float | None = None) -> jax.Array:
    """An array weight (``pos_weight``, ``alpha``, ``gamma``) broadcast to ``shape``.

    Concrete values are range-checked here; traced values cannot be (documented).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a real array; got {value!r}.")
    w = as_real_array(value, name)
    if not jnp.issubdtype(w.dtype, jnp.inexact):
        w = w.astype(cdt)
    if not isinstance(w, jax.core.Tracer):
        v = np.asarray(w, np.float64)
        bad = ~np.isfinite(v)
        if lo is not None:
            bad |= v < lo
        if hi is not None:
            bad |= v > hi
        if np.any(bad):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ValueError(
                f"{name} must be finite and in [{lo_s}, {hi_s}]; got {value!r}."
            )
    try:
        full = tuple(jnp.broadcast_shapes(w.shape, shape))
    except ValueError:
        full = None
    if full != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(w.shape)}; expected a shape that broadcasts to the "
            f"loss shape {tuple(shape)}."
        )
    return w  # broadcast inside the kernels (after their private views): see Consts


def full(w: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``w`` broadcast to ``shape`` (explicitly: lossax does not rely on rank promotion)."""
    return jnp.broadcast_to(w, shape)


def sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The cotangent of ``broadcast_to(w, g.shape)`` for ``w`` of ``shape``."""
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _static_scalar(value: Any, name: str) -> float | None:
    """``float(value)`` if it is a concrete scalar, else ``None`` (an array operand)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a real array; got {value!r}.")
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    arr = np.asarray(value)
    if arr.ndim == 0 and (jnp.issubdtype(arr.dtype, jnp.integer)
                          or jnp.issubdtype(arr.dtype, jnp.floating)):
        return float(arr)
    return None


# --------------------------------------------------------------------------------------
# Binary cross-entropy from logits.
# --------------------------------------------------------------------------------------


class _BceCfg(NamedTuple):
    label_smoothing: float = 0.0
    pos_weight: float | None = None  # a static scalar pos_weight (an array is an operand)


def _pos_weight(cfg: _BceCfg, pw: jax.Array | None, cdt: Any) -> jax.Array | float | None:
    return pw.astype(cdt) if pw is not None else cfg.pos_weight


def _smoothed(cfg: Any, y: jax.Array, cdt: Any) -> jax.Array:
    # Keras's binary label smoothing: y' = y (1 - a) + a / 2.
    yc = y.astype(cdt)
    a = cfg.label_smoothing
    return yc * (1 - a) + 0.5 * a if a else yc


def opaque(values: tuple[float, ...], dtype: Any, tag: int) -> list[jax.Array]:
    """Scalar constants that XLA cannot merge with equal ones (see :class:`Consts`)."""
    arr = nx.private_view(jnp.asarray(values, dtype), tag=tag)
    return [arr[i] for i in range(len(values))]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bce(cfg: _BceCfg, x, y, pw):
    # Not differentiated: no backward pass to keep apart from (see Consts), so plain
    # constants, which XLA folds (measured 2^22 fp32: 12 ms instead of 15 ms).
    return _bce_loss(cfg, x, y, pw, hide=False)


def _bce_fwd(cfg: _BceCfg, x, y, pw):
    return _bce_loss(cfg, x, y, pw, hide=True), (x, y, pw)


def _bce_loss(cfg: _BceCfg, x, y, pw, hide: bool):
    cdt = nx.compute_dtype(x.dtype)
    a = cfg.label_smoothing
    w = 1.0 if cfg.pos_weight is None else cfg.pos_weight
    # Under differentiation: private views of the inputs and opaque constants (Consts).
    xv, yv, pwv = nx.private_view(x, y, pw, tag=11) if hide else (x, y, pw)
    k = consts(cdt, tag=12 if hide else None)
    keep, shift, w = opaque((1 - a, 0.5 * a, w), cdt, tag=13) if hide else (1 - a, 0.5 * a, w)
    xc = xv.astype(cdt)
    yc = yv.astype(cdt) * keep + shift if a else yv.astype(cdt)
    # (1 - y) softplus(x) + w y softplus(-x) = -[w y log s(x) + (1 - y) log s(-x)]:
    # softplus(x) - x y for w = 1, with 0 * inf = 0 at x = ±inf.
    if pwv is not None:
        b = full(pwv.astype(cdt), xc.shape) * yc
    else:
        b = yc if cfg.pos_weight is None else w * yc
    loss = weighted_softplus_sum(k.one - yc, xc, b, k)
    return loss.astype(x.dtype)


def _bce_bwd(cfg: _BceCfg, res, g):
    # d/dx = (1 - y) s(x) - w y s(-x) = s(x) - y (s(x) + w s(-x))   (s(x) - y for w = 1);
    # d/dy = (1 - a) (w softplus(-x) - softplus(x))   (= -(1 - a) x for w = 1);
    # d/dw = y softplus(-x).
    x, y, pw = res
    cdt = nx.compute_dtype(x.dtype)
    a = cfg.label_smoothing
    g = g.astype(cdt)
    xc = x.astype(cdt)
    ys = _smoothed(cfg, y, cdt)
    s_pos, s_neg = sigmoid_pair(xc)
    if pw is None and cfg.pos_weight is None:
        dx = g * ((1 - ys) * s_pos - ys * s_neg)  # = s(x) - y, exact in both tails
    else:
        w = full(pw.astype(cdt), xc.shape) if pw is not None else cfg.pos_weight
        dx = g * ((1 - ys) * s_pos - w * ys * s_neg)
    dx = dx.astype(x.dtype)
    dy = dpw = None
    # Gradients for float labels and an array pos_weight (left out by jit when unused).
    if jnp.issubdtype(y.dtype, jnp.inexact) or pw is not None:
        sp_pos, sp_neg = softplus_pair(xc)
    if jnp.issubdtype(y.dtype, jnp.inexact):
        if pw is None and cfg.pos_weight is None:
            dl = -xc
        else:
            wv = full(pw.astype(cdt) if pw is not None else jnp.asarray(cfg.pos_weight, cdt),
                      xc.shape)
            dl = mul0(wv, sp_neg) - sp_pos
        dy = (g * (1 - a) * dl).astype(y.dtype)
    if pw is not None:
        dpw = sum_to(g * mul0(ys, sp_neg), pw.shape).astype(pw.dtype)
    return dx, dy, dpw


_bce.defvjp(_bce_fwd, _bce_bwd)


def sigmoid_binary_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Element-wise sigmoid (binary) cross-entropy between logits and labels.

    A drop-in for :func:`optax.losses.sigmoid_binary_cross_entropy`; the defaults
    reproduce it, and the keyword-only options are PyTorch's ``pos_weight`` and Keras's
    ``label_smoothing``:

    .. math::
        \ell = -\left[w\,y \log\sigma(x) + (1 - y)\log(1 - \sigma(x))\right]
             = (1 - y)\,\mathrm{softplus}(x) + w\,y\,\mathrm{softplus}(-x),

    which is ``softplus(x) - x y`` for ``w = 1``, with gradient
    ``(1 - y)·sigmoid(x) - w·y·sigmoid(-x)`` (``sigmoid(x) - y`` for ``w = 1``).

    Args:
      logits: Floating-point logits ``[...]``.
      labels: Labels broadcastable with the logits: hard ``{0, 1}`` labels (bool,
        integer or float) or target probabilities in ``[0, 1]``.  Float labels are
        differentiable.
      pos_weight: Weight ``w`` of the positive term, broadcastable to the loss shape
        (e.g. one weight per class ``[num_classes]``), as in PyTorch's
        ``BCEWithLogitsLoss(pos_weight=)`` and TensorFlow's
        ``weighted_cross_entropy_with_logits``.  Differentiable.
      label_smoothing: ``a`` in ``[0, 1]``: labels become ``y (1 - a) + a / 2``
        (Keras's ``BinaryCrossentropy(label_smoothing=)``).

    Returns:
      The element-wise loss, of the broadcast shape of ``logits`` and ``labels``, in
      the logits' dtype.

    Raises:
      TypeError: non-floating logits, or non-numeric labels / ``pos_weight``.
      ValueError: shapes that do not broadcast, ``label_smoothing`` outside ``[0, 1]``,
        or a concrete ``pos_weight`` that is negative or not finite.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([0.0, 2.0, -jnp.inf])
      >>> labels = jnp.array([1.0, 0.0, 0.0])
      >>> # log 2; softplus(2) = 2 + log(1 + e^-2); 0 (optax gives nan for the last)
      >>> print(lossax.sigmoid_binary_cross_entropy(logits, labels).round(4))
      [0.6931 2.1269 0.    ]
      >>> print(lossax.sigmoid_binary_cross_entropy(  # 3 log 2
      ...     jnp.array(0.0), jnp.array(1.0), pos_weight=3.0).round(4))
      2.0794
      >>> print(lossax.sigmoid_binary_cross_entropy(  # y' = 0.9: softplus(2) - 2 * 0.9
      ...     jnp.array(2.0), jnp.array(1.0), label_smoothing=0.2).round(4))
      0.3269

    Note:
      Computed in float32 for float16/bfloat16 logits (float64 stays float64) as
      ``softplus(±x) = relu(±x) + log1p(exp(-|x|))``, never ``log(sigmoid(x))``; in
      float32 ``log1p`` on ``[0, 1]`` is a fitted polynomial (within 2 ulp).  Finite
      for logits of ``±1e38`` and ``±inf``: a hard label matching an infinite logit
      gives loss 0 and gradient 0 (optax returns NaN for the loss there), a mismatched
      one ``+inf``.  The gradient ``(1 - y) sigmoid(x) - w y sigmoid(-x)`` is exact
      to a few ulp in both tails.  A ``jax.custom_vjp`` that keeps only the
      inputs (no temporaries, also when the loss is summed: measured with
      ``memory_analysis()``); forward-mode ``jax.jvp``/``jacfwd`` is not available,
      reverse-over-reverse (``jax.hessian`` via ``jacrev``) is.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = as_real_array(labels, "labels")
    alpha = nx.check_float_option(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    shape = broadcast_shape(logits, "logits", labels, "labels")
    cdt = nx.compute_dtype(logits.dtype)
    pw = static_pw = None
    if pos_weight is not None:
        static_pw = _static_scalar(pos_weight, "pos_weight")
        if static_pw is None:
            pw = weight_operand(pos_weight, "pos_weight", shape, cdt, lo=0.0)
        elif not (np.isfinite(static_pw) and static_pw >= 0):
            raise ValueError(f"pos_weight must be finite and >= 0; got {pos_weight!r}.")
    x = jnp.broadcast_to(logits, shape)
    y = jnp.broadcast_to(labels, shape)
    return _bce(_BceCfg(label_smoothing=alpha, pos_weight=static_pw), x, y, pw)


# --------------------------------------------------------------------------------------
# Sigmoid focal loss.
# --------------------------------------------------------------------------------------


class _FocalCfg(NamedTuple):
    alpha: float | None  # static alpha; None: no weighting, or an operand
    gamma: float | None  # static gamma; None: an operand


def _focal_power(q: jax.Array, cfg: _FocalCfg, gamma: jax.Array | None,
                 hide_constant: bool = False) -> jax.Array:
    """``q ** gamma`` with ``0 ** 0 = 1``; an integer power for a small integer gamma."""
    if gamma is not None:
        return jnp.power(q, full(gamma.astype(q.dtype), q.shape))
    gm = cfg.gamma
    if gm == 0:
        return jnp.ones_like(q)
    if gm == int(gm) and gm <= 16:
        return lax.integer_pow(q, int(gm))  # gamma = 2: one multiply, exact
    if hide_constant:
        gm = opaque((gm,), q.dtype, tag=17)[0]
    return jnp.power(q, gm)


def _focal_alpha_t(cfg: _FocalCfg, alpha, yc, a, k: Consts | None = None):
    """``alpha_t = alpha y + (1 - alpha)(1 - y)``, or ``None`` without weighting."""
    one = (k or consts(yc.dtype)).one
    if alpha is not None:
        al = full(alpha.astype(yc.dtype), yc.shape)
        return al * yc + (one - al) * a
    if cfg.alpha is not None:
        al = cfg.alpha if k is None else opaque((cfg.alpha,), yc.dtype, tag=16)[0]
        return al * yc + (one - al) * a
    return None


def _focal_q(xc: jax.Array, yc: jax.Array, a: jax.Array, k: Consts | None = None):
    """``(q, s(x), s(-x))`` with ``q = 1 - p_t = (1 - y) s(x) + y s(-x)``.

    ``s(±x) = 1 / (1 + exp(∓x))``: no cancellation in either tail, exact at ``±inf``
    (``exp`` overflows to ``inf``, giving 0), and it fuses into a following sum on
    XLA:CPU (an ``exp(-|x|)`` form with a sign select did not).
    """
    one = (k or consts(xc.dtype)).one
    s_pos = one / (one + jnp.exp(-xc))
    s_neg = one / (one + jnp.exp(xc))
    return a * s_pos + yc * s_neg, s_pos, s_neg


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _focal(cfg: _FocalCfg, x, y, alpha, gamma):
    return _focal_loss(cfg, x, y, alpha, gamma, hide=False)  # see _bce


def _focal_fwd(cfg: _FocalCfg, x, y, alpha, gamma):
    return _focal_loss(cfg, x, y, alpha, gamma, hide=True), (x, y, alpha, gamma)


def _focal_loss(cfg: _FocalCfg, x, y, alpha, gamma, hide: bool):
    cdt = nx.compute_dtype(x.dtype)
    # Under differentiation: private views and opaque constants (Consts).
    xv, yv, av, gv = nx.private_view(x, y, alpha, gamma, tag=14) if hide else (
        x, y, alpha, gamma)
    k = consts(cdt, tag=15 if hide else None)
    xc, yc = xv.astype(cdt), yv.astype(cdt)
    a = k.one - yc
    q = _focal_q(xc, yc, a, k)[0]
    at = _focal_alpha_t(cfg, av, yc, a, k if hide else None)
    # alpha_t folded into the softplus weights: a 0 weight on an infinite softplus is 0.
    ce = weighted_softplus_sum(a, xc, yc, k) if at is None else weighted_softplus_sum(
        at * a, xc, at * yc, k)
    # (1 - p_t)^gamma = 0 only where q = 0, i.e. a hard label matching an (effectively)
    # infinite logit, where the cross-entropy is 0 too: never 0 * inf.
    loss = _focal_power(q, cfg, gv, hide_constant=hide) * ce
    return loss.astype(x.dtype)


def _focal_bwd(cfg: _FocalCfg, res, g):
    # L = a_t q^g ce with q = 1 - p_t, ce = (1 - y) softplus(x) + y softplus(-x):
    #   dL/dx = a_t q^g [(s(x) - y) + g (1 - 2y) rho ce],  rho = s(x) s(-x) / q in [0, 1];
    #   dL/dy = a_t q^g [-x + g (ce / q)(s(-x) - s(x))] + (2 alpha - 1) q^g ce;
    #   dL/dalpha = (2y - 1) q^g ce;  dL/dgamma = a_t q^g ce log q.
    # rho and ce / q are written without q^(g-1), which is infinite at q = 0 for g < 1.
    # q = 0 only for a hard label matching an (effectively) infinite logit, where ce = 0
    # too, so the value taken there for rho and ce / q does not matter.
    x, y, alpha, gamma = res
    cdt = nx.compute_dtype(x.dtype)
    big = float(jnp.finfo(cdt).max)
    tiny = float(jnp.finfo(cdt).tiny)
    g = g.astype(cdt)
    xc, yc = x.astype(cdt), y.astype(cdt)
    a = 1 - yc
    q, s_pos, s_neg = _focal_q(xc, yc, a)
    ce = jnp.minimum(weighted_softplus_sum(a, xc, yc), big)  # finite: a factor below
    w = _focal_power(q, cfg, gamma)
    gm = cfg.gamma if gamma is None else full(gamma.astype(cdt), xc.shape)
    at = _focal_alpha_t(cfg, alpha, yc, a)
    gw = g * w if at is None else g * at * w
    q_safe = jnp.maximum(q, tiny)
    dce = a * s_pos - yc * s_neg  # s(x) - y
    if gamma is None and not gm:
        dx = gw * dce
    else:
        rho = s_pos * s_neg / q_safe
        dx = gw * (dce + gm * (1 - 2 * yc) * rho * ce)
    dx = dx.astype(x.dtype)
    dy = dalpha = dgamma = None
    if jnp.issubdtype(y.dtype, jnp.inexact):
        kappa = ce / q_safe
        dy = gw * (-jnp.clip(xc, -big, big) + gm * kappa * (s_neg - s_pos))
        if alpha is not None or cfg.alpha is not None:
            al = cfg.alpha if alpha is None else full(alpha.astype(cdt), xc.shape)
            dy = dy + g * (2 * al - 1) * w * ce
        dy = dy.astype(y.dtype)
    if alpha is not None:
        dalpha = sum_to(g * (2 * yc - 1) * w * ce, alpha.shape).astype(alpha.dtype)
    if gamma is not None:
        logq = jnp.log(q_safe)
        dgamma = sum_to(gw * ce * logq, gamma.shape).astype(gamma.dtype)
    return dx, dy, dalpha, dgamma


_focal.defvjp(_focal_fwd, _focal_bwd)


def sigmoid_focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    alpha: jax.typing.ArrayLike | None = None,
    gamma: jax.typing.ArrayLike = 2.0,
) -> jax.Array:
    r"""Sigmoid focal loss (Lin et al., 2017), element-wise; same as optax's.

    A drop-in for :func:`optax.losses.sigmoid_focal_loss`:

    .. math::
        \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(x, y), \qquad
        1 - p_t = (1 - y)\,\sigma(x) + y\,\sigma(-x), \qquad
        \alpha_t = \alpha y + (1 - \alpha)(1 - y),

    with :math:`\alpha_t = 1` when ``alpha`` is ``None``.

    Args:
      logits: Floating-point logits ``[...]``.
      labels: Labels broadcastable with the logits: ``{0, 1}`` or probabilities in
        ``[0, 1]``.  Float labels are differentiable.
      alpha: ``None`` (no weighting) or the weight of the positive class in ``[0, 1]``:
        a number or an array broadcastable to the loss shape (differentiable).
      gamma: The focusing exponent ``>= 0``: a number (an integer one uses exact integer
        powers) or an array broadcastable to the loss shape (differentiable).

    Returns:
      The element-wise loss, of the broadcast shape of ``logits`` and ``labels``, in
      the logits' dtype.

    Raises:
      TypeError: non-floating logits or non-numeric labels, ``alpha`` or ``gamma``.
      ValueError: shapes that do not broadcast, a concrete ``gamma < 0`` or an
        ``alpha`` outside ``[0, 1]``.  Traced values cannot be checked.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> # p = 0.5: (1 - 0.5)^2 log 2 = 0.1733; with alpha = 0.25: 0.0433
      >>> print(lossax.sigmoid_focal_loss(jnp.array(0.0), jnp.array(1.0)).round(4))
      0.1733
      >>> print(lossax.sigmoid_focal_loss(
      ...     jnp.array(0.0), jnp.array(1.0), alpha=0.25).round(4))
      0.0433

    Note:
      float32 compute for float16/bfloat16 (float64 stays float64).  ``1 - p_t`` is
      formed as ``(1 - y) / (1 + e^{-x}) + y / (1 + e^{x})``, without cancellation, so a
      hard label matching a logit of ``±inf`` gives loss 0 and gradient 0 (optax gives
      NaN for both).  The gradient is written without ``(1 - p_t)^(gamma - 1)``, so it
      is finite for ``gamma < 1`` too.  A ``jax.custom_vjp`` that keeps only the
      inputs; forward-mode ``jax.jvp``/``jacfwd`` is not available, reverse-over-reverse
      is.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = as_real_array(labels, "labels")
    shape = broadcast_shape(logits, "logits", labels, "labels")
    cdt = nx.compute_dtype(logits.dtype)
    static_gamma = _static_scalar(gamma, "gamma")
    static_alpha = _static_scalar(alpha, "alpha")
    gamma_op = alpha_op = None
    if static_gamma is not None:
        if not (np.isfinite(static_gamma) and static_gamma >= 0):
            raise ValueError(f"gamma must be finite and >= 0; got {gamma!r}.")
    else:
        gamma_op = weight_operand(gamma, "gamma", shape, cdt, lo=0.0)
    if static_alpha is not None:
        if not 0 <= static_alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}.")
    elif alpha is not None:
        alpha_op = weight_operand(alpha, "alpha", shape, cdt, lo=0.0, hi=1.0)
    x = jnp.broadcast_to(logits, shape)
    y = jnp.broadcast_to(labels, shape)
    cfg = _FocalCfg(alpha=static_alpha, gamma=static_gamma)
    return _focal(cfg, x, y, alpha_op, gamma_op)


# --------------------------------------------------------------------------------------
# Cross-entropy on probabilities (Keras's from_logits=False).
# --------------------------------------------------------------------------------------


class _ProbCfg(NamedTuple):
    eps: float
    block: int | None = None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _prob_bce(cfg: _ProbCfg, p, y):
    return _prob_bce_fwd(cfg, p, y)[0]


def _clipped_log(v: jax.Array, eps: Any, log_hi: Any) -> jax.Array:
    """``log(clip(v, eps, 1 - eps))`` as ``min(log(max(v, eps)), log(1 - eps))``.

    The same values, but a max and a min on either side of the log rather than one
    clamp, which XLA:CPU would write out in full before a following sum.
    """
    return jnp.minimum(jnp.log(jnp.maximum(v, eps)), log_hi)


def _prob_consts(cfg: _ProbCfg, cdt: Any, tag: int) -> list[jax.Array]:
    """Opaque ``(1, eps, log(1 - eps))`` (see :class:`Consts`)."""
    eps = float(np.asarray(cfg.eps, cdt))
    return opaque((1.0, eps, float(np.log1p(-np.float64(eps)))), cdt, tag=tag)


def _prob_bce_fwd(cfg: _ProbCfg, p, y):
    cdt = nx.compute_dtype(p.dtype)
    pv, yv = nx.private_view(p, y, tag=21)  # and opaque constants: see Consts
    one, eps, log_hi = _prob_consts(cfg, cdt, tag=22)
    pc, yc = pv.astype(cdt), yv.astype(cdt)
    # p' = clip(p, eps, 1 - eps): both logs are finite, so a 0 weight gives exactly 0.
    loss = -(yc * _clipped_log(pc, eps, log_hi) + (one - yc) * _clipped_log(one - pc, eps, log_hi))
    return loss.astype(p.dtype), (p, y)


def _prob_bce_bwd(cfg: _ProbCfg, res, g):
    # d/dp = [(1 - y) / (1 - p') - y / p'] [eps <= p <= 1 - eps]  (the clip's derivative);
    # d/dy = log(1 - p') - log p'.
    p, y = res
    cdt = nx.compute_dtype(p.dtype)
    eps = cfg.eps
    pc, yc = p.astype(cdt), y.astype(cdt)
    g = g.astype(cdt)
    pcl = jnp.clip(pc, eps, 1 - eps)
    inside = (pc >= eps) & (pc <= 1 - eps)
    dp = jnp.where(inside, (1 - yc) / (1 - pcl) - yc / pcl, 0)
    dp = (g * dp).astype(p.dtype)
    dy = None
    if jnp.issubdtype(y.dtype, jnp.inexact):
        dy = (g * (jnp.log1p(-pcl) - jnp.log(pcl))).astype(y.dtype)
    return dp, dy


_prob_bce.defvjp(_prob_bce_fwd, _prob_bce_bwd)


def _check_eps(eps: Any, dtype: Any) -> float:
    if eps is None:
        return float(jnp.finfo(dtype).eps)
    v = nx.check_float_option(eps, "eps", lo=0.0, hi=0.5, lo_open=True)
    if v == 0.5:
        raise ValueError(f"eps must be in (0, 0.5); got {eps!r}.")
    cdt = nx.compute_dtype(dtype)
    if np.asarray(1 - v, cdt) >= 1:
        raise ValueError(
            f"eps={eps!r} is too small for {jnp.dtype(cdt).name} compute: 1 - eps rounds "
            f"to 1; use eps >= {float(jnp.finfo(cdt).eps)}."
        )
    return v


def binary_cross_entropy(
    probs: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    eps: float | None = None,
) -> jax.Array:
    r"""Element-wise binary cross-entropy of probabilities (not logits).

    For models whose outputs are already probabilities (Keras's
    ``binary_crossentropy(from_logits=False)``, PyTorch's ``BCELoss``):

    .. math::
        \ell = -\left[y \log p' + (1 - y) \log(1 - p')\right], \qquad
        p' = \mathrm{clip}(p, \epsilon, 1 - \epsilon),

    Keras's clip.  Prefer :func:`sigmoid_binary_cross_entropy` on logits where you have
    them: it needs no clipping.

    Args:
      probs: Probabilities ``[...]`` in ``[0, 1]`` (floating point).
      labels: Labels broadcastable with ``probs``: ``{0, 1}`` or probabilities.  Float
        labels are differentiable.
      eps: The clip ``epsilon`` in ``(0, 0.5)``; defaults to the probabilities' dtype's
        machine epsilon (``2^-23 = 1.19e-7`` for float32, ``2^-10`` for float16,
        ``2^-7`` for bfloat16, ``2^-52`` for float64).

    Returns:
      The element-wise loss, of the broadcast shape, in the probabilities' dtype.

    Raises:
      TypeError: non-floating ``probs`` or non-numeric labels.
      ValueError: shapes that do not broadcast, or ``eps`` outside ``(0, 0.5)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import lossax
      >>> probs = jnp.array([0.9, 0.2, 0.0])
      >>> labels = jnp.array([1.0, 0.0, 1.0])
      >>> # -log 0.9, -log 0.8, and -log(eps) = -log(2^-23) = 15.9424, finite
      >>> with np.printoptions(precision=4):
      ...     print(lossax.binary_cross_entropy(probs, labels))
      [ 0.1054  0.2231 15.9424]

    Note:
      Probabilities of exactly 0 or 1 give the large finite loss ``-log(eps)`` (15.94
      in float32) instead of ``inf``.  The gradient is that of the clipped formula, as
      Keras's autodiff of its clip gives: finite everywhere, and 0 with respect to a
      probability outside ``[eps, 1 - eps]``.  Computed in float32 for
      float16/bfloat16.  A ``jax.custom_vjp`` keeps only the inputs; forward-mode
      ``jax.jvp``/``jacfwd`` is not available.
    """
    probs = nx.as_float_array(probs, "probs")
    labels = as_real_array(labels, "labels")
    cfg = _ProbCfg(eps=_check_eps(eps, probs.dtype))
    shape = broadcast_shape(probs, "probs", labels, "labels")
    return _prob_bce(cfg, jnp.broadcast_to(probs, shape), jnp.broadcast_to(labels, shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _prob_cce(cfg: _ProbCfg, p, y, row_where, cls_where):
    return _prob_cce_fwd(cfg, p, y, row_where, cls_where)[0]


def _prob_cce_fwd(cfg: _ProbCfg, p, y, row_where, cls_where):
    cdt = nx.compute_dtype(p.dtype)
    pv, yv, wv = nx.private_view(p, y, cls_where, tag=23)  # see Consts
    _, eps, log_hi = _prob_consts(cfg, cdt, tag=24)
    # -sum_j y_j log clip(p_j, eps, 1 - eps): every log is finite, so a 0 label gives 0.
    terms = -yv.astype(cdt) * _clipped_log(pv.astype(cdt), eps, log_hi)
    if wv is not None:
        terms = jnp.where(wv, terms, 0)
    loss = nx._row_reduce(terms, "sum", cfg.block)
    if row_where is not None:
        loss = jnp.where(row_where, loss, 0)
    return loss.astype(p.dtype), (p, y, row_where, cls_where)


def _prob_cce_bwd(cfg: _ProbCfg, res, g):
    # d/dp_j = -y_j / p'_j [eps <= p_j <= 1 - eps];  d/dy_j = -log p'_j  (unmasked j).
    p, y, row_where, cls_where = res
    cdt = nx.compute_dtype(p.dtype)
    eps = cfg.eps
    pc, yc = p.astype(cdt), y.astype(cdt)
    pcl = jnp.clip(pc, eps, 1 - eps)
    g = g.astype(cdt)
    if row_where is not None:
        g = jnp.where(row_where, g, 0)
    keep = (pc >= eps) & (pc <= 1 - eps)
    if cls_where is not None:
        keep = keep & cls_where
    dp = jnp.where(keep, -g[..., None] * yc / pcl, 0).astype(p.dtype)
    dy = None
    if jnp.issubdtype(y.dtype, jnp.inexact):
        dy = -g[..., None] * jnp.log(pcl)
        if cls_where is not None:
            dy = jnp.where(cls_where, dy, 0)
        dy = dy.astype(y.dtype)
    return dp, dy, None, None


_prob_cce.defvjp(_prob_cce_fwd, _prob_cce_bwd)


def categorical_cross_entropy(
    probs: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    eps: float | None = None,
) -> jax.Array:
    r"""Cross-entropy of probability vectors (not logits) against dense labels.

    For models whose outputs are already probabilities (Keras's
    ``categorical_crossentropy(from_logits=False)``; PyTorch's ``NLLLoss`` on
    ``log(probs)``):

    .. math::
        \ell_i = -\sum_j y_{ij} \log \mathrm{clip}(p_{ij}, \epsilon, 1 - \epsilon)

    Keras also renormalises each row to sum to 1 first; lossax does not, so rows that
    already sum to 1 give Keras's values.  Prefer :func:`softmax_cross_entropy` on
    logits where you have them.

    Args:
      probs: Probabilities ``[..., num_classes]`` (floating point).
      labels: Target weights broadcastable to ``probs``' shape: one-hot rows or target
        distributions.  Float labels are differentiable.
      axis: The class axis, a tuple of class axes, or ``None`` for all axes.
      where: Boolean mask of the batch shape (rows to include) or broadcastable to
        ``probs``' shape (classes to include).  Excluded rows and classes contribute 0
        to the loss and get gradient 0.
      eps: The clip ``epsilon`` in ``(0, 0.5)``; defaults to the probabilities' dtype's
        machine epsilon.

    Returns:
      The per-example loss of the batch shape, in the probabilities' dtype.

    Raises:
      TypeError: non-floating ``probs``, non-numeric labels, or a non-boolean ``where``.
      ValueError: labels or ``where`` of a shape that does not fit, a bad ``axis``, or
        ``eps`` outside ``(0, 0.5)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import lossax
      >>> probs = jnp.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
      >>> labels = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # classes 1 and 2
      >>> with np.printoptions(precision=3):  # -ln 0.4 = 0.916, -ln 0.7 = 0.357
      ...     print(lossax.categorical_cross_entropy(probs, labels))
      [0.916 0.357]

    Note:
      A probability of exactly 0 on a target class gives the large finite loss
      ``-log(eps)`` and, as Keras's clip does, gradient 0 with respect to that
      probability (outside ``[eps, 1 - eps]`` the clipped loss is flat).  Computed in float32 for
      float16/bfloat16.  A ``jax.custom_vjp`` keeps only the inputs (no ``[N, V]``
      temporaries); forward-mode ``jax.jvp``/``jacfwd`` is not available.
    """
    probs = nx.as_float_array(probs, "probs")
    labels = as_real_array(labels, "labels")
    where = nx.as_bool_mask(where)
    cfg_eps = _check_eps(eps, probs.dtype)
    try:
        full = tuple(jnp.broadcast_shapes(labels.shape, probs.shape))
    except ValueError:
        full = None
    if full != tuple(probs.shape):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}, which does not broadcast to the "
            f"probs' shape {tuple(probs.shape)}; expected one-hot rows or distributions."
        )
    layout = nx.make_layout(probs.shape, axis)
    row_where, cls_where = nx.split_where(where, probs.shape, layout)
    p = nx.to_canonical(probs, layout)
    y = nx.to_canonical(jnp.broadcast_to(labels, probs.shape), layout)
    cfg = _ProbCfg(eps=cfg_eps, block=nx.default_block(layout.num_classes))
    return _prob_cce(cfg, p, y, row_where, cls_where)
