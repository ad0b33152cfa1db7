"""Cross-entropy on probabilities (Keras's ``from_logits=False``): binary and
categorical, each one custom-JVP kernel.

For models whose outputs are already probabilities.  The probabilities are clipped to
``[eps, 1 - eps]`` (Keras's clip), so every log is finite.  Each loss is a
:func:`jax.custom_jvp` whose tangent is linear in the input tangents and rematerialised
(:func:`lossax._numerics.linear_tangent`): every autodiff mode works, and reverse mode
keeps nothing but the inputs.  The differentiated forward pass reads private views of
its inputs and opaque constants (:func:`lossax._backend.private_view`,
:func:`lossax._backend.opaque`), so that on XLA:CPU a following sum fuses into one pass
that shares nothing with the backward pass.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _backend as be
from . import _numerics as nx


class _ProbCfg(NamedTuple):
    eps: float


def _clipped_log(v: jax.Array, eps: Any, log_hi: Any) -> jax.Array:
    """``log(clip(v, eps, 1 - eps))`` as ``min(log(max(v, eps)), log(1 - eps))``.

    The same values, but a max and a min on either side of the log rather than one
    clamp, which XLA:CPU would write out in full before a following sum.
    """
    return jnp.minimum(jnp.log(jnp.maximum(v, eps)), log_hi)


def _prob_consts(cfg: _ProbCfg, cdt: Any, tag: be.Tag) -> list[jax.Array]:
    """Opaque ``(1, eps, log(1 - eps))`` (see :func:`lossax._backend.opaque`)."""
    eps = float(np.asarray(cfg.eps, cdt))
    return be.opaque((1.0, eps, float(np.log1p(-np.float64(eps)))), cdt, tag=tag)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _prob_bce(cfg: _ProbCfg, p, y):
    cdt = nx.compute_dtype(p.dtype)
    # Private views and opaque constants: see the module docstring.
    p, y = be.private_view(p, y, tag=be.Tag.PROB_BCE_INPUTS)
    one, eps, log_hi = _prob_consts(cfg, cdt, tag=be.Tag.PROB_BCE_CONSTS)
    pc, yc = p.astype(cdt), y.astype(cdt)
    # p' = clip(p, eps, 1 - eps): both logs are finite, so a 0 weight gives exactly 0.
    loss = -(yc * _clipped_log(pc, eps, log_hi) + (one - yc) * _clipped_log(one - pc, eps, log_hi))
    return loss.astype(p.dtype)


def _prob_bce_tangent(cfg: _ProbCfg, primals, tangents):
    # d/dp = [(1 - y) / (1 - p') - y / p'] [eps <= p <= 1 - eps]  (the clip's derivative);
    # d/dy = log(1 - p') - log p'.
    p, y = primals
    dp, dy = tangents
    cdt = nx.compute_dtype(p.dtype)
    eps = cfg.eps
    pc, yc = p.astype(cdt), y.astype(cdt)
    pcl = jnp.clip(pc, eps, 1 - eps)
    tp = ty = None
    if dp is not None:
        inside = (pc >= eps) & (pc <= 1 - eps)
        tp = jnp.where(inside, (1 - yc) / (1 - pcl) - yc / pcl, 0) * dp.astype(cdt)
    if dy is not None:
        ty = (jnp.log1p(-pcl) - jnp.log(pcl)) * dy.astype(cdt)
    return nx.add_terms(tp, ty).astype(p.dtype)


nx.def_rematerialised_jvp(_prob_bce, _prob_bce_tangent, mark_differentiated=False)


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
      float16/bfloat16.  The derivative is a custom JVP (every autodiff mode) whose
      backward, the transposed JVP, keeps only the inputs.
    """
    probs = nx.as_float_array(probs, "probs")
    labels = nx.as_real_array(labels, "labels")
    cfg = _ProbCfg(eps=_check_eps(eps, probs.dtype))
    shape = nx.broadcast_shape(probs, "probs", labels, "labels")
    return _prob_bce(cfg, jnp.broadcast_to(probs, shape), jnp.broadcast_to(labels, shape))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _prob_cce(cfg: _ProbCfg, p, y, row_where, cls_where):
    cdt = nx.compute_dtype(p.dtype)
    # Private views and opaque constants: see the module docstring.
    p, y, cls_where = be.private_view(p, y, cls_where, tag=be.Tag.PROB_CCE_INPUTS)
    _, eps, log_hi = _prob_consts(cfg, cdt, tag=be.Tag.PROB_CCE_CONSTS)
    # -sum_j y_j log clip(p_j, eps, 1 - eps): every log is finite, so a 0 label gives 0.
    terms = -y.astype(cdt) * _clipped_log(p.astype(cdt), eps, log_hi)
    if cls_where is not None:
        terms = jnp.where(cls_where, terms, 0)
    loss = be.row_reduce(terms, "sum")
    if row_where is not None:
        loss = jnp.where(row_where, loss, 0)
    return loss.astype(p.dtype)


def _prob_cce_tangent(cfg: _ProbCfg, primals, tangents):
    # d/dp_j = -y_j / p'_j [eps <= p_j <= 1 - eps];  d/dy_j = -log p'_j  (unmasked j);
    # 0 in masked rows.  The row sum is a plain one: reverse mode transposes it to a
    # broadcast of the row's cotangent.
    p, y, row_where, cls_where = primals
    dp, dy = tangents[:2]
    cdt = nx.compute_dtype(p.dtype)
    eps = cfg.eps
    pc, yc = p.astype(cdt), y.astype(cdt)
    pcl = jnp.clip(pc, eps, 1 - eps)
    tp = ty = None
    if dp is not None:
        keep = (pc >= eps) & (pc <= 1 - eps)
        if cls_where is not None:
            keep = keep & cls_where
        tp = jnp.where(keep, -yc / pcl, 0) * dp.astype(cdt)
    if dy is not None:
        cy = -jnp.log(pcl)
        if cls_where is not None:
            cy = jnp.where(cls_where, cy, 0)
        ty = cy * dy.astype(cdt)
    t = jnp.sum(nx.add_terms(tp, ty), axis=-1)
    if row_where is not None:
        t = jnp.where(row_where, t, 0)
    return t.astype(p.dtype)


nx.def_rematerialised_jvp(_prob_cce, _prob_cce_tangent, mark_differentiated=False)


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
      float16/bfloat16.  The derivative is a custom JVP (every autodiff mode) whose
      backward, the transposed JVP, keeps only the inputs (no ``[N, V]``
      temporaries).
    """
    probs = nx.as_float_array(probs, "probs")
    labels = nx.as_real_array(labels, "labels")
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
    cfg = _ProbCfg(eps=cfg_eps)
    return _prob_cce(cfg, p, y, row_where, cls_where)
