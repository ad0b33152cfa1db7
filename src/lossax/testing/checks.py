"""Gradient checks in float64 and error measures in units of a dtype's epsilon."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .oracles import _f64, _quiet

__all__ = ["check_custom_vjp", "ulp_error"]


def _as_float64_arg(a: Any) -> Any:
    a = jnp.asarray(a)
    return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.inexact) else a


def check_custom_vjp(
    loss: Callable[..., Any],
    args: Sequence[Any],
    *,
    order: int = 2,
    modes: Sequence[str] = ("rev",),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    reference: Callable[..., Any] | None = None,
    reference_rtol: float = 1e-9,
    reference_atol: float = 1e-12,
    jit: bool = True,
) -> None:
    """Checks a loss's hand-written derivatives (a ``jax.custom_jvp`` or ``custom_vjp``).

    In float64 (x64 is enabled for the duration of the call, and every floating-point
    argument is cast to float64):

    1. ``jax.test_util.check_grads(loss, args, order, modes)``: the derivatives in each
       mode (with ``order=2`` also the second derivatives, as ``jax.hessian`` uses them)
       against central finite differences.  Reverse mode by default, the one mode a
       ``jax.custom_vjp`` has.  A ``jax.custom_jvp`` has both: every lossax loss is one
       (reverse mode is JAX's transposition of its linear tangent), so check lossax's
       losses, and your own ``custom_jvp`` rules, with ``modes=("fwd", "rev")``.
    2. With ``reference`` (a plain, autodiff-able implementation of the same loss): the
       gradient of ``sum(loss(*args))`` with respect to every argument equals that of
       ``sum(reference(*args))`` within ``reference_rtol``/``reference_atol``.

    Every argument in ``args`` is differentiated: close over integer labels and static
    options with :func:`functools.partial`.

    Args:
      loss: The function to check; returns an array (any shape).
      args: Its floating-point arguments.
      order: Highest derivative order for the finite-difference check (1 or 2).
      modes: ``check_grads`` modes: ``"rev"`` (reverse) and ``"fwd"`` (forward; not for
        a ``jax.custom_vjp``, which has no forward mode).
      atol: Absolute tolerance of the finite-difference check (``check_grads``' default
        when ``None``).
      rtol: Relative tolerance of the finite-difference check.
      eps: Finite-difference step.
      reference: Plain implementation to compare ``jax.grad`` against.
      reference_rtol: Relative tolerance of the reference comparison.
      reference_atol: Absolute tolerance of the reference comparison.
      jit: Compile ``loss`` and ``reference`` with :func:`jax.jit` first (much faster:
        the finite differences call them many times).

    Raises:
      AssertionError: If a check fails.

    Examples:
      >>> import functools
      >>> import jax, jax.numpy as jnp
      >>> import lossax
      >>> from lossax import testing
      >>> labels = jnp.array([1, 0])
      >>> loss = functools.partial(lossax.softmax_cross_entropy_with_integer_labels,
      ...                          labels=labels)
      >>> def reference(x):
      ...     return -jnp.take_along_axis(jax.nn.log_softmax(x), labels[:, None], -1)[:, 0]
      >>> testing.check_custom_vjp(loss, (jnp.array([[0.5, -1.0], [2.0, 0.0]]),),
      ...                          modes=("fwd", "rev"), reference=reference)
    """
    from jax import test_util

    if jit:
        loss = jax.jit(loss)
        reference = None if reference is None else jax.jit(reference)
    with jax.enable_x64(True):
        args64 = tuple(_as_float64_arg(a) for a in args)
        test_util.check_grads(loss, args64, order=order, modes=tuple(modes), atol=atol,
                              rtol=rtol, eps=eps)
        if reference is None:
            return
        argnums = tuple(range(len(args64)))

        def summed(f):
            return lambda *a: jnp.sum(jnp.asarray(f(*a)).astype(jnp.float64))
        got = jax.grad(summed(loss), argnums=argnums)(*args64)
        want = jax.grad(summed(reference), argnums=argnums)(*args64)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(w), rtol=reference_rtol, atol=reference_atol,
                err_msg=f"gradient w.r.t. argument {i} differs from the reference's")


# --------------------------------------------------------------------------------------
# Error measures.
# --------------------------------------------------------------------------------------


@_quiet
def ulp_error(actual: Any, reference: Any, dtype: Any, scale: Any = 1.0) -> np.ndarray:
    r"""Element-wise error in units of ``dtype``'s epsilon, relative to ``scale``.

    .. math::
        e = \frac{|a - r|}{\epsilon_\mathrm{dtype} \cdot \mathrm{scale}}

    ``scale`` carries the conditioning: ``1 + |loss| + |label logit|`` for a loss (an
    input rounded to the dtype moves the loss by that much), ``1 + |g|`` for a gradient.
    Equal values (including equal infinities) give 0; a NaN or infinite ``actual``
    where ``reference`` is finite, or the wrong infinity, gives ``inf``; where
    ``reference`` is NaN (undefined), the error is NaN.  A reference beyond ``dtype``'s
    range counts as the infinity it rounds to.

    Examples:
      >>> import numpy as np
      >>> from lossax import testing
      >>> one_ulp = float(np.finfo(np.float32).eps)
      >>> print(testing.ulp_error(np.array([1.0 + one_ulp, np.nan, np.inf]),
      ...                         np.array([1.0, 1.0, np.inf]), np.float32).tolist())
      [1.0, inf, 0.0]
    """
    a = _f64(actual)
    r = _round_overflow(_f64(reference), dtype)
    eps = float(jnp.finfo(dtype).eps)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - r) / (eps * _f64(scale))
    err = np.where(a == r, 0.0, err)
    err = np.where(~np.isfinite(a) & (a != r), np.inf, err)
    return np.where(np.isnan(r), np.nan, err)


def _round_overflow(r: np.ndarray, dtype: Any) -> np.ndarray:
    """``r`` with values that round to infinity in ``dtype`` replaced by that infinity."""
    big = float(jnp.finfo(dtype).max)
    ulp_max = big - float(np.nextafter(np.asarray(big, dtype), np.asarray(0, dtype)))
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(r) >= big + ulp_max / 2, np.sign(r) * np.inf, r)
