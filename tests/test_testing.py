"""Tests of ``lossax.testing``: the float64 oracles against optax (in float64) and numbers
worked by hand, ``check_custom_vjp`` on right and wrong VJPs, ``ulp_error``, the
adversarial table's command line."""

from __future__ import annotations

import functools
import io
import math
import subprocess
import sys
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inputs
import lossax
from lossax import testing

R = np.random.default_rng(42)
X = R.standard_normal((4, 6)) * 3
Y_INT = np.array([0, 5, 2, 3])
Y_DIST = R.dirichlet(np.ones(6), size=4)
Z = R.standard_normal((3, 5)) * 3
Y_BIN = R.uniform(0, 1, (3, 5))
T_PM1 = R.choice([-1.0, 1.0], (3, 5))

pytestmark = pytest.mark.usefixtures("x64")


def optax_grad(fn, *args, **kw):
    """Loss and gradient of the summed loss w.r.t. the first argument, in float64."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        first = jnp.asarray(args[0], jnp.float64)
        rest = [jnp.asarray(a) for a in args[1:]]

        @jax.jit
        def run(a, *rest):
            out, vjp = jax.vjp(lambda a: fn(a, *rest, **kw), a)
            return out, vjp(jnp.ones_like(out))[0]
        return tuple(np.asarray(v) for v in run(first, *rest))


def assert_oracle(ref, want, rtol=1e-12, atol=1e-12):
    for r, w in zip(ref, want, strict=True):
        np.testing.assert_allclose(r, w, rtol=rtol, atol=atol)


# -- Oracles against optax (float64, where optax is finite) -----------------------------


@pytest.mark.parametrize(("name", "args"), [
    ("softmax_cross_entropy_with_integer_labels", (X, Y_INT)),
    ("softmax_cross_entropy", (X, Y_DIST)),
    ("safe_softmax_cross_entropy", (X, Y_DIST)),
    ("poly_loss_cross_entropy", (X, Y_DIST)),
    ("sigmoid_binary_cross_entropy", (Z, Y_BIN)),
    ("sigmoid_focal_loss", (Z, Y_BIN)),
    ("hinge_loss", (Z, T_PM1)),
    ("perceptron_loss", (Z, T_PM1)),
    ("multiclass_hinge_loss", (X, Y_INT)),
    ("multiclass_perceptron_loss", (X, Y_INT)),
])
def test_oracle_matches_optax(name, args):
    ref = getattr(testing, name)(*args, return_grad=True)
    assert_oracle(ref, optax_grad(getattr(optax.losses, name), *args))


@pytest.mark.parametrize("kw", [{"alpha": 0.25, "gamma": 0.5}, {"alpha": 0.9, "gamma": 3.0},
                                {"gamma": 0.0}])
def test_focal_oracle_options_match_optax(kw):
    ref = testing.sigmoid_focal_loss(Z, Y_BIN, **kw, return_grad=True)
    assert_oracle(ref, optax_grad(optax.losses.sigmoid_focal_loss, Z, Y_BIN, **kw),
                  rtol=1e-10)


@pytest.mark.parametrize("axis", [0, 1, -1, (0, 1), None])
def test_dense_oracle_axes_match_optax(axis):
    x = R.standard_normal((3, 4, 5))
    y = R.dirichlet(np.ones(5), size=(3, 4))
    ref = testing.softmax_cross_entropy(x, y, axis=axis, return_grad=True)
    assert_oracle(ref, optax_grad(optax.losses.softmax_cross_entropy, x, y, axis=axis))


@pytest.mark.parametrize("axis", [0, 1, (0, 2)])
def test_int_oracle_axes_match_optax(axis):
    x = R.standard_normal((3, 4, 2))
    nd = x.ndim
    axes = axis if isinstance(axis, tuple) else (axis,)
    batch = tuple(x.shape[i] for i in range(nd) if i not in axes)
    v = int(np.prod([x.shape[a] for a in axes]))
    y = R.integers(0, v, batch)
    ref = testing.softmax_cross_entropy_with_integer_labels(x, y, axis=axis, return_grad=True)
    want = optax_grad(optax.losses.softmax_cross_entropy_with_integer_labels, x, y, axis=axis)
    assert_oracle(ref, want)


def test_oracles_with_class_mask_match_optax():
    where = R.uniform(size=X.shape) > 0.3
    where[:, 0] = True
    where[1] = False  # a fully masked row: loss 0, gradient 0
    assert_oracle(
        testing.softmax_cross_entropy_with_integer_labels(X, np.zeros(4, int), where=where,
                                                          return_grad=True),
        optax_grad(optax.losses.softmax_cross_entropy_with_integer_labels, X,
                   np.zeros(4, int), where=where))
    y = np.where(where, Y_DIST, 0.0)
    loss, g = testing.softmax_cross_entropy(X, y, where=where, return_grad=True)
    want_loss, want_g = optax_grad(optax.losses.safe_softmax_cross_entropy,
                                   np.where(where, X, -np.inf), y)
    keep = [0, 2, 3]  # optax's gradient is NaN on the fully masked row
    assert_oracle((loss[keep], g[keep]), (want_loss[keep], want_g[keep]))
    assert loss[1] == 0.0
    assert not np.any(g[1])


def test_oracle_options_against_optax_building_blocks():
    """label_smoothing, z_loss, soft_cap, class_weights, ignore_index and the reductions,
    each written with optax's and jax's functions.  Class weights follow PyTorch's
    ``cross_entropy(weight=, label_smoothing=)``: the label's weight scales the label's
    term (and lossax's z-loss), each class's weight its own smoothing term, and ``mean``
    divides by the summed label weights."""
    a, z, cap = 0.2, 1e-2, 2.5
    w = R.uniform(0.5, 2.0, 6)
    y = np.array([0, -100, 2, 3])

    def composed(x, labels):
        xc = cap * jnp.tanh(x / cap)
        nll = -jax.nn.log_softmax(xc, axis=-1)  # [N, V]: lse - x_j
        onehot = jax.nn.one_hot(jnp.maximum(labels, 0), 6)
        wy = jnp.asarray(w)[jnp.maximum(labels, 0)]
        loss = wy * ((1 - a) * jnp.sum(onehot * nll, axis=-1)
                     + z * jax.nn.logsumexp(xc, axis=-1) ** 2)
        loss = loss + a / 6 * jnp.sum(jnp.asarray(w) * nll, axis=-1)
        keep = labels != -100
        return jnp.sum(jnp.where(keep, loss, 0.0)) / jnp.sum(jnp.where(keep, wy, 0.0))

    ref = testing.softmax_cross_entropy_with_integer_labels(
        X, y, ignore_index=-100, label_smoothing=a, z_loss=z, soft_cap=cap, class_weights=w,
        reduction="mean", return_grad=True)
    assert_oracle(ref, optax_grad(composed, X, y))
    dense = testing.softmax_cross_entropy(X, Y_DIST, label_smoothing=a, z_loss=z,
                                          soft_cap=cap, reduction="sum", return_grad=True)

    def composed_dense(x, t):
        xc = cap * jnp.tanh(x / cap)
        return jnp.sum(optax.losses.softmax_cross_entropy(xc, optax.smooth_labels(t, a))
                       + z * jax.nn.logsumexp(xc, axis=-1) ** 2)
    assert_oracle(dense, optax_grad(composed_dense, X, Y_DIST))


def test_class_weights_with_label_smoothing_hand_worked():
    """PyTorch's formula, worked by hand: softmax([0, log 3]) = [1/4, 3/4], so
    -log p = [log 4, log 4/3]; a = 1/2 over V = 2 classes, weights w = [2, 1].

    loss_i = (1-a) w_{y_i} (-log p_{y_i}) + a/V sum_j w_j (-log p_j); its gradient is
    (sum_j t_j) p - t with the target t = (1-a) w_y onehot(y) + a w / V."""
    x = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    y = np.array([1, 0])
    w = np.array([2.0, 1.0])
    l4, l43 = math.log(4.0), math.log(4.0 / 3.0)
    smooth = 0.25 * (2 * l4 + l43)  # a/V (w_0 log 4 + w_1 log 4/3), the same in both rows
    want = [0.5 * 1 * l43 + smooth, 0.5 * 2 * l4 + smooth]
    # row 0: t = [0, 1/2] + [1/2, 1/4] = [1/2, 3/4], sum 5/4;
    # row 1: t = [1, 0] + [1/2, 1/4] = [3/2, 1/4], sum 7/4.
    want_g = [[1.25 / 4 - 0.5, 1.25 * 3 / 4 - 0.75], [1.75 / 4 - 1.5, 1.75 * 3 / 4 - 0.25]]
    loss, g = testing.softmax_cross_entropy_with_integer_labels(
        x, y, label_smoothing=0.5, class_weights=w, return_grad=True)
    np.testing.assert_allclose(loss, want, rtol=1e-14)
    np.testing.assert_allclose(g, want_g, rtol=1e-14, atol=1e-15)
    # mean: divided by the label weights of the counted rows, w_1 + w_0 = 3.
    loss, g = testing.softmax_cross_entropy_with_integer_labels(
        x, y, label_smoothing=0.5, class_weights=w, reduction="mean", return_grad=True)
    np.testing.assert_allclose(loss, sum(want) / 3, rtol=1e-14)
    np.testing.assert_allclose(g, np.array(want_g) / 3, rtol=1e-14, atol=1e-15)
    # The same row with its label ignored: 0, and not counted by the mean.
    loss = testing.softmax_cross_entropy_with_integer_labels(
        x, np.array([1, -100]), ignore_index=-100, label_smoothing=0.5, class_weights=w,
        reduction="mean")
    np.testing.assert_allclose(loss, want[0] / 1, rtol=1e-14)


@pytest.mark.parametrize("options", [
    {"label_smoothing": 0.3},
    {"label_smoothing": 0.3, "z_loss": 1e-2, "soft_cap": 2.5, "reduction": "mean"},
    {"label_smoothing": 0.3, "ignore_index": -100, "reduction": "sum", "where": "classes"},
])
def test_int_oracle_with_class_weights_matches_the_kernel(options):
    """The oracle and lossax's kernel (checked against PyTorch) agree, loss and gradient,
    where class weights meet label smoothing."""
    options = dict(options)
    w = R.uniform(0.5, 2.0, 6)
    y = np.array([0, -100, 2, 5]) if "ignore_index" in options else Y_INT
    if options.get("where") == "classes":
        where = np.ones(X.shape, bool)
        where[0, 3] = where[2, 1] = False
        options["where"] = where
    ref = testing.softmax_cross_entropy_with_integer_labels(
        X, y, class_weights=w, return_grad=True, **options)
    jax_options = {k: (jnp.asarray(v) if k == "where" else v) for k, v in options.items()}

    def kernel(x, labels):
        return lossax.softmax_cross_entropy_with_integer_labels(
            x, labels, class_weights=jnp.asarray(w), **jax_options)
    assert_oracle(ref, optax_grad(kernel, X, y), rtol=1e-10, atol=1e-12)


def test_linear_oracle_is_the_int_oracle_of_the_logits():
    x, w, b = R.standard_normal((5, 3)), R.standard_normal((3, 7)), R.standard_normal(7)
    y = R.integers(0, 7, 5)

    def composed(h):
        return optax.losses.softmax_cross_entropy_with_integer_labels(h @ w + b, y)
    assert_oracle(testing.linear_softmax_cross_entropy(x, y, w, bias=b, return_grad=True),
                  optax_grad(composed, x))


def test_categorical_and_binary_probability_oracles_match_clipped_autodiff():
    """Keras's definition: clip to [eps, 1 - eps], then the log; autodiff through jnp.clip."""
    eps = 1e-3
    p = np.array([[0.0, 0.3, 0.7], [0.2, 0.8, 1.0], [0.5, 0.25, 0.25]])
    y = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])

    def cce(q, t):
        return -jnp.sum(t * jnp.log(jnp.clip(q, eps, 1 - eps)), axis=-1)

    def bce(q, t):
        q = jnp.clip(q, eps, 1 - eps)
        return -(t * jnp.log(q) + (1 - t) * jnp.log1p(-q))
    assert_oracle(testing.categorical_cross_entropy(p, y, eps=eps, return_grad=True),
                  optax_grad(cce, p, y))
    assert_oracle(testing.binary_cross_entropy(p, y, eps=eps, return_grad=True),
                  optax_grad(bce, p, y))


def test_weston_watkins_oracle_matches_autodiff_of_the_formula():
    s = R.standard_normal((4, 6))

    def ww(sc, squared):
        s_y = jnp.take_along_axis(sc, Y_INT[:, None], -1)
        z = jnp.maximum(0.0, 1.5 + sc - s_y) * (jnp.arange(6) != Y_INT[:, None])
        return jnp.sum(z ** 2 if squared else z, axis=-1) / 6
    for squared, name in ((False, "multiclass_hinge_loss"),
                          (True, "multiclass_squared_hinge_loss")):
        ref = getattr(testing, name)(s, Y_INT, margin=1.5, form="weston_watkins",
                                     return_grad=True)
        assert_oracle(ref, optax_grad(functools.partial(ww, squared=squared), s))


def test_squared_hinge_oracle_matches_autodiff():
    ref = testing.squared_hinge_loss(Z, T_PM1, margin=1.5, return_grad=True)
    want = optax_grad(lambda s, t: jnp.maximum(0.0, 1.5 - s * t) ** 2, Z, T_PM1)
    assert_oracle(ref, want)


# -- Oracles on numbers worked by hand ---------------------------------------------------


def test_softmax_oracles_hand_worked():
    # softmax([0, log 3]) = [1/4, 3/4]
    x = np.array([[0.0, math.log(3.0)]])
    loss, g = testing.softmax_cross_entropy_with_integer_labels(x, np.array([0]),
                                                                return_grad=True)
    np.testing.assert_allclose(loss, [math.log(4.0)], rtol=1e-15)
    np.testing.assert_allclose(g, [[0.25 - 1, 0.75]], rtol=1e-15)
    # label smoothing a = 0.5 over 2 classes: target [3/4, 1/4]
    loss = testing.softmax_cross_entropy_with_integer_labels(x, np.array([0]),
                                                             label_smoothing=0.5)
    np.testing.assert_allclose(loss, [0.75 * math.log(4) + 0.25 * math.log(4 / 3)])
    # -inf logits with 0 target contribute 0; all -inf but one gives loss 0
    x = np.array([[-np.inf, 2.0, -np.inf]])
    loss, g = testing.softmax_cross_entropy(x, np.array([[0.0, 1.0, 0.0]]), return_grad=True)
    assert loss.tolist() == [0.0]
    assert g.tolist() == [[0.0, 0.0, 0.0]]
    # a label on a -inf logit: +inf loss, gradient softmax - onehot (finite)
    loss, g = testing.softmax_cross_entropy_with_integer_labels(x, np.array([0]),
                                                                return_grad=True)
    assert loss.tolist() == [np.inf]
    assert g.tolist() == [[-1.0, 1.0, 0.0]]
    # out of range label: NaN; ignored: 0
    loss = testing.softmax_cross_entropy_with_integer_labels(
        np.zeros((2, 3)), np.array([3, -1]), ignore_index=-1)
    assert np.isnan(loss[0])
    assert loss[1] == 0.0
    # +inf logits are equal, infinitely large values
    loss = testing.softmax_cross_entropy_with_integer_labels(
        np.array([[np.inf, np.inf, 0.0], [np.inf, 0.0, 0.0]]), np.array([0, 1]))
    np.testing.assert_allclose(loss, [math.log(2.0), np.inf])


def test_binary_oracles_hand_worked():
    loss, g = testing.sigmoid_binary_cross_entropy(
        np.array([0.0, np.inf, -np.inf, np.inf]), np.array([0.5, 1.0, 0.0, 0.0]),
        return_grad=True)
    np.testing.assert_allclose(loss, [math.log(2.0), 0.0, 0.0, np.inf])
    np.testing.assert_allclose(g, [0.0, 0.0, 0.0, 1.0])
    # pos_weight 3 at x = 0, y = 1: 3 log 2; label smoothing 0.2: y' = 0.9
    np.testing.assert_allclose(
        testing.sigmoid_binary_cross_entropy(np.array(0.0), np.array(1.0), pos_weight=3.0),
        3 * math.log(2.0))
    np.testing.assert_allclose(
        testing.sigmoid_binary_cross_entropy(np.array(2.0), np.array(1.0),
                                             label_smoothing=0.2),
        math.log1p(math.exp(2.0)) - 2 * 0.9)
    # focal at x = 0, y = 1: (1/2)^2 log 2
    np.testing.assert_allclose(testing.sigmoid_focal_loss(np.array(0.0), np.array(1.0)),
                               0.25 * math.log(2.0))
    # hinge kink: gradient -t/2
    loss, g = testing.hinge_loss(np.array([1.0, 0.0]), np.array([1.0, -1.0]),
                                 return_grad=True)
    assert loss.tolist() == [0.0, 1.0]
    assert g.tolist() == [-0.5, 1.0]
    # multiclass hinge with a tie for the maximum splits the gradient
    loss, g = testing.multiclass_hinge_loss(np.array([[1.0, 1.0, 2.0]]), np.array([2]),
                                            return_grad=True)
    assert loss.tolist() == [0.0]
    np.testing.assert_allclose(g, [[1 / 3, 1 / 3, 1 / 3 - 1]])
    # top-k: ties with the label do not push it out; excluded label class: miss
    x = np.array([[0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])
    assert testing.top_k_accuracy(x, np.array([0, 1]), k=2).tolist() == [1.0, 1.0]
    assert testing.top_k_accuracy(x, np.array([0, 1]), k=1).tolist() == [0.0, 0.0]
    where = np.array([[True, True, False], [True, False, True]])
    assert testing.top_k_accuracy(x, np.array([0, 1]), k=1, where=where).tolist() == [1.0, 0.0]
    # probabilities: clip at eps
    np.testing.assert_allclose(
        testing.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 1.0]), eps=0.25),
        [-math.log(0.25), -math.log(0.75)])


def test_top_k_oracle_nan_rule_matches_lossax():
    # Any NaN score in an included class makes the row a miss, for every k: a NaN in
    # another class is not just one more class counted above the label.
    nan, inf = np.nan, np.inf
    x = np.array([[nan, 1.0, 2.0],  # the label scores best, a NaN elsewhere: a miss
                  [0.0, nan, 2.0],  # one class above the label and a NaN: a miss
                  [1.0, nan, 0.0],  # a NaN label score: a miss
                  [nan, 0.0, 1.0],  # the NaN's class is excluded (below): a hit
                  [inf, -inf, nan]], np.float32)  # excluded NaN; +inf label: a hit
    y = np.array([2, 0, 1, 2, 0])
    where = np.ones(x.shape, bool)
    where[3, 0] = where[4, 2] = False
    for k in (1, 2, 3):
        oracle = testing.top_k_accuracy(x, y, k=k, where=where)
        assert oracle.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
        ours = lossax.top_k_accuracy(jnp.asarray(x), jnp.asarray(y), k=k,
                                     where=jnp.asarray(where))
        np.testing.assert_array_equal(np.asarray(ours), oracle)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_oracle_reductions_consistent(reduction):
    y = np.array([0, -100, 2, 3])
    per_row, g = testing.softmax_cross_entropy_with_integer_labels(
        X, y, ignore_index=-100, return_grad=True)
    out, g_red = testing.softmax_cross_entropy_with_integer_labels(
        X, y, ignore_index=-100, reduction=reduction, return_grad=True)
    scale = {"none": 1.0, "sum": 1.0, "mean": 1.0 / 3}[reduction]
    want = per_row if reduction == "none" else np.sum(per_row) * scale
    np.testing.assert_allclose(out, want, rtol=1e-15)
    np.testing.assert_allclose(g_red, g * scale, rtol=1e-15)


# -- check_custom_vjp ---------------------------------------------------------------------


def _make_custom_ce(scale_first=1.0, stop_second=False):
    """A custom-VJP softmax CE with integer labels closed over; optionally wrong."""
    labels = jnp.array([1, 0, 2])

    @jax.custom_vjp
    def ce(x):
        return jax.nn.logsumexp(x, axis=-1) - jnp.take_along_axis(x, labels[:, None], -1)[:, 0]

    def fwd(x):
        return ce(x), x

    def bwd(x, g):
        d = jax.nn.softmax(x) - jax.nn.one_hot(labels, x.shape[-1], dtype=x.dtype)
        if stop_second:
            d = jax.lax.stop_gradient(d)
        return (scale_first * g[:, None] * d,)
    ce.defvjp(fwd, bwd)
    return ce, labels


X3 = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [0.1, 0.2, 0.3]])


def test_check_custom_vjp_accepts_a_correct_vjp():
    ce, labels = _make_custom_ce()

    def reference(x):
        return -jnp.take_along_axis(jax.nn.log_softmax(x), labels[:, None], -1)[:, 0]
    testing.check_custom_vjp(ce, (X3,), reference=reference)


def test_check_custom_vjp_rejects_a_wrong_first_derivative():
    ce, _ = _make_custom_ce(scale_first=1.01)
    with pytest.raises(AssertionError):
        testing.check_custom_vjp(ce, (X3,), order=1)


def test_check_custom_vjp_rejects_a_wrong_second_derivative():
    ce, _ = _make_custom_ce(stop_second=True)
    testing.check_custom_vjp(ce, (X3,), order=1)  # first order is right
    with pytest.raises(AssertionError):
        testing.check_custom_vjp(ce, (X3,), order=2)


def test_check_custom_vjp_compares_with_the_reference():
    ce, labels = _make_custom_ce()

    def wrong_reference(x):  # twice the loss
        return -2 * jnp.take_along_axis(jax.nn.log_softmax(x), labels[:, None], -1)[:, 0]
    with pytest.raises(AssertionError, match="reference"):
        testing.check_custom_vjp(ce, (X3,), order=1, reference=wrong_reference)


@pytest.mark.parametrize("name", ["softmax_cross_entropy_with_integer_labels"])
def test_check_custom_vjp_on_lossax_runs_in_float64(name):
    """float32 inputs are checked in float64 (a float32 finite difference would fail)."""
    args, _ = inputs.example_inputs(name, dtype=jnp.float32)
    seen = []

    def loss(x):
        seen.append(x.dtype)
        return getattr(lossax, name)(x, args[1])
    testing.check_custom_vjp(loss, (args[0],))
    assert set(seen) == {jnp.dtype(jnp.float64)}


# -- ulp_error ------------------------------------------------------------------------------


def test_ulp_error_units_and_special_values():
    eps16 = 2.0 ** -10
    got = testing.ulp_error(np.array([1 + eps16, 2.0, np.nan, np.inf, -np.inf, 1.0, 7.0]),
                            np.array([1.0, 2.0, 1.0, np.inf, np.inf, np.nan, 1e6]),
                            jnp.float16, scale=np.array([1, 1, 1, 1, 1, 1, 1]))
    assert got[:6].tolist()[:5] == [1.0, 0.0, np.inf, 0.0, np.inf]
    assert np.isnan(got[5])
    # 1e6 is beyond float16's range: the right answer is inf, so 7 is infinitely wrong
    assert got[6] == np.inf
    assert testing.ulp_error(np.inf, 1e6, jnp.float16) == 0.0
    # scale divides
    assert testing.ulp_error(np.float32(3.0), 2.0, jnp.bfloat16, scale=4.0) == 1 / (4 * 2**-7)


# -- The adversarial table's command line ------------------------------------------------


def test_main_prints_a_markdown_table(monkeypatch):
    case = testing.AdversarialCase("tiny", "softmax_cross_entropy_with_integer_labels",
                                   "float32", (np.zeros((1, 2)), np.array([0])),
                                   optax="softmax_cross_entropy_with_integer_labels")
    monkeypatch.setattr(testing.adversarial, "adversarial_cases", lambda: [case])
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert testing.main(["adversarial-table"]) == 0
    lines = buf.getvalue().splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 1
    assert "| tiny | float32 | all | 0.0 | 0.0 | yes |" in rows[0]
    with redirect_stdout(io.StringIO()):
        assert testing.main(["something-else"]) == 2


def test_example_inputs_cover_every_public_function():
    names = [n for n in lossax.__all__ if n != "checked"]
    assert sorted(set(names) - set(inputs.KIND)) == []
    for name in names:
        assert callable(getattr(testing, name)), f"no oracle for {name}"


def test_python_dash_m_runs_the_command_line():
    """``python -m lossax.testing`` reaches :func:`lossax.testing.main` (usage: exit 2)."""
    done = subprocess.run([sys.executable, "-m", "lossax.testing", "no-such-command"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "usage: python -m lossax.testing adversarial-table" in done.stderr


def test_public_names():
    """The package re-exports the oracles, checks and adversarial table by name."""
    assert testing.__all__ == sorted(testing.__all__)
    assert set(testing.__all__) == {
        "AdversarialCase", "adversarial_cases", "adversarial_table", "binary_cross_entropy",
        "categorical_cross_entropy", "check_custom_vjp", "format_table", "hinge_loss",
        "linear_softmax_cross_entropy", "main", "multiclass_hinge_loss",
        "multiclass_perceptron_loss", "multiclass_squared_hinge_loss", "perceptron_loss",
        "poly_loss_cross_entropy", "safe_softmax_cross_entropy",
        "sigmoid_binary_cross_entropy", "sigmoid_focal_loss", "softmax_cross_entropy",
        "softmax_cross_entropy_with_integer_labels", "squared_hinge_loss", "top_k_accuracy",
        "ulp_error"}
    for name in [*testing.__all__, "evaluate_case"]:
        assert getattr(testing, name).__module__.startswith("lossax.testing."), name
