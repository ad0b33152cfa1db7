"""Shared test helpers: float64 numpy reference implementations, tolerances, data."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)

# Tolerances for comparing against a float64 reference, per compute/input dtype.
# fp16/bf16 inputs are computed in float32 and rounded once to the input dtype.
TOL = {
    jnp.dtype(jnp.float64): dict(rtol=1e-10, atol=1e-10),
    jnp.dtype(jnp.float32): dict(rtol=2e-5, atol=2e-5),
    jnp.dtype(jnp.bfloat16): dict(rtol=2e-2, atol=2e-2),
    jnp.dtype(jnp.float16): dict(rtol=2e-3, atol=2e-3),
}


def tol(dtype) -> dict:
    return TOL[jnp.dtype(dtype)]


def assert_close(actual, expected, dtype=jnp.float32, **kw):
    t = dict(tol(dtype))
    t.update(kw)
    np.testing.assert_allclose(
        np.asarray(jnp.asarray(actual).astype(jnp.float32) if jnp.asarray(actual).dtype
                   in (jnp.bfloat16, jnp.float16) else actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64), **t,
    )


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def logits_and_labels(shape, num_classes, seed=0, scale=3.0, dtype=jnp.float32):
    """Random logits [*shape, V] and integer labels [*shape]."""
    r = rng(seed)
    x = (r.standard_normal((*shape, num_classes)) * scale).astype(np.float32)
    y = r.integers(0, num_classes, size=shape).astype(np.int32)
    return jnp.asarray(x).astype(dtype), jnp.asarray(y)


def ref_log_softmax(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float64 log-softmax over the last axis; masked classes are -inf."""
    x = np.asarray(x, np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def ref_softmax_ce_int(x, y, mask=None, row_mask=None):
    """float64 reference for integer-label softmax cross-entropy (optax semantics)."""
    x = np.asarray(x, np.float64)
    lse = np.squeeze(-ref_log_softmax(x, mask)[..., :1] + (
        np.where(mask, x, -np.inf)[..., :1] if mask is not None else x[..., :1]), -1)
    label = np.take_along_axis(x, np.asarray(y)[..., None], -1)[..., 0]
    out = lse - label
    valid = np.ones(out.shape, bool)
    if mask is not None:
        valid &= np.any(mask, -1)
    if row_mask is not None:
        valid &= row_mask
    return np.where(valid, out, 0.0)


def to_f64(a) -> np.ndarray:
    a = jnp.asarray(a)
    if a.dtype in (jnp.bfloat16, jnp.float16):
        a = a.astype(jnp.float32)
    return np.asarray(a, np.float64)


def count_traces(fn):
    """Wraps ``fn`` so that each trace increments ``wrapper.traces``."""
    def wrapper(*args, **kwargs):
        wrapper.traces += 1
        return fn(*args, **kwargs)
    wrapper.traces = 0
    return wrapper


def tree_leaves_bigger_than(tree, size: int):
    return [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "size") and leaf.size >= size]


# --------------------------------------------------------------------------------------
# Softmax cross-entropy: a float64 numpy reference written from the formulas (optax's
# semantics; PyTorch's for ignore_index, label_smoothing, weight= and reduction), with
# the gradient written by hand.  Classes on the last axis.
# --------------------------------------------------------------------------------------


def ref_softmax_ce(logits, labels=None, *, targets=None, row_where=None, cls_where=None,
                   ignore_index=None, label_smoothing=0.0, z_loss=0.0, soft_cap=None,
                   class_weights=None, reduction="none", cotangent=None):
    """Returns ``(loss, lse, dloss/dlogits)`` in float64.

    ``labels``: integer labels of the batch shape; or ``targets``: dense labels
    broadcastable to the logits.  The loss of a counted row ``i`` is
    ``sum_j t_ij (lse_i - x_ij) + z w_i lse_i^2`` with the target
    ``t = (1-a) w_y onehot(y) + a w_j [j unmasked] / V_unmasked`` (dense:
    ``(1-a) y [unmasked] + a [unmasked] / V_unmasked``, ``w = 1``), where ``x`` is
    ``cap tanh(logits / cap)`` with a soft cap.  Its gradient with respect to ``x`` is
    ``(sum_j t_ij + 2 z w_i lse_i) p_i - t_i``, times ``1 - tanh^2`` with a soft cap.
    Rows masked, ignored or without unmasked classes give 0; a counted row whose label
    is out of range gives NaN.  The gradient is that of ``sum(loss * cotangent)``
    (``reduction="none"``) or of the reduced scalar.
    """
    raw = to_f64(logits)
    a = float(label_smoothing)
    v = raw.shape[-1]
    batch = raw.shape[:-1]
    if soft_cap is not None:
        x = soft_cap * np.tanh(raw / soft_cap)
        dcap = 1 - np.tanh(raw / soft_cap) ** 2
    else:
        x, dcap = raw, np.ones_like(raw)
    mask = np.ones(raw.shape, bool) if cls_where is None else np.broadcast_to(
        np.asarray(cls_where, bool), raw.shape)
    xm = np.where(mask, x, -np.inf)
    mx = np.max(xm, axis=-1, keepdims=True) if v else np.zeros((*batch, 1))
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_s = np.log(np.sum(np.exp(xm - mx), axis=-1, keepdims=True))
        logp = (xm - mx) - log_s  # exact even where mx dwarfs log_s
        lse = (mx + log_s)[..., 0]
    p = np.exp(logp)
    count = mask.sum(-1)
    valid = np.any(mask, -1)
    if row_where is not None:
        valid = valid & np.broadcast_to(np.asarray(row_where, bool), batch)
    uniform = np.where(mask, 1.0, 0.0) / np.maximum(count, 1)[..., None]
    oob = np.zeros(batch, bool)
    if labels is not None:
        y = np.asarray(labels).astype(np.int64)
        if ignore_index is not None:
            valid = valid & (y != ignore_index)
        oob = (y < 0) | (y >= v)
        yc = np.clip(y, 0, max(v - 1, 0))
        w = np.ones(v) if class_weights is None else to_f64(class_weights)
        wy = w[yc]
        onehot = np.arange(v) == yc[..., None]
        with np.errstate(invalid="ignore"):
            x_y = np.take_along_axis(x, yc[..., None], -1)[..., 0]  # raw, as optax
            nll_y = (mx[..., 0] - x_y) + log_s[..., 0]
        t_smooth = a * w * uniform
        t = (1 - a) * wy[..., None] * onehot + t_smooth
        with np.errstate(invalid="ignore"):
            smooth = np.sum(np.where(t_smooth != 0, t_smooth * -logp, 0.0), -1)
            nll = (1 - a) * wy * nll_y + smooth if a else wy * nll_y
    else:
        y = np.broadcast_to(to_f64(targets), raw.shape)
        wy = np.ones(batch)
        t = (1 - a) * np.where(mask, y, 0.0) + a * uniform
        with np.errstate(invalid="ignore"):
            nll = np.sum(np.where(t != 0, t * -logp, 0.0), -1)
    with np.errstate(invalid="ignore"):
        loss = nll + z_loss * wy * np.where(np.isfinite(lse), lse, 0.0) ** 2
    loss = np.where(valid, loss, 0.0)
    loss = np.where(valid & oob, np.nan, loss)
    weight = np.where(valid, wy, 0.0)
    if reduction == "none":
        g = np.ones(batch) if cotangent is None else to_f64(cotangent)
        out = loss
    elif reduction == "sum":
        g = np.ones(batch)
        out = np.sum(loss)
    else:
        denom = np.sum(weight)
        g = np.full(batch, 1.0 / denom if denom > 0 else 0.0)
        out = np.sum(loss) / denom if denom > 0 else np.float64(0.0)
    with np.errstate(invalid="ignore"):
        lse_f = np.where(np.isfinite(lse), lse, 0.0)
        coef = np.sum(t, -1) + 2 * z_loss * wy * lse_f
        grad = (coef[..., None] * p - t) * dcap * g[..., None]
    grad = np.where(valid[..., None], grad, 0.0)
    grad = np.where((valid & oob)[..., None], np.nan, grad)
    return out, lse, grad


def ulp_distance(a, b) -> np.ndarray:
    """Distance in units in the last place between two float16/bfloat16 arrays."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    assert a.dtype == b.dtype
    assert a.dtype in (jnp.bfloat16, jnp.float16)
    def ordered(z):
        bits = np.asarray(jax.lax.bitcast_convert_type(z, jnp.uint16)).astype(np.int64)
        mag = bits & 0x7FFF
        return np.where(bits & 0x8000, -mag, mag)
    return np.abs(ordered(a) - ordered(b))


_COLLECTIVE_OP = re.compile(
    r"=\s*(?P<type>[^=]*?)\s(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\(")
_SHAPE_DIMS = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")


def collectives(hlo_text: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """``(kind, result shapes)`` of each collective in a compiled module's HLO text."""
    out = []
    for m in _COLLECTIVE_OP.finditer(hlo_text):
        shapes = [tuple(int(d) for d in dims.split(",") if d)
                  for dims in _SHAPE_DIMS.findall(m.group("type"))]
        out.append((m.group("op"), shapes))
    return out


def compiled_flops(compiled) -> float:
    """XLA's flop count of a compiled executable (per device; loop bodies once)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])
