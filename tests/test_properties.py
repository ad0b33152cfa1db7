"""Property-based tests (hypothesis, the ``ci`` profile of conftest.py) of every public
loss: shift invariance, non-negativity, gradient rows summing to 0, permutation
equivariance over classes, the binary symmetries, ``vmap(f)(X) == f(X)``,
``jit(f) == f``, agreement with optax where optax is finite, and agreement of the fused
and sharded paths with the plain kernels.

Each property is parametrised over the public functions it applies to (found through
``lossax.__all__`` and ``tests/inputs.py``), and hypothesis draws dtypes, shapes,
values, masks and options.  Shapes come from a small fixed set and every computation
goes through one jitted function per (function, options), so compilations are shared
between examples and properties.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import inputs
import lossax
from helpers import f64
from lossax import testing

PUBLIC = sorted(n for n in lossax.__all__ if n != "checked")
KIND = inputs.KIND
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
EPS = {k: float(jnp.finfo(v).eps) for k, v in DTYPES.items()}
# (dtype, batch shape, number of classes, with a `where` mask): a scalar example, V = 1,
# V not a power of two, two batch axes; drawn jointly to bound the compilations.
COMBOS = [("float32", (), 5, False), ("bfloat16", (4,), 7, True),
          ("float16", (2, 3), 8, False), ("float32", (4,), 1, True)]

# Options hypothesis may add, per function (static: each set is one compilation).
OPTIONS = {
    "softmax_cross_entropy_with_integer_labels": [{}, {"label_smoothing": 0.2},
                                                  {"ignore_index": 0}],
    "softmax_cross_entropy": [{}, {"label_smoothing": 0.2}],
    "poly_loss_cross_entropy": [{}, {"epsilon": 0.5}],
    "sigmoid_binary_cross_entropy": [{}, {"label_smoothing": 0.2}],
    "sigmoid_focal_loss": [{}, {"gamma": 0.5}],
    "multiclass_hinge_loss": [{}, {"form": "weston_watkins"}],
    "multiclass_squared_hinge_loss": [{}, {"form": "weston_watkins", "margin": 0.5}],
    "top_k_accuracy": [{}, {"k": 2}],
    "hinge_loss": [{}, {"margin": 0.5}],
}
# optax functions with the same semantics (at lossax's default options).
OPTAX = {n: getattr(optax.losses, n) for n in PUBLIC if hasattr(optax.losses, n)}


def names(*kinds, exclude=()):
    return [n for n in PUBLIC if KIND[n] in kinds and n not in exclude]


def has_where(name):
    import inspect
    return "where" in inspect.signature(getattr(lossax, name)).parameters


# -- Drawing inputs ----------------------------------------------------------------------------


def grid(draw, shape, lo=-64, hi=64):
    """Values on a grid of 1/8 in [lo/8, hi/8]: exact in float16 and bfloat16, and exact
    after adding a small integer shift."""
    return draw(hnp.arrays(np.int16, shape, elements=st.integers(lo, hi))) / 8.0


@st.composite
def cases(draw, name, options=True, combos=COMBOS):
    """``(args, kwargs, dtype name)`` of valid inputs for ``name``, as NumPy arrays."""
    kind = KIND[name]
    dtype, batch, v, with_where = draw(st.sampled_from(combos))
    full = (*batch, v)
    kwargs = dict(draw(st.sampled_from(OPTIONS.get(name, [{}])))) if options else {}
    if kind in ("int", "dense"):
        x = grid(draw, full)
    if kind == "int":
        labels = draw(hnp.arrays(np.int32, batch, elements=st.integers(0, v - 1)))
        args = [x, labels]
    elif kind in ("dense", "prob_dense"):
        w = draw(hnp.arrays(np.int16, full, elements=st.integers(0, 4)))
        w[..., 0] += np.sum(w, axis=-1) == 0  # a row of zeros is not a distribution
        labels = w / np.sum(w, axis=-1, keepdims=True)
        if kind == "dense":
            args = [x, labels]
        else:  # probabilities: a softmax of grid values, rounded to the dtype below
            e = np.exp(grid(draw, full, -16, 16))
            args = [e / np.sum(e, axis=-1, keepdims=True), labels]
    elif kind == "binary":
        args = [grid(draw, full), grid(draw, full, 0, 8)]
    elif kind == "prob_binary":
        args = [grid(draw, full, 1, 63) / 8, grid(draw, full, 0, 8)]  # p in 1/64 .. 63/64
    elif kind == "pm1":
        t = draw(hnp.arrays(np.int8, full, elements=st.sampled_from([-1, 1])))
        args = [grid(draw, full), t.astype(np.float64)]
    elif kind == "linear":  # x [..., 3] @ W [3, V]
        labels = draw(hnp.arrays(np.int32, batch, elements=st.integers(0, v - 1)))
        args = [grid(draw, (*batch, 3), -16, 16), labels, grid(draw, (3, v))]
        if with_where:
            kwargs["where"] = draw(hnp.arrays(np.bool_, batch))
    else:
        raise KeyError(kind)
    if kind in ("int", "dense") and has_where(name) and with_where:
        kwargs["where"] = draw(hnp.arrays(np.bool_, full))  # fully masked rows included
    return args, kwargs, dtype


def to_jax(args, dtype):
    """The first argument in ``dtype``; float labels float32; integer labels int32."""
    out = [jnp.asarray(np.asarray(args[0], np.float32)).astype(DTYPES[dtype])]
    for a in args[1:]:
        a = np.asarray(a)
        out.append(jnp.asarray(a.astype(np.int32 if a.dtype.kind in "iu" else np.float32)))
    if len(out) == 3:  # the fused loss: weights in the dtype of x
        out[2] = out[2].astype(DTYPES[dtype])
    return out


def split(kwargs):
    """(static options, where): ``where`` travels as an array argument."""
    static = {k: v for k, v in kwargs.items() if k != "where"}
    return static, kwargs.get("where")


@functools.cache
def _compiled(name, static_items, with_grad):
    fn = functools.partial(getattr(lossax, name), **dict(static_items))

    def run(args, where):
        kw = {} if where is None else {"where": where}
        if not with_grad:
            return fn(*args, **kw), None

        def first(x0):
            return fn(x0, *args[1:], **kw)
        out, vjp = jax.vjp(first, args[0])
        return out, vjp(jnp.ones_like(out))[0]
    return jax.jit(run)


def evaluate(name, args, kwargs, dtype, grad=True):
    """``(loss, gradient of the summed loss w.r.t. the first argument)`` as float64 NumPy."""
    static, where = split(kwargs)
    grad = grad and name not in inputs.NOT_A_LOSS
    out, g = _compiled(name, tuple(sorted(static.items())), grad)(
        to_jax(args, dtype), None if where is None else jnp.asarray(where))
    return f64(out), (None if g is None else f64(g))


def assert_ulps(actual, expected, dtype, ulps, scale=None):
    """Within ``ulps`` units of ``dtype``'s epsilon, relative to ``1 + |expected|``."""
    scale = 1 + np.abs(expected) if scale is None else scale
    err = testing.ulp_error(actual, expected, DTYPES[dtype], scale)
    err = np.where(np.isnan(actual) & np.isnan(expected), 0.0, err)
    assert np.all(err <= ulps), f"max error {np.nanmax(err):.2f} ulp > {ulps}"


# -- Shift invariance ----------------------------------------------------------------------


SHIFT_INVARIANT = names("int", "dense")


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
@given(data=st.data())
def test_shift_invariance(name, data):
    """f(x + c) == f(x) for a per-row shift c (exact in every dtype on the grid)."""
    args, kwargs, dtype = data.draw(cases(name))
    batch = args[0].shape[:-1]
    c = data.draw(hnp.arrays(np.int8, batch, elements=st.integers(-8, 8))).astype(np.float64)
    shifted = [args[0] + c[..., None], *args[1:]]
    loss, g = evaluate(name, args, kwargs, dtype)
    loss_s, g_s = evaluate(name, shifted, kwargs, dtype)
    # The loss moves by at most a rounding of lse (computed in float32) and of the output.
    assert_ulps(loss_s, loss, dtype, 4, scale=1 + np.abs(loss) + 8 + np.abs(c))
    if g is not None:
        assert_ulps(g_s, g, dtype, 4)


# -- Non-negativity ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC)
@given(data=st.data())
def test_non_negative(name, data):
    args, kwargs, dtype = data.draw(cases(name))
    if KIND[name] in ("int", "dense", "binary", "pm1"):
        args[0] = args[0] * data.draw(st.sampled_from([1.0, 64.0]))  # and larger values
    loss, _ = evaluate(name, args, kwargs, dtype)
    assert np.all(loss >= 0), loss


# -- Gradient rows sum to zero ---------------------------------------------------------------


@pytest.mark.parametrize("name", names("int", "dense", exclude=inputs.NOT_A_LOSS))
@given(data=st.data())
def test_gradient_rows_sum_to_zero(name, data):
    """For normalised labels (and any shift-invariant loss) each row's gradient sums to
    0: a softmax cannot move all its logits together."""
    args, kwargs, dtype = data.draw(cases(name))
    _, g = evaluate(name, args, kwargs, dtype)
    row_sum = np.sum(g, axis=-1)
    # Each element p_j - t_j (plus smoothing and poly terms, each of size <= 1 summed over
    # the row) carries a rounding error of order eps times its terms, and is rounded once
    # more to the dtype.
    bound = EPS[dtype] * (4 + 2 * np.sum(np.abs(g), axis=-1))
    assert np.all(np.abs(row_sum) <= bound), (row_sum, bound)


# -- Permutation equivariance over classes ---------------------------------------------------


@pytest.mark.parametrize("name", names("int", "dense", "prob_dense"))
@given(data=st.data())
def test_permutation_equivariance_over_classes(name, data):
    args, kwargs, dtype = data.draw(cases(name))
    v = args[0].shape[-1]
    perm = np.asarray(data.draw(st.permutations(range(v))))
    permuted = [args[0][..., perm]]
    if KIND[name] == "int":
        permuted.append(np.argsort(perm)[args[1]].astype(np.int32))
    else:
        permuted.append(args[1][..., perm])
    kw = dict(kwargs)
    if "where" in kw:
        kw["where"] = kw["where"][..., perm]
    if "ignore_index" in kw:  # the ignored label moves with the classes
        kw["ignore_index"] = int(np.argsort(perm)[kw["ignore_index"]])
    loss, g = evaluate(name, args, kwargs, dtype)
    loss_p, g_p = evaluate(name, permuted, kw, dtype)
    assert_ulps(loss_p, loss, dtype, 4, scale=1 + np.abs(loss) + 8)
    if g is not None:
        assert_ulps(g_p, g[..., perm], dtype, 4)


# -- Binary symmetries -----------------------------------------------------------------------


def _flip(name, args, kwargs):
    kind = KIND[name]
    if kind == "binary":
        return [-args[0], 1 - args[1]], kwargs
    if kind == "prob_binary":
        return [1 - args[0], 1 - args[1]], kwargs
    return [-args[0], -args[1]], kwargs  # pm1: the margin s t is unchanged


@pytest.mark.parametrize("name", names("binary", "prob_binary", "pm1"))
@given(data=st.data())
def test_binary_symmetry(name, data):
    """BCE(z, y) == BCE(-z, 1 - y); BCE(p, y) == BCE(1 - p, 1 - y); hinge(s, t) ==
    hinge(-s, -t); the gradient flips sign."""
    args, kwargs, dtype = data.draw(cases(name))
    flipped, kw = _flip(name, args, kwargs)
    loss, g = evaluate(name, args, kwargs, dtype)
    loss_f, g_f = evaluate(name, flipped, kw, dtype)
    assert_ulps(loss_f, loss, dtype, 2)
    assert_ulps(-g_f, g, dtype, 2)


@given(data=st.data())
def test_focal_alpha_symmetry(data):
    """focal(z, y; alpha) == focal(-z, 1 - y; 1 - alpha)."""
    args, _, dtype = data.draw(cases("sigmoid_focal_loss", options=False))
    loss, g = evaluate("sigmoid_focal_loss", args, {"alpha": 0.25}, dtype)
    loss_f, g_f = evaluate("sigmoid_focal_loss", [-args[0], 1 - args[1]], {"alpha": 0.75},
                           dtype)
    assert_ulps(loss_f, loss, dtype, 2)
    assert_ulps(-g_f, g, dtype, 2)


# -- vmap and jit ------------------------------------------------------------------------------


BATCHED = [COMBOS[2]]  # two batch axes; vmap over the first


@pytest.mark.parametrize("name", PUBLIC)
@given(data=st.data())
def test_vmap_equals_batch(name, data):
    """vmap over the leading batch axis gives the batched call's rows."""
    args, kwargs, dtype = data.draw(cases(name, options=False, combos=BATCHED))
    static, where = split(kwargs)
    xs = to_jax(args, dtype)
    if where is not None:
        xs.append(jnp.asarray(where))
    batched, mapped = _vmapped(name, tuple(sorted(static.items())), where is not None)(*xs)
    assert_ulps(f64(mapped), f64(batched), dtype, 2)


@functools.cache
def _vmapped(name, static_items, with_where):
    fn = functools.partial(getattr(lossax, name), **dict(static_items))

    def call(*a):
        return fn(*a[:-1], where=a[-1]) if with_where else fn(*a)
    in_axes = 0
    if KIND[name] == "linear":  # the weights are shared by the rows
        in_axes = (0, 0, None, 0) if with_where else (0, 0, None)
    return jax.jit(lambda *a: (call(*a), jax.vmap(call, in_axes=in_axes)(*a)))


@pytest.mark.parametrize("name", PUBLIC)
@given(data=st.data())
def test_jit_equals_eager(name, data):
    args, kwargs, dtype = data.draw(cases(name, options=False, combos=[COMBOS[1]]))
    static, where = split(kwargs)
    fn = functools.partial(getattr(lossax, name), **static)
    xs = to_jax(args, dtype)
    kw = {} if where is None else {"where": jnp.asarray(where)}
    eager = f64(fn(*xs, **kw))
    jitted, _ = evaluate(name, args, kwargs, dtype)
    assert_ulps(jitted, eager, dtype, 2)


# -- Agreement with optax ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTAX))
@given(data=st.data())
def test_agrees_with_optax_where_optax_is_finite(name, data):
    """lossax in float16/bfloat16/float32 against optax on the same inputs computed in
    float32 (optax's math without its low-precision accumulation); the logits span
    ±512, and some are -inf where the function accepts them."""
    args, kwargs, dtype = data.draw(cases(name, options=False))
    if KIND[name] in ("int", "dense", "binary", "pm1"):
        args[0] = args[0] * data.draw(st.sampled_from([1.0, 64.0]))
    if KIND[name] in ("int", "dense") and data.draw(st.booleans()):
        args[0] = np.where(data.draw(hnp.arrays(np.bool_, args[0].shape)), -np.inf, args[0])
    loss, g = evaluate(name, args, kwargs, dtype)
    xs = to_jax(args, dtype)
    xs[0] = xs[0].astype(jnp.float32)
    where = jnp.asarray(kwargs["where"]) if "where" in kwargs else None
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        ref, ref_g = _optax_compiled(name)(xs, where)
    ref, ref_g = f64(ref), f64(ref_g)
    ok = np.isfinite(ref)
    scale = 1 + np.abs(ref) + np.max(np.where(np.isfinite(args[0]), np.abs(args[0]), 0))
    assert_ulps(loss[ok], ref[ok], dtype, 4, scale=scale[ok] if np.ndim(scale) else scale)
    g_ok = np.isfinite(ref_g)
    assert_ulps(g[g_ok], ref_g[g_ok], dtype, 4)


@functools.cache
def _optax_compiled(name):
    def run(xs, where):
        kw = {} if where is None else {"where": where}

        def first(x0):
            return OPTAX[name](x0, *xs[1:], **kw)
        out, vjp = jax.vjp(first, xs[0])
        return out, vjp(jnp.ones_like(out))[0]
    return jax.jit(run)


# -- Fused and sharded paths against the plain kernels ----------------------------------------


def _fused():
    fn = getattr(lossax, "linear_softmax_cross_entropy", None)
    if fn is None:
        from lossax import fused
        fn = fused.linear_softmax_cross_entropy
    return fn


FUSED_OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param({"ignore_index": 1, "reduction": "mean"}, id="ignore_index,mean"),
    pytest.param({"label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 5.0,
                  "class_weights": "w", "reduction": "sum"}, id="all-options,sum"),
    pytest.param({"implementation": "reference"}, id="reference", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("options", FUSED_OPTIONS)
@given(data=st.data())
def test_fused_linear_agrees_with_plain_kernel(options, data):
    """linear_softmax_cross_entropy(x, y, W, bias=b) == softmax CE of x @ W + b, value and
    gradients w.r.t. x, W and b, with blocks smaller than V."""
    n, d, v, dtype = data.draw(st.sampled_from([(5, 4, 37, "float32"), (1, 3, 8, "bfloat16")]))
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = jnp.asarray(r.standard_normal((n, d)), DTYPES[dtype])
    w = jnp.asarray(r.standard_normal((d, v)), DTYPES[dtype])
    b = jnp.asarray(r.standard_normal(v), DTYPES[dtype])
    y = jnp.asarray(r.integers(0, v, n), jnp.int32)
    cw = jnp.asarray(r.uniform(0.5, 2, v), jnp.float32)
    (lf, gf), (lp, gp) = _fused_and_plain(tuple(sorted(options.items())))(x, w, b, y, cw)
    tol = {"float32": 2e-5, "bfloat16": 2e-2}[dtype]
    np.testing.assert_allclose(float(lf), float(lp), rtol=tol, atol=tol)
    for a, e in zip(gf, gp, strict=True):
        np.testing.assert_allclose(f64(a), f64(e), rtol=tol, atol=tol)


@functools.cache
def _fused_and_plain(option_items):
    opts = dict(option_items)
    fused = _fused()

    def both(x, w, b, y, cw):
        o = {k: (cw if v == "w" else v) for k, v in opts.items()}
        plain_o = {k: v for k, v in o.items() if k != "implementation"}

        def f(x, w, b):
            return jnp.sum(fused(x, y, w, bias=b, block_size=16, **o).astype(jnp.float32))

        def p(x, w, b):
            z = jnp.dot(x, w, preferred_element_type=jnp.float32) + b[None, :].astype(jnp.float32)
            return jnp.sum(lossax.softmax_cross_entropy_with_integer_labels(
                z.astype(jnp.float32), y, **plain_o))
        return (jax.value_and_grad(f, argnums=(0, 1, 2))(x, w, b),
                jax.value_and_grad(p, argnums=(0, 1, 2))(x, w, b))
    return jax.jit(both)


SHARDED_OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param({"label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 5.0, "where": True,
                  "reduction": "mean"}, id="all-options,mean", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", ["softmax_cross_entropy_with_integer_labels",
                                  "softmax_cross_entropy"])
@pytest.mark.parametrize("options", SHARDED_OPTIONS)
@given(data=st.data())
def test_sharded_agrees_with_plain_kernel(name, options, data):
    """lossax.sharded on a (data 2, model 4) mesh of fake CPU devices == the plain kernel,
    value and gradient."""
    n, v = data.draw(st.sampled_from([(4, 12), (8, 8)]))
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = jnp.asarray(r.standard_normal((n, v)) * 3, jnp.float32)
    y = (jnp.asarray(r.integers(0, v, n), jnp.int32) if KIND[name] == "int"
         else jnp.asarray(r.dirichlet(np.ones(v), n), jnp.float32))
    where = jnp.asarray(r.uniform(size=n) > 0.3)
    (ls, gs), (lp, gp) = _sharded_and_plain(name, tuple(sorted(options.items())))(x, y, where)
    np.testing.assert_allclose(float(ls), float(lp), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gp), rtol=2e-6, atol=2e-6)


@functools.cache
def _sharded_and_plain(name, option_items):
    mesh = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    opts = dict(option_items)
    use_where = opts.pop("where", False)
    sharded_fn = functools.partial(getattr(lossax.sharded, name), mesh=mesh,
                                   vocab_axis_name="model", batch_axis_name="data", **opts)
    plain_fn = functools.partial(getattr(lossax, name), **opts)

    def both(x, y, where):
        kw = {"where": where} if use_where else {}
        return (jax.value_and_grad(lambda x: jnp.sum(sharded_fn(x, y, **kw)))(x),
                jax.value_and_grad(lambda x: jnp.sum(plain_fn(x, y, **kw)))(x))
    return jax.jit(both)
