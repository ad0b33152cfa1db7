"""Reference implementation: materialise the logits, then lossax's softmax kernel.

``x @ weights (+ bias)`` is built in full (``[N, V]`` float32) and handed to
:func:`lossax.softmax_cross_entropy_with_integer_labels` with the same options, so its
semantics are the plain kernel's by construction and every autodiff mode works (the
kernel is a custom JVP).  It is the JAX implementation the chunked kernels are compared
with (the float64 oracle is :func:`lossax.testing.linear_softmax_cross_entropy`) and the
path for users who want the logits' memory spent on simplicity.
"""

from __future__ import annotations

import jax

from .. import _numerics as nx
from .. import _softmax
from . import _common
from ._common import Options


def linear_softmax_cross_entropy(
    x: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    bias: jax.Array | None,
    row_where: jax.Array | None,
    class_weights: jax.Array | None,
    opts: Options,
    return_lse: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, lse)`` for flattened, validated arguments (see ``_common``)."""
    del return_lse  # the kernel gives lse for free
    acc = nx.compute_dtype(x.dtype)
    # The matmul in the inputs' dtype, accumulated (and kept) in float32.
    z = _common.matmul(x, weights.astype(x.dtype), (1, 0), acc)
    if bias is not None:
        z = z + bias.astype(acc)[None, :]
    loss, lse = _softmax.softmax_cross_entropy_with_integer_labels(
        z, labels, where=row_where, ignore_index=opts.ignore_index,
        label_smoothing=opts.label_smoothing, z_loss=opts.z_loss, soft_cap=opts.soft_cap,
        class_weights=class_weights, reduction=opts.reduction, return_lse=True,
        vocab_axis_name=opts.axis_name,
    )
    return loss.astype(x.dtype), lse
