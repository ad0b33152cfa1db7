"""The hinge family: binary hinge, squared hinge, perceptron; multiclass hinge in the
Crammer-Singer and Weston-Watkins forms, squared, and the multiclass perceptron.

Expected values come from optax (the shared names, gradients included: JAX's autodiff
of optax's formulas fixes the subgradients at the kinks), from float64 numpy references
written here from the formulas, or from numbers worked by hand in a comment.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import lossax
from helpers import FLOAT_DTYPES, assert_close, count_traces, rng, to_f64

HINGE = lossax.hinge_loss
SQ_HINGE = lossax.squared_hinge_loss
PERC = lossax.perceptron_loss
MHINGE = lossax.multiclass_hinge_loss
MSQ = lossax.multiclass_squared_hinge_loss
MPERC = lossax.multiclass_perceptron_loss
FORMS = ("crammer_singer", "weston_watkins")


def value_and_grads(f, *args, argnums=(0,)):
    """Jitted (f(*args), grads of sum(f) with respect to ``argnums``)."""
    def run(*a):
        return f(*a), jax.grad(lambda *b: jnp.sum(f(*b).astype(jnp.float32)), argnums)(*a)
    return jax.jit(run)(*args)


# --------------------------------------------------------------------------------------
# float64 references, from the formulas (loops over classes, no vectorised tricks).
# --------------------------------------------------------------------------------------


def ref_multiclass(s, y, margin=1.0, form="crammer_singer", squared=False):
    """Loss and gradient, one row at a time.  Subgradients: a tied maximum splits its
    gradient equally, max(0, z) has derivative 1/2 at z = 0 (JAX's conventions)."""
    s = np.asarray(s, np.float64)
    y = np.asarray(y)
    v = s.shape[-1]
    rows, labels = s.reshape(-1, v), y.reshape(-1)
    loss, grad = np.zeros(len(rows)), np.zeros_like(rows)
    for i, (row, lab) in enumerate(zip(rows, labels, strict=True)):
        if not 0 <= lab < v:
            loss[i], grad[i] = np.nan, np.nan
            continue
        if form == "crammer_singer":
            z = np.array([row[j] + (0.0 if j == lab else margin) for j in range(v)])
            top = z == z.max()
            d = z.max() - row[lab]
            dz = top / top.sum()
            dz[lab] -= 1
            loss[i], grad[i] = (d * d, 2 * d * dz) if squared else (d, dz)
        else:
            for j in range(v):
                if j == lab:
                    continue
                z = margin + row[j] - row[lab]
                h = max(0.0, z)
                dh = 2 * h if squared else (1.0 if z > 0 else 0.5 if z == 0 else 0.0)
                loss[i] += (h * h if squared else h) / v
                grad[i, j] += dh / v
                grad[i, lab] -= dh / v
    return loss.reshape(y.shape), grad.reshape(s.shape)


def scores_and_labels(batch, v, seed=0, dtype=jnp.float32, ties=False):
    r = rng(seed)
    s = (r.standard_normal((*batch, v)) * 2).astype(np.float32)
    y = r.integers(0, v, batch).astype(np.int32)
    if ties and v >= 3:
        # Exact ties for the maximum and exact kinks of max(0, m + s_j - s_y).
        flat, lab = s.reshape(-1, v), y.reshape(-1)
        flat[:, :] = np.round(flat)
        flat[::2, (lab[::2] + 1) % v] = flat[::2].max(-1) + 1
        flat[::2, (lab[::2] + 2) % v] = flat[::2].max(-1)
        flat[1::2, (lab[1::2] + 1) % v] = flat[1::2, lab[1::2]] - 1  # z = 0 for m = 1
    return jnp.asarray(s).astype(dtype), jnp.asarray(y)


def temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


# --------------------------------------------------------------------------------------
# Binary losses.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [(HINGE, optax.losses.hinge_loss),
                                              (PERC, optax.losses.perceptron_loss)])
@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
def test_binary_matches_optax_including_kinks(ours, theirs, shape):
    r = rng(1)
    x = jnp.asarray(r.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], shape).astype(np.float32))
    t = jnp.asarray(r.choice([-1.0, 1.0], shape).astype(np.float32))  # kinks at x t = 1, 0
    out, grads = value_and_grads(ours, x, t, argnums=(0, 1))
    ref, ref_grads = value_and_grads(theirs, x, t, argnums=(0, 1))
    assert_close(out, ref, rtol=0, atol=0)
    for g, gr in zip(grads, ref_grads, strict=True):
        assert_close(g, gr, rtol=0, atol=0)


@pytest.mark.parametrize("margin", [1.0, 0.5, 2.0, -0.5])
def test_squared_hinge_and_margin_match_reference(margin):
    x = jnp.asarray(rng(2).standard_normal((4, 6)).astype(np.float32) * 2)
    t = jnp.asarray(rng(3).choice([-1.0, 1.0], (4, 6)).astype(np.float32))
    z = margin - to_f64(x) * to_f64(t)
    out, (g,) = value_and_grads(lambda a, b: HINGE(a, b, margin=margin), x, t)
    assert_close(out, np.maximum(0, z))
    assert_close(g, -to_f64(t) * (z > 0))
    out, (g,) = value_and_grads(lambda a, b: SQ_HINGE(a, b, margin=margin), x, t)
    assert_close(out, np.maximum(0, z) ** 2)
    assert_close(g, -2 * to_f64(t) * np.maximum(0, z))


def test_binary_hand_worked_values():
    s, t = jnp.asarray([2.0, 0.5, -0.5]), jnp.asarray([1.0, 1.0, 1.0])
    assert_close(HINGE(s, t), [0.0, 0.5, 1.5])  # max(0, 1 - s)
    assert_close(SQ_HINGE(s, t), [0.0, 0.25, 2.25])
    assert_close(PERC(s, t), [0.0, 0.0, 0.5])  # max(0, -s)
    # Targets outside {-1, +1} are not checked (jit cannot): the formula applies as is.
    assert_close(HINGE(jnp.asarray([0.5]), jnp.asarray([0.0])), [1.0])


def test_binary_broadcasting_and_integer_targets():
    x = jnp.asarray(rng(4).standard_normal((3, 5)).astype(np.float32))
    t = jnp.asarray([1, -1, 1, 1, -1], jnp.int32)
    out = HINGE(x, t)
    assert out.shape == (3, 5)
    assert out.dtype == jnp.float32
    assert_close(out, np.maximum(0, 1 - to_f64(x) * np.asarray(t, np.float64)))
    assert HINGE(x, jnp.float32(1.0)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 5\) and \(5,\)"):
        PERC(x, t)  # optax's perceptron_loss checks equal shapes


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_binary_dtypes(dtype):
    x = jnp.asarray(rng(7).standard_normal((64,)).astype(np.float32) * 2).astype(dtype)
    t = jnp.asarray(rng(8).choice([-1.0, 1.0], (64,)).astype(np.float32)).astype(dtype)
    z = 1 - to_f64(x) * to_f64(t)
    for fn, ref, ref_g in [(HINGE, np.maximum(0, z), -to_f64(t) * (z > 0)),
                           (SQ_HINGE, np.maximum(0, z) ** 2, -2 * to_f64(t) * np.maximum(0, z))]:
        out, (g,) = value_and_grads(fn, x, t)
        assert out.dtype == dtype
        assert g.dtype == dtype
        assert_close(out, ref, dtype)
        assert_close(g, ref_g, dtype)


def test_binary_extreme_values():
    x = jnp.asarray([1e38, -1e38, jnp.inf, -jnp.inf])
    t = jnp.asarray([1.0, 1.0, 1.0, 1.0])
    out, (g,) = value_and_grads(HINGE, x, t)
    np.testing.assert_array_equal(out, np.asarray([0.0, 1e38, 0.0, np.inf], np.float32))
    np.testing.assert_array_equal(g, [0.0, -1.0, 0.0, -1.0])


# --------------------------------------------------------------------------------------
# Multiclass losses.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [(MHINGE, optax.losses.multiclass_hinge_loss),
                                              (MPERC, optax.losses.multiclass_perceptron_loss)])
@pytest.mark.parametrize(("batch", "v"), [((), 5), ((4,), 1), ((6,), 7), ((2, 3), 33)])
def test_multiclass_matches_optax_including_ties(ours, theirs, batch, v):
    s, y = scores_and_labels(batch, v, seed=v, ties=True)
    out, (g,) = value_and_grads(ours, s, y)
    ref, (g_ref,) = value_and_grads(theirs, s, y)
    assert out.shape == batch
    assert_close(out, ref)
    assert_close(g, g_ref)


def test_multiclass_tie_splits_the_gradient():
    # max(1, 2 + 1, 2 + 1) - 1 = 2; the two tied maxima share the gradient.
    s, y = jnp.asarray([[1.0, 2.0, 2.0]]), jnp.asarray([0])
    out, (g,) = value_and_grads(MHINGE, s, y)
    assert_close(out, [2.0])
    assert_close(g, [[-1.0, 0.5, 0.5]])
    out, (g,) = value_and_grads(lambda a, b: MHINGE(a, b, form="weston_watkins"), s, y)
    assert_close(out, [(2.0 + 2.0) / 3])  # (max(0, 1 + 2 - 1) * 2) / 3
    assert_close(g, [[-2 / 3, 1 / 3, 1 / 3]])


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("margin", [1.0, -0.5])
def test_multiclass_forms_match_reference(form, squared, margin):
    s, y = scores_and_labels((6,), 7, seed=3, ties=margin == 1.0)
    fn = MSQ if squared else MHINGE
    out, (g,) = value_and_grads(lambda a, b: fn(a, b, margin=margin, form=form), s, y)
    ref, ref_g = ref_multiclass(s, y, margin, form, squared)
    assert_close(out, ref)
    assert_close(g, ref_g)


def test_weston_watkins_matches_pytorch_multimarginloss_by_hand():
    # torch.nn.MultiMarginLoss(reduction="none") on x = (0.1, 0.2, 0.4, 0.8), y = 3:
    # (max(0, 1 - 0.8 + 0.1) + max(0, 1 - 0.8 + 0.2) + max(0, 1 - 0.8 + 0.4)) / 4
    # = (0.3 + 0.4 + 0.6) / 4 = 0.325 (the example in PyTorch's documentation).
    s, y = jnp.asarray([[0.1, 0.2, 0.4, 0.8]]), jnp.asarray([3])
    assert_close(MHINGE(s, y, form="weston_watkins"), [0.325])
    assert_close(MSQ(s, y, form="weston_watkins"), [(0.09 + 0.16 + 0.36) / 4])


@pytest.mark.parametrize("fn", [MHINGE, MSQ, MPERC])
def test_multiclass_check_grads_order2(x64, fn):
    s = jnp.asarray(rng(9).standard_normal((3, 5)) * 2)
    y = jnp.asarray(rng(9).integers(0, 5, (3,)))
    forms = FORMS if fn is not MPERC else (None,)
    for form in forms:
        kw = {} if form is None else {"form": form}
        check_grads(functools.partial(fn, labels=y, **kw), (s,), order=2, modes=["rev"])


@pytest.mark.parametrize(("form", "squared"), [("crammer_singer", False),
                                               ("weston_watkins", True)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_multiclass_dtypes(dtype, form, squared):
    s, y = scores_and_labels((8,), 37, seed=10, dtype=dtype)
    fn = MSQ if squared else MHINGE
    out, (g,) = value_and_grads(lambda a, b: fn(a, b, form=form), s, y)
    ref, ref_g = ref_multiclass(to_f64(s), y, 1.0, form, squared)
    assert out.dtype == dtype
    assert g.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(g, ref_g, dtype)


@pytest.mark.parametrize("fn", [MHINGE, MPERC, functools.partial(MSQ, form="weston_watkins")])
def test_multiclass_long_rows_blocked(fn):
    # V above the CPU blocking threshold (32768), not a multiple of the block.
    s, y = scores_and_labels((2,), 40003, seed=11)
    y = jnp.asarray([0, 40002])
    form = getattr(fn, "keywords", {}).get("form", "crammer_singer")
    squared = getattr(fn, "func", None) is MSQ
    margin = 0.0 if fn is MPERC else 1.0
    out, (g,) = value_and_grads(fn, s, y)
    ref, ref_g = ref_multiclass(s, y, margin, form, squared)
    assert_close(out, ref)
    assert_close(g, ref_g)


def test_multiclass_label_out_of_range_gives_nan_in_its_row_only():
    s, _ = scores_and_labels((3,), 4, seed=12)
    y = jnp.asarray([0, 4, -1])
    for form in FORMS:
        out, (g,) = value_and_grads(lambda a, b, form=form: MHINGE(a, b, form=form), s, y)
        assert np.isfinite(out[0])
        assert np.isnan(out[1:]).all()
        assert np.isfinite(g[0]).all()
        assert np.isnan(g[1:]).all()


def test_multiclass_errors_name_the_argument():
    s = jnp.zeros((3, 4), jnp.float32)
    y = jnp.zeros((3,), jnp.int32)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        MHINGE(s, jnp.zeros((3,), jnp.float32))
    with pytest.raises(ValueError, match=r"labels has shape \(4,\); expected the batch shape"):
        MHINGE(s, jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match="scores"):
        MHINGE(jnp.zeros((3, 4), jnp.int32), y)
    with pytest.raises(ValueError, match="margin must be finite; got inf"):
        MHINGE(s, y, margin=float("inf"))
    with pytest.raises(TypeError, match="margin must be a float"):
        HINGE(s, s, margin="1")
    with pytest.raises(ValueError, match="form must be 'crammer_singer' or 'weston_watkins'"):
        MSQ(s, y, form="ovr")
    with pytest.raises(ValueError, match="class axis"):
        MPERC(jnp.float32(1.0), jnp.int32(0))
    with pytest.raises(ValueError, match="at least one class"):
        MHINGE(jnp.zeros((3, 0)), y)


# --------------------------------------------------------------------------------------
# Memory, traces and signatures.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "shape"), [
    (HINGE, (1 << 16,)), (SQ_HINGE, (1 << 16,)), (MHINGE, (64, 1000)), (MPERC, (64, 1000)),
    (MHINGE, (4096, 1000)),  # XLA:CPU's fusion decisions change with the size
    (functools.partial(MHINGE, form="weston_watkins"), (64, 1000)),
    (functools.partial(MSQ, form="weston_watkins"), (64, 1000)),
])
def test_no_array_sized_temporaries(fn, shape):
    # Forward, gradient and both together each without a temporary of the scores' size
    # (optax's multiclass hinge keeps one to two).  Shapes only: nothing is allocated.
    if jax.default_backend() != "cpu":
        pytest.skip("pins XLA:CPU's fusion")
    s = jax.ShapeDtypeStruct(shape, jnp.float32)
    other = s if len(shape) == 1 else jax.ShapeDtypeStruct(shape[:-1], jnp.int32)
    f = lambda a, b: fn(a, b).mean()
    size = int(np.prod(shape)) * 4
    for mode in (f, jax.grad(f), jax.value_and_grad(f)):
        assert temp_bytes(mode, s, other) < size // 4


def test_one_trace_for_new_values():
    fn = count_traces(MHINGE)
    jitted = jax.jit(fn)
    for seed in range(3):
        jitted(*scores_and_labels((4,), 5, seed=seed)).block_until_ready()
    assert fn.traces == 1


@pytest.mark.parametrize("name", ["hinge_loss", "perceptron_loss", "multiclass_hinge_loss",
                                  "multiclass_perceptron_loss"])
def test_signature_extends_optax(name):
    ours = list(inspect.signature(getattr(lossax, name)).parameters.values())
    theirs = list(inspect.signature(getattr(optax.losses, name)).parameters.values())
    for a, b in zip(ours, theirs, strict=False):
        assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default)
    assert all(p.kind == p.KEYWORD_ONLY for p in ours[len(theirs):])
