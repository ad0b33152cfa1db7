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
    cases, than compiling each of its derivatives; not for ``shard_map``).
    """

    name: str
    fn: Callable[..., jax.Array]
    inputs: Callable[[], tuple[tuple, tuple[int, ...]]]
    optax: Callable[..., jax.Array] | None = None
    eager: bool = False


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
    Case("focal-array-alpha-gamma",
         lambda x, y, a, g: lossax.sigmoid_focal_loss(x, y, alpha=a, gamma=g),
         _with_weights(lambda: _soft((1, 4), 8), lambda: _soft((3, 1), 9, 0.5, 2.5)),
         lambda x, y, a, g: optax.losses.sigmoid_focal_loss(x, y, alpha=a, gamma=g)),
    # Cross-entropy on probabilities.
    Case("binary_cross_entropy", lossax.binary_cross_entropy, _probs()),
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


def _int(**kw):
    return lambda x, *w: INT(x, _LABELS, **kw, **(dict(class_weights=w[0]) if w else {}))


def _fused_inputs():
    def build():
        return (_logits((5, 3), 13, 1.0), _logits((3, 6), 14, 0.7)), (0, 1)
    return build


_FUSED_Y = jnp.asarray([0, 5, 2, 2, 4])


def _sharded_mesh():
    return jax.make_mesh((4,), ("model",), devices=jax.devices()[:4])


def _sharded_int(x, y_unused=None):
    return lossax.sharded.softmax_cross_entropy_with_integer_labels(
        x, jnp.asarray([1, 7, 4]), mesh=_sharded_mesh(), vocab_axis="model", **_OPTIONS)


def _sharded_dense(x, t):
    return lossax.sharded.softmax_cross_entropy(x, t, mesh=_sharded_mesh(),
                                                vocab_axis="model", label_smoothing=0.1)


def _sharded_inputs(dense=False):
    def build():
        x = _logits((3, 8), 15)
        if dense:
            return (x, jax.nn.softmax(_logits((3, 8), 16, 0.5))), (0, 1)
        return (x,), (0,)
    return build


def _in_shard_map(x):
    # The plain kernel inside a user's shard_map, classes split over 4 devices.
    def local(xl, y):
        return INT(xl, y, vocab_axis_name="model", **_OPTIONS)
    mesh = jax.make_mesh((4,), ("model",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))
    f = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(None, "model"), jax.P()),
                      out_specs=jax.P())
    return f(x, jnp.asarray([1, 7, 4]))


CASES += [
    Case("ce_int", _int(), _ce_inputs(),
         lambda x: optax.losses.softmax_cross_entropy_with_integer_labels(x, _LABELS)),
    Case("ce_int-options", _int(**_OPTIONS), _ce_inputs()),
    Case("ce_int-ignore-row-where", lambda x: INT(x, _IGNORED, ignore_index=-100,
                                                   where=_ROW_MASK, label_smoothing=0.1),
         _ce_inputs()),
    Case("ce_int-class-where", lambda x: INT(x, _LABELS, where=_CE_CLASS_MASK,
                                             label_smoothing=0.1), _ce_inputs()),
    Case("ce_int-class_weights", _int(label_smoothing=0.1),
         _ce_inputs(extra=(lambda: _soft((4,), 17, 0.5, 2.0),))),
    Case("ce_int-mean", _int(reduction="mean", z_loss=0.01), _ce_inputs()),
    Case("ce_dense", DENSE, _ce_inputs(dense=True), optax.losses.softmax_cross_entropy),
    Case("ce_dense-options", functools.partial(DENSE, **_OPTIONS), _ce_inputs(dense=True)),
    Case("ce_dense-class-where", lambda x, t: DENSE(x, t, where=_CE_CLASS_MASK),
         _ce_inputs(dense=True)),
    Case("safe_softmax_cross_entropy", lossax.safe_softmax_cross_entropy,
         _ce_inputs(dense=True), optax.losses.safe_softmax_cross_entropy),
    Case("poly_loss_cross_entropy", lossax.poly_loss_cross_entropy, _ce_inputs(dense=True),
         optax.losses.poly_loss_cross_entropy),
    Case("fused-mean", lambda x, w: lossax.linear_softmax_cross_entropy(
        x, _FUSED_Y, w, reduction="mean", z_loss=0.01, block_size=2), _fused_inputs()),
    Case("fused-reference", lambda x, w: lossax.linear_softmax_cross_entropy(
        x, _FUSED_Y, w, label_smoothing=0.1, implementation="reference"), _fused_inputs()),
    Case("sharded-ce_int", _sharded_int, _sharded_inputs()),
    Case("sharded-ce_dense", _sharded_dense, _sharded_inputs(dense=True)),
    Case("ce_int-in-shard_map", _in_shard_map, _sharded_inputs()),
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
    w = jnp.asarray(np.linspace(0.5, 1.5, f(theta).size))
    scalar = lambda fn: (lambda th: jnp.vdot(w, fn(th)))
    fo = None if case.optax is None else bind(case.optax)
    return f, theta, scalar(f), (None if fo is None else scalar(fo))


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


@pytest.mark.parametrize("name", IDS)
def test_check_grads_order2_default_modes(name):
    with jax.enable_x64(True):
        case = CASES_BY_NAME[name]
        f, theta, _, _ = _flat(case)
        check_grads(f if case.eager else jax.jit(f), (theta,), order=2)


# These functions are tiny: compiled without the backend's optimisations (2x faster).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("name", IDS)
def test_every_mode_agrees_with_the_others_with_optax_and_under_vmap(name):
    case = CASES_BY_NAME[name]
    with jax.enable_x64(True):
        f, theta, F, Fo = _flat(case)
        v = jnp.asarray(np.cos(np.arange(theta.size) + 0.5))
        run = jax.jit(_modes(f, F, v))
        # vmap of every mode, at theta and at a second point within reach of no kink.
        theta1 = theta + 0.01 * jnp.sin(jnp.arange(theta.size))

        def everything(t0, t1):
            out = {"at": run(t0), "at1": run(t1),
                   "vmap": jax.vmap(run)(jnp.stack([t0, t1]))}
            if Fo is not None:
                out["optax"] = jax.hessian(Fo)(t0)
            return out

        res = jax.tree.map(np.asarray, jax.jit(everything, compiler_options=_FAST_COMPILE)(
            theta, theta1))
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

