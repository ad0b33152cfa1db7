"""Every autodiff mode on every public loss: one table, one set of checks.

Each :class:`Case` names a lossax function (options bound), builds its float64 inputs
and says which of them are differentiable; integer labels and masks are closed over.
For every case, in float64:

* ``jax.test_util.check_grads(..., order=2)`` with its default modes (fwd and rev)
  against finite differences, at points away from the kinks;
* ``jax.jvp``, ``jax.linearize`` (its linear function called), ``jax.jacfwd``,
  ``jax.jacrev``, ``jax.hessian`` (forward over reverse) and ``jax.grad`` of
  ``jax.grad`` (a Hessian-vector product, reverse over reverse) all run and agree with
  each other;
* the Hessian agrees with optax's (where optax has the function and its Hessian is
  finite) to 1e-6;
* ``jax.vmap`` of each mode matches the unbatched results.

Append a case to ``CASES`` to cover a new loss.  The differentiable inputs are flattened into
one vector ``theta``; the scalar is ``sum(w * loss)`` with fixed weights ``w``, so that
the Hessian is not a sum of identical rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

import lossax
from helpers import rng

TOL = dict(rtol=1e-6, atol=1e-6)  # agreement between modes and with optax (float64)


@dataclasses.dataclass(frozen=True)
class Case:
    """One loss with options: ``fn(*args)`` is the loss (any shape).

    ``inputs()`` returns ``(args, diff)``: the float64 (or integer) arguments and the
    positions of the differentiable ones.  ``optax`` is the same function in optax (same
    arguments), or ``None``.  ``eager``: ``check_grads`` runs the function op by op
    (faster for small element-wise kernels, whose per-op compilations are shared between
    cases, than compiling each of its derivatives; not for ``shard_map``).  ``plain``:
    the same math by another, already checked path (one device, or the reference
    implementation), whose every-mode results this case's must match.
    ``check_grads_in``: where this case's ``check_grads`` runs instead (a test that
    checks the same kernel with more options), or ``None`` to run it here.
    """

    name: str
    fn: Callable[..., jax.Array]
    inputs: Callable[[], tuple[tuple, tuple[int, ...]]]
    optax: Callable[..., jax.Array] | None = None
    eager: bool = False
    plain: Callable[..., jax.Array] | None = None
    check_grads_in: str | None = None


# -- Inputs (small, away from the kinks) ----------------------------------------------------


def _logits(shape, seed, scale=2.0):
    return jnp.asarray(rng(seed).standard_normal(shape) * scale)


def _soft(shape, seed, lo=0.1, hi=0.9):
    return jnp.asarray(rng(seed).uniform(lo, hi, shape))


def _binary(shape=(5,), soft=True):
    def build():
        y = _soft(shape, 2) if soft else jnp.asarray(rng(2).integers(0, 2, shape))
        return (_logits(shape, 1), y), (0, 1) if soft else (0,)
    return build


def _with_weights(*extra):
    """``x, y`` soft and the given extra arrays, all differentiable."""
    def build():
        args = (_logits((3, 4), 1), _soft((3, 4), 2), *(e() for e in extra))
        return args, tuple(range(len(args)))
    return build


def _probs(shape=(5,)):
    return lambda: ((_soft(shape, 3, 0.1, 0.9), _soft(shape, 4)), (0, 1))


def _prob_rows():
    def build():
        p = jax.nn.softmax(_logits((3, 4), 5, 0.5))  # every p in (0.1, 0.5)
        return (p, _soft((3, 4), 6)), (0, 1)
    return build


def _signed(margin=1.0):
    """Scores with |margin - s t| >= 0.2 (no kink within reach) and targets near ±1."""
    def build():
        t = jnp.asarray([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
        s = jnp.asarray([0.3, 0.4, 2.1, -1.7, -0.6, 1.3]) + margin - 1.0
        return (s, t * 1.05), (0, 1)
    return build


def _scores():
    """Scores whose maxima and Weston-Watkins margins are 0.2 or more from a tie."""
    s = [[1.0, 0.3, -0.7, 2.6], [0.1, 1.5, 0.8, -1.2], [-0.4, -1.9, 0.6, 0.2]]
    return lambda: ((jnp.asarray(s), jnp.asarray([0, 2, 3])), (0,))


def _focal(**kw):
    return functools.partial(lossax.sigmoid_focal_loss, **kw)


def _optax_focal(**kw):
    return functools.partial(optax.losses.sigmoid_focal_loss, **kw)


BCE = lossax.sigmoid_binary_cross_entropy
CCE = lossax.categorical_cross_entropy
_ROW_MASK = jnp.asarray([True, False, True])
_CLASS_MASK = jnp.asarray([[True, True, False, True], [False, True, True, True],
                           [True, False, False, False]])

CASES: list[Case] = [
    # Binary cross-entropy from logits (float labels differentiable).
    Case("bce", BCE, _binary(), optax.losses.sigmoid_binary_cross_entropy),
    Case("bce-int-labels", BCE, _binary(soft=False), optax.losses.sigmoid_binary_cross_entropy),
    Case("bce-pos_weight-smoothing", functools.partial(BCE, pos_weight=2.5,
                                                       label_smoothing=0.2), _binary()),
    Case("bce-pos_weight-array", lambda x, y, w: BCE(x, y, pos_weight=w),
         _with_weights(lambda: _soft((4,), 7, 0.5, 3.0))),
    # Focal loss.
    Case("focal-gamma0", _focal(gamma=0.0), _binary(), _optax_focal(gamma=0.0)),
    Case("focal-gamma0.5-alpha", _focal(gamma=0.5, alpha=0.25), _binary(),
         _optax_focal(gamma=0.5, alpha=0.25)),
    Case("focal-gamma2", _focal(), _binary(), _optax_focal()),
    Case("focal-gamma3-alpha0.7-hard-labels", _focal(gamma=3.0, alpha=0.7),
         _binary(soft=False), _optax_focal(gamma=3.0, alpha=0.7)),
    Case("focal-array-alpha-gamma",
         lambda x, y, a, g: lossax.sigmoid_focal_loss(x, y, alpha=a, gamma=g),
         _with_weights(lambda: _soft((1, 4), 8), lambda: _soft((3, 1), 9, 0.5, 2.5)),
         lambda x, y, a, g: optax.losses.sigmoid_focal_loss(x, y, alpha=a, gamma=g)),
    # Cross-entropy on probabilities.
    Case("binary_cross_entropy", lossax.binary_cross_entropy, _probs()),
    Case("categorical_cross_entropy", CCE, _prob_rows()),
    Case("categorical_cross_entropy-row-where",
         lambda p, y: CCE(p, y, where=_ROW_MASK), _prob_rows()),
    Case("categorical_cross_entropy-class-where",
         lambda p, y: CCE(p, y, where=_CLASS_MASK), _prob_rows()),
    # Hinge family (targets differentiable).
    Case("hinge", lossax.hinge_loss, _signed(), optax.losses.hinge_loss),
    Case("squared_hinge", lossax.squared_hinge_loss, _signed()),
    Case("perceptron", lossax.perceptron_loss, _signed(0.0), optax.losses.perceptron_loss),
    Case("multiclass_hinge", lossax.multiclass_hinge_loss, _scores(),
         optax.losses.multiclass_hinge_loss),
    Case("multiclass_hinge-weston_watkins",
         functools.partial(lossax.multiclass_hinge_loss, form="weston_watkins"), _scores()),
    Case("multiclass_squared_hinge", lossax.multiclass_squared_hinge_loss, _scores()),
    Case("multiclass_squared_hinge-weston_watkins",
         functools.partial(lossax.multiclass_squared_hinge_loss, form="weston_watkins",
                           margin=0.5), _scores()),
    Case("multiclass_perceptron", lossax.multiclass_perceptron_loss, _scores(),
         optax.losses.multiclass_perceptron_loss),
]
CASES = [dataclasses.replace(c, eager=True) for c in CASES]  # element-wise and row losses


# -- Softmax cross-entropy, fused and vocabulary-sharded (appended cases) ---------------------

INT = lossax.softmax_cross_entropy_with_integer_labels
DENSE = lossax.softmax_cross_entropy
_LABELS = jnp.asarray([1, 3, 0])
_IGNORED = jnp.asarray([1, -100, 0])
_OPTIONS = dict(label_smoothing=0.2, z_loss=0.01, soft_cap=4.0)
# Class 2 is masked in every row, so smoothing puts no mass on a -inf logit.
_CE_CLASS_MASK = jnp.asarray([[True, True, False, True], [True, True, False, True],
                              [True, False, False, True]])


def _ce_inputs(dense=False, extra=()):
    def build():
        x = _logits((3, 4), 11)
        if dense:
            args = (x, jax.nn.softmax(_logits((3, 4), 12, 0.5)), *(e() for e in extra))
            return args, tuple(range(len(args)))
        args = (x, *(e() for e in extra))
        return args, tuple(range(len(args)))
    return build


_ALL_INT = dict(ignore_index=-100, label_smoothing=0.2, z_loss=0.01, soft_cap=2.5)
_FULLY_MASKED_ROW = jnp.asarray([[True, True, False, True], [False] * 4,
                                 [True, False, False, True]])


def _class_weights():
    return _soft((4,), 17, 0.5, 2.0)


def _tuple_axes(x):
    """Class axes (1, 2) with integer labels and (2, 1) with dense ones, [2, 3, 2, 4]."""
    y = jnp.asarray(rng(18).integers(0, 6, (2, 4)))
    t = _soft((2, 3, 2, 4), 19)
    return jnp.concatenate([INT(x, y, axis=(1, 2)).ravel(),
                            DENSE(x, t, axis=(2, 1)).ravel()])


def _int(**kw):
    return lambda x, *w: INT(x, _LABELS, **kw, **(dict(class_weights=w[0]) if w else {}))


def _fused_inputs():
    def build():
        return (_logits((5, 3), 13, 1.0), _logits((3, 6), 14, 0.7)), (0, 1)
    return build


_FUSED_Y = jnp.asarray([0, 5, 2, 2, 4])


def _sharded_mesh():
    # Rows over "data" (2), classes over "model" (2): both kinds of sharding at once.
    return jax.make_mesh((2, 2), ("data", "model"), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


_SHARDED_LABELS = jnp.asarray([1, 7, 4, 0])


def _sharded(x, t):
    """The sharded integer-label CE with every option, the sharded dense CE (mean) and
    the plain kernel inside a user's shard_map, side by side: one case (one set of
    compilations) for the three shard_map paths."""
    mesh = _sharded_mesh()
    axes = dict(mesh=mesh, vocab_axis_name="model", batch_axis_name="data")
    ce_int = lossax.sharded.softmax_cross_entropy_with_integer_labels(
        x, _SHARDED_LABELS, **axes, **_OPTIONS)
    ce_dense = lossax.sharded.softmax_cross_entropy(
        x, t, **axes, label_smoothing=0.1, z_loss=1e-2, reduction="mean")

    def local(xl, y):
        return INT(xl, y, vocab_axis_name="model", **_OPTIONS)
    in_shard_map = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(None, "model"), jax.P()),
                                 out_specs=jax.P())(x, _SHARDED_LABELS)
    return jnp.concatenate([ce_int, ce_dense[None], in_shard_map])


def _sharded_plain(x, t):
    """The same three losses on one device (their results must match exactly)."""
    ce_int = INT(x, _SHARDED_LABELS, **_OPTIONS)
    ce_dense = DENSE(x, t, label_smoothing=0.1, z_loss=1e-2, reduction="mean")
    return jnp.concatenate([ce_int, ce_dense[None], ce_int])


def _sharded_inputs():
    def build():
        return (_logits((4, 8), 15), jax.nn.softmax(_logits((4, 8), 16, 0.5))), (0, 1)
    return build


CASES += [
    Case("ce_int", _int(), _ce_inputs(),
         lambda x: optax.losses.softmax_cross_entropy_with_integer_labels(x, _LABELS)),
    Case("ce_int-options", _int(**_OPTIONS), _ce_inputs()),
    # Every option at once, class weights differentiable, with a row mask (and an ignored
    # row), or a class mask with a fully masked row.
    Case("ce_int-all-options-row-where", lambda x, w: INT(
        x, _IGNORED, where=_ROW_MASK, class_weights=w, **_ALL_INT, reduction="mean"),
         _ce_inputs(extra=(_class_weights,))),
    Case("ce_int-all-options-class-where", lambda x, w: INT(
        x, _LABELS, where=_FULLY_MASKED_ROW, class_weights=w, **_ALL_INT),
         _ce_inputs(extra=(_class_weights,))),
    Case("ce_dense", DENSE, _ce_inputs(dense=True), optax.losses.softmax_cross_entropy),
    Case("ce_dense-all-options-row-where", lambda x, t: DENSE(
        x, t, where=_ROW_MASK, **_OPTIONS, reduction="sum"), _ce_inputs(dense=True)),
    Case("ce_dense-all-options-class-where", lambda x, t: DENSE(
        x, t, where=_CE_CLASS_MASK, **_OPTIONS, reduction="sum"), _ce_inputs(dense=True)),
    Case("ce-tuple-axes", _tuple_axes, lambda: ((_logits((2, 3, 2, 4), 18),), (0,))),
    Case("safe_softmax_cross_entropy", lossax.safe_softmax_cross_entropy,
         _ce_inputs(dense=True), optax.losses.safe_softmax_cross_entropy),
    Case("poly_loss_cross_entropy", functools.partial(lossax.poly_loss_cross_entropy,
                                                      epsilon=1.5), _ce_inputs(dense=True),
         functools.partial(optax.losses.poly_loss_cross_entropy, epsilon=1.5)),
    Case("fused-mean", lambda x, w: lossax.linear_softmax_cross_entropy(
        x, _FUSED_Y, w, reduction="mean", z_loss=0.01, block_size=2), _fused_inputs(),
         plain=lambda x, w: lossax.linear_softmax_cross_entropy(
             x, _FUSED_Y, w, reduction="mean", z_loss=0.01, implementation="reference"),
         check_grads_in="tests/fused/test_fused.py::test_check_grads_order_2[sum]"),
    Case("fused-reference", lambda x, w: lossax.linear_softmax_cross_entropy(
        x, _FUSED_Y, w, label_smoothing=0.1, implementation="reference"), _fused_inputs()),
    Case("sharded", _sharded, _sharded_inputs(), plain=_sharded_plain),
]


# -- The checks -------------------------------------------------------------------------------


def _flat(case: Case):
    """``(f, theta, scalar)``: the loss and ``sum(w * loss)`` as functions of ``theta``,
    the flattened differentiable inputs, for the case's own function and optax's."""
    args, diff = case.inputs()
    theta, unravel = ravel_pytree([args[i] for i in diff])

    def bind(fn):
        def f(th):
            full = list(args)
            for i, a in zip(diff, unravel(th), strict=True):
                full[i] = a
            return jnp.ravel(fn(*full))
        return f

    f = bind(case.fn)
    w = jnp.asarray(np.linspace(0.5, 1.5, jax.eval_shape(f, theta).size))  # no eager call
    scalar = lambda fn: (lambda th: jnp.vdot(w, fn(th)))
    fo = None if case.optax is None else bind(case.optax)
    fp = None if case.plain is None else bind(case.plain)
    return (f, theta, scalar(f), (None if fo is None else scalar(fo)),
            (None if fp is None else (fp, scalar(fp))))


def _modes(f, F, v):
    """Every mode at ``theta``, as a dict of arrays (one jitted function)."""
    def run(th):
        out, jvp = jax.jvp(f, (th,), (v,))
        _, lin = jax.linearize(f, th)
        hvp = jax.grad(lambda t: jnp.vdot(jax.grad(F)(t), v))(th)  # reverse over reverse
        return {"out": out, "jvp": jvp, "linearize": lin(v), "jacfwd": jax.jacfwd(f)(th),
                "jacrev": jax.jacrev(f)(th), "hessian": jax.hessian(F)(th), "hvp": hvp}
    return run


CASES_BY_NAME = {c.name: c for c in CASES}
IDS = list(CASES_BY_NAME)


def test_case_names_are_unique():
    assert len(CASES_BY_NAME) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES if c.check_grads_in is None])
def test_check_grads_order2_default_modes(name):
    with jax.enable_x64(True):
        case = CASES_BY_NAME[name]
        f, theta, *_ = _flat(case)
        check_grads(f if case.eager else jax.jit(f), (theta,), order=2)


# These functions are tiny: compiled without the backend's optimisations (2x faster).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("name", IDS)
def test_every_mode_agrees_with_the_others_with_optax_and_under_vmap(name):
    case = CASES_BY_NAME[name]
    with jax.enable_x64(True):
        f, theta, F, Fo, plain = _flat(case)
        v = jnp.asarray(np.cos(np.arange(theta.size) + 0.5))
        run = jax.jit(_modes(f, F, v))
        # vmap of every mode, at theta and at a second point within reach of no kink.
        theta1 = theta + 0.01 * jnp.sin(jnp.arange(theta.size))

        def everything(ts):
            # The unbatched modes at both points through lax.map: one copy of `run` in
            # the program (a loop body), beside its vmap.
            out = {"map": jax.lax.map(run, ts), "vmap": jax.vmap(run)(ts)}
            if Fo is not None:
                out["optax"] = jax.hessian(Fo)(ts[0])
            if plain is not None:
                out["plain"] = _modes(*plain, v)(ts[0])
            return out

        res = jax.tree.map(np.asarray, jax.jit(everything, compiler_options=_FAST_COMPILE)(
            jnp.stack([theta, theta1])))
    res["at"], res["at1"] = ({k: a[i] for k, a in res["map"].items()} for i in (0, 1))
    m, v = res["at"], np.asarray(v)
    for k, a in m.items():
        assert np.isfinite(a).all(), k
    assert m["jacfwd"].shape == (m["out"].size, theta.size)
    np.testing.assert_allclose(m["jacfwd"], m["jacrev"], **TOL)
    np.testing.assert_allclose(m["jvp"], m["jacrev"] @ v, **TOL)
    np.testing.assert_allclose(m["linearize"], m["jvp"], **TOL)
    np.testing.assert_allclose(m["hessian"], m["hessian"].T, **TOL)
    np.testing.assert_allclose(m["hvp"], m["hessian"] @ v, **TOL)
    if "optax" in res:
        assert np.isfinite(res["optax"]).all()
        np.testing.assert_allclose(m["hessian"], res["optax"], **TOL, err_msg="optax")
    for k in res.get("plain", {}):
        np.testing.assert_allclose(m[k], res["plain"][k], **TOL, err_msg=f"plain {k}")
    for k in m:
        for i, single in enumerate((m, res["at1"])):
            np.testing.assert_allclose(res["vmap"][k][i], single[k], **TOL,
                                       err_msg=f"vmap {k}")


# -- Focal loss: a finite Hessian where 1 - p_t underflows ------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_hessian_finite_at_extreme_logits(dtype, gamma):
    # Logits where 1 - p_t underflows (float32 beyond ±88, float64 beyond ±709) against
    # labels 0, 1 and 0.3, and hard labels matching infinite logits (loss 0).
    xs = [100.0, -100.0, 50.0, -50.0, 1000.0, -1000.0, 20.0]
    with jax.enable_x64(True):
        x = jnp.asarray(xs * 3 + [np.inf, -np.inf], dtype)
        y = jnp.asarray([0.0] * 7 + [1.0] * 7 + [0.3] * 7 + [1.0, 0.0], dtype)
        f = lambda a: lossax.sigmoid_focal_loss(a, y, gamma=gamma).sum()
        fo = lambda a: optax.losses.sigmoid_focal_loss(a, y, gamma=gamma).sum()
        h, h_optax = map(np.asarray, jax.jit(lambda a: (jax.hessian(f)(a), jax.hessian(fo)(a)),
                                             compiler_options=_FAST_COMPILE)(x))
    assert np.isfinite(h).all(), np.diag(h)
    np.testing.assert_array_equal(h - np.diag(np.diag(h)), 0.0)  # element-wise
    np.testing.assert_array_equal(np.diag(h)[-2:], 0.0)
    # optax's where finite (its tails are less exact: relative 4e-2 at 50, in float64).
    ok = np.isfinite(h_optax)
    np.testing.assert_allclose(h[ok], h_optax[ok], **TOL)

