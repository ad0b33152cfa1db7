"""Vocabulary-sharded losses on globally sharded arrays (tensor + data parallelism).

When the output layer is sharded over the classes along a mesh axis (tensor
parallelism) and the batch along another (data parallelism), gathering the
``[N, V]`` logits onto each device to compute the loss multiplies the per-device memory
by the number of shards and moves ``O(N * V)`` bytes between devices.  The functions
here take globally sharded arrays (under ``jax.jit``, or eagerly), run lossax's kernels
inside :func:`jax.shard_map` on each device's slice of the classes, and combine only
per-row statistics (row max, log-sum-exp, the label's logit, label-smoothing sums)
across the vocabulary axis: collectives of ``O(N)`` values, never ``O(N * V)``, forward and
backward.

Usage::

    mesh = jax.make_mesh((2, 4), ("data", "model"))
    logits = jax.device_put(logits, NamedSharding(mesh, P("data", "model")))
    labels = jax.device_put(labels, NamedSharding(mesh, P("data")))
    loss_fn = functools.partial(
        lossax.sharded.softmax_cross_entropy_with_integer_labels,
        mesh=mesh, vocab_axis="model", batch_axis="data", reduction="mean")
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(logits, labels)

Inside your own ``shard_map`` call the plain kernels with ``vocab_axis_name=...``
instead; these wrappers build that ``shard_map`` (specs, resharding of inputs on
``Explicit`` mesh axes, reductions across batch shards) for you.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _numerics as nx
from . import _softmax

__all__ = [
    "linear_softmax_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

AxisNames = str | tuple[str, ...] | None


# --------------------------------------------------------------------------------------
# Mesh, axes and placement.
# --------------------------------------------------------------------------------------


def _resolve_mesh(mesh: Any) -> Any:
    """The mesh to shard over: the argument, or the one set by ``jax.set_mesh``."""
    if mesh is None:
        current = jax.sharding.get_abstract_mesh()
        if current.empty:
            raise ValueError(
                "mesh is None and no mesh is set: pass mesh=jax.make_mesh(...) or call "
                "inside `with jax.set_mesh(mesh):`."
            )
        return current
    if not isinstance(mesh, Mesh | jax.sharding.AbstractMesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. from jax.make_mesh) or None; got "
            f"{type(mesh).__name__}."
        )
    return mesh


def _names(axes: AxisNames) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _check_axes(mesh: Any, vocab_axis: Any, batch_axis: Any) -> tuple[int, int]:
    """Validates the axis names; returns the sizes of the vocabulary and batch axes."""
    if not isinstance(vocab_axis, str):
        raise TypeError(f"vocab_axis must be the name (str) of a mesh axis; got {vocab_axis!r}.")
    if batch_axis is not None and not (
        isinstance(batch_axis, str)
        or (isinstance(batch_axis, Sequence) and all(isinstance(a, str) for a in batch_axis))
    ):
        raise TypeError(
            f"batch_axis must be None, a mesh axis name or a tuple of them; got {batch_axis!r}."
        )
    sizes = dict(mesh.shape)
    for arg, name in [("vocab_axis", vocab_axis)] + [("batch_axis", b) for b in _names(batch_axis)]:
        if name not in sizes:
            raise ValueError(
                f"{arg}={name!r} is not an axis of the mesh; its axes are "
                f"{tuple(mesh.axis_names)}."
            )
    if vocab_axis in _names(batch_axis):
        raise ValueError(
            f"vocab_axis={vocab_axis!r} also appears in batch_axis={batch_axis!r}; the "
            "classes and the batch must be sharded over different mesh axes."
        )
    batch_size = 1
    for b in _names(batch_axis):
        batch_size *= sizes[b]
    return sizes[vocab_axis], batch_size


def _check_divisible(name: str, what: str, n: int, axis: AxisNames, size: int) -> None:
    if n % size:
        raise ValueError(
            f"{name} has {what} {n}, which is not divisible by the size {size} of mesh "
            f"axis {axis!r}; each device must hold an equal, contiguous slice (pad {what} "
            "to a multiple, masking the padding with where=, or use a mesh axis that "
            "divides it)."
        )


def _place(a: jax.Array, mesh: Any, spec: P) -> jax.Array:
    """Reshards ``a`` to ``spec`` on the mesh's ``Explicit`` axes.

    ``shard_map`` requires an input's sharding on ``Explicit`` axes (the default of
    ``jax.make_mesh``) to equal its ``in_specs``; on ``Auto`` axes it reshards by itself.
    Resharding a replicated or batch-sharded array to a vocabulary-sharded one is a
    local slice, with no communication.
    """
    explicit = {n for n, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
                if t == AxisType.Explicit}
    if not explicit:
        return a

    def keep(entry):
        names = tuple(n for n in _names(entry) if n in explicit)
        return None if not names else names[0] if len(names) == 1 else names

    target = P(*(keep(e) for e in spec))
    if isinstance(mesh, Mesh):
        target = NamedSharding(mesh, target)
    return jax.sharding.reshard(a, target)


def _batch_spec(ndim: int, batch_axis: AxisNames) -> P:
    """Spec of a ``[batch..., ]`` array: the first batch dimension over ``batch_axis``."""
    if ndim == 0:
        return P()
    return P(batch_axis, *([None] * (ndim - 1)))


def _logits_spec(ndim: int, batch_axis: AxisNames, vocab_axis: str) -> P:
    """Spec of a ``[batch..., V]`` array: classes over ``vocab_axis``."""
    if ndim == 1:
        return P(vocab_axis)
    return P(batch_axis, *([None] * (ndim - 2)), vocab_axis)


def _shard_map(body, mesh, in_specs, out_specs):
    mesh_arg = mesh if isinstance(mesh, Mesh) else None  # None: the mesh of jax.set_mesh
    return jax.shard_map(body, mesh=mesh_arg, in_specs=in_specs, out_specs=out_specs)


def _split_where(where: jax.Array | None, shape: tuple[int, ...]):
    """``where`` as ``(row mask of the batch shape, class mask of the logits' shape)``.

    As in the plain kernels: a mask of the batch shape, or of the logits' rank with a
    class dimension of 1, masks rows; any other mask broadcastable to the logits masks
    classes (and is sharded like them).
    """
    if where is None:
        return None, None
    batch_shape = shape[:-1]
    try:
        if where.ndim == len(shape):
            if where.shape[-1] == 1:
                return jnp.broadcast_to(where[..., 0], batch_shape), None
            return None, jnp.broadcast_to(where, shape)
        if where.ndim <= len(batch_shape):
            return jnp.broadcast_to(where, batch_shape), None
    except ValueError:
        pass
    raise ValueError(
        f"where has shape {where.shape}; expected the batch shape {batch_shape} or a shape "
        f"broadcastable to the logits' shape {shape}."
    )


def _any_class(cls_where: jax.Array | None, vocab_axis: str) -> jax.Array | None:
    """Rows with at least one unmasked class over all shards (one int per row crosses)."""
    if cls_where is None:
        return None
    local = jnp.sum(cls_where, axis=-1, dtype=jnp.int32)
    return lax.psum(local, vocab_axis) > 0


def _reduce_rows(loss, weight, reduction, batch_axis, dtype):
    """Sum or mean over all rows of all batch shards, as the single-device kernels do."""
    total = jnp.sum(loss.astype(jnp.float32) if loss.dtype != jnp.float64 else loss)
    names = _names(batch_axis)
    if names:
        total = lax.psum(total, names)
    if reduction == "sum":
        return total.astype(dtype)
    denom = jnp.sum(weight.astype(total.dtype))
    if names:
        denom = lax.psum(denom, names)
    # An all-ignored batch gives 0, not NaN (as the plain kernels).
    return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1), 0).astype(dtype)


def _run(body, mesh, args, specs, reduction, return_lse, batch_spec):
    """Places the (non-None) inputs, runs ``body`` under ``shard_map``, returns outputs."""
    present = [i for i, a in enumerate(args) if a is not None]

    def inner(*xs):
        full = [None] * len(args)
        for i, x in zip(present, xs, strict=True):
            full[i] = x
        return body(*full)

    placed = [_place(args[i], mesh, specs[i]) for i in present]
    out_spec = P() if reduction != "none" else batch_spec
    fn = _shard_map(inner, mesh, tuple(specs[i] for i in present), (out_spec, batch_spec))
    loss, lse = fn(*placed)
    # Identities in the forward pass; under differentiation they reshard the incoming
    # cotangents to the output specs, as shard_map's transpose needs on Explicit axes.
    loss, lse = _place(loss, mesh, out_spec), _place(lse, mesh, batch_spec)
    return (loss, lse) if return_lse else loss


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    mesh: Any = None,
    vocab_axis: str = "model",
    batch_axis: AxisNames = None,
    where: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    class_weights: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy with integer labels on logits sharded over the classes.

    The same loss as :func:`lossax.softmax_cross_entropy_with_integer_labels`,

    .. math::
        \ell_i = \log \sum_j e^{x_{ij}} - x_{i y_i},

    computed where the logits lie: each device reduces its contiguous slice of the
    classes, and only per-row values (row max, sum of exponentials, the label's logit,
    smoothing sums) are all-reduced over ``vocab_axis``.  Gradients (a custom VJP) are
    local to each device's slice and need no further communication.

    Args:
      logits: ``[..., num_classes]`` floating-point logits, classes last, sharded (or to
        be sharded) over ``vocab_axis`` along the classes and over ``batch_axis`` along
        the first dimension.  Inputs sharded otherwise are resharded on entry.
      labels: Integer global class indices of the batch shape ``[...]``.
      mesh: The device mesh (``jax.make_mesh``); ``None`` takes the mesh set with
        ``jax.set_mesh``.
      vocab_axis: The mesh axis the classes are sharded over; its size must divide
        ``num_classes``.
      batch_axis: ``None`` (batch replicated over the other axes), a mesh axis name or a
        tuple of names, sharding the first batch dimension; its size must divide it.
      where: Mask of the batch shape (rows to count) or of the logits' shape (classes to
        include; sharded like the logits).
      ignore_index: Rows whose label equals it give loss 0 and gradient 0 and are left
        out of ``mean``.
      label_smoothing: ``a`` in ``[0, 1]``; the target is ``(1-a)·onehot + a/V`` over the
        ``V`` unmasked classes of all shards.
      z_loss: Adds ``z_loss · lse²`` per row.
      soft_cap: If set, logits pass through ``soft_cap · tanh(x / soft_cap)`` first.
      class_weights: ``[num_classes]`` weights (global, replicated on every device).
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the counted rows of all batch
        shards.
      return_lse: Also return the per-row log-sum-exp (float32, sharded like the rows).

    Returns:
      The loss of the batch shape, sharded over ``batch_axis`` (or a replicated scalar
      with a reduction), in the logits' dtype; with ``return_lse``, ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis`` (or
        the first batch dimension by that of ``batch_axis``), or an axis name is not in
        the mesh.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> # One device here; e.g. jax.make_mesh((2, 4), ("data", "model")) on eight.
      >>> mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1])
      >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([1, 0])
      >>> loss = jax.jit(lambda x, y: lossax.sharded.softmax_cross_entropy_with_integer_labels(
      ...     x, y, mesh=mesh, vocab_axis="model", batch_axis="data"))(logits, labels)
      >>> print(loss.round(4))  # log 4 = 1.3863; log(e^2 + 3) - 2 = 0.3408
      [1.3863 0.3408]

    Note:
      Numerics are those of the single-device kernel (float32 accumulation, a
      ``stop_gradient``-ed max shift, masked classes at ``-inf``); results match it to
      rounding.  ``num_classes`` not divisible by the axis size is rejected rather than
      padded, since padding would copy the logits.  The gradient is a
      ``jax.custom_vjp``, so forward-mode ``jax.jvp``/``jacfwd`` is not available.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction, ignore_index)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis, batch_axis)
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis; got a scalar.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape "
            f"{logits.shape[:-1]} of logits with shape {logits.shape} (classes last)."
        )
    _check_divisible("logits", "num_classes", logits.shape[-1], vocab_axis, vocab_size)
    if batch_axis is not None:
        if logits.ndim < 2:
            raise ValueError(f"batch_axis={batch_axis!r} needs a batch dimension; logits "
                             f"has shape {logits.shape}.")
        _check_divisible("logits", "batch dimension", logits.shape[0], batch_axis, batch_size)
    row_where, cls_where = _split_where(where, logits.shape)
    if class_weights is not None:
        class_weights = nx.as_float_array(class_weights, "class_weights")
        if class_weights.shape != (logits.shape[-1],):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected "
                f"({logits.shape[-1]},), one weight per class."
            )
    x_spec = _logits_spec(logits.ndim, batch_axis, vocab_axis)
    b_spec = _batch_spec(logits.ndim - 1, batch_axis)

    def body(x, y, rw, cw, w):
        if w is not None and _names(batch_axis):
            # Replicated over the batch shards: varying there, so that autodiff sums its
            # gradient over them (the kernel's VJP sums over its local rows only).
            w = lax.pcast(w, _names(batch_axis), to="varying")
        loss, lse = _softmax.softmax_cross_entropy_with_integer_labels(
            x, y, where=rw if cw is None else cw, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, soft_cap=soft_cap,
            class_weights=w, return_lse=True, vocab_axis_name=vocab_axis,
        )
        if reduction == "none":
            return loss, lse
        counted = jnp.ones(y.shape, bool)
        if rw is not None:
            counted = counted & rw
        if ignore_index is not None:
            counted = counted & (y != ignore_index)
        if cw is not None:
            counted = counted & _any_class(cw, vocab_axis)
        weight = counted.astype(lse.dtype)
        if w is not None:
            w_row = jnp.take(w.astype(lse.dtype), jnp.clip(y, 0, w.shape[0] - 1))
            weight = jnp.where(counted, w_row, 0)
        return _reduce_rows(loss, weight, reduction, batch_axis, logits.dtype), lse

    args = (logits, labels, row_where, cls_where, class_weights)
    specs = (x_spec, b_spec, b_spec, x_spec, P())
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    mesh: Any = None,
    vocab_axis: str = "model",
    batch_axis: AxisNames = None,
    where: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: str = "none",
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy with dense labels, both sharded over the classes.

    The same loss as :func:`lossax.softmax_cross_entropy`,

    .. math::
        \ell_i = -\sum_j y_{ij} \log \mathrm{softmax}(x_i)_j,

    with the labels sharded like the logits: each device reduces its slice of the
    classes and only per-row sums cross ``vocab_axis``.

    Args:
      logits: ``[..., num_classes]`` floating-point logits, classes last (sharded as in
        :func:`softmax_cross_entropy_with_integer_labels`).
      labels: Target weights broadcastable to the logits' shape (broadcast, then sharded
        like the logits).  Differentiable; their gradient is sharded like them.
      mesh: The device mesh; ``None`` takes the one set with ``jax.set_mesh``.
      vocab_axis: The mesh axis the classes are sharded over; must divide
        ``num_classes``.
      batch_axis: ``None``, a mesh axis name or a tuple of names sharding the first batch
        dimension.
      where: Mask of the batch shape or of the logits' shape.
      label_smoothing: ``a``; the target becomes ``(1-a)·labels + a/V`` over all shards.
      z_loss: Adds ``z_loss · lse²`` per row.
      soft_cap: If set, logits pass through ``soft_cap · tanh(x / soft_cap)`` first.
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the rows of all batch shards.
      return_lse: Also return the per-row log-sum-exp (float32).

    Returns:
      The loss of the batch shape, sharded over ``batch_axis`` (or a replicated scalar
      with a reduction), in the logits' dtype; with ``return_lse``, ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> mesh = jax.make_mesh((1,), ("model",), devices=jax.devices()[:1])
      >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([[0.5, 0.5, 0.0, 0.0]])
      >>> print(lossax.sharded.softmax_cross_entropy(logits, labels, mesh=mesh).round(4))
      [1.3863]

    Note:
      Numerics are those of :func:`lossax.softmax_cross_entropy`; the custom VJP rules
      out forward-mode ``jax.jvp``/``jacfwd``.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = jnp.asarray(labels)
    where = nx.as_bool_mask(where)
    nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis, batch_axis)
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis; got a scalar.")
    try:
        full = jnp.broadcast_shapes(labels.shape, logits.shape)
    except ValueError:
        full = None
    if full != logits.shape:
        raise ValueError(
            f"labels has shape {labels.shape}, which does not broadcast to the logits' "
            f"shape {logits.shape}."
        )
    labels = jnp.broadcast_to(labels, logits.shape)
    _check_divisible("logits", "num_classes", logits.shape[-1], vocab_axis, vocab_size)
    if batch_axis is not None:
        if logits.ndim < 2:
            raise ValueError(f"batch_axis={batch_axis!r} needs a batch dimension; logits "
                             f"has shape {logits.shape}.")
        _check_divisible("logits", "batch dimension", logits.shape[0], batch_axis, batch_size)
    row_where, cls_where = _split_where(where, logits.shape)
    x_spec = _logits_spec(logits.ndim, batch_axis, vocab_axis)
    b_spec = _batch_spec(logits.ndim - 1, batch_axis)

    def body(x, y, rw, cw):
        loss, lse = _softmax.softmax_cross_entropy(
            x, y, where=rw if cw is None else cw, label_smoothing=label_smoothing,
            z_loss=z_loss, soft_cap=soft_cap, return_lse=True, vocab_axis_name=vocab_axis,
        )
        if reduction == "none":
            return loss, lse
        counted = jnp.ones(lse.shape, bool)
        if rw is not None:
            counted = counted & rw
        if cw is not None:
            counted = counted & _any_class(cw, vocab_axis)
        return _reduce_rows(loss, counted, reduction, batch_axis, logits.dtype), lse

    args = (logits, labels, row_where, cls_where)
    specs = (x_spec, x_spec, b_spec, x_spec)
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    *,
    mesh: Any = None,
    vocab_axis: str = "model",
    batch_axis: AxisNames = None,
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
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Fused linear + softmax cross-entropy with the output layer sharded over classes.

    The same loss as :func:`lossax.linear_softmax_cross_entropy`,

    .. math::
        \ell_i = \log \sum_j e^{z_{ij}} - z_{i y_i}, \qquad z = x W + b,

    with ``weights`` ``[D, V]`` (and ``bias``) sharded over ``vocab_axis`` along ``V``
    (tensor parallelism) and ``x``/``labels`` over ``batch_axis`` along the rows.  Each
    device computes the loss statistics of its slice of the classes without
    materialising the logits; the forward exchanges only per-row values over
    ``vocab_axis``, the backward sums ``dx`` (``[N, D]``) over it, and ``dW`` stays local.

    Args:
      x: ``[..., D]`` hidden states (the first batch dimension over ``batch_axis``).
      labels: Integer global class indices of the batch shape ``[...]``.
      weights: ``[D, num_classes]`` output projection, classes over ``vocab_axis``.
      mesh: The device mesh; ``None`` takes the one set with ``jax.set_mesh``.
      vocab_axis: The mesh axis the classes are sharded over; must divide
        ``num_classes``.
      batch_axis: ``None``, a mesh axis name or a tuple of names sharding the rows.
      bias: Optional ``[num_classes]`` bias, sharded like the classes.
      where: Boolean mask of the batch shape (rows to count).
      ignore_index: Rows whose label equals it give 0 and are left out of ``mean``.
      label_smoothing: ``a``; the target is ``(1-a)·onehot + a/V`` over all shards.
      z_loss: Adds ``z_loss · lse²`` per row.
      soft_cap: If set, the logits pass through ``soft_cap · tanh(z / soft_cap)`` first.
      class_weights: ``[num_classes]`` weights (global, replicated).
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the rows of all batch shards.
      return_lse: Also return the per-row log-sum-exp (float32).
      block_size: Classes per block on each device (see the fused kernel).
      implementation: ``"chunked"`` (``None``) or ``"reference"``.

    Returns:
      The loss of the batch shape, sharded over ``batch_axis`` (or a replicated scalar
      with a reduction), in the dtype of ``x`` and ``weights`` promoted together; with
      ``return_lse``, ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> mesh = jax.make_mesh((1,), ("model",), devices=jax.devices()[:1])
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weights = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([0, 1])  # logits [2, 0, 0, 0] and [0, 0, 0, 0]
      >>> loss = lossax.sharded.linear_softmax_cross_entropy(x, labels, weights, mesh=mesh)
      >>> print(loss.round(4))  # log(e^2 + 3) - 2 = 0.3408; log 4 = 1.3863
      [0.3408 1.3863]

    Note:
      The numerics and gradient rules of :func:`lossax.linear_softmax_cross_entropy`
      apply (its chunked implementation is a custom VJP: no forward-mode autodiff).
    """
    from .fused import linear_softmax_cross_entropy as fused  # a sibling subpackage

    x = nx.as_float_array(x, "x")
    labels = nx.as_int_array(labels, "labels")
    weights = nx.as_float_array(weights, "weights")
    where = nx.as_bool_mask(where)
    nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction, ignore_index)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis, batch_axis)
    if x.ndim < 1 or weights.ndim != 2 or weights.shape[0] != x.shape[-1]:
        raise ValueError(
            f"x has shape {x.shape} and weights {weights.shape}; expected x [..., D] and "
            "weights [D, num_classes]."
        )
    if labels.shape != x.shape[:-1]:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape {x.shape[:-1]} of "
            f"x with shape {x.shape}."
        )
    num_classes = weights.shape[1]
    _check_divisible("weights", "num_classes", num_classes, vocab_axis, vocab_size)
    if bias is not None:
        bias = nx.as_float_array(bias, "bias")
        if bias.shape != (num_classes,):
            raise ValueError(f"bias has shape {bias.shape}; expected ({num_classes},).")
    if class_weights is not None:
        class_weights = nx.as_float_array(class_weights, "class_weights")
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected ({num_classes},), "
                "one weight per class."
            )
    if batch_axis is not None:
        if x.ndim < 2:
            raise ValueError(f"batch_axis={batch_axis!r} needs a batch dimension; x has "
                             f"shape {x.shape}.")
        _check_divisible("x", "batch dimension", x.shape[0], batch_axis, batch_size)
    if where is not None:
        try:
            where = jnp.broadcast_to(where, labels.shape)
        except ValueError:
            raise ValueError(
                f"where has shape {where.shape}; expected the batch shape {labels.shape}."
            ) from None
    x_spec = _batch_spec(x.ndim, batch_axis)
    b_spec = _batch_spec(labels.ndim, batch_axis)
    out_dtype = jnp.result_type(x.dtype, weights.dtype)

    def body(xs, y, w, b, rw, cwts):
        names = _names(batch_axis)
        if names:
            # The layer is replicated over the batch shards: marking it varying there
            # makes autodiff sum dW (and dbias) over them, data parallelism's usual
            # gradient all-reduce, outside the kernel's custom VJP.
            w = lax.pcast(w, names, to="varying")
            b = None if b is None else lax.pcast(b, names, to="varying")
        loss, lse = fused(
            xs, y, w, bias=b, where=rw, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, soft_cap=soft_cap,
            class_weights=cwts, return_lse=True, block_size=block_size,
            implementation=implementation, vocab_axis_name=vocab_axis,
        )
        if reduction == "none":
            return loss, lse
        counted = jnp.ones(y.shape, bool)
        if rw is not None:
            counted = counted & rw
        if ignore_index is not None:
            counted = counted & (y != ignore_index)
        weight = counted.astype(lse.dtype)
        if cwts is not None:
            w_row = jnp.take(cwts.astype(lse.dtype), jnp.clip(y, 0, num_classes - 1))
            weight = jnp.where(counted, w_row, 0)
        return _reduce_rows(loss, weight, reduction, batch_axis, out_dtype), lse

    args = (x, labels, weights, bias, where, class_weights)
    specs = (x_spec, b_spec, P(None, vocab_axis), P(vocab_axis), b_spec, P())
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)
