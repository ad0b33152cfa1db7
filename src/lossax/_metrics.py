"""Top-k accuracy: one counting pass over each row, no sort and no ``lax.top_k``."""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from . import _backend as be
from . import _numerics as nx


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or isinstance(k, jax.core.Tracer | jax.Array):
        raise TypeError(f"k must be a Python int known at trace time; got {k!r}.")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int; got {k!r} of type {type(k).__name__}.") from None
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}.")
    return k


def top_k_accuracy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    k: int = 1,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Per-example top-k accuracy: 1 if the label's class is among the k best, else 0.

    .. math::
        a_i = \left[\#\{j : x_{ij} > x_{i y_i}\} < k\right]

    A class tied with the label's does not push it out, so ties count as a hit, as in
    Keras's ``in_top_k`` / ``TopKCategoricalAccuracy`` (and unlike a ``lax.top_k``
    that breaks ties by index).  Average the result (over the rows that count) for the
    batch accuracy.

    Args:
      logits: Floating-point scores ``[..., num_classes]`` (logits or probabilities:
        only their order matters).
      labels: Integer class indices of the batch shape ``[...]``, in
        ``[0, num_classes)``.
      k: How many of the best classes count as a hit, an int ``>= 1`` (a ``k`` of at
        least ``num_classes`` makes every non-NaN row a hit).
      axis: The class axis, or a tuple of class axes (a label then indexes the
        flattened class axes, in order).
      where: Boolean mask of the batch shape (rows to include; excluded rows give 0) or
        broadcastable to the logits' shape (classes to include; excluded classes never
        outrank the label, and a label whose class is excluded is a miss).

    Returns:
      0 or 1 per example, of the batch shape, in the logits' dtype.

    Raises:
      TypeError: non-floating logits, non-integer labels, or a ``k`` that is not an int.
      ValueError: ``k < 1``, labels not of the batch shape, or a bad ``axis`` or
        ``where``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> logits = jnp.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1]])
      >>> labels = jnp.array([2, 0, 1])
      >>> # classes strictly above the label's: 1, 1 (the tie with class 1 does not
      >>> # count) and 1; so every row is a top-2 hit and none a top-1 hit
      >>> print(lossax.top_k_accuracy(logits, labels, k=1))
      [0. 0. 0.]
      >>> print(lossax.top_k_accuracy(logits, labels, k=2))
      [1. 1. 1.]

    Note:
      O(V) per row: one fused counting pass (blocked for long rows on CPU), with no
      sort, so it is cheap for V = 256k.  A NaN score anywhere in an included row makes
      it a miss (TensorFlow's ``in_top_k`` does so for any non-finite score; here
      ``±inf`` compare as numbers, ties included).  A label outside
      ``[0, num_classes)`` gives NaN in an included row (jit cannot raise on values).
      The result is piecewise constant, so it needs no ``custom_vjp``: ``jax.grad`` and
      ``jax.jvp`` both give exactly zero (a metric, not a loss: its true derivative
      almost everywhere), and it can sit in a jitted, differentiated training step next
      to the loss.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    k = _check_k(k)
    layout = nx.make_layout(logits.shape, axis, allow_none=False)
    if labels.shape != layout.batch_shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; expected the batch shape "
            f"{layout.batch_shape} of logits with shape {tuple(logits.shape)} and "
            f"axis={axis!r}."
        )
    row_where, cls_where = nx.split_where(where, logits.shape, layout)
    x = nx.to_canonical(logits, layout)
    num = layout.num_classes
    lab = labels.astype(jnp.int32)
    oob = (lab < 0) | (lab >= num)
    idx = jnp.clip(lab, 0, num - 1)[..., None]
    cdt = nx.compute_dtype(x.dtype)
    big = float(jnp.finfo(cdt).max)
    # The label's score, gathered (O(N)) and clamped to a finite value per row, so that
    # x_j - x_y is never inf - inf.
    xy = jnp.take_along_axis(x, idx, axis=-1)[..., 0].astype(cdt)
    xy_finite = jnp.clip(xy, -big, big)
    # Classes strictly above the label's: min(max(x_j - x_y, 0) * 2^(emax), 1) is 1 for
    # any positive normal difference, 0 for a tie or below, NaN for a NaN score.
    # Arithmetic rather than a compare (or sign, or a clamp), which XLA:CPU would write
    # out as a whole [N, V] array before summing, or run 10x slower (measured at
    # 64 x 262144: 95 ms and 64 MiB with a compare, 32 ms and none like this).
    zero, scale, one = be.opaque((0.0, float(2.0 ** (jnp.finfo(cdt).maxexp - 1)), 1.0), cdt,
                                 tag=be.Tag.TOP_K_CONSTS)
    diff = be.private_view(x, tag=be.Tag.TOP_K_LOGITS).astype(cdt) - xy_finite[..., None]
    above = jnp.minimum(jnp.maximum(diff, zero) * scale, one)
    if cls_where is not None:
        above = jnp.where(cls_where, above, 0)
    count = be.row_reduce(above, "sum")
    # Nothing is above a label score of +inf (its count above, against the largest
    # float, only counted the other +infs, which tie); a NaN count (a NaN score in the
    # row) stays NaN and is a miss.
    count = jnp.where(xy == jnp.inf, count * 0, count)
    hit = (count < k) & (xy == xy)
    if cls_where is not None:
        hit = hit & jnp.take_along_axis(cls_where, idx, axis=-1)[..., 0]
    valid = nx.row_valid(lab.shape, row_where)
    out = jnp.where(valid & hit, 1.0, 0.0)
    out = jnp.where(valid & oob, jnp.nan, out)
    return jax.lax.stop_gradient(out.astype(logits.dtype))
