"""The keyword-only options of the softmax cross-entropy kernels (issue 5).

ignore_index, label_smoothing, z_loss, soft_cap, class_weights, reduction, return_lse:
values and gradients against the float64 reference ``helpers.ref_softmax_ce`` (written
from the formulas) over the combinations that make sense, second-order checks in
float64, the dtype matrix, and PyTorch's numbers for the options it shares, worked by
hand from its documented formula.

The combination matrix runs eagerly on one fixed shape: JAX then reuses each
primitive's compiled executable across combinations, which is far cheaper here than
compiling a jitted function per combination (jit is tested in test_softmax.py).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossax
from helpers import assert_close, ref_softmax_ce, rng, to_f64, ulp_distance

INT = lossax.softmax_cross_entropy_with_integer_labels
DENSE = lossax.softmax_cross_entropy

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
