"""Shared test helpers: float64 numpy reference implementations, tolerances, data."""

from __future__ import annotations

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
