"""``lossax.checked``: the value rules jit cannot enforce (NaN, labels out of range,
probabilities outside [0, 1], ...), reported through checkify: nothing for good values,
the function, argument and value for a bad one, under jit, grad and vmap, for every public
function and the sharded wrappers; leak-free, and compiled once.
"""

from __future__ import annotations

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import helpers
import inputs
import lossax

PUBLIC = sorted(n for n in lossax.__all__ if n != "checked")


def _params(name):
    return inspect.signature(getattr(lossax, name)).parameters


def _inputs(name):
    return inputs.example_inputs(name, batch_shape=(3,), num_classes=5)


INT_LABELS = ("int", "linear")
INT_FUNCTIONS = [n for n in PUBLIC if inputs.KIND[n] in INT_LABELS]


# -- lossax.checked -----------------------------------------------------------------------


def _bad_values(name):
    """(description, argument index, mutate) for the values each function's rule rejects."""
    kind = inputs.KIND[name]
    nan0 = ("NaN in the first argument", 0, lambda a: a.at[(0,) * a.ndim].set(jnp.nan))
    if kind == "int":
        return [nan0,
                ("label = num_classes", 1, lambda a: a.at[1].set(5)),
                ("label < 0", 1, lambda a: a.at[2].set(-1))]
    if kind == "linear":
        return [nan0,
                ("NaN in the weights", 2, lambda a: a.at[0, 0].set(jnp.nan)),
                ("label = num_classes", 1, lambda a: a.at[1].set(5))]
    if kind == "dense":
        return [nan0,
                ("negative label", 1, lambda a: a.at[0, 1].set(-0.5)),
                ("infinite label", 1, lambda a: a.at[2, 0].set(jnp.inf))]
    if kind == "prob_dense":
        return [("probability > 1", 0, lambda a: a.at[0, 0].set(1.5)),
                ("negative label", 1, lambda a: a.at[0, 1].set(-0.5))]
    if kind == "binary":
        return [nan0,
                ("label > 1", 1, lambda a: a.at[0, 1].set(1.5)),
                ("label < 0", 1, lambda a: a.at[1, 1].set(-0.25))]
    if kind == "prob_binary":
        return [("probability < 0", 0, lambda a: a.at[0, 0].set(-0.5)),
                ("NaN probability", 0, lambda a: a.at[0, 0].set(jnp.nan)),
                ("label > 1", 1, lambda a: a.at[2, 2].set(2.0))]
    if kind == "pm1":
        return [nan0,
                ("target 0", 1, lambda a: a.at[0, 0].set(0.0)),
                ("target 0.5", 1, lambda a: a.at[1, 3].set(0.5))]
    raise KeyError(kind)


def _checked_params():
    return [pytest.param(name, i, mutate, id=f"{name}-{what}")
            for name in PUBLIC for what, i, mutate in _bad_values(name)]


def _same(a, b):
    """Equal up to float32 rounding (the checked function is compiled as one program,
    and XLA may fuse it differently from the unchecked one)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PUBLIC)
def test_checked_reports_nothing_for_good_values_and_returns_the_same_result(name):
    args, kwargs = _inputs(name)
    fn = getattr(lossax, name)
    err, out = lossax.checked(fn)(*args, **kwargs)
    assert err.get() is None
    err.throw()
    _same(out, fn(*args, **kwargs))


@pytest.mark.parametrize(("name", "index", "mutate"), _checked_params())
def test_checked_reports_a_bad_value_naming_function_argument_and_value(name, index, mutate):
    args, kwargs = _inputs(name)
    args = list(args)
    args[index] = mutate(args[index])
    fn = getattr(lossax, name)
    err, out = lossax.checked(fn)(*args, **kwargs)
    msg = err.get()
    assert msg is not None, "the bad value was not reported"
    arg_name = list(_params(name))[index]
    assert f"lossax.{name}" in msg, msg
    assert re.search(rf"\b{arg_name}\b", msg), msg
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()
    _same(out, fn(*args, **kwargs))  # the result is the unchecked one


@pytest.mark.parametrize("name", INT_FUNCTIONS)
def test_checked_reports_the_offending_label_and_where_it_is(name):
    args, kwargs = _inputs(name)
    args = (args[0], args[1].at[2].set(17), *args[2:])
    err, _ = lossax.checked(getattr(lossax, name))(*args, **kwargs)
    msg = err.get()
    assert "got 17 at flat index 2" in msg, msg
    assert "[0, 5)" in msg, msg


@pytest.mark.parametrize("name", [n for n in INT_FUNCTIONS if "ignore_index" in _params(n)])
def test_checked_accepts_ignore_index(name):
    args, _ = _inputs(name)
    args = (args[0], args[1].at[0].set(-100), *args[2:])
    fn = lossax.checked(getattr(lossax, name))
    err, _ = fn(*args, ignore_index=-100)
    assert err.get() is None
    err, _ = fn(*args)  # without ignore_index, -100 is out of range
    assert "ignore_index" not in err.get()
    assert "got -100" in err.get()
    err, _ = fn(*(args[0], args[1].at[1].set(-3), *args[2:]), ignore_index=-100)
    assert "or equal to ignore_index=-100" in err.get()
    assert "got -3" in err.get()


def test_checked_under_jit_and_with_keywords_and_partial():
    f = lossax.softmax_cross_entropy_with_integer_labels
    x = jnp.zeros((2, 3, 4))
    labels = jnp.array([[0, 3, 1, 2], [4, 0, 0, 0]])  # classes on axis 1: V = 3
    jitted = jax.jit(lossax.checked(f), static_argnames=("axis", "reduction"))
    err, out = jitted(x, labels, axis=1, reduction="mean")
    assert "got 3 at flat index 1" in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class indices"):
        err.throw()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(f(x, labels, axis=1,
                                                                  reduction="mean")))
    err, _ = jitted(x, labels % 3, axis=1, reduction="mean")
    err.throw()
    # A partial with the labels bound: the rule still sees them.
    err, _ = lossax.checked(functools.partial(f, labels=labels, axis=1))(x)
    assert "got 3 at flat index 1" in err.get()


def test_checked_inside_grad_and_vmap():
    f = lossax.softmax_cross_entropy_with_integer_labels
    x = jnp.zeros((2, 3))
    checked = lossax.checked(f)

    def loss(x, labels):
        err, out = checked(x, labels)
        return jnp.sum(out), err
    (_, err), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x, jnp.array([0, 2]))
    assert err.get() is None
    assert np.allclose(g, jax.grad(lambda x: jnp.sum(
        f(x, jnp.array([0, 2]))))(x))
    errs, _ = jax.jit(jax.vmap(checked))(jnp.zeros((2, 1, 3)), jnp.array([[1], [3]]))
    assert "got 3" in errs.get()


def test_checked_rejects_functions_without_rules():
    with pytest.raises(TypeError, match="fn must be a public lossax function"):
        lossax.checked(jnp.sum)
    with pytest.raises(TypeError, match="fn must be a public lossax function"):
        lossax.checked(lossax.testing.softmax_cross_entropy)


def test_every_public_function_has_a_value_rule():
    from lossax import _checked
    assert sorted(set(PUBLIC) - set(_checked._RULES)) == []
    for name in getattr(lossax.sharded, "__all__", ()):
        assert name in _checked._RULES, name


@pytest.mark.parametrize("name", sorted(getattr(lossax.sharded, "__all__", ())))
def test_checked_sharded_functions(name):
    """The sharded wrappers take global arrays: the same rules, named lossax.sharded.*."""
    mesh = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    fn = getattr(lossax.sharded, name)
    args, _ = inputs.example_inputs(name, batch_shape=(4,), num_classes=8)
    checked = lossax.checked(fn)
    err, out = checked(*args, mesh=mesh, batch_axis_name="data")
    err.throw()
    _same(out, fn(*args, mesh=mesh, batch_axis_name="data"))
    bad = list(args)
    if inputs.KIND[name] in INT_LABELS:
        bad[1] = bad[1].at[3].set(8)
        expected = "got 8 at flat index 3"
    else:
        bad[1] = bad[1].at[3, 0].set(-1.0)
        expected = "got -1.0 at flat index 24"
    err, _ = checked(*bad, mesh=mesh, batch_axis_name="data")
    assert f"lossax.sharded.{name}: labels" in err.get()
    assert expected in err.get()


# -- Leak-free, compiled once -------------------------------------------------------------


def test_checked_is_leak_free_and_compiles_once_under_jit():
    f = lossax.softmax_cross_entropy_with_integer_labels
    args, _ = _inputs("softmax_cross_entropy_with_integer_labels")
    checked = jax.jit(lossax.checked(f))
    with helpers.checking_leaks():
        for _ in range(3):
            err, out = checked(*args)
            err.throw()
    np.testing.assert_allclose(np.asarray(out), np.asarray(f(*args)), rtol=1e-6)
    assert checked._cache_size() == 1


def test_repeated_eager_checked_calls_compile_once():
    fn = lossax.checked(lossax.softmax_cross_entropy_with_integer_labels)
    args, _ = _inputs("softmax_cross_entropy_with_integer_labels")
    from lossax import _checked
    before = _checked._compiled.cache_info()
    for _ in range(3):
        fn(*args, reduction="mean")[0].throw()
    after = _checked._compiled.cache_info()
    assert after.misses - before.misses <= 1
    assert after.hits - before.hits >= 2
