"""The numerics core: row statistics (windowed and not), layouts, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossax
from helpers import assert_close, rng, to_f64
from lossax import _backend as be
from lossax import _numerics as nx

# --------------------------------------------------------------------------------------
# row_stats: the windowed (CPU, reduce_window) path equals the one-pass path and a reference.
# --------------------------------------------------------------------------------------


def ref_stats(x, mask, t):
    """float64: lse, sum_j t_j (lse - x_j) (0 where t_j = 0), sum_j t_j, sum_j t_j p_j."""
    x = to_f64(x)
    xm = np.where(mask, x, -np.inf)
    m = np.max(xm, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s = np.log(np.sum(np.exp(xm - m), -1, keepdims=True))
        logp = xm - m - log_s
        nll = np.sum(np.where(t != 0, -t * logp, 0), -1)
    return (m + log_s)[..., 0], nll, t.sum(-1), np.sum(t * np.exp(logp), -1)


@pytest.mark.parametrize("v", [1, 6, 7, 8, 13, 21, 23])
@pytest.mark.parametrize("masked", [False, True])
def test_row_stats_blocked_matches_one_pass_and_reference(v, masked, monkeypatch):
    r = rng(v)
    x = jnp.asarray((r.standard_normal((5, v)) * 4).astype(np.float32))
    mask = r.random((5, v)) < 0.7 if masked else np.ones((5, v), bool)
    if masked:
        mask[1] = False  # a fully masked row
        mask[2, -1] = True  # the ragged tail window holds an unmasked class
    x = x.at[2, -1].set(20.0)  # the row max in the tail window
    t = r.random((5, v)).astype(np.float32)
    t[3, 0] = 0.0
    t = np.where(mask, t, 0).astype(np.float32)
    cls = jnp.asarray(mask) if masked else None

    def stats():
        return nx.row_stats(x, cls_where=cls, targets=lambda y: y.astype(jnp.float32),
                            target_inputs=(jnp.asarray(t),), with_weighted_exp=True)

    one = jax.jit(stats)()
    # Rows longer than 4 classes in windows of 7 (the CPU lowering's long-row path).
    monkeypatch.setattr(be, "CPU_LONG_ROW", 4)
    monkeypatch.setattr(be, "CPU_ROW_WINDOW", 7)
    blocked = jax.jit(stats)()
    for name in ("lse", "weighted_nll", "target_mass", "weighted_exp", "lse_lo"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(one, name), rtol=1e-6,
                                   atol=1e-6, err_msg=name)
    lse, nll, mass, wexp = ref_stats(x, mask, t)
    valid = mask.any(-1)
    assert np.isneginf(np.asarray(blocked.lse)[~valid]).all()  # log 0, not NaN
    assert_close(blocked.lse[valid], lse[valid])
    assert_close(blocked.weighted_nll[valid], nll[valid])
    assert_close(blocked.target_mass, mass)
    assert_close(blocked.weighted_exp[valid], wexp[valid])


@pytest.mark.parametrize("kind", ["max", "sum"])
@pytest.mark.parametrize(("v", "block"), [(7, 7), (8, 7), (20, 7), (21, 7), (5, 16), (0, 4)])
def test_row_reduce_windows(kind, v, block):
    x = jnp.asarray(rng(v).standard_normal((3, v)).astype(np.float32))
    got = be._windowed(x, kind, block) if v else be.row_reduce(x, kind)
    if v == 0:  # no classes: an empty row
        expected = np.full(3, -np.inf if kind == "max" else 0.0)
    else:
        expected = np.max(np.asarray(x), -1) if kind == "max" else np.sum(np.asarray(x), -1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_row_stats_with_a_soft_cap_prepare(monkeypatch):
    # prepare maps raw values to the compute dtype (monotone: the max is taken raw).
    x = jnp.asarray(rng(0).standard_normal((4, 9)).astype(np.float32) * 10)
    cap = lambda v: 3.0 * jnp.tanh(v.astype(jnp.float32) / 3.0)
    one = jax.jit(lambda a: nx.row_stats(a, prepare=cap))(x)
    monkeypatch.setattr(be, "CPU_LONG_ROW", 4)
    monkeypatch.setattr(be, "CPU_ROW_WINDOW", 4)
    blocked = jax.jit(lambda a: nx.row_stats(a, prepare=cap))(x)
    expected = np.log(np.sum(np.exp(3 * np.tanh(to_f64(x) / 3)), -1))
    assert_close(one.lse, expected)
    assert_close(blocked.lse, expected)


def test_lse_lo_keeps_what_rounding_lost():
    # Two tied maxima at 1e30: lse = 1e30 + log 2 rounds to 1e30 in float32; lse_lo
    # holds the log 2, so the loss -log p = (m - x) + log(s) stays exact.
    x = jnp.array([[1e30, 1e30, -1e30], [0.0, 0.0, 0.0]], jnp.float32)
    stats = nx.row_stats(x, targets=lambda: jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert np.asarray(stats.lse)[0] == np.float32(1e30)
    np.testing.assert_allclose(stats.lse_lo, [np.log(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(stats.weighted_nll, [np.log(2), np.log(3)], rtol=1e-6)


def test_target_mass_on_a_neg_inf_logit_makes_weighted_nll_inf():
    x = jnp.array([[0.0, -jnp.inf, 1.0]] * 3)
    t = jnp.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.999, 1e-3, 0.0]])
    stats = nx.row_stats(x, targets=lambda: t)
    nll = np.asarray(stats.weighted_nll)
    assert np.isfinite(nll[0])
    assert np.isposinf(nll[1:]).all()
    # ... and the kernel's derivative stays finite (the overflow carries no gradient).
    g = jax.grad(lambda a: lossax.softmax_cross_entropy(a, t).sum())(x)
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("v", [8192, 40000])
def test_row_stats_writes_no_converted_or_masked_copy(dtype, v):
    # One fused pass per statistic: no [N, V] temporary, for bf16 inputs (converted
    # inside each fusion) and on the blocked path.  Compile only.
    n = 128
    xs = jax.ShapeDtypeStruct((n, v), dtype)

    def f(x):
        s = nx.row_stats(x, targets=lambda y: y.astype(jnp.float32), target_inputs=(x,))
        return s.lse, s.weighted_nll
    temp = jax.jit(f).lower(xs).compile().memory_analysis().temp_size_in_bytes
    assert temp < 0.05 * n * v * 4


def test_long_rows_are_windowed_in_the_cpu_lowering_only():
    # The long-row path is chosen when lowering: reduce-window on CPU, a plain reduction
    # in the same function exported for TPU or GPU.
    assert be.CPU_LONG_ROW == 32768
    assert be.CPU_ROW_WINDOW == 16384
    f = jax.jit(lambda x: be.row_reduce(x, "sum"))
    long_row = jax.ShapeDtypeStruct((2, be.CPU_LONG_ROW + 1), jnp.float32)
    short_row = jax.ShapeDtypeStruct((2, be.CPU_LONG_ROW), jnp.float32)
    assert "reduce_window" in f.lower(long_row).as_text()
    assert "reduce_window" not in f.lower(short_row).as_text()
    for platform in ("tpu", "cuda"):
        exported = jax.export.export(f, platforms=[platform])(long_row)
        assert "reduce_window" not in exported.mlir_module()


# --------------------------------------------------------------------------------------
# Layouts: class axes moved last and flattened; where split into row / class masks.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "expected"), [
    (-1, (3,)), (1, (1,)), ((3, 1), (3, 1)), ([0, 2], (0, 2)), (None, (0, 1, 2, 3)),
])
def test_canonicalize_axes(axis, expected):
    assert nx.canonicalize_axes(axis, 4) == expected


def test_layout_and_to_canonical_flatten_class_axes_in_order():
    x = jnp.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    layout = nx.make_layout(x.shape, (3, 1))
    assert layout.batch_shape == (2, 4)
    assert layout.num_classes == 15
    got = nx.to_canonical(x, layout)
    expected = np.transpose(np.asarray(x), (0, 2, 3, 1)).reshape(2, 4, 15)
    np.testing.assert_array_equal(got, expected)
    assert nx.make_layout((2, 3), -1).is_identity(2)


def test_split_where():
    shape = (2, 3, 4)
    layout = nx.make_layout(shape, 1)  # batch (2, 4), classes 3
    row, cls = nx.split_where(jnp.ones((2, 4), bool), shape, layout)
    assert row.shape == (2, 4)
    assert cls is None
    row, cls = nx.split_where(jnp.ones((4,), bool), shape, layout)  # broadcast batch mask
    assert row.shape == (2, 4)
    assert cls is None
    row, cls = nx.split_where(jnp.ones((2, 1, 4), bool), shape, layout)  # constant in class
    assert row.shape == (2, 4)
    assert cls is None
    w = jnp.asarray(rng(0).random(shape) < 0.5)
    row, cls = nx.split_where(w, shape, layout)
    assert row is None
    np.testing.assert_array_equal(cls, np.moveaxis(np.asarray(w), 1, -1))
    for bad in [(3,), (2, 3), (5, 2, 4), (2, 2, 4)]:
        with pytest.raises(ValueError, match="where has shape"):
            nx.split_where(jnp.ones(bad, bool), shape, layout)


# --------------------------------------------------------------------------------------
# Validation helpers and small utilities.
# --------------------------------------------------------------------------------------


def test_as_float_array():
    assert nx.as_float_array(1.5, "x").dtype == jnp.float32
    assert nx.as_float_array(np.float16(1), "x").dtype == jnp.float16
    for bad, pattern in [(1, "integer"), (True, "floating"), (jnp.ones(2, jnp.int32), "int32"),
                         (jnp.ones(2, bool), "bool"), (jnp.ones(2, jnp.complex64), "real")]:
        with pytest.raises(TypeError, match=rf"x must be .*{pattern}|{pattern}"):
            nx.as_float_array(bad, "x")


def test_as_int_array_and_bool_mask():
    assert nx.as_int_array(3, "labels").dtype == jnp.int32
    assert nx.as_int_array([1, 2], "labels").shape == (2,)
    for bad in (1.0, [1.0], jnp.ones(2), True, "a"):
        with pytest.raises(TypeError, match="labels must be an integer array"):
            nx.as_int_array(bad, "labels")
    assert nx.as_bool_mask(None) is None
    assert nx.as_bool_mask([True, False]).dtype == jnp.bool_
    with pytest.raises(TypeError, match=r"where must be a boolean array.*int"):
        nx.as_bool_mask(jnp.ones(2, jnp.int32))


def test_check_float_option_and_reduction():
    assert nx.check_float_option(0.5, "label_smoothing", lo=0, hi=1) == 0.5
    assert nx.check_float_option(np.float32(1), "label_smoothing", lo=0, hi=1) == 1.0
    for bad in (-0.1, 1.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\]"):
            nx.check_float_option(bad, "label_smoothing", lo=0.0, hi=1.0)
    with pytest.raises(ValueError, match=r"soft_cap must be in \(0.0, inf\)"):
        nx.check_float_option(0.0, "soft_cap", lo=0.0, lo_open=True)
    with pytest.raises(TypeError, match="z_loss must be a float"):
        nx.check_float_option("big", "z_loss", lo=0.0)
    with pytest.raises(TypeError, match="z_loss must be a Python float known at trace time"):
        jax.jit(lambda z: nx.check_float_option(z, "z_loss", lo=0.0))(1.0)
    for r in ("none", "sum", "mean"):
        assert nx.check_reduction(r) == r
    with pytest.raises(ValueError, match="reduction must be one of"):
        nx.check_reduction("avg")


def test_small_utilities():
    assert nx.compute_dtype(jnp.bfloat16) == jnp.float32
    assert nx.compute_dtype(jnp.float16) == jnp.float32
    assert nx.compute_dtype(jnp.float32) == jnp.float32
    assert nx.compute_dtype(jnp.float64) == jnp.float64
    np.testing.assert_array_equal(nx.finite_or_zero(jnp.array([1.0, -jnp.inf, jnp.inf])),
                                  [1.0, 0.0, 0.0])
    b = jnp.arange(2)
    assert "shape (2,) and dtype int32" in nx.describe(b)
