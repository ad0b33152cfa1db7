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
        mesh=mesh, vocab_axis_name="model", batch_axis_name="data", reduction="mean")
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
from .fused import _common as fused_common
from .fused import api as fused_api

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


def _check_axes(mesh: Any, vocab_axis_name: Any, batch_axis_name: Any) -> tuple[int, int]:
    """Validates the axis names; returns the sizes of the vocabulary and batch axes."""
    if not isinstance(vocab_axis_name, str):
        raise TypeError(
            f"vocab_axis_name must be the name (str) of a mesh axis; got {vocab_axis_name!r}."
        )
    if batch_axis_name is not None and not (
        isinstance(batch_axis_name, str)
        or (isinstance(batch_axis_name, Sequence)
            and all(isinstance(a, str) for a in batch_axis_name))
    ):
        raise TypeError(
            "batch_axis_name must be None, a mesh axis name or a tuple of them; got "
            f"{batch_axis_name!r}."
        )
    sizes = dict(mesh.shape)
    named = [("vocab_axis_name", vocab_axis_name)]
    named += [("batch_axis_name", b) for b in _names(batch_axis_name)]
    for arg, name in named:
        if name not in sizes:
            raise ValueError(
                f"{arg}={name!r} is not an axis of the mesh; its axes are "
                f"{tuple(mesh.axis_names)}."
            )
    if vocab_axis_name in _names(batch_axis_name):
        raise ValueError(
            f"vocab_axis_name={vocab_axis_name!r} also appears in "
            f"batch_axis_name={batch_axis_name!r}; the classes and the batch must be sharded "
            "over different mesh axes."
        )
    batch_size = 1
    for b in _names(batch_axis_name):
        batch_size *= sizes[b]
    return sizes[vocab_axis_name], batch_size


def _check_divisible(name: str, what: str, n: int, axis: AxisNames, size: int) -> None:
    if n % size:
        raise ValueError(
            f"{name} has {what} {n}, which is not divisible by the size {size} of mesh "
            f"axis {axis!r}; each device must hold an equal, contiguous slice (pad {what} "
            "to a multiple, masking the padding with where=, or use a mesh axis that "
            "divides it)."
        )


def _check_batch(name: str, shape: tuple[int, ...], batch_axis_name: AxisNames,
                 batch_size: int) -> None:
    """The first batch dimension exists and divides over ``batch_axis_name``."""
    if batch_axis_name is None:
        return
    if len(shape) < 2:
        raise ValueError(f"batch_axis_name={batch_axis_name!r} needs a batch dimension; "
                         f"{name} has shape {shape}.")
    _check_divisible(name, "batch dimension", shape[0], batch_axis_name, batch_size)


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


def _batch_spec(ndim: int, batch_axis_name: AxisNames) -> P:
    """Spec of a ``[batch..., ]`` array: the first batch dimension over ``batch_axis_name``."""
    if ndim == 0:
        return P()
    return P(batch_axis_name, *([None] * (ndim - 1)))


def _logits_spec(ndim: int, batch_axis_name: AxisNames, vocab_axis_name: str) -> P:
    """Spec of a ``[batch..., V]`` array: classes over ``vocab_axis_name``."""
    if ndim == 1:
        return P(vocab_axis_name)
    return P(batch_axis_name, *([None] * (ndim - 2)), vocab_axis_name)


def _shard_map(body, mesh, in_specs, out_specs):
    mesh_arg = mesh if isinstance(mesh, Mesh) else None  # None: the mesh of jax.set_mesh
    # jit: an eager call compiles the whole shard_map once instead of running it op by
    # op (hundreds of tiny compilations); under a user's jit it is a nested call.
    return jax.jit(jax.shard_map(body, mesh=mesh_arg, in_specs=in_specs,
                                 out_specs=out_specs))


def _reduce(rows: jax.Array, weight: jax.Array, reduction: str,
            batch_axis_name: AxisNames) -> jax.Array:
    """``rows`` (the per-row loss in the output dtype), or their sum or mean over all rows
    of all batch shards (:func:`lossax._numerics.reduce_rows`, accumulated in float32)."""
    if reduction == "none":
        return rows
    acc = rows.astype(nx.compute_dtype(rows.dtype))
    return nx.reduce_rows(acc, weight, reduction, _names(batch_axis_name)).astype(rows.dtype)


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
    vocab_axis_name: str = "model",
    batch_axis_name: AxisNames = None,
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
    smoothing sums) are all-reduced over ``vocab_axis_name``.  Gradients are local to each
    device's slice and need no further communication.

    Args:
      logits: ``[..., num_classes]`` floating-point logits, classes last, sharded (or to
        be sharded) over ``vocab_axis_name`` along the classes and over
        ``batch_axis_name`` along the first dimension.  Inputs sharded otherwise are
        resharded on entry.
      labels: Integer global class indices of the batch shape ``[...]``.
      mesh: The device mesh (``jax.make_mesh``); ``None`` takes the mesh set with
        ``jax.set_mesh``.
      vocab_axis_name: The mesh axis the classes are sharded over; its size must divide
        ``num_classes``.
      batch_axis_name: ``None`` (batch replicated over the other axes), a mesh axis name
        or a tuple of names, sharding the first batch dimension; its size must divide it.
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
      The loss of the batch shape, sharded over ``batch_axis_name`` (or a replicated
      scalar with a reduction), in the logits' dtype; with ``return_lse``,
      ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis_name``
        (or the first batch dimension by that of ``batch_axis_name``), or an axis name is
        not in the mesh.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> # One device here; e.g. jax.make_mesh((2, 4), ("data", "model")) on eight.
      >>> mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1])
      >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([1, 0])
      >>> loss = jax.jit(lambda x, y: lossax.sharded.softmax_cross_entropy_with_integer_labels(
      ...     x, y, mesh=mesh, vocab_axis_name="model", batch_axis_name="data"))(logits, labels)
      >>> print(loss.round(4))  # log 4 = 1.3863; log(e^2 + 3) - 2 = 0.3408
      [1.3863 0.3408]

    Note:
      Numerics are those of the single-device kernel (float32 accumulation, a
      ``stop_gradient``-ed max shift, masked classes at ``-inf``); results match it to
      rounding.  ``num_classes`` not divisible by the axis size is rejected rather than
      padded, since padding would copy the logits.  The derivative is the plain
      kernel's custom JVP: every autodiff mode works.
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_int_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction,
                                        ignore_index)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis_name, batch_axis_name)
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis; got a scalar.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels has shape {labels.shape}; expected the batch shape "
            f"{logits.shape[:-1]} of logits with shape {logits.shape} (classes last)."
        )
    _check_divisible("logits", "num_classes", logits.shape[-1], vocab_axis_name, vocab_size)
    _check_batch("logits", logits.shape, batch_axis_name, batch_size)
    row_where, cls_where = nx.split_where(where, logits.shape, nx.make_layout(logits.shape, -1))
    if class_weights is not None:
        class_weights = nx.as_float_array(class_weights, "class_weights")
        if class_weights.shape != (logits.shape[-1],):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected "
                f"({logits.shape[-1]},), one weight per class."
            )
    x_spec = _logits_spec(logits.ndim, batch_axis_name, vocab_axis_name)
    b_spec = _batch_spec(logits.ndim - 1, batch_axis_name)
    cfg = _softmax.SoftmaxConfig(ignore_index=ignore_index, label_smoothing=alpha, z_loss=z,
                                 soft_cap=cap, axis_name=vocab_axis_name)
    batch_names = _names(batch_axis_name)

    def body(x, y, row_where, cls_where, class_weights):
        if class_weights is not None and batch_names:
            # Replicated over the batch shards: varying there, so that autodiff sums its
            # gradient over them (the kernel's derivative sums over its local rows only).
            class_weights = lax.pcast(class_weights, batch_names, to="varying")
        loss, lse, weight = _softmax.integer_label_rows(cfg, x, y, row_where, cls_where,
                                                        class_weights)
        return _reduce(loss.astype(logits.dtype), weight, reduction, batch_axis_name), lse

    args = (logits, labels, row_where, cls_where, class_weights)
    specs = (x_spec, b_spec, b_spec, x_spec, P())
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    mesh: Any = None,
    vocab_axis_name: str = "model",
    batch_axis_name: AxisNames = None,
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
    classes and only per-row sums cross ``vocab_axis_name``.

    Args:
      logits: ``[..., num_classes]`` floating-point logits, classes last (sharded as in
        :func:`softmax_cross_entropy_with_integer_labels`).
      labels: Target weights broadcastable to the logits' shape (broadcast, then sharded
        like the logits).  Differentiable; their gradient is sharded like them.
      mesh: The device mesh; ``None`` takes the one set with ``jax.set_mesh``.
      vocab_axis_name: The mesh axis the classes are sharded over; must divide
        ``num_classes``.
      batch_axis_name: ``None``, a mesh axis name or a tuple of names sharding the first
        batch dimension.
      where: Mask of the batch shape or of the logits' shape.
      label_smoothing: ``a``; the target becomes ``(1-a)·labels + a/V`` over all shards.
      z_loss: Adds ``z_loss · lse²`` per row.
      soft_cap: If set, logits pass through ``soft_cap · tanh(x / soft_cap)`` first.
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the rows of all batch shards.
      return_lse: Also return the per-row log-sum-exp (float32).

    Returns:
      The loss of the batch shape, sharded over ``batch_axis_name`` (or a replicated
      scalar with a reduction), in the logits' dtype; with ``return_lse``,
      ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis_name``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> mesh = jax.make_mesh((1,), ("model",), devices=jax.devices()[:1])
      >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0]])
      >>> labels = jnp.array([[0.5, 0.5, 0.0, 0.0]])
      >>> print(lossax.sharded.softmax_cross_entropy(logits, labels, mesh=mesh).round(4))
      [1.3863]

    Note:
      Numerics and derivatives are those of :func:`lossax.softmax_cross_entropy` (every
      autodiff mode works).
    """
    logits = nx.as_float_array(logits, "logits")
    labels = nx.as_target_array(labels, "labels")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis_name, batch_axis_name)
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis; got a scalar.")
    nx.check_dense_labels_shape(labels, logits.shape)
    labels = jnp.broadcast_to(labels, logits.shape)
    _check_divisible("logits", "num_classes", logits.shape[-1], vocab_axis_name, vocab_size)
    _check_batch("logits", logits.shape, batch_axis_name, batch_size)
    row_where, cls_where = nx.split_where(where, logits.shape, nx.make_layout(logits.shape, -1))
    x_spec = _logits_spec(logits.ndim, batch_axis_name, vocab_axis_name)
    b_spec = _batch_spec(logits.ndim - 1, batch_axis_name)
    cfg = _softmax.SoftmaxConfig(label_smoothing=alpha, z_loss=z, soft_cap=cap,
                                 axis_name=vocab_axis_name)

    def body(x, y, row_where, cls_where):
        loss, lse, _, weight = _softmax.dense_label_rows(cfg, x, y, row_where, cls_where)
        return _reduce(loss.astype(logits.dtype), weight, reduction, batch_axis_name), lse

    args = (logits, labels, row_where, cls_where)
    specs = (x_spec, x_spec, b_spec, x_spec)
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    *,
    mesh: Any = None,
    vocab_axis_name: str = "model",
    batch_axis_name: AxisNames = None,
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

    with ``weights`` ``[D, V]`` (and ``bias``) sharded over ``vocab_axis_name`` along
    ``V`` (tensor parallelism) and ``x``/``labels`` over ``batch_axis_name`` along the
    rows.  Each device computes the loss statistics of its slice of the classes without
    materialising the logits; the forward exchanges only per-row values over
    ``vocab_axis_name``, the backward sums ``dx`` (``[N, D]``) over it, and ``dW`` stays
    local.

    Args:
      x: ``[..., D]`` hidden states (the first batch dimension over ``batch_axis_name``).
      labels: Integer global class indices of the batch shape ``[...]``.
      weights: ``[D, num_classes]`` output projection, classes over ``vocab_axis_name``.
      mesh: The device mesh; ``None`` takes the one set with ``jax.set_mesh``.
      vocab_axis_name: The mesh axis the classes are sharded over; must divide
        ``num_classes``.
      batch_axis_name: ``None``, a mesh axis name or a tuple of names sharding the rows.
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
      The loss of the batch shape, sharded over ``batch_axis_name`` (or a replicated
      scalar with a reduction), in the dtype of ``x`` and ``weights`` promoted together; with
      ``return_lse``, ``(loss, lse)``.

    Raises:
      ValueError: if ``num_classes`` is not divisible by the size of ``vocab_axis_name``.

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
    x = nx.as_float_array(x, "x")
    labels = nx.as_int_array(labels, "labels")
    weights = nx.as_float_array(weights, "weights")
    where = nx.as_bool_mask(where)
    alpha, z, cap = nx.check_ce_options(label_smoothing, z_loss, soft_cap, reduction,
                                        ignore_index)
    block_size, implementation = fused_api.check_fused_options(block_size, implementation)
    mesh = _resolve_mesh(mesh)
    vocab_size, batch_size = _check_axes(mesh, vocab_axis_name, batch_axis_name)
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
    _check_divisible("weights", "num_classes", num_classes, vocab_axis_name, vocab_size)
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
    _check_batch("x", x.shape, batch_axis_name, batch_size)
    if where is not None:
        try:
            where = jnp.broadcast_to(where, labels.shape)
        except ValueError:
            raise ValueError(
                f"where has shape {where.shape}; expected the batch shape {labels.shape}."
            ) from None
    x_spec = _batch_spec(x.ndim, batch_axis_name)
    b_spec = _batch_spec(labels.ndim, batch_axis_name)
    # Per-row losses inside shard_map; the reduction over all batch shards follows.
    opts = fused_common.Options(
        ignore_index=ignore_index, label_smoothing=alpha, z_loss=z, soft_cap=cap,
        reduction="none", block_size=block_size, axis_name=vocab_axis_name,
    )
    batch_names = _names(batch_axis_name)

    def body(xs, y, weights, bias, row_where, class_weights):
        if batch_names:
            # The layer is replicated over the batch shards: marking it varying there
            # makes autodiff sum dW (and dbias) over them, data parallelism's usual
            # gradient all-reduce, outside the kernel's custom VJP.
            weights = lax.pcast(weights, batch_names, to="varying")
            bias = None if bias is None else lax.pcast(bias, batch_names, to="varying")
        loss, lse = fused_api.run(implementation, opts, xs, y, weights, bias, row_where,
                                  class_weights, return_lse=True)
        counted = nx.row_valid(y.shape, row_where, labels=y, ignore_index=ignore_index)
        weight = nx.row_weights(counted, lse.dtype, y, class_weights)
        return _reduce(loss, weight, reduction, batch_axis_name), lse

    args = (x, labels, weights, bias, where, class_weights)
    specs = (x_spec, b_spec, P(None, vocab_axis_name), P(vocab_axis_name), b_spec, P())
    return _run(body, mesh, args, specs, reduction, return_lse, b_spec)
