"""Binary cross-entropy from logits and focal loss (the losses on probabilities are in
test_probabilities.py).

Expected values come from optax (the shared names), from float64 numpy references
written here from the formulas, from ``jax.grad`` of plain float64 jnp formulas, or from
numbers worked by hand in a comment.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lossax
from helpers import (
    FLOAT_DTYPES,
    assert_close,
    count_traces,
    labels_of,
    logits_of,
    rng,
    temp_bytes,
    to_f64,
    value_and_grads,
)
from lossax import _sigmoid

BCE = lossax.sigmoid_binary_cross_entropy
FOCAL = lossax.sigmoid_focal_loss
PBCE = lossax.binary_cross_entropy



# --------------------------------------------------------------------------------------
# References.
# --------------------------------------------------------------------------------------


def ref_bce(x, y, pw=1.0, a=0.0):
    """float64 numpy: (1 - y') softplus(x) + w y' softplus(-x), 0 * inf = 0."""
    x, y, pw = (np.asarray(v, np.float64) for v in (x, y, pw))
    y = y * (1 - a) + a / 2
    with np.errstate(invalid="ignore", over="ignore"):
        pos = np.where(1 - y == 0, 0.0, (1 - y) * np.logaddexp(0, x))
        neg = np.where(pw * y == 0, 0.0, pw * y * np.logaddexp(0, -x))
    return pos + neg


def ref_focal(x, y, alpha=None, gamma=2.0):
    """float64 numpy, from Lin et al.: a_t (1 - p_t)^g ce, 1 - p_t = y s(-x) + (1-y) s(x)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    s, sn = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
    ce = (1 - y) * np.logaddexp(0, x) + y * np.logaddexp(0, -x)
    out = ((1 - y) * s + y * sn) ** gamma * ce
    if alpha is not None:
        out = out * (alpha * y + (1 - alpha) * (1 - y))
    return out


def plain_bce(x, y, pw=1.0, a=0.0):
    """Plain jnp formula (autodiff gives the reference gradient)."""
    y = y * (1 - a) + a / 2
    return (1 - y) * jax.nn.softplus(x) + pw * y * jax.nn.softplus(-x)


def plain_focal(x, y, alpha=None, gamma=2.0):
    q = (1 - y) * jax.nn.sigmoid(x) + y * jax.nn.sigmoid(-x)
    out = q ** gamma * ((1 - y) * jax.nn.softplus(x) + y * jax.nn.softplus(-x))
    if alpha is not None:
        out = out * (alpha * y + (1 - alpha) * (1 - y))
    return out


def ref_grad(plain, args, argnum=0, **kw):
    """Gradient of sum(plain(...)) in float64, at the (rounded) inputs."""
    with jax.enable_x64(True):
        a64 = [jnp.asarray(to_f64(a)) for a in args]
        return np.asarray(jax.jit(jax.grad(lambda *a: jnp.sum(plain(*a, **kw)), argnum))(*a64))


# --------------------------------------------------------------------------------------
# sigmoid_binary_cross_entropy.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "kind"), [((), "hard"), ((1,), "bool"), ((7,), "soft"),
                                           ((3, 5), "int"), ((2, 3, 4), "soft")])
def test_bce_matches_optax(shape, kind):
    x = logits_of(shape)
    y = labels_of(kind, shape)
    argnums = (0, 1) if kind in ("hard", "soft") else (0,)
    out, g = value_and_grads(BCE, x, y, argnums=argnums)
    ref, g_ref = value_and_grads(optax.losses.sigmoid_binary_cross_entropy, x, y,
                                 argnums=argnums)
    assert_close(out, ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize(("xs", "ys"), [((3, 5), (5,)), ((3, 1), (3, 5)), ((), (4,)),
                                        ((2, 1, 4), (3, 1))])
def test_bce_broadcasts_like_optax(xs, ys):
    x, y = logits_of(xs), labels_of("soft", ys)
    with jax.numpy_rank_promotion("allow"):
        ref, (g_ref,) = value_and_grads(optax.losses.sigmoid_binary_cross_entropy, x, y)
    out, (g,) = value_and_grads(BCE, x, y)
    assert out.shape == ref.shape
    assert g.shape == x.shape
    assert_close(out, ref)
    assert_close(g, g_ref)


@pytest.mark.parametrize(("pw", "smoothing"), [(None, 0.1), (None, 1.0), (2.5, 0.0),
                                               ("per_class", 0.1), ("traced", 0.0)])
def test_bce_pos_weight_and_label_smoothing_match_reference(pw, smoothing):
    x, y = logits_of((6, 4)), labels_of("soft", (6, 4))
    w = {"per_class": jnp.asarray([0.5, 1.0, 3.0, 0.0], jnp.float32)}.get(pw, pw)
    f = lambda a, b, w: BCE(a, b, pos_weight=w, label_smoothing=smoothing)
    if pw == "traced":
        w = jnp.float32(1.7)
        out, g = jax.jit(lambda a, b, w: (f(a, b, w), jax.grad(
            lambda a: f(a, b, w).sum())(a)))(x, y, w)
    else:
        out, (g,) = value_and_grads(lambda a, b: f(a, b, w), x, y)
    wn = 1.0 if w is None else np.broadcast_to(np.asarray(w, np.float64), x.shape)
    assert_close(out, ref_bce(x, y, wn, smoothing))
    assert_close(g, ref_grad(functools.partial(plain_bce, pw=wn, a=smoothing), (x, y)))


def test_bce_hand_worked_pytorch_and_keras_values():
    # PyTorch BCEWithLogitsLoss(pos_weight=3) at x = 0, y = 1: 3 log 2; its gradient is
    # (1 - y) s(0) - 3 y s(0) = -1.5.
    x0, y1 = jnp.float32(0.0), jnp.float32(1.0)
    out, (g,) = value_and_grads(lambda a, b: BCE(a, b, pos_weight=3.0), x0, y1)
    assert_close(out, 3 * np.log(2))
    assert_close(g, -1.5)
    # Keras BinaryCrossentropy(from_logits=True, label_smoothing=0.2) at x = 2, y = 1:
    # y' = 0.9, softplus(2) - 2 * 0.9 = 2.126928 - 1.8.
    assert_close(BCE(jnp.float32(2.0), y1, label_smoothing=0.2), 0.3269280110429725)


def test_bce_label_and_pos_weight_gradients(x64):
    x = jnp.asarray(rng(2).standard_normal((4, 3)) * 3)
    y = jnp.asarray(rng(3).random((4, 3)))
    w = jnp.asarray([0.5, 2.0, 1.0])
    f = lambda a, b, c: BCE(a, b, pos_weight=c, label_smoothing=0.3).sum()
    grads = jax.jit(jax.grad(f, (0, 1, 2)))(x, y, w)
    plain = lambda a, b, c: plain_bce(a, b, jnp.broadcast_to(c, a.shape), 0.3).sum()
    refs = jax.jit(jax.grad(plain, (0, 1, 2)))(x, y, w)
    for g, r in zip(grads, refs, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bce_dtypes_compute_in_float32(dtype):
    x, y = logits_of((64,), dtype=dtype), labels_of("soft", (64,)).astype(dtype)
    out, (g,) = value_and_grads(BCE, x, y)
    assert out.dtype == dtype
    assert g.dtype == dtype
    assert_close(out, ref_bce(to_f64(x), to_f64(y)), dtype)
    assert_close(g, ref_grad(plain_bce, (x, y)), dtype)


def test_bce_float64_stays_float64(x64):
    x = jnp.asarray([-40.0, 0.5, 40.0])  # tails beyond float32's resolution of s(x) - y
    y = jnp.asarray([0.0, 1.0, 1.0])
    out, (g,) = value_and_grads(BCE, x, y)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref_bce(x, y), rtol=1e-15)
    np.testing.assert_allclose(g, value_and_grads(plain_bce, x, y)[1][0], rtol=1e-15)


@pytest.mark.parametrize(("dtype", "big"), [(jnp.float32, 1e38), (jnp.float32, 1e30),
                                            (jnp.bfloat16, 1e38), (jnp.float16, 1e4)])
def test_bce_extreme_logits(dtype, big):
    inf = jnp.inf
    x = jnp.asarray([inf, -inf, big, -big, inf, -inf, big, -big]).astype(dtype)
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).astype(dtype)
    out, (g,) = value_and_grads(BCE, x, y)
    out, g = np.asarray(out.astype(jnp.float32)), np.asarray(g.astype(jnp.float32))
    # Matching hard labels: loss 0, gradient 0, also at ±inf.
    np.testing.assert_array_equal(out[:4], 0.0)
    np.testing.assert_array_equal(g[:4], 0.0)
    # Mismatched: +inf at ±inf, |x| for a large finite logit; gradient ±1.
    np.testing.assert_array_equal(out[4:6], np.inf)
    assert_close(out[6:], [float(x[6].astype(jnp.float32))] * 2, dtype)
    np.testing.assert_array_equal(g[4:], [1.0, -1.0, 1.0, -1.0])
    # optax: NaN where a hard label matches an infinite logit.
    if dtype == jnp.float32:
        assert np.isnan(np.asarray(optax.losses.sigmoid_binary_cross_entropy(x, y))[:2]).all()


def test_bce_nan_logit_gives_nan():
    out = BCE(jnp.asarray([jnp.nan, 0.0]), jnp.asarray([1.0, 1.0]))
    assert np.isnan(out[0])
    assert np.isfinite(out[1])


def test_bce_one_trace_for_new_values():
    fn = count_traces(BCE)
    jitted = jax.jit(fn)
    for seed in range(3):
        jitted(logits_of((5,), seed), labels_of("soft", (5,), seed)).block_until_ready()
    assert fn.traces == 1


F32, BF16 = jnp.float32, jnp.bfloat16


@pytest.mark.parametrize(("fn", "kwargs", "dtype"), [
    (BCE, {}, F32), (BCE, {}, BF16), (BCE, {"label_smoothing": 0.1}, BF16),
    (BCE, {"pos_weight": "array", "label_smoothing": 0.5}, F32),
    (BCE, {"pos_weight": "array", "label_smoothing": 0.5}, BF16), (FOCAL, {}, F32),
    (FOCAL, {}, BF16), (FOCAL, {"alpha": 0.25, "gamma": 0.5}, F32), (PBCE, {}, BF16),
])
def test_no_array_sized_temporaries(fn, kwargs, dtype):
    # XLA:CPU fuses the summed loss into one pass and the gradient (the transposed JVP)
    # into another: no temporary of the input's size (see _sigmoid.Consts), where
    # optax's autodiff keeps two to three.  Shapes only: nothing is allocated.
    if jax.default_backend() != "cpu":
        pytest.skip("pins XLA:CPU's fusion")
    n = 1 << 16
    spec = jax.ShapeDtypeStruct((64, n // 64), dtype)
    if kwargs.get("pos_weight") == "array":
        kwargs = dict(kwargs, pos_weight=jnp.ones((n // 64,), jnp.float32))
    f = lambda a, b: fn(a, b, **kwargs)
    for mode in (lambda a, b: f(a, b).astype(jnp.float32).mean(),
                 jax.grad(lambda a, b: f(a, b).astype(jnp.float32).mean()),
                 jax.value_and_grad(lambda a, b: f(a, b).astype(jnp.float32).mean())):
        assert temp_bytes(mode, spec, spec) < n


def test_bce_errors_name_the_argument():
    x = jnp.zeros((3,), jnp.float32)
    with pytest.raises(TypeError, match="logits"):
        BCE(jnp.zeros((3,), jnp.int32), x)
    with pytest.raises(TypeError, match="labels"):
        BCE(x, jnp.zeros((3,), jnp.complex64))
    with pytest.raises(ValueError, match=r"labels has shape \(4,\)"):
        BCE(x, jnp.zeros((4,), jnp.float32))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\]; got 1.5"):
        BCE(x, x, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"pos_weight must be finite and >= 0; got -1\.0"):
        BCE(x, x, pos_weight=-1.0)
    with pytest.raises(ValueError, match="pos_weight must be finite"):
        BCE(x, x, pos_weight=jnp.asarray([1.0, -2.0, 1.0]))
    with pytest.raises(ValueError, match=r"pos_weight has shape \(2,\)"):
        BCE(x, x, pos_weight=jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"pos_weight has shape \(2, 3\)"):
        BCE(x, x, pos_weight=jnp.ones((2, 3)))  # may not enlarge the loss
    with pytest.raises(TypeError, match="pos_weight"):
        BCE(x, x, pos_weight=True)


# --------------------------------------------------------------------------------------
# sigmoid_focal_loss.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("gamma", "alpha", "kind"), [
    (0.0, None, "hard"), (0.5, 0.25, "soft"), (2.0, None, "soft"), (2.0, 0.25, "hard"),
    (3.0, 0.75, "soft")])
def test_focal_matches_optax_and_reference(gamma, alpha, kind):
    x, y = logits_of((4, 6), scale=3.0), labels_of(kind, (4, 6))
    f = lambda a, b: FOCAL(a, b, alpha=alpha, gamma=gamma)
    o = lambda a, b: optax.losses.sigmoid_focal_loss(a, b, alpha=alpha, gamma=gamma)
    out, (g, gy) = value_and_grads(f, x, y, argnums=(0, 1))
    ref, (g_ref, _) = value_and_grads(o, x, y, argnums=(0, 1))
    assert_close(out, ref)
    assert_close(out, ref_focal(x, y, alpha, gamma))
    assert_close(g, g_ref)
    # The labels' gradient against plain autodiff (optax's own is off at hard labels:
    # its logsumexp drops b = 0 terms from the derivative).
    assert_close(gy, ref_grad(functools.partial(plain_focal, alpha=alpha, gamma=gamma),
                              (x, y), argnum=1), rtol=1e-4, atol=1e-4)


def test_focal_hand_worked_value():
    # x = 0, y = 1: p = 1/2, (1 - 1/2)^2 log 2 = 0.17329; alpha = 0.25: 0.043322.
    assert_close(FOCAL(jnp.float32(0.0), jnp.float32(1.0)), 0.25 * np.log(2))
    assert_close(FOCAL(jnp.float32(0.0), jnp.float32(1.0), alpha=0.25), 0.0625 * np.log(2))


def test_focal_array_alpha_and_traced_gamma():
    x, y = logits_of((3, 4)), labels_of("soft", (3, 4))
    alpha = jnp.asarray([0.1, 0.25, 0.5, 0.9], jnp.float32)
    out = jax.jit(lambda a, b, g: FOCAL(a, b, alpha=alpha, gamma=g))(x, y, jnp.float32(1.5))
    assert_close(out, ref_focal(x, y, to_f64(alpha), 1.5))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_focal_dtypes(dtype):
    x, y = logits_of((64,), dtype=dtype), labels_of("hard", (64,)).astype(dtype)
    out, (g,) = value_and_grads(lambda a, b: FOCAL(a, b, alpha=0.25), x, y)
    assert out.dtype == dtype
    assert g.dtype == dtype
    assert_close(out, ref_focal(to_f64(x), to_f64(y), 0.25), dtype)
    assert_close(g, ref_grad(functools.partial(plain_focal, alpha=0.25), (x, y)), dtype)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_infinite_logits_with_matching_labels(gamma):
    x = jnp.asarray([jnp.inf, -jnp.inf, 1e38, -1e38])
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    f = lambda a, b: FOCAL(a, b, gamma=gamma)
    out, (g,) = value_and_grads(f, x, y)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(g, 0.0)
    ref = jax.jit(lambda a, b: optax.losses.sigmoid_focal_loss(a, b, gamma=gamma))(x, y)
    assert np.isnan(np.asarray(ref)[:2]).all()
    # Mismatched: +inf loss, finite gradient.
    out, (g,) = value_and_grads(f, x, 1 - y)
    assert np.isinf(out[:2]).all()
    assert np.isfinite(g).all()


def test_focal_errors_name_the_argument():
    x = jnp.zeros((3,), jnp.float32)
    with pytest.raises(ValueError, match=r"gamma must be finite and >= 0; got -1\.0"):
        FOCAL(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        FOCAL(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="alpha must be finite and in"):
        FOCAL(x, x, alpha=jnp.asarray([0.5, 2.0, 0.5]))
    with pytest.raises(TypeError, match="gamma"):
        FOCAL(x, x, gamma=True)
    with pytest.raises(ValueError, match=r"labels has shape \(2,\)"):
        FOCAL(x, jnp.zeros((2,)))


# --------------------------------------------------------------------------------------
# Drop-in signatures and numerics helpers.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sigmoid_binary_cross_entropy", "sigmoid_focal_loss"])
def test_signature_extends_optax(name):
    ours = list(inspect.signature(getattr(lossax, name)).parameters.values())
    theirs = list(inspect.signature(getattr(optax.losses, name)).parameters.values())
    for a, b in zip(ours, theirs, strict=False):
        assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default)
    assert all(p.kind == p.KEYWORD_ONLY for p in ours[len(theirs):])


def test_log1p_polynomial_is_within_two_ulp():
    e = np.concatenate([np.geomspace(1.2e-38, 1e-3, 2000), np.linspace(1e-3, 1, 20001)])
    e = e.astype(np.float32)
    got = np.asarray(jax.jit(_sigmoid.log1p_unit)(jnp.asarray(e)), np.float64)
    want = np.log1p(e.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.0
