"""lossax.linear_softmax_cross_entropy: the fused linear + softmax cross-entropy.

Oracles: a float64 numpy implementation written here from the formula (values), JAX
autodiff of the plain-JAX ``"reference"`` implementation (gradients), and lossax's own
softmax kernel on materialised logits (the semantics the fused loss promises).  The
chunked implementation is run with small blocks and, through
``lossax._backend.FUSED_SIZES_CPU``, small row tiles, so that every test walks several
blocks and tiles plus the shorter last block and tile.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import lossax
from lossax import _backend as be
from lossax.fused import IMPLEMENTATIONS

fused = lossax.linear_softmax_cross_entropy
DEFAULT_SIZES = be.FUSED_SIZES_CPU


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Row tiles of 8 rows (the minimum), so small batches are tiled too."""
    monkeypatch.setattr(be, "FUSED_SIZES_CPU", be.FusedSizes(DEFAULT_SIZES.block, 16, 16))


# --------------------------------------------------------------------------------------
# Data and the float64 numpy oracle.
# --------------------------------------------------------------------------------------

IGNORE = -100


def make(n, d, v, seed=0, *, options=(), dtype=np.float32):
    """Inputs ``(x, labels, weights, kwargs)`` for the named options."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(dtype)
    w = (r.standard_normal((d, v)) * 0.7).astype(dtype)
    y = r.integers(0, v, n).astype(np.int32)
    kw = {}
    if "bias" in options:
        kw["bias"] = r.standard_normal(v).astype(dtype)
    if "where" in options:
        where = r.random(n) < 0.7
        where[0] = True
        kw["where"] = where
    if "ignore_index" in options:
        y[r.random(n) < 0.3] = IGNORE
        kw["ignore_index"] = IGNORE
    if "label_smoothing" in options:
        kw["label_smoothing"] = 0.2
    if "z_loss" in options:
        kw["z_loss"] = 0.01
    if "soft_cap" in options:
        kw["soft_cap"] = 2.5
    if "class_weights" in options:
        kw["class_weights"] = r.uniform(0.5, 2.0, v).astype(dtype)
    return x, y, w, kw


def np_loss(x, y, w, *, bias=None, where=None, **options):
    """float64 numpy: softmax cross-entropy of cap(x @ w + bias) with the options (the
    oracle of ``lossax.testing``)."""
    return lossax.testing.linear_softmax_cross_entropy(x, y, w, bias=bias, where=where,
                                                       **options)


OPTION_SETS = {
    "plain": (),
    "bias": ("bias",),
    "smoothing": ("label_smoothing",),
    "z_loss": ("z_loss",),
    "soft_cap": ("soft_cap",),
    "where": ("where",),
    "ignore_index": ("ignore_index",),
    "class_weights": ("class_weights",),
    "all": ("bias", "label_smoothing", "z_loss", "soft_cap", "where", "ignore_index",
            "class_weights"),
}


def value_and_grads(impl, x, y, w, kw, reduction="sum", block_size=None):
    """jit(value_and_grad) with respect to x, weights and, if given, bias and class
    weights: ``((loss, per-row loss), grads)``, the gradient of the reduced loss."""
    kw = dict(kw)
    diff = {k: kw.pop(k) for k in ("bias", "class_weights") if k in kw}

    def loss(x, w, diff):
        per_row = fused(x, y, w, implementation=impl, block_size=block_size, **diff, **kw)
        if reduction == "sum":
            return jnp.sum(per_row), per_row
        # mean over the counted rows, weighted by the class weights when given
        counted = jnp.ones(y.shape, bool) if "where" not in kw else jnp.asarray(kw["where"])
        if "ignore_index" in kw:
            counted = counted & (y != kw["ignore_index"])
        weight = counted.astype(per_row.dtype)
        if "class_weights" in diff:
            cw = diff["class_weights"].astype(per_row.dtype)
            weight = jnp.where(counted, cw[jnp.clip(y, 0, w.shape[1] - 1)], 0)
        return jnp.sum(per_row) / jnp.sum(weight), per_row

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (val, per_row), (gx, gw, gdiff) = step(x, w, diff)
    return (val, per_row), (gx, gw, *(gdiff[k] for k in sorted(gdiff)))


# --------------------------------------------------------------------------------------
# Values and gradients against the oracles.
# --------------------------------------------------------------------------------------

# (N, D, V, block_size): one class, V < block, V not a multiple of the block, N = 1.
# Row tiles are 8 rows (see small_tiles): N = 21 gives two tiles and a shorter third.
SHAPES = [(1, 4, 1, None), (1, 8, 5, 2), (7, 4, 6, 6)]
CASES = [((21, 8, 37, 8), name) for name in sorted(OPTION_SETS)] + [
    (shape, "all") for shape in SHAPES
]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("shape", "name"), CASES,
                         ids=["x".join(map(str, s)) + "-" + n for s, n in CASES])
def test_float64_matches_numpy_and_autodiff(shape, name):
    n, d, v, block = shape
    x, y, w, kw = make(n, d, v, seed=n + v, options=OPTION_SETS[name], dtype=np.float64)
    x, w = jnp.asarray(x), jnp.asarray(w)
    kw = {k: jnp.asarray(a) if isinstance(a, np.ndarray) else a for k, a in kw.items()}
    (val, per_row), grads = value_and_grads("chunked", x, y, w, kw, block_size=block)
    (ref_val, _), ref_grads = value_and_grads("reference", x, y, w, kw)
    np.testing.assert_allclose(per_row, np_loss(x, y, w, **kw), rtol=1e-10, atol=1e-10)
    assert per_row.dtype == jnp.float64
    assert per_row.shape == (n,)
    np.testing.assert_allclose(ref_val, val, rtol=1e-10)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


def scalar_value_and_grads(impl, x, y, w, kw, block_size=None):
    """jit(value_and_grad) of the fused loss reduced inside (the three-matmul kernel)
    with respect to x, weights and, if given, bias and class weights, for "sum" and
    "mean" (one compiled program)."""
    kw = dict(kw)
    diff = {k: kw.pop(k) for k in ("bias", "class_weights") if k in kw}

    def both(x, w, diff):
        out = {}
        for reduction in ("sum", "mean"):
            def loss(x, w, diff, reduction=reduction):
                return fused(x, y, w, implementation=impl, block_size=block_size,
                             reduction=reduction, **diff, **kw)
            val, (gx, gw, gdiff) = jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, diff)
            out[reduction] = val, (gx, gw, *(gdiff[k] for k in sorted(gdiff)))
        return out

    return jax.jit(both)(x, w, diff)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("shape", "name"), CASES,
                         ids=["x".join(map(str, s)) + "-" + n for s, n in CASES])
def test_scalar_kernel_float64_matches_numpy_and_autodiff(shape, name):
    # reduction="sum"/"mean": the gradients come from the forward pass (three matmuls);
    # block_size sets the rows per tile, so N = 21 walks several tiles (padded to a
    # multiple of the tile count where none divides N).
    n, d, v, block = shape
    x, y, w, kw = make(n, d, v, seed=n + v, options=OPTION_SETS[name], dtype=np.float64)
    x, w = jnp.asarray(x), jnp.asarray(w)
    kw = {k: jnp.asarray(a) if isinstance(a, np.ndarray) else a for k, a in kw.items()}
    got = scalar_value_and_grads("chunked", x, y, w, kw, block_size=block)
    ref = scalar_value_and_grads("reference", x, y, w, kw)
    for reduction in ("sum", "mean"):
        (val, grads), (ref_val, ref_grads) = got[reduction], ref[reduction]
        np.testing.assert_allclose(val, np_loss(x, y, w, reduction=reduction, **kw),
                                   rtol=1e-10, atol=1e-12, err_msg=reduction)
        np.testing.assert_allclose(val, ref_val, rtol=1e-10, atol=1e-12, err_msg=reduction)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12, err_msg=reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_and_lse(reduction):
    x, y, w, kw = make(21, 8, 37, seed=3, options=OPTION_SETS["all"])
    loss, lse = jax.jit(lambda x, w: fused(x, y, w, reduction=reduction, return_lse=True,
                                           block_size=8, **kw))(x, w)
    np.testing.assert_allclose(loss, np_loss(x, y, w, reduction=reduction, **kw),
                               rtol=2e-5, atol=2e-5)
    z = x.astype(np.float64) @ w + kw["bias"]
    z = kw["soft_cap"] * np.tanh(z / kw["soft_cap"])
    m = z.max(-1)
    np.testing.assert_allclose(lse, m + np.log(np.exp(z - m[:, None]).sum(-1)), rtol=2e-6)
    assert lse.dtype == jnp.float32
    assert lse.shape == (21,)


TOLERANCES = {  # loss and gradients against the reference at the same input dtype
    jnp.float32: 2e-5,
    jnp.bfloat16: 2e-2,
    jnp.float16: 4e-3,
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=lambda t: jnp.dtype(t).name)
def test_low_precision_matches_reference(dtype):
    # Two tiles of 8 rows and three blocks of 8 classes: loops without tails (the
    # float64 tests cover the tails), so that each compiles one body.
    x, y, w, kw = make(16, 16, 24, seed=5, options=OPTION_SETS["all"])
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    kw = {k: jnp.asarray(a, dtype) if k in ("bias", "class_weights") else a
          for k, a in kw.items()}
    tol = TOLERANCES[dtype]
    (_, per_row), grads = value_and_grads("chunked", x, y, w, kw, "mean", block_size=8)
    (_, ref_row), ref_grads = value_and_grads("reference", x, y, w, kw, "mean")
    assert per_row.dtype == dtype
    np.testing.assert_allclose(np.float32(per_row), np.float32(ref_row), rtol=tol, atol=tol)
    # And against float64 numpy on the same (rounded) inputs: float32 accumulation.
    np.testing.assert_allclose(np.float32(per_row), np_loss(x, y, w, **kw), rtol=tol,
                               atol=tol)
    for g, r, p in zip(grads, ref_grads, (x, w, kw["bias"], kw["class_weights"]), strict=True):
        assert g.dtype == p.dtype
        assert g.shape == p.shape
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max())


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_reference_is_the_softmax_kernel(name):
    """The promise: lossax.softmax_cross_entropy_with_integer_labels(x @ W + b, ...)."""
    x, y, w, kw = make(9, 8, 11, seed=7, options=OPTION_SETS[name])
    kw = dict(kw)
    bias = kw.pop("bias", np.zeros(11, np.float32))

    def plain(x, w, b):
        logits = jnp.matmul(x, w, preferred_element_type=jnp.float32) + b[None, :]
        return lossax.softmax_cross_entropy_with_integer_labels(logits, y, reduction="mean",
                                                                 **kw)

    def ref(x, w, b):
        return fused(x, y, w, bias=b, reduction="mean", implementation="reference", **kw)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, w, bias)
    (v1, g1), (v2, g2) = grad(plain), grad(ref)
    np.testing.assert_allclose(v2, v1, rtol=2e-6)
    for a, b in zip(g2, g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("v", [2000, 50257])
def test_large_odd_vocabularies(v):
    """V = 2000 (one public kernel zero-pads W there and gets the loss wrong) and GPT-2's
    50257 (24 blocks of the default 2048 and a tail of 1105), default block size."""
    x, y, w, kw = make(3, 8, v, seed=v, options=("bias", "label_smoothing"))
    if v == 50257:  # forward only: the default block size, 24 blocks and a tail of 1105
        loss = jax.jit(lambda x, w: fused(x, y, w, **kw))(x, w)
        np.testing.assert_allclose(loss, np_loss(x, y, w, **kw), rtol=2e-5)
        return
    (_, per_row), grads = value_and_grads("chunked", x, y, w, kw, block_size=256)
    _, ref_grads = value_and_grads("reference", x, y, w, kw)
    np.testing.assert_allclose(per_row, np_loss(x, y, w, **kw), rtol=2e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-6)


def test_leading_batch_dimensions():
    x, y, w, kw = make(12, 8, 9, seed=11, options=("where",))
    x3, y3, where3 = x.reshape(3, 4, 8), y.reshape(3, 4), kw["where"].reshape(3, 4)

    @jax.jit
    def both(x3, w):
        per_row = fused(x3, y3, w, where=where3, return_lse=True, block_size=4)
        # A mask of a broadcastable shape: one flag per leading row.
        return per_row, fused(x3, y3, w, where=np.array([[True], [False], [True]]),
                              block_size=4)

    (loss, lse), masked = both(x3, w)
    assert loss.shape == (3, 4)
    assert lse.shape == (3, 4)
    np.testing.assert_allclose(loss.reshape(-1), np_loss(x, y, w, where=kw["where"]),
                               rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(masked[1], 0)
    unmasked = np_loss(x, y, w).reshape(3, 4)
    np.testing.assert_allclose(masked[np.array([0, 2])], unmasked[np.array([0, 2])], rtol=2e-5)


def test_scalar_and_empty_batches():
    w = np.arange(5, dtype=np.float32)[None, :] * np.ones((4, 1), np.float32)

    @jax.jit
    def run(x1, x0, y0):
        # One example: x [D], a scalar label; logits 6 * [0, 1, 2, 3, 4].
        one = fused(x1, jnp.int32(2), w, return_lse=True)
        # No examples: an empty loss, a mean of 0 and a zero gradient.
        empty = jax.value_and_grad(lambda w: fused(x0, y0, w, reduction="mean"))(w)
        return one, fused(x0, y0, w), empty

    (loss, lse), none, (mean, dw) = run(np.arange(4, dtype=np.float32),
                                        np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    expected_lse = np.log(np.exp(6.0 * np.arange(5)).sum())
    assert loss.shape == ()
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-6)
    np.testing.assert_allclose(loss, expected_lse - 12.0, rtol=1e-6)
    assert none.shape == (0,)
    assert mean == 0
    assert not np.any(dw)


def test_masked_ignored_and_out_of_range_rows():
    x, y, w, _ = make(10, 8, 6, seed=13)
    y[1], y[2] = IGNORE, 6  # ignored; out of range (NaN, loud)
    where = np.ones(10, bool)
    where[3] = False

    def loss(x, w):
        return fused(x, y, w, where=where, ignore_index=IGNORE, block_size=4)

    @jax.jit
    def run(x, w):
        # The gradient of every row but the NaN one.
        dx = jax.grad(lambda x: jnp.sum(jnp.where(jnp.arange(10) == 2, 0, loss(x, w))))(x)
        # A fully masked batch: mean 0 and gradient 0, no NaN.
        none = jnp.zeros(10, bool)
        empty = jax.value_and_grad(lambda x, w: fused(x, y, w, where=none, reduction="mean"),
                                   argnums=(0, 1))(x, w)
        return loss(x, w), dx, empty

    out, dx, (val, (gx, gw)) = run(x, w)
    assert out[1] == 0
    assert out[3] == 0
    assert np.isnan(out[2])
    assert np.all(np.isfinite(np.delete(np.asarray(out), 2)))
    np.testing.assert_array_equal(dx[np.array([1, 3])], 0)  # masked and ignored rows
    # An out-of-range label's gradient is NaN too (loud, as in the softmax kernel).
    assert np.all(np.isnan(dx[2]))
    assert np.all(np.isfinite(np.delete(np.asarray(dx), 2, axis=0)))
    assert val == 0
    assert not np.any(gx)
    assert not np.any(gw)


def test_extreme_logits_stay_finite():
    """Logits of +-1e4 (float32): online log-sum-exp rescaling must not overflow."""
    x, y, w, _ = make(9, 4, 13, seed=17)
    w = w * 3e3
    (val, _), grads = value_and_grads("chunked", x, y, w, {}, block_size=4)
    (ref_val, _), ref_grads = value_and_grads("reference", x, y, w, {})
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3 * np.abs(r).max())


def test_minus_inf_bias_masks_classes():
    """A bias of -inf leaves a class out (the documented class mask)."""
    x, y, w, _ = make(6, 4, 7, seed=19)
    y = np.minimum(y, 4)
    bias = np.zeros(7, np.float32)
    bias[5:] = -np.inf
    (_, loss), (_, dw, _) = value_and_grads("chunked", x, y, w, {"bias": bias}, block_size=3)
    np.testing.assert_allclose(loss, np_loss(x, y, w[:, :5]), rtol=2e-5)
    np.testing.assert_array_equal(dw[:, 5:], 0)


def test_mixed_dtypes():
    """bfloat16 activations with float32 weights: the matmul in float32, each gradient
    in its input's dtype."""
    x, y, w, _ = make(9, 8, 10, seed=23)
    xb = jnp.asarray(x, jnp.bfloat16)
    (loss, _), (dx, dw) = value_and_grads("chunked", xb, y, w, {}, block_size=4)
    assert loss.dtype == jnp.float32
    assert dx.dtype == jnp.bfloat16
    assert dw.dtype == jnp.float32
    np.testing.assert_allclose(loss, np_loss(xb, y, w, reduction="sum"), rtol=1e-5)


# --------------------------------------------------------------------------------------
# Autodiff.
# --------------------------------------------------------------------------------------


def _grad_check_case(reduction, implementation=None):
    x, y, w, kw = make(16, 3, 6, seed=29, options=OPTION_SETS["all"], dtype=np.float64)
    bias = kw.pop("bias")
    kw = {k: jnp.asarray(a) if isinstance(a, np.ndarray) else a for k, a in kw.items()}

    @jax.jit
    def loss(x, w, b):
        out = fused(x, y, w, bias=b, block_size=3, reduction=reduction,
                    implementation=implementation, **kw)
        return out if reduction == "sum" else jnp.sum(out * jnp.arange(1.0, 17.0))

    return loss, (jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_check_grads_order_2(reduction):
    # Orders 1 and 2 (check_grads checks order 1 first) in the default modes (fwd and rev)
    # for the scalar kernel (reduction="sum"), and in reverse plus forward over reverse
    # (jax.hessian) for the per-row one (its pure jvp raises: test_forward_mode).
    f, args = _grad_check_case(reduction)
    if reduction == "sum":
        check_grads(f, args, order=2)
        return
    check_grads(f, args, order=2, modes=["rev"])
    hess = jax.hessian(f, argnums=0)(*args)
    ref, _ = _grad_check_case("none", implementation="reference")
    np.testing.assert_allclose(hess, jax.hessian(ref, argnums=0)(*args), rtol=1e-9,
                               atol=1e-12)


def test_forward_mode():
    # The scalar kernel has a forward mode (its tangent is <gradient, tangent>); the
    # per-row kernel (a custom VJP) raises a clear error naming the alternatives.
    x, y, w, kw = make(5, 4, 6, seed=31, options=("bias", "z_loss"))
    tx, tw = np.ones_like(x), np.full_like(w, 0.5)
    _, (gx, gw, _) = value_and_grads("chunked", x, y, w, kw)
    for impl in ("reference", "chunked"):
        f = functools.partial(fused, labels=y, reduction="sum", implementation=impl, **kw)
        _, tangent = jax.jit(lambda *a, f=f: jax.jvp(lambda x, w: f(x, weights=w), a[:2],
                                                     a[2:]))(x, w, tx, tw)
        np.testing.assert_allclose(tangent, np.sum(gx * tx) + np.sum(gw * tw), rtol=1e-5)
    with pytest.raises(TypeError, match=r"forward-mode.*implementation='reference'"):
        jax.jvp(lambda x: fused(x, y, w), (x,), (tx,))


def test_traces_once():
    traces = []

    def loss(x, w):
        traces.append(1)
        return fused(x, y, w, reduction="mean", block_size=4)

    x, y, w, _ = make(9, 4, 10, seed=37)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for i in range(3):
        step(x + i, w)
    assert len(traces) == 1


# --------------------------------------------------------------------------------------
# Memory: compiled, never run.
# --------------------------------------------------------------------------------------


def _temp_bytes(n, d, v, dtype, reduction="none"):
    def loss(x, w, y):
        out = fused(x, y, w, reduction=reduction)
        return out if reduction != "none" else jnp.mean(out.astype(jnp.float32))

    args = (jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((d, v), dtype),
            jax.ShapeDtypeStruct((n,), jnp.int32))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_the_vocabulary(monkeypatch):
    """The per-row kernel under jit(value_and_grad) at N=4096, D=1024: temporaries under
    10% of the [N, V] float32 logits at V=32768, and no larger at V=131072."""
    monkeypatch.setattr(be, "FUSED_SIZES_CPU", DEFAULT_SIZES)
    n, d = 4096, 1024
    small = _temp_bytes(n, d, 32768, jnp.float32)
    large = _temp_bytes(n, d, 131072, jnp.float32)
    assert small < 0.1 * n * 32768 * 4, small / 2**20
    assert large <= small, (small / 2**20, large / 2**20)


def test_bfloat16_weights_are_never_copied_to_float32(monkeypatch):
    monkeypatch.setattr(be, "FUSED_SIZES_CPU", DEFAULT_SIZES)
    n, d, v = 4096, 1024, 32768
    assert _temp_bytes(n, d, v, jnp.bfloat16) < d * v * 4


def test_scalar_kernel_memory_is_the_dw_accumulator_and_one_tile(monkeypatch):
    """reduction="mean": a float32 accumulator the size of W (its price), one tile of
    logits over the vocabulary, and O(N * D); still no [N, V] array."""
    monkeypatch.setattr(be, "FUSED_SIZES_CPU", DEFAULT_SIZES)
    n, d, v = 4096, 1024, 32768
    tile = DEFAULT_SIZES.scalar_tile_elements * 4
    for dtype in (jnp.float32, jnp.bfloat16):
        temp = _temp_bytes(n, d, v, dtype, "mean")
        # bfloat16 on XLA:CPU: its dot also converts W to float32 (one more W's worth).
        accumulators = d * v * 4 * (2 if dtype == jnp.bfloat16 else 1)
        assert temp <= accumulators + 3 * tile + 2 * n * d * 4, temp / 2**20
        assert temp < n * v * 4  # less than the float32 logits


# --------------------------------------------------------------------------------------
# The vocabulary sharded over devices (inside shard_map).
# --------------------------------------------------------------------------------------
#
# The working idiom (jax 0.10): build the mesh with jax.make_mesh, place every input
# with jax.device_put(a, NamedSharding(mesh, spec)) using the same spec as shard_map's
# in_specs (shard_map does not reshard its inputs), and call the shard_map-ed function
# under jax.jit.  Inside, weights [D, V/shards] and bias [V/shards] are local slices;
# labels, x and class_weights are whole.


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("mesh_shape", [(8,), (2, 4)], ids=["vocab8", "rows2xvocab4"])
def test_vocab_sharded_matches_unsharded(mesh_shape, check_vma):
    axes = ("vocab",) if len(mesh_shape) == 1 else ("rows", "vocab")
    mesh = jax.make_mesh(mesh_shape, axes)
    rows = None if len(mesh_shape) == 1 else "rows"
    x, y, w, kw = make(16, 8, 48, seed=41, options=OPTION_SETS["all"])
    kw = dict(kw)
    bias, where, cw = kw.pop("bias"), kw.pop("where"), kw.pop("class_weights")

    def local(x, y, w, b, where, cw):
        loss = fused(x, y, w, bias=b, where=where, class_weights=cw, reduction="sum",
                     block_size=3, vocab_axis_name="vocab", **kw)
        return loss if rows is None else jax.lax.psum(loss, rows)

    specs = (P(rows), P(rows), P(None, "vocab"), P("vocab"), P(rows), P())
    step = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(),
                         check_vma=check_vma)
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((x, y, w, bias, where, cw), specs, strict=True)]
    val, grads = jax.jit(jax.value_and_grad(step, argnums=(0, 2, 3, 5)))(*args)
    ref_val, ref_grads = jax.jit(jax.value_and_grad(
        lambda x, w, b, cw: fused(x, y, w, bias=b, where=where, class_weights=cw,
                                  reduction="sum", **kw),
        argnums=(0, 1, 2, 3)))(x, w, bias, cw)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_vocab_sharded_collectives_are_per_row():
    """Only O(N) values cross devices in the forward; dx (O(N * D)) in the backward."""
    mesh = jax.make_mesh((8,), ("vocab",))
    n, d, v = 16, 8, 64
    x, y, w, _ = make(n, d, v, seed=43)
    step = jax.shard_map(
        lambda x, y, w: fused(x, y, w, reduction="sum", vocab_axis_name="vocab"),
        mesh=mesh, in_specs=(P(), P(), P(None, "vocab")), out_specs=P())
    args = (jax.device_put(x, NamedSharding(mesh, P())),
            jax.device_put(y, NamedSharding(mesh, P())),
            jax.device_put(w, NamedSharding(mesh, P(None, "vocab"))))
    hlo = jax.jit(jax.grad(step, argnums=(0, 2))).lower(*args).compile().as_text()
    sizes = []
    for line in hlo.splitlines():
        if re.search(r"\ball-reduce(-start)?\(", line):
            result_type = line.split("=", 1)[1].split("all-reduce")[0]
            sizes += [int(np.prod([int(t) for t in dims.split(",") if t]))
                      for dims in re.findall(r"\w+\[([\d,]*)\]", result_type)]
    assert sizes
    assert max(sizes) <= n * d, sizes  # never O(N * V)


# --------------------------------------------------------------------------------------
# Errors at trace time.
# --------------------------------------------------------------------------------------

_X, _Y, _W = np.ones((3, 4), np.float32), np.zeros(3, np.int32), np.ones((4, 5), np.float32)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((_X.astype(np.int32), _Y, _W), {}, TypeError, "x must be a floating-point"),
        ((_X, _Y.astype(np.float32), _W), {}, TypeError, "labels must be an integer"),
        ((_X, _Y, _W[:3]), {}, ValueError, r"weights has shape \(3, 5\)"),
        ((_X, _Y, _W[0]), {}, ValueError, r"weights has shape \(5,\)"),
        ((_X, _Y[:2], _W), {}, ValueError, r"labels has shape \(2,\)"),
        ((_X, _Y, _W), {"bias": np.ones(4, np.float32)}, ValueError, r"bias has shape \(4,\)"),
        ((_X, _Y, _W), {"where": np.ones((3, 5), bool)}, ValueError, "where has shape"),
        ((_X, _Y, _W), {"where": np.ones(3)}, TypeError, "where must be a boolean"),
        ((_X, _Y, _W), {"class_weights": np.ones(4, np.float32)}, ValueError,
         "class_weights has shape"),
        ((_X, _Y, _W), {"block_size": 0}, ValueError, "block_size must be a positive"),
        ((_X, _Y, _W), {"block_size": 2.5}, TypeError, "block_size must be a positive"),
        ((_X, _Y, _W), {"implementation": "pallas"}, ValueError, "implementation must be"),
        ((_X, _Y, _W), {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ((_X, _Y, _W), {"reduction": "avg"}, ValueError, "reduction must be"),
        ((np.float32(1.0), _Y, _W), {}, ValueError, "x must have shape"),
    ],
)
def test_bad_arguments_raise(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        jax.jit(lambda *a: fused(*a, **kwargs)).lower(*args)


def test_dispatch_table():
    assert set(IMPLEMENTATIONS) == {"chunked", "reference"}
    x, y, w, _ = make(4, 4, 5)
    np.testing.assert_allclose(fused(x, y, w), fused(x, y, w, implementation="chunked"))


# --------------------------------------------------------------------------------------
# Data parallelism under plain jax.jit: rows sharded, W replicated (or split over D).
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_data_parallel_splits_the_work(monkeypatch, reduction, layout, axis_type):
    # Strided row tiles never slice the sharded row axis: each of 8 devices computes its
    # own rows (an eighth of the flops), nothing gathers x, the logits or a gradient
    # accumulator (FSDP gathers only W, as FSDP does), and the numbers are one device's.
    from helpers import collectives, compiled_flops

    monkeypatch.setattr(be, "FUSED_SIZES_CPU", be.FusedSizes(64, 64 * 64, 64 * 64))
    n, d, v = 256, 16, 200
    x, y, w, _ = make(n, d, v, seed=43)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    rows = NamedSharding(mesh, P("data"))
    w_sharding = NamedSharding(mesh, P() if layout == "dp" else P("data", None))

    def loss(x, w, y):
        out = fused(x, y, w, reduction=reduction, block_size=64)
        return out if reduction != "none" else jnp.mean(out)

    step = jax.value_and_grad(loss, argnums=(0, 1))
    placed = (jax.device_put(x, rows), jax.device_put(w, w_sharding), jax.device_put(y, rows))
    sharded = jax.jit(step, in_shardings=(rows, w_sharding, rows))
    compiled = sharded.lower(*placed).compile()
    one = jax.jit(step).lower(x, w, y).compile()
    assert compiled_flops(compiled) <= 0.15 * compiled_flops(one)
    for kind, shapes in collectives(compiled.as_text()):
        if kind == "all-gather":
            assert layout == "fsdp", shapes
            # FSDP gathers a block of W [D, block], never rows.
            assert all(s[0] == d for s in shapes), shapes
    val, grads = sharded(*placed)
    ref_val, ref_grads = one(x, w, y)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)
