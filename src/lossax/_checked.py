"""Opt-in checks of the values jit cannot see: ``lossax.checked(fn)``.

Shapes, dtypes and options are validated at trace time by every lossax function.  Values
are not: under ``jax.jit`` a function cannot raise on a label of 1000 with 10 classes,
so lossax follows a documented rule instead (NaN for an out-of-range integer label,
the formula as written for a target outside {-1, +1}).  ``checked`` wraps a lossax
function with :func:`jax.experimental.checkify.checkify` and checks those values.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from . import _numerics as nx

Arguments = dict[str, Any]
Rule = Callable[[str, Arguments, list[Any]], None]

# Public name -> rule.  A rule receives the function's public name, its bound arguments
# (defaults applied) by name, and the same values in parameter order (so rules for
# functions with differently named first arguments, such as ``scores``, share code).
_RULES: dict[str, Rule] = {}


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for name in names:
            _RULES[name] = rule
        return rule
    return register


def _first_bad(bad: jax.Array) -> jax.Array:
    return jnp.argmax(bad.reshape(-1))


def _check_each(bad: jax.Array, values: jax.Array, message: str) -> None:
    """Fails with ``message`` (``{value}``, ``{index}``: the first bad entry) if any
    entry of ``bad`` is set."""
    i = _first_bad(bad)
    value = values.reshape(-1)[i] if values.size else jnp.zeros((), values.dtype)
    checkify.check(~jnp.any(bad), message, value=value, index=i)


def _check_not_nan(fn: str, name: str, x: Any) -> None:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return
    bad = jnp.isnan(x)
    checkify.check(
        ~jnp.any(bad),
        f"lossax.{fn}: {name} contains NaN (first at flat index {{index}}); expected "
        "numbers (a NaN input makes the loss and its gradient NaN).",
        index=_first_bad(bad),
    )


def _check_class_indices(fn: str, name: str, labels: Any, num_classes: Any,
                         ignore_index: int | None = None) -> None:
    labels = jnp.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    expected = f"[0, {num_classes})" if isinstance(num_classes, int) else "[0, num_classes)"
    if ignore_index is not None:
        bad = bad & (labels != ignore_index)
        expected += f" or equal to ignore_index={ignore_index}"
    _check_each(bad, labels, f"lossax.{fn}: {name} must be class indices in {expected}; "
                "got {value} at flat index {index}.")


def _check_nonnegative_finite(fn: str, name: str, labels: Any) -> None:
    labels = jnp.asarray(labels)
    bad = labels < 0
    if jnp.issubdtype(labels.dtype, jnp.inexact):
        bad = bad | ~jnp.isfinite(labels)
    _check_each(bad, labels, f"lossax.{fn}: {name} must be finite and >= 0 (target "
                "weights); got {value} at flat index {index}.")


def _check_unit_interval(fn: str, name: str, values: Any) -> None:
    values = jnp.asarray(values)
    bad = ~((values >= 0) & (values <= 1))  # NaN is bad too
    _check_each(bad, values,
                f"lossax.{fn}: {name} must be in [0, 1]; got {{value}} at flat index {{index}}.")


def _check_plus_minus_one(fn: str, name: str, targets: Any) -> None:
    targets = jnp.asarray(targets)
    bad = (targets != 1) & (targets != -1)
    _check_each(bad, targets,
                f"lossax.{fn}: {name} must be -1 or +1; got {{value}} at flat index {{index}}.")


def _num_classes(logits: Any, axis: Any) -> int:
    shape = np.shape(logits)
    axes = nx.canonicalize_axes(axis, len(shape))
    return int(np.prod([shape[a] for a in axes], dtype=np.int64))


def _names(values: list[Any], arguments: Arguments) -> list[str]:
    return list(arguments)[: len(values)]


def _num_shards(fn: str, arguments: Arguments) -> Any:
    """Shards of the classes a plain kernel sees inside ``shard_map`` (its
    ``vocab_axis_name``): 1 for the sharded wrappers, which take global arrays."""
    axis_name = arguments.get("vocab_axis_name")
    if axis_name is None or fn.startswith("sharded."):
        return 1
    return jax.lax.psum(1, axis_name)


@_rule("softmax_cross_entropy_with_integer_labels")
def _softmax_int(fn: str, arguments: Arguments, values: list[Any]) -> None:
    logits, labels = values[0], values[1]
    _check_not_nan(fn, "logits", logits)
    # Inside shard_map the plain kernel sees a shard of the classes and global labels.
    num_classes = _num_classes(logits, arguments.get("axis", -1)) * _num_shards(fn, arguments)
    _check_class_indices(fn, "labels", labels, num_classes, arguments.get("ignore_index"))


@_rule("softmax_cross_entropy", "safe_softmax_cross_entropy", "poly_loss_cross_entropy")
def _softmax_dense(fn: str, arguments: Arguments, values: list[Any]) -> None:
    _check_not_nan(fn, "logits", values[0])
    _check_nonnegative_finite(fn, "labels", values[1])


@_rule("categorical_cross_entropy")
def _categorical(fn: str, arguments: Arguments, values: list[Any]) -> None:
    first, second = _names(values, arguments)[:2]
    if first in ("probabilities", "probs", "predictions"):
        _check_unit_interval(fn, first, values[0])
    else:
        _check_not_nan(fn, first, values[0])
    _check_nonnegative_finite(fn, second, values[1])


@_rule("sigmoid_binary_cross_entropy", "sigmoid_focal_loss")
def _sigmoid(fn: str, arguments: Arguments, values: list[Any]) -> None:
    first, second = _names(values, arguments)[:2]
    _check_not_nan(fn, first, values[0])
    _check_unit_interval(fn, second, values[1])


@_rule("binary_cross_entropy")
def _binary_probabilities(fn: str, arguments: Arguments, values: list[Any]) -> None:
    first, second = _names(values, arguments)[:2]
    _check_unit_interval(fn, first, values[0])
    _check_unit_interval(fn, second, values[1])


@_rule("hinge_loss", "squared_hinge_loss", "perceptron_loss")
def _binary_margin(fn: str, arguments: Arguments, values: list[Any]) -> None:
    first, second = _names(values, arguments)[:2]
    _check_not_nan(fn, first, values[0])
    _check_plus_minus_one(fn, second, values[1])


@_rule("multiclass_hinge_loss", "multiclass_squared_hinge_loss", "multiclass_perceptron_loss",
       "top_k_accuracy")
def _multiclass(fn: str, arguments: Arguments, values: list[Any]) -> None:
    first, second = _names(values, arguments)[:2]
    _check_not_nan(fn, first, values[0])
    num_classes = _num_classes(values[0], arguments.get("axis", -1))
    _check_class_indices(fn, second, values[1], num_classes, arguments.get("ignore_index"))


@_rule("linear_softmax_cross_entropy")
def _linear(fn: str, arguments: Arguments, values: list[Any]) -> None:
    # (x, labels, weights, *, bias, ...): weights is [D, V], or this device's [D, V/shards]
    # slice inside shard_map (labels stay global).
    x, labels, weights = arguments["x"], arguments["labels"], arguments["weights"]
    _check_not_nan(fn, "x", x)
    _check_not_nan(fn, "weights", weights)
    if arguments.get("bias") is not None:
        _check_not_nan(fn, "bias", arguments["bias"])
    num_classes = np.shape(weights)[-1] * _num_shards(fn, arguments)
    _check_class_indices(fn, "labels", labels, num_classes, arguments.get("ignore_index"))


def _public_name(fn: Callable[..., Any]) -> tuple[str, str] | None:
    """``(rule name, display name)`` of ``fn`` if lossax or lossax.sharded exports it."""
    import lossax

    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__name__", None)
    for module, prefix in [(lossax, ""), (lossax.sharded, "sharded.")]:
        if name is not None and getattr(module, name, None) is target:
            return name, prefix + name
    return None


def _is_array(v: Any) -> bool:
    return isinstance(v, jax.Array | np.ndarray | np.generic)


def checked(fn: Callable[..., Any], *,
            errors: frozenset = checkify.user_checks) -> Callable[..., tuple[Any, Any]]:
    """Wraps a lossax function so that it also checks the values jit cannot see.

    The returned function has ``fn``'s arguments and returns ``(error, result)``, as
    :func:`jax.experimental.checkify.checkify` does: ``result`` is exactly what ``fn``
    returns, and ``error.throw()`` raises :class:`~jax.experimental.checkify.JaxRuntimeError`
    if a value broke the function's rule, naming the function, the argument, the
    offending value and where it is.  It works eagerly and under ``jax.jit`` (call
    ``throw`` outside the jitted function).  The rules:

    * integer labels in ``[0, num_classes)`` or equal to ``ignore_index``
      (softmax with integer labels, top-k accuracy, multiclass hinge/perceptron,
      linear + softmax cross-entropy);
    * dense labels (target weights) finite and ``>= 0``;
    * hinge and perceptron targets in ``{-1, +1}``;
    * probabilities and binary labels in ``[0, 1]``;
    * logits (scores, outputs) not NaN.

    Args:
      fn: A public lossax function (from ``lossax`` or ``lossax.sharded``), or a
        ``functools.partial`` of one.
      errors: The checkify error categories to report; add e.g.
        ``checkify.nan_checks`` to also find where a NaN first appears inside.

    Returns:
      A function with ``fn``'s arguments returning ``(checkify.Error, result)``.

    Raises:
      TypeError: If ``fn`` is not a public lossax function.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lossax
      >>> loss_fn = lossax.checked(lossax.softmax_cross_entropy_with_integer_labels)
      >>> err, loss = loss_fn(jnp.zeros((2, 3)), jnp.array([1, 3]))
      >>> print(err.get())  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
      lossax.softmax_cross_entropy_with_integer_labels: labels must be class indices in
      [0, 3); got 3 at flat index 1. ...
      >>> err, loss = loss_fn(jnp.zeros((2, 3)), jnp.array([1, 2]))
      >>> err.throw()  # nothing to report
      >>> print(loss.round(4))
      [1.0986 1.0986]
    """
    names = _public_name(fn)
    if names is None or names[0] not in _RULES:
        known = ", ".join(sorted(_RULES))
        raise TypeError(
            f"fn must be a public lossax function with value rules ({known}); got "
            f"{getattr(fn, '__qualname__', fn)!r}."
        )
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        # Arrays travel through checkify; everything else (axis, options, the mesh)
        # stays a static Python value, as fn expects.
        dynamic = tuple(k for k, v in bound.arguments.items() if _is_array(v))
        static = tuple((k, v) for k, v in bound.arguments.items() if k not in dynamic)
        try:
            run = _compiled(fn, names, errors, dynamic, static)
        except TypeError:  # an unhashable static argument (a list of labels, say)
            run = _build(fn, names, errors, dynamic, static)
        return run(*[bound.arguments[k] for k in dynamic])

    return wrapper


def _build(fn: Callable[..., Any], names: tuple[str, str], errors: frozenset,
           dynamic: tuple[str, ...], static: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
    """``jit(checkify(fn + its rule))`` over the ``dynamic`` arguments."""
    signature = inspect.signature(fn)
    rule_name, name = names
    rule = _RULES[rule_name]

    def body(*values: Any) -> Any:
        arguments = dict(static)
        arguments.update(zip(dynamic, values, strict=True))
        ordered = {k: arguments[k] for k in signature.parameters if k in arguments}
        bound = inspect.BoundArguments(signature, ordered)  # type: ignore[arg-type]
        result = fn(*bound.args, **bound.kwargs)  # trace-time validation first
        rule(name, ordered, list(ordered.values()))
        return result

    # jit: one compilation per static configuration when called eagerly; inlined when
    # called under an outer jit.
    return jax.jit(checkify.checkify(body, errors=errors))


_compiled = functools.lru_cache(maxsize=128)(_build)
