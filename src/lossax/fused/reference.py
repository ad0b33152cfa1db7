"""Reference implementation: materialise the logits, then plain differentiable JAX.

``x @ weights (+ bias)`` is built in full (``[N, V]`` float32), and the loss follows
in ordinary ``jax.numpy`` with no custom VJP, so every autodiff mode works, forward
mode (``jax.jvp``, ``jax.jacfwd``) included.  It is the test oracle of the chunked
kernel; the tests check it against
``lossax.softmax_cross_entropy_with_integer_labels(x @ weights + bias, ...)``, whose
semantics it reproduces option by option.  (It does not call that kernel: being a
``jax.custom_vjp``, it has no forward-mode derivative.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .. import _numerics as nx
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
) -> tuple[jax.Array, jax.Array]:
    """``(loss, lse)`` for flattened, validated arguments (see ``_common``)."""
    acc = nx.compute_dtype(x.dtype)
    num_local = weights.shape[1]
    num_global = num_local * nx.axis_size(opts.axis_name)
    # The matmul in the inputs' dtype, accumulated (and kept) in float32.
    z = _common.matmul(x, weights.astype(x.dtype), (1, 0), acc)
    if bias is not None:
        z = z + bias.astype(acc)[None, :]
    z = _common.cap(z, opts.soft_cap)
    local, valid, out_of_range = _common.label_info(opts, labels, row_where, num_local)
    # Stable log-sum-exp over all shards' classes; the max shift cancels (no gradient).
    m = lax.stop_gradient(jnp.max(z, axis=-1))
    if opts.axis_name is not None:
        m = lax.pmax(m, opts.axis_name)
    m = nx.finite_or_zero(m)
    s = nx.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=-1), opts.axis_name)
    log_s = jnp.log(s)
    lse = m + log_s
    onehot = lax.broadcasted_iota(jnp.int32, z.shape, 1) == local[:, None]
    label_logit = nx.psum(jnp.sum(jnp.where(onehot, z, 0), axis=-1), opts.axis_name)
    nll = (m - label_logit) + log_s  # lse - z_y, without cancelling large logits
    alpha = opts.label_smoothing
    main = (1 - alpha) * nll if alpha else nll
    if opts.z_loss:
        main = main + opts.z_loss * jnp.square(lse)
    weighted = class_weights is not None and bool(alpha)
    loss = main
    if alpha:
        # Target (1 - a) onehot + a / V; with class weights PyTorch's loss,
        # w_y main + a / V sum_j w_j (lse - z_j).
        gap = lse[:, None] - z
        if weighted:
            w_row, _, w_local = _common.smoothing_weights(
                class_weights, labels, opts, num_local, acc)
            loss = w_row * main
            # A zero weight on a -inf logit counts 0 (not 0 * inf = NaN).
            gap = w_local[None, :] * jnp.minimum(gap, jnp.finfo(acc).max)
        loss = loss + (alpha / num_global) * nx.psum(jnp.sum(gap, axis=-1), opts.axis_name)
    loss = jnp.where(valid, loss, 0)
    loss = jnp.where(valid & out_of_range, jnp.nan, loss)
    out = _common.finish(loss, labels, row_where, class_weights, opts, num_global, x.dtype,
                         scaled=weighted)
    return out, lse
