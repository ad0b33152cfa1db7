"""The public fused linear + softmax cross-entropy: validation and one dispatch."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import _numerics as nx
from . import _common, chunked, reference

# name -> implementation; each takes the flattened, validated arguments and returns
# (loss, lse).  `None` chooses "chunked".
IMPLEMENTATIONS: dict[str, Callable] = {
    "chunked": chunked.linear_softmax_cross_entropy,
    "reference": reference.linear_softmax_cross_entropy,
}
DEFAULT_IMPLEMENTATION = "chunked"


def _matmul_dtype(a, b) -> jnp.dtype:
    """The wider of two float dtypes (float32 for bfloat16 with float16): an explicit
    promotion, so that it holds under ``jax_numpy_dtype_promotion="strict"`` too."""
    a, b = jnp.dtype(a), jnp.dtype(b)
    if a == b:
        return a
    if a.itemsize != b.itemsize:
        return a if a.itemsize > b.itemsize else b
    return jnp.dtype(jnp.float32)


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    class_weights: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
    return_lse: bool = False,
    block_size: int | None = None,
    implementation: str | None = None,
    vocab_axis_name: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy of ``x @ weights + bias`` without building the logits.

    The loss head of a language model, fused: equal to
    ``softmax_cross_entropy_with_integer_labels(x @ weights + bias, labels, ...)``,

    .. math::
        \ell_i = \log \sum_{j=1}^{V} e^{z_{ij}} - z_{i y_i}, \qquad
        z = x W + b,

    but the ``[N, V]`` logits are never stored: the forward walks the vocabulary in
    blocks (and the rows in tiles) keeping a running log-sum-exp and the label's logit
    per row, and the backward recomputes each block's logits to accumulate ``dx`` and
    ``dW`` block by block.  Peak extra memory is ``O(N * D + D * block + tile * block)``
    and does not grow with ``V``.  The argument order is that of tokamax's
    ``linear_softmax_cross_entropy_loss(x, labels, weights)``.

    Args:
      x: Hidden states ``[..., D]`` (floating point); leading dimensions are the batch.
      labels: Integer class indices of the batch shape ``[...]``, in ``[0, V)``.
      weights: The output projection ``[D, V]``.
      bias: Optional ``[V]`` bias added to the logits.
      where: Boolean mask of the batch shape (or broadcastable to it): rows to include.
        Excluded rows give loss 0 and gradient 0.  The mask is per row only: to leave
        out classes (a padded vocabulary), give them a bias of ``-inf``.
      ignore_index: Rows whose label equals it give loss 0 and gradient 0 and are left
        out of ``reduction="mean"`` (PyTorch's ``ignore_index``; commonly -100).
      label_smoothing: ``a`` in ``[0, 1]``; the target is ``(1-a)·onehot + a/V``.
      z_loss: Adds ``z_loss · lse²`` per row (PaLM's auxiliary loss).
      soft_cap: If set, the logits pass through ``soft_cap · tanh(z / soft_cap)`` first
        (Gemma 2).
      class_weights: ``[V]`` weights; a row's loss is scaled by its label's weight, and
        ``mean`` divides by the summed weights of the counted rows.  With label
        smoothing each class's smoothing term takes its own weight (PyTorch), as in
        :func:`softmax_cross_entropy_with_integer_labels`.  Differentiable.
      reduction: ``"none"`` (per row, the default), ``"sum"`` or ``"mean"`` over the
        counted rows (not masked, not ignored); an all-ignored batch gives 0.
      return_lse: Also return the per-row log-sum-exp (float32), for logging.
      block_size: Classes per block of the chunked implementation; ``None`` takes the
        measured default of the platform (2048 on CPU and TPU, 4096 on GPU).
      implementation: ``"chunked"`` (the default, ``None``) or ``"reference"``, which
        materialises ``x @ weights`` and differentiates in every mode (forward mode
        included).
      vocab_axis_name: Inside ``shard_map``: the mesh axis over which the classes are
        sharded.  ``weights`` (and ``bias``) are then this device's contiguous slice
        ``[D, V / shards]``; ``labels`` and ``class_weights`` stay global.  Only per-row
        statistics cross devices in the forward (``O(N)``); the backward sums ``dx``
        over the axis (``O(N · D)``, as any tensor-parallel output layer must), while
        ``dW`` and ``dbias`` stay local.

    Returns:
      The loss, of the batch shape (or a scalar with a reduction), in the dtype of ``x``
      and ``weights`` promoted together; with ``return_lse``, a pair ``(loss, lse)``
      with the log-sum-exp of the batch shape in float32.

    Raises:
      TypeError: for non-float ``x``/``weights``/``bias``, non-integer ``labels``, a
        non-boolean ``where``, or badly typed options.
      ValueError: for mismatched shapes, options out of range, or an unknown
        ``implementation``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weights = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([0, 1])  # logits [2, 0, 0, 0] and [0, 0, 0, 0]
      >>> loss = lossax.linear_softmax_cross_entropy(x, labels, weights)
      >>> print(loss.round(4))  # log(e^2 + 3) - 2 = 0.3408; log 4 = 1.3863
      [0.3408 1.3863]
      >>> print(lossax.linear_softmax_cross_entropy(
      ...     x, labels, weights, reduction="mean").round(3))
      0.864

    Note:
      Precision: the matmuls run in the inputs' dtype with float32 accumulation
      (``preferred_element_type``); logits, log-sum-exp and loss are float32 (float64
      stays float64); ``dW`` is accumulated in float32 one block at a time and returned
      in ``weights``' dtype, so no float32 copy of all of ``W`` is made for bfloat16
      weights (on XLA:CPU, which lacks a bfloat16 dynamic-update-slice, ``dW`` is
      gathered in a 16-bit buffer of ``W``'s size).

      Derivatives: the chunked implementation has two kernels, neither of which keeps
      the logits.  With ``reduction="mean"`` or ``"sum"`` (and no ``return_lse``, outside
      ``shard_map``) it computes ``dx`` and ``dW`` in the forward pass and scales them by
      the cotangent: three matmuls of ``x @ W``'s size for forward + backward, at the
      price of one float32 accumulator the size of ``W``; it is a ``jax.custom_jvp``, so
      every autodiff mode works (``jax.jvp``, ``jacfwd``, ``hessian``, ``grad``).
      Otherwise (per-row losses, ``return_lse``, a sharded vocabulary) it is a
      ``jax.custom_vjp`` whose residuals are the inputs and the per-row log-sum-exp: four
      matmuls (the logits are recomputed), with temporaries independent of ``V`` (CPU,
      N=4096, D=1024, V=32768 float32: 32 MiB against 512 MiB for ``x @ W`` then
      :func:`softmax_cross_entropy_with_integer_labels`).  Reverse mode and
      ``jax.hessian`` (forward over reverse) work there; a pure ``jax.jvp``/``jacfwd``
      raises a ``TypeError``: use ``implementation="reference"``.  A label
      outside ``[0, V)`` that is not ``ignore_index`` gives NaN (loss and gradient).
    """
    x = nx.as_float_array(x, "x")
    weights = nx.as_float_array(weights, "weights")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(
        label_smoothing, z_loss, soft_cap, reduction, ignore_index
    )
    block_size, implementation = check_fused_options(block_size, implementation)
    if x.ndim < 1:
        raise ValueError(f"x must have shape [..., D]; got a scalar {nx.describe(x)}.")
    if weights.ndim != 2 or weights.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weights has shape {weights.shape}; expected [D, V] with D = {x.shape[-1]}, "
            f"the last dimension of x (shape {x.shape})."
        )
    num_local = weights.shape[1]
    if num_local < 1:
        raise ValueError(f"weights has shape {weights.shape}; expected at least one class.")
    batch_shape = x.shape[:-1]
    if labels.shape != batch_shape:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape {batch_shape} of "
            f"x with shape {x.shape}."
        )
    if bias is not None:
        bias = nx.as_float_array(bias, "bias")
        if bias.shape != (num_local,):
            raise ValueError(
                f"bias has shape {bias.shape}; expected ({num_local},), one value per class "
                "(per class of this shard under vocab_axis_name)."
            )
    if where is not None:
        if where.ndim > len(batch_shape):
            raise ValueError(
                f"where has shape {where.shape}; expected the batch shape {batch_shape} "
                "(one flag per row; the fused loss has no per-class mask)."
            )
        try:
            where = jnp.broadcast_to(where, batch_shape)
        except ValueError:
            raise ValueError(
                f"where has shape {where.shape}; expected the batch shape {batch_shape} "
                "(one flag per row)."
            ) from None
    if class_weights is not None:
        class_weights = nx.as_float_array(class_weights, "class_weights")
        num_global = num_local * nx.axis_size(vocab_axis_name)
        if class_weights.shape != (num_global,):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected ({num_global},), "
                "one weight per class."
            )
    opts = _common.Options(
        ignore_index=ignore_index, label_smoothing=alpha, z_loss=z, soft_cap=cap,
        reduction=reduction, block_size=block_size, axis_name=vocab_axis_name,
    )
    loss, lse = run(implementation, opts, x, labels, weights, bias, where, class_weights,
                    return_lse=return_lse)
    return (loss, lse) if return_lse else loss


def check_fused_options(block_size: Any, implementation: Any) -> tuple[int | None, str]:
    """Validated ``(block_size, implementation)``, ``None`` resolved to the default."""
    if implementation is None:
        implementation = DEFAULT_IMPLEMENTATION
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be None or one of {sorted(IMPLEMENTATIONS)}; got "
            f"{implementation!r}."
        )
    if block_size is not None:
        try:
            block_size = operator.index(block_size)
        except TypeError:
            raise TypeError(
                f"block_size must be a positive int or None; got {block_size!r}."
            ) from None
        if block_size < 1:
            raise ValueError(f"block_size must be a positive int or None; got {block_size}.")
    return block_size, implementation


def run(
    implementation: str,
    opts: _common.Options,
    x: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    bias: jax.Array | None,
    row_where: jax.Array | None,
    class_weights: jax.Array | None,
    *,
    return_lse: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """One implementation on validated arguments (no validation here): ``(loss, lse)``.

    ``x`` ``[..., D]``, ``labels`` and ``row_where`` of its batch shape; ``lse`` is
    ``None`` where the implementation does not compute it (``return_lse=False``).  The
    public function calls it after validating, and so does :mod:`lossax.sharded` inside
    ``shard_map``, once it has validated the global arrays.
    """
    batch_shape = x.shape[:-1]
    # The matmul dtype: x and weights promoted together (a block of W is converted at a
    # time; x, O(N * D), once).
    dtype = _matmul_dtype(x.dtype, weights.dtype)
    d = x.shape[-1]
    x2 = x.reshape(-1, d).astype(dtype)
    rows = x2.shape[0]
    if opts.axis_name is None:
        # Weights sharded over Explicit mesh axes (FSDP) are gathered, as jax.jit does
        # for Auto axes; the kernels never slice the rows, so sharded rows stay local.
        weights, bias = _common.gather_explicit(weights), _common.gather_explicit(bias)
        class_weights = _common.gather_explicit(class_weights)
    with _common.explicit_mesh(x2):
        loss, lse = IMPLEMENTATIONS[implementation](
            x2, labels.reshape(rows), weights, bias,
            None if row_where is None else row_where.reshape(rows), class_weights, opts,
            return_lse,
        )
    loss = loss.astype(dtype)
    if opts.reduction == "none":
        loss = loss.reshape(batch_shape)
    return loss, None if lse is None else lse.reshape(batch_shape)
