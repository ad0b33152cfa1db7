"""Binary cross-entropy from logits and the sigmoid focal loss: each one custom-JVP
kernel.

Both are element-wise closed forms: ``softplus(±x) = relu(±x) + log1p(exp(-|x|))``
(never ``log(sigmoid(x))``), with hand-written derivatives.  Each loss is a
:func:`jax.custom_jvp` whose tangent is linear in the input tangents and rematerialised
(:func:`lossax._numerics.linear_tangent`), so every autodiff mode works (``jax.jvp``,
``jacfwd``, ``linearize``, ``hessian``) and reverse mode, the transposed tangent, keeps
nothing but the inputs: its backward pass recomputes the sigmoids from them.  Every
forward expression is select-free and shares nothing with the backward pass, so that
XLA:CPU fuses a following sum of the loss into one pass (see :class:`Consts`).

Cross-entropy on probabilities lives in :mod:`lossax._probabilities`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _backend as be
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
    ``value_and_grad``).  So the primal that a JVP rule computes reads private views of
    its inputs (:func:`_backend.private_view`) and takes its constants from
    ``consts(dtype, tag)``: values passed through an optimization barrier on CPU, which
    XLA cannot merge with the backward's constants (plain constants elsewhere).  The
    undifferentiated primal, with no backward pass beside it, uses plain constants,
    which XLA folds.
    """

    zero: Any
    one: Any
    big: Any  # the largest finite float
    coeffs: tuple  # _LOG1P_COEFFS[1:]


def consts(cdt: Any, tag: be.Tag | None = None) -> Consts:
    """Python constants (``tag=None``), or opaque ones (see :class:`Consts`)."""
    info = jnp.finfo(cdt)
    vals = (0.0, 1.0, float(info.max), *_LOG1P_COEFFS[1:])
    if tag is not None:
        vals = tuple(be.opaque(vals, cdt, tag=tag))
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


@jax.custom_jvp
def sigmoid_pair(xc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sigmoid(x), sigmoid(-x))`` from one ``u = exp(-x)``: ``1 / (1 + u)`` and
    ``u / (1 + u)``, each to full relative precision in its tail (neither is formed as
    ``1 - sigmoid``), exact at ``±inf`` (``u`` is capped at the largest float so that
    ``u / (1 + u)`` is 1, not ``inf / inf``).

    Its derivative is a custom JVP, ``s'(x) = s(x) s(-x)``: finite everywhere, so the
    derivative rules built on it can be differentiated again (Hessians).
    """
    u = jnp.minimum(jnp.exp(-xc), jnp.finfo(xc.dtype).max)
    d = 1 + u
    return 1 / d, u / d


@jax.custom_jvp
def sigmoid_pair_split(xc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`sigmoid_pair` as ``1 / (1 + exp(∓x))``: two exponentials, each used once.

    For derivative rules with many uses of the sigmoids (the focal loss's): XLA:CPU
    writes a shared ``exp(-x)`` out as a whole array there rather than fuse it into
    every use (measured: 4 bytes per element).  Exact at ``±inf`` likewise.
    """
    return 1 / (1 + jnp.exp(-xc)), 1 / (1 + jnp.exp(xc))


def _sigmoid_pair_jvp(fn):
    def jvp(primals, tangents):
        s_pos, s_neg = fn(primals[0])
        t = s_pos * s_neg * tangents[0]  # d s(x) = s(x) s(-x) dx = -d s(-x)
        return (s_pos, s_neg), (t, -t)
    fn.defjvp(jvp)


_sigmoid_pair_jvp(sigmoid_pair)
_sigmoid_pair_jvp(sigmoid_pair_split)


@jax.custom_jvp
def softplus_pair_d(xc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`softplus_pair` (plain constants) with a custom JVP, for derivative rules
    that are differentiated again: ``d softplus(±x) = ±sigmoid(±x) dx``."""
    return softplus_pair(xc)


@softplus_pair_d.defjvp
def _softplus_pair_d_jvp(primals, tangents):
    xc, = primals
    s_pos, s_neg = sigmoid_pair(xc)
    return softplus_pair_d(xc), (s_pos * tangents[0], -s_neg * tangents[0])


def restore_inf(v: jax.Array, ax: jax.Array, k: Consts) -> jax.Array:
    """``v``, the loss at logits clamped to ``[-F, F]``, with ``+inf`` restored where
    ``|x| = inf`` meets a nonzero weight: ``max(v, min(|x| - F, v F))``.

    ``|x| - F`` is at most 0 for every finite logit, so ``v`` stands (also a negative
    one, from labels outside ``[0, 1]``); at ``|x| = inf`` the min is ``inf`` where the
    weight is a normal float (``v >= w F`` then, ``v F`` overflows) and 0 where it is 0
    (subnormal weights are flushed to 0 by XLA).  Select-free, 4 ops: XLA:CPU writes a
    loss with a select, a clamp or a compare out as a whole array before a following sum.
    """
    return jnp.maximum(v, jnp.minimum(ax - k.big, v * k.big))


def softplus_loss(xc: jax.Array, yc: jax.Array, k: Consts, a: jax.Array | None = None,
                  b: jax.Array | None = None, *, native_log1p: bool) -> jax.Array:
    """``a softplus(x) + b softplus(-x)`` with ``0 * inf = 0``, select-free.

    ``softplus(x) - x y`` (``a = 1 - y``, ``b = y``: the default) or
    ``a relu(x) + b relu(-x) + (a + b) log1p(exp(-|x|))``, at the logit clamped to
    ``[-F, F]`` (``F`` the largest float: every product is finite), with ``+inf``
    restored by :func:`restore_inf`: 13 ops (the previous form, with each softplus
    capped at ``F``, took 17).
    ``k.big`` must be opaque (``tag``-ed :func:`consts` or :func:`_backend.opaque`): with
    a plain constant XLA turns the clamp into a ``clamp``, which XLA:CPU's reduction
    fusion (YNNPACK) does not take, so a following sum would write the loss out first.

    ``native_log1p``: ``jnp.log1p``, one op in a YNNPACK reduction fusion, for the
    differentiated primal, which a sum almost always follows (2^22 float32 logits
    summed: 2.3 ms, against 4.9 ms for the polynomial form this replaced and 2.0 ms
    for a bare ``softplus(x) - x y``); otherwise the polynomial :func:`log1p_unit`, 2x
    faster in an element-wise loop, where XLA:CPU's log1p is slow.
    """
    xcl = jnp.minimum(jnp.maximum(xc, -k.big), k.big)
    ax = jnp.abs(xc)
    e = jnp.exp(-ax)
    lg = jnp.log1p(e) if native_log1p else log1p_unit(e, k)
    if a is None:
        v = jnp.maximum(xcl, k.zero) - xcl * yc + lg
    else:
        v = a * jnp.maximum(xcl, k.zero) + b * jnp.maximum(-xcl, k.zero) + (a + b) * lg
    return restore_inf(v, ax, k)


def plain_consts(cdt: Any, tag: be.Tag) -> Consts:
    """Plain constants (folded by XLA) but an opaque largest float, for
    :func:`softplus_loss` outside the JVP rule."""
    return consts(cdt)._replace(big=be.opaque((float(jnp.finfo(cdt).max),), cdt, tag=tag)[0])


def mul0(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` with ``0 * inf = 0`` (a 0 label weight on an infinite softplus).

    Written so that its autodiff derivatives are the true ones: d/da = b wherever ``b``
    is finite (the forward rules are differentiated under nested differentiation).
    """
    big = jnp.finfo(b.dtype).max
    return a * jnp.where(a == 0, jnp.clip(b, -big, big), b)


# --------------------------------------------------------------------------------------
# Validation of the weight operands.
# --------------------------------------------------------------------------------------


def weight_operand(value: Any, name: str, shape: tuple[int, ...], cdt: Any, *,
                   lo: float | None = None, hi: float | None = None) -> jax.Array:
    """An array weight (``pos_weight``, ``alpha``, ``gamma``) broadcast to ``shape``.

    Concrete values are range-checked here; traced values cannot be (documented).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a real array; got {value!r}.")
    w = nx.as_real_array(value, name)
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
    differentiated: bool = False  # the primal of the JVP rule (see Consts)


def _smoothed(cfg: Any, y: jax.Array, cdt: Any) -> jax.Array:
    # Keras's binary label smoothing: y' = y (1 - a) + a / 2.
    yc = y.astype(cdt)
    a = cfg.label_smoothing
    return yc * (1 - a) + 0.5 * a if a else yc


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _bce(cfg: _BceCfg, x, y, pw):
    cdt = nx.compute_dtype(x.dtype)
    a = cfg.label_smoothing
    w = 1.0 if cfg.pos_weight is None else cfg.pos_weight
    if cfg.differentiated:
        # The JVP rule's primal, which a sum follows in training: private views of the
        # inputs and opaque constants (Consts), and XLA's log1p (softplus_loss).
        x_, y_, pw_ = be.private_view(x, y, pw, tag=be.Tag.BCE_INPUTS)
        k = consts(cdt, tag=be.Tag.BCE_CONSTS)
        keep, shift, w = be.opaque((1 - a, 0.5 * a, w), cdt, tag=be.Tag.BCE_OPTIONS)
    else:
        # Not differentiated: no backward pass to keep apart from (see Consts), so plain
        # constants, which XLA folds, but for the clamp's bounds; the log1p polynomial.
        x_, y_, pw_ = x, y, pw
        k = plain_consts(cdt, tag=be.Tag.BCE_BOUNDS)
        keep, shift = 1 - a, 0.5 * a
    xc = x_.astype(cdt)
    yc = y_.astype(cdt) * keep + shift if a else y_.astype(cdt)
    # (1 - y) softplus(x) + w y softplus(-x) = -[w y log s(x) + (1 - y) log s(-x)]:
    # softplus(x) - x y for w = 1, with 0 * inf = 0 at x = ±inf.
    if pw_ is None and cfg.pos_weight is None:
        loss = softplus_loss(xc, yc, k, native_log1p=cfg.differentiated)
    else:
        wy = (full(pw_.astype(cdt), xc.shape) if pw_ is not None else w) * yc
        loss = softplus_loss(xc, yc, k, k.one - yc, wy, native_log1p=cfg.differentiated)
    return loss.astype(x.dtype)


def _bce_tangent(cfg: _BceCfg, primals, tangents):
    # With y' = y (1 - a) + a / 2 and weight w:
    #   d/dx = (1 - y') s(x) - w y' s(-x)     (= s(x) - y' for w = 1, exact in both tails);
    #   d/dy = (1 - a) (w softplus(-x) - softplus(x))   (= -(1 - a) x for w = 1);
    #   d/dw = y' softplus(-x)   (0 * inf = 0 for a 0 label weight).
    x, y, pw = primals
    dx, dy, dpw = tangents
    cdt = nx.compute_dtype(x.dtype)
    a = cfg.label_smoothing
    xc = x.astype(cdt)
    ys = _smoothed(cfg, y, cdt)
    if pw is not None:
        w = full(pw.astype(cdt), xc.shape)
    else:
        w = None if cfg.pos_weight is None else jnp.asarray(cfg.pos_weight, cdt)
    tx = ty = tw = None
    if dx is not None:
        if w is None:
            cx = _bce_dx(xc, ys)
        else:
            s_pos, s_neg = sigmoid_pair(xc)
            cx = (1 - ys) * s_pos - w * ys * s_neg
        tx = cx * dx.astype(cdt)
    if dy is not None or dpw is not None:
        sp_pos, sp_neg = softplus_pair_d(xc)
    if dy is not None:
        cy = -xc if w is None else mul0(jnp.broadcast_to(w, xc.shape), sp_neg) - sp_pos
        ty = (1 - a) * cy * dy.astype(cdt)
    if dpw is not None:
        tw = mul0(ys, sp_neg) * full(dpw.astype(cdt), xc.shape)
    return nx.add_terms(tx, ty, tw).astype(x.dtype)


nx.def_rematerialised_jvp(_bce, _bce_tangent)


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
      to a few ulp in both tails.  The derivative is a custom JVP (every autodiff
      mode: ``jax.jvp``, ``jacfwd``, ``jacrev``, ``linearize``, ``hessian``) whose
      backward, the transposed JVP, keeps only the inputs and recomputes the sigmoids
      from them (no temporaries, also when the loss is summed: measured with
      ``memory_analysis()``).
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_real_array(labels, "labels")
    alpha = nx.check_float_option(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    shape = nx.broadcast_shape(logits, "logits", labels, "labels")
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


@jax.custom_jvp
def _bce_dx(xc: jax.Array, ys: jax.Array) -> jax.Array:
    """``(1 - y) s(x) - y s(-x)`` as ``((1 - y) - y u) / (1 + u)``, ``u = exp(-x)`` capped
    at the largest float: one divide (two in :func:`sigmoid_pair`; 12% of the backward
    pass), exact in both tails (``-s(-x)`` for ``y = 1``, ``s(x)`` for ``y = 0``).

    Its derivative (a custom JVP, finite where ``u`` overflows): ``s(x) s(-x) dx -
    (s(x) + s(-x)) dy``.
    """
    u = jnp.minimum(jnp.exp(-xc), jnp.finfo(xc.dtype).max)
    return ((1 - ys) - ys * u) / (1 + u)


@_bce_dx.defjvp
def _bce_dx_jvp(primals, tangents):
    xc, ys = primals
    s_pos, s_neg = sigmoid_pair(xc)
    return _bce_dx(xc, ys), s_pos * s_neg * tangents[0] - (s_pos + s_neg) * tangents[1]


# --------------------------------------------------------------------------------------
# Sigmoid focal loss.
# --------------------------------------------------------------------------------------


class _FocalCfg(NamedTuple):
    alpha: float | None  # static alpha; None: no weighting, or an operand
    gamma: float | None  # static gamma; None: an operand
    differentiated: bool = False  # the primal of the JVP rule (see Consts)


def _focal_power(q: jax.Array, gamma_static: float | None, gamma: jax.Array | None,
                 hide_constant: bool = False) -> jax.Array:
    """``q ** gamma`` with ``0 ** 0 = 1``; an integer power for a small integer gamma."""
    if gamma is not None:
        return jnp.power(q, full(gamma.astype(q.dtype), q.shape))
    gm = gamma_static
    if gm == 0:
        return jnp.ones_like(q)
    if gm == int(gm) and gm <= 16:
        return lax.integer_pow(q, int(gm))  # gamma = 2: one multiply, exact
    if hide_constant:
        gm = be.opaque((gm,), q.dtype, tag=be.Tag.FOCAL_GAMMA)[0]
    return jnp.power(q, gm)


def _focal_alpha_t(cfg: _FocalCfg, alpha, yc, a, k: Consts | None = None):
    """``alpha_t = alpha y + (1 - alpha)(1 - y)``, or ``None`` without weighting."""
    one = (k or consts(yc.dtype)).one
    if alpha is not None:
        al = full(alpha.astype(yc.dtype), yc.shape)
        return al * yc + (one - al) * a
    if cfg.alpha is not None:
        al = cfg.alpha if k is None else be.opaque((cfg.alpha,), yc.dtype,
                                                   tag=be.Tag.FOCAL_ALPHA)[0]
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _focal(cfg: _FocalCfg, x, y, alpha, gamma):
    cdt = nx.compute_dtype(x.dtype)
    hide = cfg.differentiated
    # The JVP rule's primal: private views and opaque constants (Consts), and XLA's
    # log1p; otherwise plain constants and the log1p polynomial (see _bce).
    if hide:
        xv, yv, av, gv = be.private_view(x, y, alpha, gamma, tag=be.Tag.FOCAL_INPUTS)
        k = consts(cdt, tag=be.Tag.FOCAL_CONSTS)
    else:
        xv, yv, av, gv = x, y, alpha, gamma
        k = plain_consts(cdt, tag=be.Tag.FOCAL_BOUNDS)
    xc, yc = xv.astype(cdt), yv.astype(cdt)
    a = k.one - yc
    q = _focal_q(xc, yc, a, k)[0]
    at = _focal_alpha_t(cfg, av, yc, a, k if hide else None)
    # alpha_t folded into the softplus weights: a 0 weight on an infinite softplus is 0.
    ce = softplus_loss(xc, yc, k, native_log1p=hide) if at is None else softplus_loss(
        xc, yc, k, at * a, at * yc, native_log1p=hide)
    # (1 - p_t)^gamma = 0 only where q = 0, i.e. a hard label matching an (effectively)
    # infinite logit, where the cross-entropy is 0 too: never 0 * inf.
    loss = _focal_power(q, cfg.gamma, gv, hide_constant=hide) * ce
    return loss.astype(x.dtype)


def _focal_tangent(cfg: _FocalCfg, primals, tangents):
    # L = a_t w ce with w = q^g, q = 1 - p_t, ce = (1 - y) softplus(x) + y softplus(-x):
    #   dL/dx = a_t w [(s(x) - y) + g (1 - 2y) rho ce],  rho = s(x) s(-x) / q in [0, 1];
    #   dL/dy = a_t [w (-x) + g (w / q) ce (s(-x) - s(x))] + (2 alpha - 1) w ce;
    #   dL/dalpha = (2y - 1) w ce;  dL/dgamma = a_t w ce log q.
    # rho and w / q come from _focal_weights, written without q^(g-1), which is infinite
    # at q = 0 for g < 1; q = 0 only for a hard label matching an (effectively) infinite
    # logit, where ce = 0 too.  Their own derivatives keep the Hessian finite there.
    x, y, alpha, gamma = primals
    dx, dy, dalpha, dgamma = tangents
    cdt = nx.compute_dtype(x.dtype)
    big = float(jnp.finfo(cdt).max)
    xc, yc = x.astype(cdt), y.astype(cdt)
    a = 1 - yc
    s_pos, s_neg = sigmoid_pair_split(xc)
    sp_pos, sp_neg = softplus_pair_d(xc)
    ce = jnp.minimum(mul0(a, sp_pos) + mul0(yc, sp_neg), big)  # finite: a factor below
    at = _focal_alpha_t(cfg, alpha, yc, a)
    gm = cfg.gamma if gamma is None else full(gamma.astype(cdt), xc.shape)
    plain = gamma is None and not gm  # gamma = 0: the cross-entropy, weighted by a_t
    if plain:
        w = rho = wq = None
    else:
        w, rho, wq = _focal_weights(cfg.gamma, xc, yc, None if gamma is None else gm)
    weighted = (lambda v: v) if at is None else (lambda v: at * v)
    tx = ty = ta = tg = None
    if dx is not None:
        dce = a * s_pos - yc * s_neg  # s(x) - y
        cx = dce if plain else w * (dce + gm * (1 - 2 * yc) * rho * ce)
        tx = weighted(cx) * dx.astype(cdt)
    if dy is not None:
        dce_dy = -jnp.clip(xc, -big, big)  # softplus(-x) - softplus(x)
        cy = weighted(dce_dy if plain else w * dce_dy + gm * wq * ce * (s_neg - s_pos))
        if alpha is not None or cfg.alpha is not None:
            al = cfg.alpha if alpha is None else full(alpha.astype(cdt), xc.shape)
            cy = cy + (2 * al - 1) * (ce if plain else w * ce)
        ty = cy * dy.astype(cdt)
    if dalpha is not None:
        ta = (2 * yc - 1) * (ce if plain else w * ce) * full(dalpha.astype(cdt), xc.shape)
    if dgamma is not None:
        logq = -jnp.log(_inv_q(a * s_pos + yc * s_neg))  # log max(q, tiny): finite
        tg = weighted(w * ce * logq) * full(dgamma.astype(cdt), xc.shape)
    return nx.add_terms(tx, ty, ta, tg).astype(x.dtype)


nx.def_rematerialised_jvp(_focal, _focal_tangent)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _focal_weights(gamma_static: float | None, xc: jax.Array, yc: jax.Array,
                   gamma: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(w, rho, w / q)``: ``w = q^g``, ``rho = s(x) s(-x) / q``, ``q = 1 - p_t``.

    ``q`` is floored at the smallest normal float where it divides (``q = 0`` only for
    a hard label matching an infinite logit, or one beyond float32's range).  A custom
    JVP, so that derivatives of the focal loss's derivative (its Hessian) stay finite
    where ``q`` underflows: ``dw = g w d(log q) + w log q dg`` with
    ``d(log q) = (1 - 2y) rho dx + (s(-x) - s(x)) / q dy``, ``d rho = rho (s(-x) - s(x))
    dx - rho d(log q)``, ``d(w / q) = (w / q) ((g - 1) d(log q) + log q dg)``: every
    ``x`` term is bounded (``rho`` is in ``[0, 1]``).
    """
    s_pos, s_neg = sigmoid_pair_split(xc)
    q = (1 - yc) * s_pos + yc * s_neg
    w = _focal_power(q, gamma_static, gamma)
    q_safe = jnp.maximum(q, float(jnp.finfo(q.dtype).tiny))
    # Two divides, each fused into its one use (a shared 1 / q is written out as a whole
    # array when both the logits' and the labels' gradients are taken).
    return w, s_pos * s_neg / q_safe, w / q_safe


def _inv_q(q: jax.Array) -> jax.Array:
    """``1 / max(q, tiny)``, finite.  Products with it are formed one factor at a time:
    XLA rewrites ``(a / q) / q`` as ``a / q^2``, which underflows to ``0 / 0`` (it
    leaves ``(a / q) * (1 / q)`` alone)."""
    return 1 / jnp.maximum(q, float(jnp.finfo(q.dtype).tiny))


@_focal_weights.defjvp
def _focal_weights_jvp(gamma_static, primals, tangents):
    xc, yc, gamma = primals
    dx, dy, dgamma = tangents
    big = float(jnp.finfo(xc.dtype).max)
    w, rho, wq = _focal_weights(gamma_static, xc, yc, gamma)
    g = gamma_static if gamma is None else gamma
    s_pos, s_neg = sigmoid_pair_split(xc)
    inv_q = _inv_q((1 - yc) * s_pos + yc * s_neg)
    # d(log q) = (1 - 2y) rho dx + (s(-x) - s(x)) / q dy; each product below is formed
    # from bounded factors (rho / q and w / q^2 are capped at the largest float: they
    # grow without bound only where the label Hessian does).
    lx = (1 - 2 * yc) * rho * dx
    dw = g * (w * lx + wq * (s_neg - s_pos) * dy)
    drho = rho * ((s_neg - s_pos) - (1 - 2 * yc) * rho) * dx - jnp.minimum(
        rho * inv_q, big) * (s_neg - s_pos) * dy
    dwq = (g - 1) * (wq * lx + jnp.minimum(wq * inv_q, big) * (s_neg - s_pos) * dy)
    if gamma is not None:
        logq = -jnp.log(inv_q)  # log max(q, tiny): finite
        dw = dw + w * logq * dgamma
        dwq = dwq + wq * logq * dgamma
    return (w, rho, wq), (dw, drho, dwq)


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
      is finite for ``gamma < 1`` too, and so is its Hessian with respect to the logits
      for any ``gamma >= 0`` (also at logits of ``±100`` in float32, where ``1 - p_t``
      underflows).  The derivative is a custom JVP (every autodiff mode) whose
      backward, the transposed JVP, keeps only the inputs.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_real_array(labels, "labels")
    shape = nx.broadcast_shape(logits, "logits", labels, "labels")
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
