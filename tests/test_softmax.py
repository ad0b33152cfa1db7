"""Softmax cross-entropy kernels: values, gradients, numerics, memory and errors.

Expected values come from the float64 reference in ``helpers.ref_softmax_ce`` (written
from the formulas, gradient by hand), from optax, or from a formula in a comment.
Options (ignore_index, label_smoothing, ...) are tested in test_softmax_options.py and
the random differential tests against optax in test_optax_parity.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
