"""Softmax cross-entropy kernels: values, gradients, numerics, memory and errors.

Expected values come from the float64 reference in ``helpers.ref_softmax_ce`` (written
from the formulas, gradient by hand), from optax, or from a formula in a comment.
The options (ignore_index, label_smoothing, ...) are tested in the last section; the
random differential tests against optax are in test_optax_parity.py.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import lossax
from helpers import (
    FLOAT_DTYPES,
    assert_close,
    count_traces,
    logits_and_labels,
    ref_softmax_ce,
    rng,
    to_f64,
    tol,
    ulp_distance,
    weighted,
)
from lossax import _backend as be
from lossax import _numerics as nx

INT = lossax.softmax_cross_entropy_with_integer_labels
DENSE = lossax.softmax_cross_entropy

# (batch shape, V, mask): a scalar example, V=1, a 2-d batch with V odd, each with no
# mask, a row mask and a class mask (with a fully masked row); an empty batch.
MASKS = [None, "row", "class"]
CASES = [(b, v, m) for b, v in [((), 5), ((4,), 1), ((2, 3), 33)] for m in MASKS]
CASES.append(((0,), 4, None))


def make_where(kind, batch, v, seed=1):
    """A mask of the batch shape ("row") or of the logits' shape ("class"); both leave
    out at least one row entirely when there is more than one row."""
    r = rng(seed)
    if kind is None:
        return None, None, None
    if kind == "row":
        w = r.random(batch) < 0.6
        if w.size > 1:
            w.flat[0] = False
            w.flat[-1] = True
        return jnp.asarray(w), w, None
    w = r.random((*batch, v)) < 0.6
    if w.size:
        flat = w.reshape(-1, v)
        flat[-1] = True  # one full row
        if flat.shape[0] > 1:
            flat[0] = False  # one fully masked row
        w = flat.reshape(w.shape)
    return jnp.asarray(w), None, w


def soft_targets(shape, seed=2, dtype=np.float32):
    r = rng(seed)
    t = r.random(shape) ** 3
    return (t / np.maximum(t.sum(-1, keepdims=True), 1e-9)).astype(dtype)


def cotangent(batch, seed=3):
    # Values exact in bfloat16, so that the cotangent reaching a bf16 loss is unrounded.
    return np.asarray(rng(seed).choice([0.5, 1.0, 1.5, 2.0, -1.0], size=batch), np.float32)


def value_and_grad(f, x, ct):
    """(f(x), d sum(f(x) * ct) / dx), jitted once; f may return a tuple."""
    def run(x):
        out, vjp = jax.vjp(f, x)
        cts = jax.tree.map(lambda o, c: jnp.asarray(c).astype(o.dtype), out, ct)
        return out, vjp(cts)[0]
    return jax.jit(run)(x)


# --------------------------------------------------------------------------------------
# Values and gradients against the float64 reference, per dtype.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "v", "mask"), CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_values_and_gradients_match_reference(dtype, batch, v, mask):
    # Integer and dense labels in one jitted function: one compile per configuration.
    x, y = logits_and_labels(batch, v, seed=v, dtype=dtype)
    t = jnp.asarray(soft_targets((*batch, v)))
    where, row_w, cls_w = make_where(mask, batch, v)
    ct = cotangent(batch)
    out, dx = value_and_grad(
        lambda a: jnp.stack([INT(a, y, where=where), DENSE(a, t, where=where)]), x,
        np.stack([ct, 2 * ct]))
    ref_int, _, dx_int = ref_softmax_ce(x, y, row_where=row_w, cls_where=cls_w, cotangent=ct)
    ref_dense, _, dx_dense = ref_softmax_ce(x, targets=t, row_where=row_w, cls_where=cls_w,
                                            cotangent=2 * ct)
    assert out.dtype == dtype
    assert out.shape == (2, *batch)
    assert dx.dtype == dtype
    assert dx.shape == x.shape
    assert_close(out[0], ref_int, dtype)
    assert_close(out[1], ref_dense, dtype)
    assert_close(dx, dx_int + dx_dense, dtype)


def test_dense_label_gradient_is_negative_log_softmax():
    # d loss / d y_j = -log p_j (= lse - x_j), 0 on masked classes and masked rows.
    x, _ = logits_and_labels((3,), 5, seed=4)
    t = jnp.asarray(soft_targets((3, 5)))
    w = jnp.asarray([[True, True, False, True, True], [True] * 5, [False] * 5])
    dy = jax.jit(jax.grad(lambda y: DENSE(x, y, where=w).sum()))(t)
    logp = np.asarray(jax.nn.log_softmax(to_f64(x), where=np.asarray(w)), np.float64)
    expected = np.where(np.asarray(w), -logp, 0.0)
    assert_close(dy, expected)


def test_reference_gradient_formula_matches_autodiff(x64):
    # The hand-written gradient of the reference against autodiff of a plain jnp
    # implementation: checks the test oracle itself.
    x, y = logits_and_labels((4,), 6, seed=5, dtype=jnp.float64)
    plain = lambda a: jnp.sum(jax.nn.logsumexp(a, -1) - jnp.take_along_axis(
        a, y[:, None], -1)[:, 0])
    _, _, ref_dx = ref_softmax_ce(x, y)
    np.testing.assert_allclose(ref_dx, jax.jit(jax.grad(plain))(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", ["int", "dense"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradient_is_float32_gradient_rounded_once(fn, dtype):
    # Computed in float32 and rounded once: within 1 ulp of the float32 path's gradient
    # (on the same, exactly representable inputs) rounded to the input dtype.
    x, y = logits_and_labels((16,), 37, seed=6, dtype=dtype)
    t = jnp.asarray(soft_targets((16, 37)))
    f = (lambda a: INT(a, y)) if fn == "int" else (lambda a: DENSE(a, t))
    ct = cotangent((16,))
    _, g_low = value_and_grad(f, x, ct)
    _, g_32 = value_and_grad(f, x.astype(jnp.float32), ct)
    assert g_low.dtype == dtype
    assert ulp_distance(g_low, g_32.astype(dtype)).max() <= 1


# --------------------------------------------------------------------------------------
# Second order: the Hessian (check_grads of every option, mask and tuple axes, fwd and rev,
# is in tests/test_autodiff.py).
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["int", "dense"])
def test_hessian_is_total_mass_times_softmax_covariance(x64, fn):
    # For one row, d^2 loss / dx dx^T = T (diag(p) - p p^T), T = sum_j t_j (1 for a label).
    x, y = logits_and_labels((2,), 4, seed=11, dtype=jnp.float64)
    t = 1.7 * soft_targets((2, 4), dtype=np.float64)
    f = (lambda a: INT(a, y).sum()) if fn == "int" else (lambda a: DENSE(a, t).sum())
    h = jax.jit(jax.hessian(f))(x)  # jacrev(jacrev): reverse over reverse
    p = np.asarray(jax.nn.softmax(x))
    mass = np.ones(2) if fn == "int" else t.sum(-1)
    for i in range(2):
        expected = mass[i] * (np.diag(p[i]) - np.outer(p[i], p[i]))
        np.testing.assert_allclose(h[i, :, i, :], expected, atol=1e-12)
        np.testing.assert_allclose(h[i, :, 1 - i, :], 0.0, atol=0)


# --------------------------------------------------------------------------------------
# Numerics: -inf, masked rows, extreme logits.
# --------------------------------------------------------------------------------------


def test_neg_inf_logits_with_zero_label_weight_are_finite_where_optax_is_nan():
    x = jnp.array([[0.0, -jnp.inf, 1.0], [2.0, 3.0, -jnp.inf]])
    t = jnp.array([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0]])
    assert np.isnan(np.asarray(optax.losses.softmax_cross_entropy(x, t))).all()
    out, dx = value_and_grad(lambda a: DENSE(a, t), x, np.ones(2, np.float32))
    ref, _, ref_dx = ref_softmax_ce(x, targets=t)
    # log(1 + e) - 0 = 1.3133;  log(e^2 + e^3) - (0.25*2 + 0.75*3) = 0.5633
    np.testing.assert_allclose(ref, [np.log1p(np.e), np.log(np.e**2 + np.e**3) - 2.75])
    assert np.isfinite(np.asarray(out)).all()
    assert np.isfinite(np.asarray(dx)).all()
    assert_close(out, ref)
    assert_close(dx, ref_dx)
    assert np.asarray(dx)[0, 1] == 0
    assert np.asarray(dx)[1, 2] == 0
    y = jnp.array([0, 1])
    out, dx = value_and_grad(lambda a: INT(a, y), x, np.ones(2, np.float32))
    ref, _, ref_dx = ref_softmax_ce(x, y)
    assert_close(out, ref)
    assert_close(dx, ref_dx)


def test_label_on_neg_inf_logit_gives_inf_not_nan():
    x = jnp.array([[0.0, -jnp.inf, 1.0], [2.0, 3.0, -jnp.inf]])
    y = jnp.array([1, 2])
    out, dx = value_and_grad(lambda a: INT(a, y), x, np.ones(2, np.float32))
    assert np.isposinf(np.asarray(out)).all()
    _, _, ref_dx = ref_softmax_ce(x, y)  # p - onehot: finite
    assert_close(dx, ref_dx)
    # Dense: any target mass on a -inf logit, however small, makes the loss +inf.
    for mass in (1.0, 0.5, 1e-3):
        t = jnp.array([[1 - mass, mass, 0.0], [0.0, 1 - mass, mass]])
        out, dx = value_and_grad(lambda a, t=t: DENSE(a, t), x, np.ones(2, np.float32))
        assert np.isposinf(np.asarray(out)).all(), mass
        _, _, ref_dx = ref_softmax_ce(x, targets=t)
        assert_close(dx, ref_dx)


@pytest.mark.parametrize("mask", ["row", "class"])
@pytest.mark.parametrize("fn", ["int", "dense"])
def test_fully_masked_rows_give_zero_loss_and_zero_gradient(fn, mask):
    x, y = logits_and_labels((3,), 4, seed=12)
    x = x.at[1, 2].set(-jnp.inf)
    if mask == "row":
        where = jnp.array([True, False, False])
    else:
        where = jnp.array([[True] * 4, [False] * 4, [False] * 4])
    t = jnp.asarray(soft_targets((3, 4)))
    f = (lambda a: INT(a, y, where=where)) if fn == "int" else (
        lambda a: DENSE(a, t, where=where))
    out, dx = value_and_grad(f, x, np.ones(3, np.float32))
    assert np.all(np.asarray(out)[1:] == 0)
    assert np.asarray(out)[0] > 0
    assert np.all(np.asarray(dx)[1:] == 0)
    assert np.isfinite(np.asarray(dx)).all()


def test_fully_masked_rows_second_order(x64):
    x, y = logits_and_labels((3,), 4, seed=13, dtype=jnp.float64)
    where = jnp.array([[True, False, True, True], [False] * 4, [True] * 4])
    check_grads(jax.jit(functools.partial(INT, labels=y, where=where, reduction="mean")),
                (x,), order=2, modes=["rev"])
    h = jax.jit(jax.hessian(lambda a: DENSE(a, jnp.full((3, 4), 0.25), where=where).sum()))(x)
    assert np.isfinite(np.asarray(h)).all()
    assert np.all(np.asarray(h)[1] == 0)


# Rows of huge logits: ties at the top (log 2 must survive the shift), opposite signs,
# zeros.  In float32, m + log(2) rounds to m at 1e30: the loss must not lose it.
def _extreme(big, dtype):
    b = big
    x = np.array([[b, -b, 0.0, -b], [-b, -b, b, b], [b, b, -b, 0.0], [b / 2, -b, b, 0.0],
                  [0.0, 0.0, -b, -b]], np.float32)
    return jnp.asarray(x).astype(dtype), jnp.array([1, 2, 0, 3, 0])


@pytest.mark.parametrize(("big", "dtype"), [
    (1e30, jnp.float32), (3e38, jnp.float32), (6e4, jnp.float16), (1e30, jnp.bfloat16),
    (1e4, jnp.float16), (1e4, jnp.bfloat16),
])
def test_extreme_logits(big, dtype):
    x, y = _extreme(big, dtype)
    t = jax.nn.one_hot(y, 4, dtype=jnp.float32)
    if big < 1e38:
        # Soft, on every class.  (Near the float32 maximum, lse - x_j itself overflows:
        # mass on such a class gives +inf, as optax does.)
        t = t * 0.75 + 0.0625
    ones = np.ones(5, np.float32)
    outs, dx = value_and_grad(lambda a: (INT(a, y), DENSE(a, t)), x, (ones, ones))
    refs = [ref_softmax_ce(x, y), ref_softmax_ce(x, targets=t)]
    for out, ref in zip(outs, refs, strict=True):
        with np.errstate(over="ignore"):  # the true loss may overflow float32 too
            expected = np.asarray(jnp.asarray(ref[0].astype(np.float32)).astype(dtype))
        got = np.asarray(out.astype(jnp.float32))
        assert not np.isnan(got).any()
        # Rows whose true loss overflows the dtype give +inf; the others are accurate.
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        fin = np.isfinite(expected)
        assert_close(got[fin], ref[0][fin], dtype)
    # The gradient (of both losses summed) is finite and accurate everywhere.
    assert not np.isnan(np.asarray(dx, np.float32)).any()
    assert_close(dx, refs[0][2] + refs[1][2], dtype)
    # Two tied maxima at +big: the loss is log 2 exactly.
    assert_close(outs[0][2], np.log(2), dtype)


# --------------------------------------------------------------------------------------
# Memory: O(batch) residuals, temporaries no larger than optax's.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {}, {"where": "class"}, {"label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 5.0},
    {"ignore_index": -100, "class_weights": True, "reduction": "mean", "label_smoothing": 0.1},
])
@pytest.mark.parametrize("fn", ["int", "dense"])
def test_vjp_residuals_are_inputs_and_per_row_values(fn, kwargs):
    n, v = 8, 37
    x, y = logits_and_labels((n,), v, seed=14)
    t = jnp.asarray(soft_targets((n, v)))
    kw = dict(kwargs)
    inputs = [x] if fn == "int" else [x, t]
    if kw.get("where") == "class":
        kw["where"] = make_where("class", (n,), v)[0]
        inputs.append(kw["where"])
    if fn == "dense":
        kw.pop("ignore_index", None)
        kw.pop("class_weights", None)
        f = lambda a: DENSE(a, t, **kw)
    else:
        if kw.get("class_weights"):
            kw["class_weights"] = jnp.linspace(0.5, 2.0, v)
        f = lambda a: INT(a, y, **kw)
    _, vjp = jax.vjp(f, x)
    leaves = jax.tree.leaves(vjp)
    big = [leaf for leaf in leaves if leaf.size > max(n, v)]
    # Nothing of the logits' size beyond the inputs themselves (logits, dense labels, a
    # class mask): the backward pass recomputes softmax from the per-row log-sum-exp.
    assert len(big) == len(inputs)
    for leaf in big:
        assert any(leaf.shape == a.shape and np.array_equal(leaf, a) for a in inputs)


def _temp_bytes(f, *args):
    compiled = jax.jit(jax.value_and_grad(f)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_peak_temporaries_no_larger_than_optax(dtype):
    n, v = 256, 40000  # V > 32768: the blocked path on CPU
    xs = jax.ShapeDtypeStruct((n, v), dtype)
    ys = jax.ShapeDtypeStruct((n,), jnp.int32)
    ts = jax.ShapeDtypeStruct((n, v), dtype)
    f32 = lambda z: z.sum().astype(jnp.float32)
    ours = _temp_bytes(lambda a, b: f32(INT(a, b)), xs, ys)
    theirs = _temp_bytes(
        lambda a, b: f32(optax.losses.softmax_cross_entropy_with_integer_labels(a, b)), xs, ys)
    assert ours <= theirs
    assert ours < 0.05 * n * v * 4  # essentially none: no [N, V] temporary at all
    ours = _temp_bytes(lambda a, b: f32(DENSE(a, b)), xs, ts)
    theirs = _temp_bytes(lambda a, b: f32(optax.losses.softmax_cross_entropy(a, b)), xs, ts)
    assert ours <= theirs


# Per-row vectors (lse, its rounding, indices) may differ from optax's: O(N) bytes.
_ROW_SLACK = 32


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("n", "d", "v"), [(64, 32, 1024), (512, 64, 8192), (256, 32, 40000),
                                           (64, 16, 131072)])
def test_logits_made_in_the_same_jit_need_no_more_temporaries_than_optax(dtype, n, d, v):
    # h @ W then the loss: the backward's gradient of the logits is the only [N, V]
    # buffer lossax adds, as optax's (the label's term is a scatter, or on CPU for 16-bit
    # logits a select inside the gradient's fusion).
    hs = jax.ShapeDtypeStruct((n, d), dtype)
    ws = jax.ShapeDtypeStruct((d, v), dtype)
    ys = jax.ShapeDtypeStruct((n,), jnp.int32)

    def temp(loss):
        f = lambda h, w, y: loss(h @ w, y).astype(jnp.float32).mean()
        g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
        return g.lower(hs, ws, ys).compile().memory_analysis().temp_size_in_bytes

    ours = temp(INT)
    theirs = temp(optax.losses.softmax_cross_entropy_with_integer_labels)
    assert ours <= theirs + _ROW_SLACK * n


def _lm_step_temp_bytes(loss, dtype, vocab=2048, d=64, seq=32, batch=4):
    """Temporaries of a small transformer's whole train step (adamw), compiled."""
    def norm(x):
        scale = jax.lax.rsqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), -1, keepdims=True)
                              + 1e-6)
        return x * scale.astype(x.dtype)

    def forward(p, tok):
        x = p["emb"][tok]
        mask = jnp.tril(jnp.ones((tok.shape[1], tok.shape[1]), bool))
        q, k, u = jnp.split(norm(x) @ p["qkv"], 3, -1)
        a = jnp.einsum("btd,bsd->bts", q, k).astype(jnp.float32) / np.sqrt(d)
        a = jax.nn.softmax(jnp.where(mask, a, -jnp.inf), -1).astype(x.dtype)
        x = x + jnp.einsum("bts,bsd->btd", a, u) @ p["o"]
        x = x + jax.nn.gelu(norm(x) @ p["up"]) @ p["down"]
        return norm(x) @ p["out"]

    shapes = {"emb": (vocab, d), "qkv": (d, 3 * d), "o": (d, d), "up": (d, 4 * d),
              "down": (4 * d, d), "out": (d, vocab)}
    params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in shapes.items()}
    opt = optax.adamw(1e-3)

    def step(p, s, tok):
        def objective(p):
            return loss(forward(p, tok[:, :-1]), tok[:, 1:]).astype(jnp.float32).mean()
        value, g = jax.value_and_grad(objective)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    tok = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    with jax.numpy_dtype_promotion("standard"):  # optax's adamw mixes int and float
        state = jax.eval_shape(opt.init, params)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, tok).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_transformer_train_step_needs_no_more_temporaries_than_with_optax(dtype):
    ours = _lm_step_temp_bytes(INT, dtype)
    theirs = _lm_step_temp_bytes(optax.losses.softmax_cross_entropy_with_integer_labels, dtype)
    assert ours <= theirs + _ROW_SLACK * 4 * 32


@pytest.mark.parametrize("v", [4096, 40000])
def test_soft_cap_keeps_no_logits_sized_temporary_in_float32(v):
    # The cap's constants reach the passes through a barrier: as literals XLA:CPU wrote
    # their broadcasts out as [N, V] arrays (2 x 512 MiB at 4096 x 32768, measured).
    n = 256
    xs = jax.ShapeDtypeStruct((n, v), jnp.float32)
    ys = jax.ShapeDtypeStruct((n,), jnp.int32)
    f = lambda a, b: INT(a, b, soft_cap=30.0).sum()
    assert _temp_bytes(f, xs, ys) < 0.05 * n * v * 4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("v", [4096, 40000])
def test_label_smoothing_and_z_loss_keep_no_logits_sized_temporary(dtype, v):
    # Smoothing's extra pass (sum_j (lse - x_j)) reads the logits in place: no float32
    # copy of bfloat16 logits, no broadcast of lse written out (both were measured).
    n = 256
    xs = jax.ShapeDtypeStruct((n, v), dtype)
    ys = jax.ShapeDtypeStruct((n,), jnp.int32)
    f = lambda a, b: INT(a, b, label_smoothing=0.1, z_loss=1e-4, ignore_index=-1).astype(
        jnp.float32).sum()
    assert _temp_bytes(f, xs, ys) < 0.05 * n * v * 4
    assert jax.jit(f).lower(xs, ys).compile().memory_analysis().temp_size_in_bytes < (
        0.05 * n * v * 4)


# --------------------------------------------------------------------------------------
# Large vocabularies: the blocked reductions equal the one-pass path.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("v", "long_row", "window"), [(32769, None, None), (37, 16, 8),
                                                    (67, 16, 8), (40, 16, 8)])
def test_blocked_large_vocab_matches_unblocked_and_reference(v, long_row, window, monkeypatch):
    # Rows longer than be.CPU_LONG_ROW are reduced in windows in the CPU lowering; small
    # rows go through the same path with the constants patched down.
    if long_row is not None:
        monkeypatch.setattr(be, "CPU_LONG_ROW", long_row)
        monkeypatch.setattr(be, "CPU_ROW_WINDOW", window)
    assert v > be.CPU_LONG_ROW
    x, y = logits_and_labels((3,), v, seed=v, scale=4.0)
    x = x.at[0, v - 1].set(30.0)  # the max in the ragged tail window
    t = jnp.asarray(soft_targets((3, v)))
    where = jnp.asarray(rng(v).random((3, v)) < 0.9)
    ct = cotangent((3,))
    f = lambda a: jnp.stack([
        INT(a, y),
        INT(a, y, where=where, label_smoothing=0.1, z_loss=1e-3),
        DENSE(a, t),
    ])
    refs = [
        ref_softmax_ce(x, y, cotangent=ct),
        ref_softmax_ce(x, y, cls_where=np.asarray(where), label_smoothing=0.1, z_loss=1e-3,
                       cotangent=2 * ct),
        ref_softmax_ce(x, targets=t, cotangent=-ct),
    ]
    cts = np.stack([ct, 2 * ct, -ct])
    blocked = value_and_grad(f, x, cts)
    monkeypatch.setattr(be, "CPU_LONG_ROW", v)
    one_pass = value_and_grad(f, x, cts)
    np.testing.assert_allclose(blocked[0], one_pass[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(blocked[1], one_pass[1], rtol=1e-6, atol=1e-8)
    for k, ref in enumerate(refs):
        assert_close(blocked[0][k], ref[0])
    assert_close(blocked[1], sum(ref[2] for ref in refs), atol=1e-7)


# --------------------------------------------------------------------------------------
# Transformations: jit, vmap, one trace per repeated call.
# --------------------------------------------------------------------------------------


def test_jit_and_vmap_agree_with_eager():
    x, y = logits_and_labels((4, 3), 6, seed=15)
    t = jnp.asarray(soft_targets((4, 3, 6)))
    eager = INT(x, y)
    np.testing.assert_allclose(jax.jit(INT)(x, y), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(INT))(x, y), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(INT, in_axes=(1, 1), out_axes=1))(x, y),
                               eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(DENSE))(x, t), jax.jit(DENSE)(x, t),
                               rtol=1e-6)
    g = jax.jit(jax.grad(lambda a: INT(a, y).sum()))(x)
    gv = jax.jit(jax.vmap(jax.grad(lambda a, b: INT(a, b).sum())))(x, y)
    np.testing.assert_allclose(gv, g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", ["int", "dense", "poly"])
def test_one_trace_per_repeated_call(fn):
    def loss(a, b):
        if fn == "int":
            return INT(a, b, label_smoothing=0.1).sum()
        t = jax.nn.one_hot(b, 5)
        if fn == "dense":
            return DENSE(a, t).sum()
        return lossax.poly_loss_cross_entropy(a, t).sum()
    counted = count_traces(loss)
    step = jax.jit(jax.value_and_grad(counted))
    for seed in range(4):
        x, y = logits_and_labels((3,), 5, seed=seed)
        step(x, y)
    assert counted.traces == 1


# --------------------------------------------------------------------------------------
# Inputs as optax takes them: numpy arrays, Python scalars, 0-d and scalar examples.
# --------------------------------------------------------------------------------------


def test_numpy_python_and_scalar_inputs():
    x = np.array([1.0, 2.0, 0.5], np.float32)
    # A single example: logits [V], a 0-d label (numpy int, Python int, 0-d array).
    expected = np.log(np.exp(x.astype(np.float64)).sum()) - x[1]
    for label in (1, np.int32(1), np.array(1), jnp.asarray(1)):
        out = INT(x, label)
        assert out.shape == ()
        assert out.dtype == jnp.float32
        assert_close(out, expected)
    # Dense labels as a Python float or a numpy scalar broadcast over the classes.
    expected = 0.2 * np.sum(np.log(np.exp(x.astype(np.float64)).sum()) - x)
    assert_close(DENSE(x, 0.2), expected)
    assert_close(DENSE(x, np.float32(0.2)), expected)
    # 0-d logits with axis=None: one class, probability 1, loss 0 (as optax).
    assert DENSE(np.float32(3.0), np.float32(1.0), axis=None) == 0
    np.testing.assert_allclose(
        DENSE(np.float32(3.0), np.float32(1.0), axis=None),
        optax.losses.softmax_cross_entropy(jnp.float32(3.0), jnp.float32(1.0), axis=None))
    # No classes at all: the empty sum, 0, as optax.
    np.testing.assert_array_equal(DENSE(jnp.zeros((2, 0)), jnp.zeros((2, 0))), [0.0, 0.0])


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, jnp.float64])
def test_output_dtype_is_the_logits_dtype(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x, y = logits_and_labels((2,), 3, dtype=dtype)
        t = jax.nn.one_hot(y, 3, dtype=jnp.float32)
        outs = [INT(x, y), DENSE(x, t), lossax.safe_softmax_cross_entropy(x, t),
                lossax.poly_loss_cross_entropy(x, t), INT(x, y, reduction="mean"),
                DENSE(x, t, reduction="sum")]
        for out in outs:
            assert out.dtype == dtype
        loss, lse = INT(x, y, return_lse=True)
        assert loss.dtype == dtype
        assert lse.dtype == nx.compute_dtype(dtype)
        if dtype == jnp.float64:
            # float64 stays float64: accurate far beyond float32.
            ref = ref_softmax_ce(x, y)[0]
            np.testing.assert_allclose(INT(x, y), ref, **tol(jnp.float64))


# --------------------------------------------------------------------------------------
# Bad input: a ValueError/TypeError at trace time naming the argument.
# --------------------------------------------------------------------------------------

_X = jnp.zeros((3, 4))
_Y = jnp.array([0, 1, 2])
_T = jnp.full((3, 4), 0.25)

BAD_INPUTS = [
    # (call, error, pattern the message must match)
    (lambda: INT(_X, jnp.array([0, 1])), ValueError, r"labels has shape \(2,\).*\(3,\)"),
    (lambda: INT(_X, _Y[:, None]), ValueError, r"labels has shape \(3, 1\)"),
    (lambda: INT(_X, _Y.astype(jnp.float32)), TypeError, r"labels must be an integer.*float32"),
    (lambda: INT(_X, [0.0, 1.0, 2.0]), TypeError, r"labels must be an integer"),
    (lambda: DENSE(_X, jnp.zeros((3, 5))), ValueError, r"labels has shape \(3, 5\).*\(3, 4\)"),
    (lambda: DENSE(_X, jnp.zeros((2, 4))), ValueError, r"labels has shape \(2, 4\)"),
    (lambda: DENSE(_X, jnp.zeros((3, 4), bool)), TypeError, r"labels must be a real numeric"),
    (lambda: INT(jnp.zeros((3, 4), jnp.int32), _Y), TypeError, r"logits must be a floating.*int32"),
    (lambda: DENSE(jnp.zeros((3, 4), bool), _T), TypeError, r"logits must be a floating.*bool"),
    (lambda: INT(3, jnp.array(0)), TypeError, r"logits must be a floating"),
    (lambda: lossax.poly_loss_cross_entropy(jnp.zeros((3, 4), jnp.int32), _T), TypeError,
     r"logits"),
    (lambda: lossax.safe_softmax_cross_entropy(jnp.zeros((3, 4), jnp.int8), _T), TypeError,
     r"logits"),
    (lambda: INT(_X, _Y, axis=2), ValueError, r"axis 2 is out of range.*2 dimension"),
    (lambda: INT(_X, _Y, axis=-3), ValueError, r"axis -3 is out of range"),
    (lambda: DENSE(_X, _T, axis=(0, 2)), ValueError, r"axis 2 is out of range"),
    (lambda: DENSE(_X, _T, axis=(1, -1)), ValueError, r"axis must not repeat"),
    (lambda: DENSE(_X, _T, axis=()), ValueError, r"axis must name at least one"),
    (lambda: INT(_X, _Y, axis=None), ValueError, r"axis must be an int or a tuple"),
    (lambda: INT(_X, _Y, axis="1"), TypeError, r"axis must be an int or a tuple"),
    (lambda: INT(_X, _Y, where=jnp.ones((4,), bool)), ValueError, r"where has shape \(4,\)"),
    (lambda: INT(_X, _Y, where=jnp.ones((3, 5), bool)), ValueError, r"where has shape \(3, 5\)"),
    (lambda: DENSE(_X, _T, where=jnp.ones((2, 3, 4), bool)), ValueError, r"where has shape"),
    (lambda: INT(_X, _Y, where=jnp.ones((3,))), TypeError, r"where must be a boolean.*float32"),
    (lambda: DENSE(_X, _T, where=jnp.ones((3, 4), jnp.int32)), TypeError, r"where must be a bool"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_raises_at_trace_time():
    # Under jit the same errors come from tracing, before anything runs.
    with pytest.raises(ValueError, match="labels has shape"):
        jax.jit(INT).lower(_X, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="where has shape"):
        jax.jit(functools.partial(DENSE, where=jnp.ones((4,), bool))).lower(_X, _T)


# --------------------------------------------------------------------------------------
# Data parallelism under plain jax.jit: batch-sharded logits.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto,
                                       jax.sharding.AxisType.Explicit])
@pytest.mark.parametrize("fn", ["int", "dense"])
def test_data_parallel_splits_the_work(fn, axis_type):
    # 8 devices each take their rows: an eighth of the flops, no all-gather, and the
    # numbers of one device (value and gradient of the mean loss with every option).
    from helpers import collectives, compiled_flops

    n, v = 64, 40
    x, y = logits_and_labels((n,), v, seed=17)
    t = jnp.asarray(soft_targets((n, v)))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    rows = jax.sharding.NamedSharding(mesh, jax.P("data"))
    kw = dict(label_smoothing=0.1, z_loss=1e-3, soft_cap=20.0, reduction="mean")
    loss = (lambda a, b: INT(a, b, ignore_index=3, **kw)) if fn == "int" else (
        lambda a, b: DENSE(a, b, **kw))
    labels = y if fn == "int" else t
    step = jax.value_and_grad(loss)
    placed = (jax.device_put(x, rows), jax.device_put(labels, rows))
    sharded = jax.jit(step, in_shardings=(rows, rows)).lower(*placed).compile()
    one = jax.jit(step).lower(x, labels).compile()
    assert compiled_flops(sharded) <= 0.15 * compiled_flops(one)
    assert not [k for k, _ in collectives(sharded.as_text()) if k == "all-gather"]
    val, grad = sharded(*placed)
    ref_val, ref_grad = one(x, labels)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-8)


def dp_data(seed=0, n=8, v=64, dtype=jnp.float32):
    r = rng(seed)
    x = jnp.asarray((r.standard_normal((n, v)) * 3).astype(np.float32)).astype(dtype)
    y = jnp.asarray(r.integers(0, v, n).astype(np.int32))
    return x, y, r


@pytest.mark.parametrize("axis_types", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_data_parallel_plain_kernels(axis_types, reduction):
    x0, y0, r = dp_data(14, n=16, v=40)
    t0 = jax.nn.softmax(jnp.asarray(r.standard_normal((16, 40)).astype(np.float32)))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_types,))
    x, y, t = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x0, y0, t0))
    kw = dict(label_smoothing=0.1, z_loss=1e-3, reduction=reduction)
    for fn, lab, lab0 in [(lossax.softmax_cross_entropy_with_integer_labels, y, y0),
                          (lossax.softmax_cross_entropy, t, t0)]:
        g = functools.partial(fn, **kw)
        loss = jax.jit(g)(x, lab)
        assert_close(loss, g(x0, lab0))
        assert loss.sharding.spec == (P("data") if reduction == "none" else P())
        grad = jax.jit(jax.grad(weighted(g)))(x, lab)
        assert_close(grad, jax.grad(weighted(g))(x0, lab0))
        assert grad.sharding.spec[0] == "data"


# ======================================================================================
# Options for large-vocabulary training (ignore_index, label_smoothing, z_loss, soft_cap,
# class_weights, reduction, return_lse)
#
# Values and gradients against the float64 reference ``helpers.ref_softmax_ce`` (written
# from the formulas) over the combinations that make sense, second-order checks in
# float64, the dtype matrix, and PyTorch's numbers for the options it shares, worked by
# hand from its documented formula.
#
# The combination matrix runs eagerly on one fixed shape: JAX then reuses each
# primitive's compiled executable across combinations, which is far cheaper here than
# compiling a jitted function per combination (jit is tested above).
# ======================================================================================

N, V = 6, 5
IGNORE = -100


def data(dtype=jnp.float32, seed=0):
    """Logits [N, V], labels with one ignored row (2), masks and class weights.

    Row 1 is masked by the row mask; row 4 by the class mask (all classes), which also
    masks classes here and there, the label's class of row 0 among them (optax: the
    label's raw logit still counts).
    """
    r = rng(seed)
    x = jnp.asarray((r.standard_normal((N, V)) * 2).astype(np.float32)).astype(dtype)
    y = np.array([3, 0, IGNORE, 4, 1, 2], np.int32)
    row = np.array([True, False, True, True, True, True])
    cls = r.random((N, V)) < 0.7
    cls[4] = False
    cls[0, 3] = False
    cls[5] = True
    w = np.array([0.5, 1.0, 2.0, 1.5, 0.25], np.float32)
    t = r.random((N, V)).astype(np.float32)
    t /= t.sum(-1, keepdims=True)
    return x, y, row, cls, w, t


def where_arg(kind, row, cls):
    if kind == "row":
        return jnp.asarray(row), dict(row_where=row)
    if kind == "class":
        return jnp.asarray(cls), dict(cls_where=cls)
    return None, {}


def run(f, x, reduction, ct):
    """(f(x), gradient of sum(f(x) * ct) or of the reduced scalar)."""
    out, vjp = jax.vjp(f, x)
    g = jnp.asarray(ct if reduction == "none" else 1.0, jnp.float32).astype(out.dtype)
    return out, vjp(g)[0]


CT = np.array([1.0, -0.5, 2.0, 1.5, 0.5, -1.0], np.float32)


# --------------------------------------------------------------------------------------
# The combination matrix, integer labels.
# --------------------------------------------------------------------------------------

INT_COMBOS = list(itertools.product(
    [0.0, 0.2],  # label_smoothing
    [None, IGNORE],  # ignore_index
    [None, "row", "class"],  # where
    [None, 2.5],  # soft_cap
    [0.0, 1e-2],  # z_loss
    [False, True],  # class_weights
))


@pytest.mark.parametrize(("alpha", "ignore", "where", "cap", "z", "weighted"), INT_COMBOS)
def test_integer_label_options_match_reference(alpha, ignore, where, cap, z, weighted):
    x, y, row, cls, w, _ = data()
    if ignore is None:
        y = np.where(y == IGNORE, 1, y)  # -100 would be out of range (tested below)
    wh, ref_where = where_arg(where, row, cls)
    kw = dict(ignore_index=ignore, label_smoothing=alpha, z_loss=z, soft_cap=cap,
              class_weights=jnp.asarray(w) if weighted else None)
    out, dx = run(lambda a: INT(a, jnp.asarray(y), where=wh, **kw), x, "none", CT)
    ref, _, ref_dx = ref_softmax_ce(x, y, **ref_where, **kw, cotangent=CT)
    assert_close(out, ref)
    assert_close(dx, ref_dx)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("where", [None, "row", "class"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_integer_label_reductions_match_reference(reduction, where, weighted, alpha):
    x, y, row, cls, w, _ = data()
    wh, ref_where = where_arg(where, row, cls)
    kw = dict(ignore_index=IGNORE, label_smoothing=alpha, z_loss=1e-2, reduction=reduction,
              class_weights=jnp.asarray(w) if weighted else None)
    out, dx = run(lambda a: INT(a, jnp.asarray(y), where=wh, **kw), x, reduction, CT)
    ref, _, ref_dx = ref_softmax_ce(x, y, **ref_where, **kw, cotangent=CT)
    assert out.shape == ((N,) if reduction == "none" else ())
    assert_close(out, ref)
    assert_close(dx, ref_dx)


# --------------------------------------------------------------------------------------
# The combination matrix, dense labels.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "where", "cap", "z"), list(itertools.product(
    [0.0, 0.2], [None, "row", "class"], [None, 2.5], [0.0, 1e-2])))
def test_dense_label_options_match_reference(alpha, where, cap, z):
    x, _, row, cls, _, t = data()
    wh, ref_where = where_arg(where, row, cls)
    kw = dict(label_smoothing=alpha, z_loss=z, soft_cap=cap)
    out, dx = run(lambda a: DENSE(a, jnp.asarray(t), where=wh, **kw), x, "none", CT)
    ref, _, ref_dx = ref_softmax_ce(x, targets=t, **ref_where, **kw, cotangent=CT)
    assert_close(out, ref)
    assert_close(dx, ref_dx)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("where", [None, "row", "class"])
def test_dense_label_reductions_match_reference(reduction, where):
    x, _, row, cls, _, t = data()
    wh, ref_where = where_arg(where, row, cls)
    kw = dict(label_smoothing=0.2, z_loss=1e-2, soft_cap=2.5, reduction=reduction)
    out, dx = run(lambda a: DENSE(a, jnp.asarray(t), where=wh, **kw), x, reduction, CT)
    ref, _, ref_dx = ref_softmax_ce(x, targets=t, **ref_where, **kw, cotangent=CT)
    assert_close(out, ref)
    assert_close(dx, ref_dx)


@pytest.mark.parametrize("fn", ["int", "dense"])
@pytest.mark.parametrize("cap", [None, 2.5])
def test_return_lse(fn, cap):
    x, y, _, cls, _, t = data()
    wh = jnp.asarray(cls)
    f = INT if fn == "int" else DENSE
    labels = jnp.asarray(np.where(y == IGNORE, 1, y)) if fn == "int" else jnp.asarray(t)
    loss, lse = f(x, labels, where=wh, soft_cap=cap, return_lse=True)
    assert lse.dtype == jnp.float32
    assert lse.shape == (N,)
    np.testing.assert_array_equal(loss, f(x, labels, where=wh, soft_cap=cap))
    _ref_loss, ref_lse, _ = ref_softmax_ce(x, labels if fn == "int" else None,
                                          targets=None if fn == "int" else t,
                                          cls_where=cls, soft_cap=cap)
    assert np.isneginf(np.asarray(lse)[4])  # no class left: log 0
    assert_close(lse[np.arange(N) != 4], ref_lse[np.arange(N) != 4])
    # The log-sum-exp's own gradient is the softmax (0 on a row with no classes).
    g = jax.grad(lambda a: jnp.sum(jnp.where(jnp.isfinite(lse), f(
        a, labels, where=wh, soft_cap=cap, return_lse=True)[1], 0)))(x)
    xc = to_f64(x) if cap is None else cap * np.tanh(to_f64(x) / cap)
    dcap = 1 if cap is None else 1 - np.tanh(to_f64(x) / cap) ** 2
    p = np.asarray(jax.nn.softmax(jnp.asarray(xc), where=jnp.asarray(cls)))
    assert_close(g, np.where(cls, p, 0) * dcap)


# --------------------------------------------------------------------------------------
# Each option on its own: the formula the issue states, and its edge cases.
# --------------------------------------------------------------------------------------


def test_ignore_index_rows_give_zero_and_are_left_out_of_the_mean():
    x, y, *_ = data()
    out, dx = run(lambda a: INT(a, jnp.asarray(y), ignore_index=IGNORE), x, "none", CT)
    assert np.asarray(out)[2] == 0
    assert np.all(np.asarray(dx)[2] == 0)
    per_row = np.asarray(out)
    mean = INT(x, jnp.asarray(y), ignore_index=IGNORE, reduction="mean")
    assert_close(mean, per_row[[0, 1, 3, 4, 5]].mean())  # 5 counted rows, not 6


def test_all_ignored_batch_gives_zero_not_nan():
    x = data()[0]
    y = jnp.full((N,), IGNORE)
    for reduction in ("none", "sum", "mean"):
        out, dx = run(lambda a, r=reduction: INT(a, y, ignore_index=IGNORE, reduction=r,
                                                 label_smoothing=0.1,
                                                 class_weights=jnp.ones(V)),
                      x, reduction, CT)
        assert np.all(np.asarray(out) == 0), reduction
        assert np.all(np.asarray(dx) == 0), reduction
    # A fully masked batch too.
    out = DENSE(x, jnp.asarray(data()[5]), where=jnp.zeros((N,), bool), reduction="mean")
    assert out == 0


@pytest.mark.parametrize("bad", [V, -1, 10**6, IGNORE])
def test_out_of_range_labels_are_loud_nan(bad):
    # A label outside [0, V) that is not ignore_index gives NaN in a counted row (loss
    # and gradient) and leaves the other rows alone; in a masked row it counts for
    # nothing.  (-100 is out of range when ignore_index is None.)
    x, _, _row, *_ = data()
    y = jnp.array([0, bad, 2, 3, bad, 1])
    row_mask = jnp.asarray([True, True, True, True, False, True])  # row 4 masked
    out, dx = run(lambda a: INT(a, y, where=row_mask), x, "none", CT)
    out, dx = np.asarray(out), np.asarray(dx)
    assert np.isnan(out[1])
    assert np.isnan(dx[1]).all()
    assert out[4] == 0
    assert np.all(dx[4] == 0)
    ok = [0, 2, 3, 5]
    assert np.isfinite(out[ok]).all()
    assert np.isfinite(dx[ok]).all()
    assert np.isnan(INT(x, y, reduction="mean"))


def test_label_smoothing_is_pytorch_uniform_over_unmasked_classes():
    # target = (1-a) onehot + a / V', V' the number of unmasked classes: with a class
    # mask, the loss equals the unmasked problem restricted to those classes.
    x, y, *_ = data()
    y = jnp.array([0, 1, 2, 0, 1, 2])
    keep = jnp.array([True, True, True, False, False])
    masked = INT(x, y, where=jnp.broadcast_to(keep, (N, V)), label_smoothing=0.3)
    sub = INT(x[:, :3], y, label_smoothing=0.3)
    assert_close(masked, sub)
    # and a = 1 is cross-entropy against the uniform distribution, whatever the label
    uniform = DENSE(x, jnp.full((N, V), 1 / V))
    assert_close(INT(x, y, label_smoothing=1.0), uniform)
    assert_close(DENSE(x, jax.nn.one_hot(y, V), label_smoothing=0.3),
                 INT(x, y, label_smoothing=0.3))


@pytest.mark.parametrize("fn", ["int", "dense"])
def test_label_smoothing_onto_a_neg_inf_logit_is_inf_unless_masked(fn):
    # Smoothing puts mass a/V on every class: a -inf logit makes the loss +inf (the
    # documented behaviour); masking that class with where removes it from V instead.
    x, *_ = data()
    x = x.at[0, 2].set(-jnp.inf)
    y = jnp.array([0, 1, 2, 3, 4, 0])
    t = jax.nn.one_hot(y, V)
    f = (lambda a, **k: INT(a, y, **k)) if fn == "int" else (lambda a, **k: DENSE(a, t, **k))
    out = np.asarray(f(x, label_smoothing=0.1))
    assert np.isposinf(out[0])
    assert np.isfinite(out[1:]).all()
    mask = jnp.ones((N, V), bool).at[0, 2].set(False)
    out, dx = run(lambda a: f(a, label_smoothing=0.1, where=mask), x, "none", CT)
    ref, _, ref_dx = ref_softmax_ce(x, y if fn == "int" else None,
                                    targets=None if fn == "int" else t,
                                    cls_where=np.asarray(mask), label_smoothing=0.1,
                                    cotangent=CT)
    assert_close(out, ref)
    assert_close(dx, ref_dx)
    # Without smoothing a -inf logit on a class without target mass is harmless.
    assert np.isfinite(np.asarray(f(x))).all()


def test_z_loss_adds_z_lse_squared_and_its_gradient(x64):
    x, y, *_ = data(jnp.float64)
    y = jnp.asarray(np.where(y == IGNORE, 0, y))
    z = 0.05
    lse = np.asarray(jax.nn.logsumexp(x, -1))
    assert_close(INT(x, y, z_loss=z) - INT(x, y), z * lse**2, jnp.float64)
    g = jax.grad(lambda a: INT(a, y, z_loss=z).sum())(x)
    p = np.asarray(jax.nn.softmax(x))
    expected = (1 + 2 * z * lse)[:, None] * p - np.eye(V)[np.asarray(y)]
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", ["int", "dense"])
def test_soft_cap_gradient_matches_finite_differences(fn, x64):
    # The soft cap's tanh derivative must be in the gradient: central differences of the
    # loss itself (no reference involved) catch its absence.
    x, y, *_ = data(jnp.float64)
    x = 3 * x  # well into tanh's curved part for cap = 2.5
    y = jnp.asarray(np.where(y == IGNORE, 0, y))
    t = jnp.asarray(data()[5], jnp.float64)
    f = jax.jit((lambda a: INT(a, y, soft_cap=2.5).sum()) if fn == "int" else (
        lambda a: DENSE(a, t, soft_cap=2.5).sum()))
    g = np.asarray(jax.grad(f)(x))
    eps = 1e-6
    fd = np.zeros((N, V))
    for i, j in itertools.product(range(N), range(V)):
        e = jnp.zeros((N, V)).at[i, j].set(eps)
        fd[i, j] = (f(x + e) - f(x - e)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)
    # capped logits: cap * tanh(x / cap)
    xc = 2.5 * jnp.tanh(x / 2.5)
    assert_close(INT(x, y, soft_cap=2.5), INT(xc, y), jnp.float64)


def test_class_weights_scale_rows_and_the_mean_divides_by_their_sum():
    x, y, *_, w, _ = data()
    y = jnp.asarray(y)
    plain = np.asarray(INT(x, y, ignore_index=IGNORE))
    weighted = INT(x, y, ignore_index=IGNORE, class_weights=jnp.asarray(w))
    yc = np.where(np.asarray(y) == IGNORE, 0, np.asarray(y))
    assert_close(weighted, plain * np.where(np.asarray(y) == IGNORE, 0, w[yc]))
    mean = INT(x, y, ignore_index=IGNORE, class_weights=jnp.asarray(w), reduction="mean")
    counted = np.asarray(y) != IGNORE
    assert_close(mean, np.sum(np.asarray(weighted)) / np.sum(w[yc][counted]))


# --------------------------------------------------------------------------------------
# Second order in float64, all options at once: check_grads (fwd and rev) runs in
# tests/test_autodiff.py (cases "ce_int-all-options-*", "ce_dense-all-options-*").
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The dtype matrix: float32 compute, one rounding.
# --------------------------------------------------------------------------------------

ALL_INT = dict(ignore_index=IGNORE, label_smoothing=0.2, z_loss=1e-2, soft_cap=2.5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("fn", ["int", "int_weighted", "dense"])
def test_low_precision_with_options(dtype, fn):
    x, y, _row, cls, w, t = data(dtype)
    if fn == "dense":
        kw = dict(label_smoothing=0.2, z_loss=1e-2, soft_cap=2.5)
        f = lambda a: DENSE(a, jnp.asarray(t), where=jnp.asarray(cls), **kw)
        ref = ref_softmax_ce(x, targets=t, cls_where=cls, **kw, cotangent=CT)
    else:
        kw = dict(ALL_INT, class_weights=jnp.asarray(w) if fn == "int_weighted" else None)
        f = lambda a: INT(a, jnp.asarray(y), where=jnp.asarray(cls), **kw)
        ref = ref_softmax_ce(x, y, cls_where=cls, **kw, cotangent=CT)
    out, dx = run(f, x, "none", CT)
    assert out.dtype == dtype
    assert dx.dtype == dtype
    assert_close(out, ref[0], dtype)
    assert_close(dx, ref[2], dtype)
    # The gradient is the float32 gradient rounded once (within 1 ulp).
    _, dx32 = run(f, x.astype(jnp.float32), "none", CT)
    assert ulp_distance(dx, dx32.astype(dtype)).max() <= 1


# --------------------------------------------------------------------------------------
# PyTorch's numbers: F.cross_entropy(weight=, ignore_index=, label_smoothing=,
# reduction=), worked by hand from its documented formula on a 2 x 3 example.
#
#   logits row 0 = [0, ln 2, 0]   -> softmax [1/4, 1/2, 1/4], -log p = [2 ln2, ln2, 2 ln2]
#   logits row 1 = [ln 3, 0, 0]   -> softmax [3/5, 1/5, 1/5],
#                                    -log p = [ln5 - ln3, ln5, ln5]
#   labels [1, 0]: nll_0 = ln 2, nll_1 = ln(5/3).
#
# PyTorch (C classes, weight w, smoothing e, rows not ignored):
#   l_i = (1 - e) w[y_i] nll_i + e / C * sum_c w[c] (-log p_ic)
#   "mean" = sum_i l_i / sum_i w[y_i];  "sum" = sum_i l_i;  ignored rows: l_i = 0.
# --------------------------------------------------------------------------------------

LN2, LN3, LN5 = np.log(2.0), np.log(3.0), np.log(5.0)
TORCH_X = jnp.array([[0.0, LN2, 0.0], [LN3, 0.0, 0.0]])
TORCH_W = jnp.array([2.0, 1.0, 0.5])

TORCH_CASES = [
    # (labels, kwargs, expected)
    ([1, 0], dict(reduction="none"), [LN2, LN5 - LN3]),
    ([1, 0], dict(reduction="mean"), (LN2 + LN5 - LN3) / 2),
    ([1, 0], dict(reduction="sum"), LN2 + LN5 - LN3),
    # weight: w[y] = [1, 2];  mean = (1 ln2 + 2 ln(5/3)) / (1 + 2)
    ([1, 0], dict(class_weights=TORCH_W, reduction="none"), [LN2, 2 * (LN5 - LN3)]),
    ([1, 0], dict(class_weights=TORCH_W, reduction="mean"), (LN2 + 2 * (LN5 - LN3)) / 3),
    ([1, 0], dict(class_weights=TORCH_W, reduction="sum"), LN2 + 2 * (LN5 - LN3)),
    # ignore_index: the second row drops out of the loss and of the mean's count
    ([1, -100], dict(ignore_index=-100, reduction="none"), [LN2, 0.0]),
    ([1, -100], dict(ignore_index=-100, reduction="mean"), LN2),
    ([1, -100], dict(ignore_index=-100, class_weights=TORCH_W, reduction="mean"), LN2),
    # e = 0.3: row 0: 0.7 ln2 + 0.1 (2ln2 + ln2 + 2ln2) = 1.2 ln2
    #          row 1: 0.7 (ln5 - ln3) + 0.1 (3 ln5 - ln3) = ln5 - 0.8 ln3
    ([1, 0], dict(label_smoothing=0.3, reduction="none"), [1.2 * LN2, LN5 - 0.8 * LN3]),
    ([1, 0], dict(label_smoothing=0.3, reduction="mean"), (1.2 * LN2 + LN5 - 0.8 * LN3) / 2),
    ([1, 0], dict(label_smoothing=0.3, reduction="sum"), 1.2 * LN2 + LN5 - 0.8 * LN3),
    # e = 0.3 with weight (PyTorch weighs the smoothing term per class, w[c]):
    #   row 0: 0.7 * 1 * ln2 + 0.1 (2 * 2ln2 + 1 * ln2 + 0.5 * 2ln2) = 1.3 ln2
    #   row 1: 0.7 * 2 (ln5 - ln3) + 0.1 (2 (ln5 - ln3) + ln5 + 0.5 ln5)
    #        = 1.75 ln5 - 1.6 ln3;   mean divides by w[1] + w[0] = 3
    ([1, 0], dict(label_smoothing=0.3, class_weights=TORCH_W, reduction="none"),
     [1.3 * LN2, 1.75 * LN5 - 1.6 * LN3]),
    ([1, 0], dict(label_smoothing=0.3, class_weights=TORCH_W, reduction="mean"),
     (1.3 * LN2 + 1.75 * LN5 - 1.6 * LN3) / 3),
    # ... and with the second row ignored: 1.3 ln2 / w[1]
    ([1, -100], dict(label_smoothing=0.3, class_weights=TORCH_W, ignore_index=-100,
                     reduction="mean"), 1.3 * LN2),
    ([1, -100], dict(label_smoothing=0.3, ignore_index=-100, reduction="sum"), 1.2 * LN2),
]


@pytest.mark.parametrize(("labels", "kwargs", "expected"), TORCH_CASES)
def test_matches_pytorch_cross_entropy_worked_by_hand(labels, kwargs, expected):
    out = INT(TORCH_X, jnp.array(labels), **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_pytorch_probability_targets_with_smoothing():
    # PyTorch, probability targets: l_i = -sum_c ((1 - e) y_ic + e / C) log p_ic.
    # Row 0 with y = [0, 0.5, 0.5], e = 0.3: 0.35 ln2 + 0.35 * 2ln2 + 0.1 * 5ln2 = 1.55 ln2
    y = jnp.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    out = DENSE(TORCH_X, y, label_smoothing=0.3)
    # row 1: 0.7 (ln5 - ln3) + 0.1 (3 ln5 - ln3) = ln5 - 0.8 ln3
    np.testing.assert_allclose(out, [1.55 * LN2, LN5 - 0.8 * LN3], rtol=1e-6)
