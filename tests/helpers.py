"""Shared test helpers: tolerances, data, adapters to the float64 oracles of
``lossax.testing`` (the one oracle per loss), HLO inspection."""

from __future__ import annotations

import contextlib
import gc
import re

import jax
import jax.numpy as jnp
import numpy as np

from lossax import testing

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)

# Tolerances for comparing against a float64 reference, per compute/input dtype.
# fp16/bf16 inputs are computed in float32 and rounded once to the input dtype.
TOL = {
    jnp.dtype(jnp.float64): dict(rtol=1e-10, atol=1e-10),
    jnp.dtype(jnp.float32): dict(rtol=2e-5, atol=2e-5),
    jnp.dtype(jnp.bfloat16): dict(rtol=2e-2, atol=2e-2),
    jnp.dtype(jnp.float16): dict(rtol=2e-3, atol=2e-3),
}


@contextlib.contextmanager
def checking_leaks():
    """``jax.checking_leaks()``, with the objects that existed before it frozen out of the
    garbage collector: JAX collects garbage at each trace that stays alive, which takes
    seconds late in a long test run. A leaked tracer is created inside the block, so it
    is never frozen and is still found."""
    gc.freeze()
    try:
        with jax.checking_leaks():
            yield
    finally:
        gc.unfreeze()


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


def ref_softmax_ce_int(x, y, mask=None, row_mask=None):
    """float64 integer-label softmax cross-entropy (optax semantics): the oracle of
    ``lossax.testing`` with a class ``mask`` and a ``row_mask``."""
    x = np.asarray(x, np.float64)
    return testing.softmax_cross_entropy_with_integer_labels(
        x, y, where=_where(x.shape, row_mask, mask))


def _where(shape, row_where, cls_where):
    """One ``where`` of the logits' shape for the oracles, or ``None``."""
    if row_where is None and cls_where is None:
        return None
    w = np.ones(shape, bool)
    if cls_where is not None:
        w = w & np.broadcast_to(np.asarray(cls_where, bool), shape)
    if row_where is not None:
        w = w & np.broadcast_to(np.asarray(row_where, bool), shape[:-1])[..., None]
    return w


def f64(a) -> np.ndarray:
    """Any array (jax, numpy, bfloat16, Python) as a float64 NumPy array, directly (no
    float32 step, whatever the x64 setting)."""
    return np.asarray(np.asarray(a).astype(np.float64))


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
# Softmax cross-entropy: the float64 oracles of lossax.testing, in the form the softmax
# tests use (separate row and class masks, a cotangent, the log-sum-exp).
# --------------------------------------------------------------------------------------


def ref_softmax_ce(logits, labels=None, *, targets=None, row_where=None, cls_where=None,
                   ignore_index=None, label_smoothing=0.0, z_loss=0.0, soft_cap=None,
                   class_weights=None, reduction="none", cotangent=None):
    """Returns ``(loss, lse, dloss/dlogits)`` in float64, classes on the last axis.

    ``labels``: integer labels of the batch shape
    (:func:`lossax.testing.softmax_cross_entropy_with_integer_labels`, PyTorch's
    semantics for ``ignore_index``, ``label_smoothing``, ``class_weights`` and
    ``reduction``); or ``targets``: dense labels broadcastable to the logits
    (:func:`lossax.testing.softmax_cross_entropy`).  ``row_where`` (batch shape) and
    ``cls_where`` (logits' shape) mask rows and classes.  ``lse`` is that of the (capped)
    logits over the unmasked classes.  The gradient is that of ``sum(loss * cotangent)``
    (``reduction="none"``) or of the reduced scalar.
    """
    x = f64(logits)
    where = _where(x.shape, row_where, cls_where)
    if labels is not None:
        out, grad = testing.softmax_cross_entropy_with_integer_labels(
            x, labels, where=where, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, soft_cap=soft_cap,
            class_weights=None if class_weights is None else f64(class_weights),
            reduction=reduction, return_grad=True)
    else:
        out, grad = testing.softmax_cross_entropy(
            x, np.broadcast_to(f64(targets), x.shape), where=where,
            label_smoothing=label_smoothing, z_loss=z_loss, soft_cap=soft_cap,
            reduction=reduction, return_grad=True)
    if reduction == "none" and cotangent is not None:
        grad = grad * f64(cotangent)[..., None]  # each row's loss depends on its row only
    xc = x if soft_cap is None else soft_cap * np.tanh(x / soft_cap)
    if cls_where is not None:
        xc = np.where(np.asarray(cls_where, bool), xc, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.max(xc, axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        lse = (m + np.log(np.sum(np.exp(xc - m), axis=-1, keepdims=True)))[..., 0]
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


def weighted(fn):
    """A scalar of ``fn``'s output, weighting rows unevenly (a non-trivial cotangent)."""
    def scalar(x, *args):
        out = fn(x, *args)
        if out.ndim == 0:
            return out
        c = jnp.arange(1, out.size + 1, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * c)
    return scalar


def value_and_grads(f, *args, argnums=(0,)):
    """Jitted (f(*args), grads of sum(f) with respect to ``argnums``)."""
    def run(*a):
        out = f(*a)
        gs = jax.grad(lambda *b: jnp.sum(f(*b)), argnums)(*a)
        return out, gs
    return jax.jit(run)(*args)


def labels_of(kind, shape, seed=1):
    """Binary labels: "soft" in [0, 1), or hard as "bool", "int" or float."""
    r = rng(seed)
    if kind == "soft":
        return jnp.asarray(r.random(shape).astype(np.float32))
    hard = r.random(shape) < 0.5
    if kind == "bool":
        return jnp.asarray(hard)
    if kind == "int":
        return jnp.asarray(hard.astype(np.int32))
    return jnp.asarray(hard.astype(np.float32))


def logits_of(shape, seed=0, scale=4.0, dtype=jnp.float32):
    return jnp.asarray((rng(seed).standard_normal(shape) * scale).astype(np.float32)).astype(
        dtype)


def temp_bytes(fn, *args):
    """Temporaries of ``jit(fn)`` compiled for ``args`` (XLA's memory_analysis)."""
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
