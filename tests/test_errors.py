"""Errors: every public function rejects bad shapes, dtypes, axes and options at trace
time with a message that names the argument, the value received and what is expected;
values jit cannot see follow the documented rule (``lossax.checked``, which reports
them, is tested in test_checked.py).

The bad inputs are generated from each function's signature (a parameter named ``axis``
gets out-of-range axes, ``label_smoothing`` gets values outside [0, 1], ...), so a
function added to ``lossax.__all__`` is covered without editing this file.
"""

from __future__ import annotations

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inputs
import lossax
from lossax import testing

PUBLIC = sorted(n for n in lossax.__all__ if n != "checked")
EXPECTED = re.compile(r"must|expected|expect|should|one of|broadcast", re.IGNORECASE)


def _params(name):
    return inspect.signature(getattr(lossax, name)).parameters


def _inputs(name):
    return inputs.example_inputs(name, batch_shape=(3,), num_classes=5)


# -- Trace-time validation -----------------------------------------------------------------

# (case id, applies(name, params), mutate(args, kwargs, names) -> (args, kwargs),
#  exception, argument named, received value shown)
def _set_arg(i, value):
    def mutate(args, kwargs, names):
        args = list(args)
        args[i] = value(args[i]) if callable(value) else value
        return tuple(args), kwargs
    return mutate


def _set_kw(key, value):
    def mutate(args, kwargs, names):
        return args, {**kwargs, key: value}
    return mutate


def _has(param):
    return lambda name, params: param in params


def _kind(*kinds):
    return lambda name, params: inputs.KIND[name] in kinds


INT_LABELS = ("int", "linear")
FLOAT_LABELS = ("dense", "prob_dense", "binary", "prob_binary", "pm1")


def _label_index(name):
    return 1


CASES = [
    ("integer first argument", lambda n, p: True,
     _set_arg(0, lambda a: jnp.zeros(a.shape, jnp.int32)), TypeError, 0, "int32"),
    ("complex first argument", lambda n, p: True,
     _set_arg(0, lambda a: jnp.zeros(a.shape, jnp.complex64)), TypeError, 0, "complex64"),
    ("float integer-labels", _kind(*INT_LABELS),
     _set_arg(1, lambda a: jnp.zeros(a.shape, jnp.float32)), TypeError, 1, "float32"),
    ("complex labels", _kind(*FLOAT_LABELS),
     _set_arg(1, lambda a: jnp.zeros(a.shape, jnp.complex64)), TypeError, 1, "complex64"),
    ("labels of the wrong shape", lambda n, p: True,
     _set_arg(1, lambda a: jnp.zeros((7,), a.dtype)), ValueError, 1, "(7,)"),
    ("axis out of range", _has("axis"), _set_kw("axis", 5), ValueError, "axis", "5"),
    ("axis of a wrong type", _has("axis"), _set_kw("axis", "last"), TypeError, "axis",
     "'last'"),
    ("where not boolean", _has("where"),
     lambda a, k, n: (a, {**k, "where": jnp.ones((3,), jnp.int32)}), TypeError, "where",
     "int32"),
    ("where of the wrong shape", _has("where"),
     lambda a, k, n: (a, {**k, "where": jnp.ones((2,), bool)}), ValueError, "where", "(2,)"),
    ("label_smoothing < 0", _has("label_smoothing"), _set_kw("label_smoothing", -0.1),
     ValueError, "label_smoothing", "-0.1"),
    ("label_smoothing > 1", _has("label_smoothing"), _set_kw("label_smoothing", 1.5),
     ValueError, "label_smoothing", "1.5"),
    ("label_smoothing traced", _has("label_smoothing"),
     _set_kw("label_smoothing", jnp.float32(0.1)), TypeError, "label_smoothing", "float32"),
    ("z_loss < 0", _has("z_loss"), _set_kw("z_loss", -1.0), ValueError, "z_loss", "-1.0"),
    ("soft_cap = 0", _has("soft_cap"), _set_kw("soft_cap", 0.0), ValueError, "soft_cap",
     "0.0"),
    ("soft_cap < 0", _has("soft_cap"), _set_kw("soft_cap", -5.0), ValueError, "soft_cap",
     "-5.0"),
    ("unknown reduction", _has("reduction"), _set_kw("reduction", "avg"), ValueError,
     "reduction", "'avg'"),
    ("float ignore_index", _has("ignore_index"), _set_kw("ignore_index", 1.5), TypeError,
     "ignore_index", "1.5"),
    ("class_weights of the wrong shape", _has("class_weights"),
     _set_kw("class_weights", jnp.ones((4,), jnp.float32)), ValueError, "class_weights",
     "(4,)"),
    ("integer class_weights", _has("class_weights"),
     _set_kw("class_weights", jnp.ones((5,), jnp.int32)), TypeError, "class_weights",
     "int32"),
    ("k = 0", _has("k"), _set_kw("k", 0), ValueError, "k", "0"),
    ("float k", _has("k"), _set_kw("k", 1.5), TypeError, "k", "1.5"),
    ("block_size = 0", _has("block_size"), _set_kw("block_size", 0), ValueError,
     "block_size", "0"),
    ("block_size < 0", _has("block_size"), _set_kw("block_size", -8), ValueError,
     "block_size", "-8"),
    ("eps = 0", _has("eps"), _set_kw("eps", 0.0), ValueError, "eps", "0.0"),
    ("eps >= 0.5", _has("eps"), _set_kw("eps", 0.75), ValueError, "eps", "0.75"),
    ("margin infinite", _has("margin"), _set_kw("margin", float("inf")), ValueError,
     "margin", "inf"),
    ("unknown form", _has("form"), _set_kw("form", "ovr"), ValueError, "form", "'ovr'"),
    ("gamma < 0", _has("gamma"), _set_kw("gamma", -1.0), ValueError, "gamma", "-1.0"),
    ("alpha > 1", _has("alpha"), _set_kw("alpha", 1.5), ValueError, "alpha", "1.5"),
    ("pos_weight < 0", _has("pos_weight"), _set_kw("pos_weight", -2.0), ValueError,
     "pos_weight", "-2.0"),
    ("unknown implementation", _has("implementation"), _set_kw("implementation", "cuda"),
     ValueError, "implementation", "'cuda'"),
]

# Missing validation found by the cases above, reported to the owner: (function, case id).
KNOWN_GAPS: dict[tuple[str, str], str] = {}


SHARDED = sorted(getattr(lossax.sharded, "__all__", ()))


@functools.cache
def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)


def _error_params():
    """(module, name, ...) for every public function of lossax and lossax.sharded."""
    out = []
    for module, name in [("", n) for n in PUBLIC] + [("sharded", n) for n in SHARDED]:
        fn = getattr(lossax.sharded, name) if module else getattr(lossax, name)
        params = inspect.signature(fn).parameters
        for case_id, applies, mutate, exc, arg, received in CASES:
            if not applies(name, params):
                continue
            marks = []
            if (name, case_id) in KNOWN_GAPS:
                marks = [pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(name, case_id)])]
            prefix = f"{module}." if module else ""
            out.append(pytest.param(module, name, mutate, exc, arg, received,
                                    id=f"{prefix}{name}-{case_id}", marks=marks))
    return out


@pytest.mark.parametrize(("module", "name", "mutate", "exc", "arg", "received"),
                         _error_params())
def test_bad_input_raises_naming_argument_value_and_expectation(module, name, mutate, exc,
                                                                 arg, received):
    fn = getattr(lossax.sharded, name) if module else getattr(lossax, name)
    names = list(inspect.signature(fn).parameters)
    arg_name = names[arg] if isinstance(arg, int) else arg
    if module:  # global arrays on a (data 2, model 4) mesh: V = 8
        args, kwargs = inputs.example_inputs(name, batch_shape=(3,), num_classes=8)
        kwargs = {**kwargs, "mesh": _mesh()}
    else:
        args, kwargs = _inputs(name)
    args, kwargs = mutate(args, kwargs, names)
    with pytest.raises(exc) as info:
        jax.eval_shape(functools.partial(fn, **kwargs), *args)  # at trace time
    msg = str(info.value)
    assert re.search(rf"\b{re.escape(arg_name)}\b", msg), f"{arg_name!r} not named: {msg}"
    assert received in msg, f"received value {received!r} not shown: {msg}"
    assert EXPECTED.search(msg), f"no expectation stated: {msg}"


def test_every_public_function_has_error_cases():
    covered = {p.values[:2] for p in _error_params()}
    assert covered == {("", n) for n in PUBLIC} | {("sharded", n) for n in SHARDED}


# -- Values jit cannot see: the documented rules ------------------------------------------


INT_FUNCTIONS = [n for n in PUBLIC if inputs.KIND[n] in INT_LABELS]


@pytest.mark.parametrize("name", INT_FUNCTIONS)
@pytest.mark.parametrize("bad", [5, -1, 1000])
def test_out_of_range_integer_label_gives_nan_in_its_row_only(name, bad):
    """Documented: a label outside [0, num_classes) (not ignore_index) gives NaN."""
    args, kwargs = _inputs(name)
    labels = args[1].at[1].set(bad)
    args = (args[0], labels, *args[2:])
    fn = jax.jit(functools.partial(getattr(lossax, name), **kwargs))
    out = np.asarray(fn(*args), np.float64)
    assert np.isnan(out[1])
    assert np.all(np.isfinite(out[[0, 2]]))
    if name not in inputs.NOT_A_LOSS:
        g = jax.grad(lambda x: jnp.sum(fn(x, *args[1:])))(args[0])
        g = np.asarray(g, np.float64)
        # The NaN reaches the row's gradient (and so every parameter upstream of it).
        assert np.any(np.isnan(g[1]))
        assert np.all(np.isfinite(g[[0, 2]]))


@pytest.mark.parametrize("name", [n for n in INT_FUNCTIONS if "ignore_index" in _params(n)])
def test_ignore_index_rows_give_zero_loss_and_gradient(name):
    args, _ = _inputs(name)
    labels = args[1].at[1].set(-100)
    args = (args[0], labels, *args[2:])
    fn = jax.jit(functools.partial(getattr(lossax, name), ignore_index=-100))
    g = jax.grad(lambda x: jnp.sum(fn(x, *args[1:])))(args[0])
    per_row = fn(*args)
    assert float(per_row[1]) == 0.0
    assert np.all(np.asarray(g[1]) == 0)


@pytest.mark.parametrize("name", [n for n in PUBLIC if inputs.KIND[n] == "pm1"])
def test_targets_outside_pm1_follow_the_formula(name):
    """Documented: targets are not checked; the formula is applied as written."""
    s = jnp.array([0.5, -2.0, 3.0])
    t = jnp.array([0.0, 0.5, 2.0])
    got = np.asarray(getattr(lossax, name)(s, t))
    want = getattr(testing, name)(np.asarray(s), np.asarray(t))
    np.testing.assert_allclose(got, want, rtol=1e-6)


# -- Sharp edges: lossax's own message where JAX's would be generic -------------------------


def _reduction_entry_points():
    """Every public function with ``reduction=``, as ``f(reduction) -> loss`` on small
    inputs (the sharded ones on the (data 2, model 4) mesh)."""
    out = []
    for module, name in [("", n) for n in PUBLIC] + [("sharded", n) for n in SHARDED]:
        fn = getattr(lossax.sharded, name) if module else getattr(lossax, name)
        if "reduction" not in inspect.signature(fn).parameters:
            continue
        out.append(pytest.param(module, name, id=f"{module}.{name}" if module else name))
    return out


@pytest.mark.parametrize(("module", "name"), _reduction_entry_points())
def test_traced_reduction_names_static_argnames(module, name):
    """``reduction`` passed through jax.jit as an array: lossax's TypeError, which says
    how to make it static, before anything else can fail on the tracer."""
    fn = getattr(lossax.sharded, name) if module else getattr(lossax, name)
    if module:
        args, kwargs = inputs.example_inputs(name, batch_shape=(4,), num_classes=8)
        kwargs = {**kwargs, "mesh": _mesh(), "batch_axis_name": "data"}
    else:
        args, kwargs = _inputs(name)
    kwargs.pop("reduction", None)
    f = jax.jit(lambda r: fn(*args, **kwargs, reduction=r))
    with pytest.raises(TypeError, match=r"reduction must be the Python string.*static_argnames"):
        f(jnp.int32(1))


@pytest.mark.parametrize(("module", "name"), [
    ("", "softmax_cross_entropy"), ("", "safe_softmax_cross_entropy"),
    ("", "poly_loss_cross_entropy"), ("sharded", "softmax_cross_entropy")])
def test_integer_class_labels_to_dense_loss_point_to_integer_label_loss(module, name):
    """Class indices ``[N]`` (int) given to a dense-label loss: the error names the
    integer-label loss, not only the shapes."""
    fn = getattr(lossax.sharded, name) if module else getattr(lossax, name)
    kwargs = {"mesh": _mesh()} if module else {}
    logits = jnp.zeros((4, 8), jnp.float32)
    labels = jnp.asarray([1, 0, 7, 3], jnp.int32)
    with pytest.raises(ValueError, match=r"does not broadcast.*"
                                         r"softmax_cross_entropy_with_integer_labels"):
        jax.eval_shape(functools.partial(fn, **kwargs), logits, labels)
    # Dense integer labels (one-hot, or counts) of the logits' shape stay valid.
    onehot = jax.nn.one_hot(labels, 8, dtype=jnp.int32)
    jax.eval_shape(functools.partial(fn, **kwargs), logits, onehot)
