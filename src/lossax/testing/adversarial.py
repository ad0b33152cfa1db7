"""The adversarial numerics table: extreme inputs through lossax, optax and the oracles.

Printed as markdown (``docs/adversarial.md``) by::

    python -W ignore::RuntimeWarning -m lossax.testing adversarial-table
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import oracles
from .checks import _round_overflow, ulp_error
from .oracles import _f64, _xlogy_safe

__all__ = [
    "AdversarialCase",
    "adversarial_cases",
    "adversarial_table",
    "evaluate_case",
    "format_table",
    "main",
]


@dataclasses.dataclass(frozen=True)
class AdversarialCase:
    """One row of the adversarial table.

    Attributes:
      name: What the case stresses.
      function: The lossax function's public name (its oracle in ``lossax.testing`` has
        the same name).
      dtype: The logits' dtype name.
      args: Positional inputs as float64/int NumPy arrays; the first (logits, scores or
        probabilities) is rounded to ``dtype``, float labels too.
      kwargs: Keyword options passed to lossax and the oracle.
      optax: The optax function with the same semantics (``None`` if there is none or
        the options are lossax-only).
    """

    name: str
    function: str
    dtype: str
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    optax: str | None = None


def _row(values, cls=None):
    return np.array(values, dtype=cls or np.float64)


def adversarial_cases() -> list[AdversarialCase]:
    """The adversarial inputs: extreme logits per dtype, ``-inf`` rows, huge V in float16,
    fractional labels, labels of exactly 0 and 1 on probabilities.

    Cases for functions that this version of lossax does not export are left out.
    """
    import lossax

    big = {"float16": 1e4, "bfloat16": 1e4, "float32": 1e30}
    cases: list[AdversarialCase] = []
    int_ce = "softmax_cross_entropy_with_integer_labels"
    dense_ce = "softmax_cross_entropy"
    # Moderately large float32 logits, with ties and near-ties at the top.
    for b in (1e2, 1e4):
        x = _row([[b, b, b - 1, 0.0, -b], [b, -b, b / 2, 1.0, 0.0], [-b, b - 0.5, b, 0.0, 2.0]])
        cases.append(AdversarialCase(f"logits ±{b:g}, near-ties", int_ce, "float32",
                                     (x, np.array([0, 1, 1])), optax=int_ce))
    for dt, b in big.items():
        x = _row([[b, -b, 0.0, 1.0, -1.0],
                  [b, -b, 0.0, 1.0, -1.0],
                  [b, b, -b, -b, 0.0],
                  [-b, -b, -b, -b, -b],
                  [b, b - b / 64, 0.0, -b, 1.0]])
        y = np.array([0, 1, 0, 2, 1])
        cases.append(AdversarialCase(f"logits ±{b:g}", int_ce, dt, (x, y), optax=int_ce))
        t = np.zeros_like(x)
        t[np.arange(5), y] = 1.0
        cases.append(AdversarialCase(f"logits ±{b:g}, one-hot labels", dense_ce, dt, (x, t),
                                     optax=dense_ce))
        cases.append(AdversarialCase(
            f"logits ±{b:g}, label_smoothing=0.1, z_loss=1e-4", int_ce, dt, (x, y),
            {"label_smoothing": 0.1, "z_loss": 1e-4}))
        cases.append(AdversarialCase(f"logits ±{b:g}, soft_cap=30", int_ce, dt, (x, y),
                                     {"soft_cap": 30.0}))
    ninf = -np.inf
    x = _row([[0.0, ninf, 1.0, ninf], [ninf, ninf, 3.0, ninf], [2.0, ninf, ninf, ninf],
              [ninf, 5.0, ninf, ninf], [1e30, ninf, -1e30, 0.0]])
    y = np.array([0, 2, 0, 1, 2])
    cases.append(AdversarialCase("-inf logits (label finite)", int_ce, "float32", (x, y),
                                 optax=int_ce))
    cases.append(AdversarialCase("all -inf but the label's logit", int_ce, "float32",
                                 (x[1:4], y[1:4]), optax=int_ce))
    cases.append(AdversarialCase("label on a -inf logit (loss +inf)", int_ce, "float32",
                                 (x[:3], np.array([1, 0, 3])), optax=int_ce))
    t = np.zeros_like(x)
    t[np.arange(5), y] = 1.0
    cases.append(AdversarialCase("-inf logits, one-hot labels (0 · -inf)", dense_ce,
                                 "float32", (x, t), optax=dense_ce))
    soft = _row([[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                 [0.0, 1.0, 0.0, 0.0], [0.25, 0.0, 0.25, 0.5]])
    cases.append(AdversarialCase("-inf logits, fractional labels", dense_ce, "float32",
                                 (x, soft), optax=dense_ce))
    xp = _row([[np.inf, 0.0, -1.0], [np.inf, np.inf, 0.0], [0.0, np.inf, 1.0]])
    cases.append(AdversarialCase("+inf logit on the label (limit 0 or log k)", int_ce,
                                 "float32", (xp, np.array([0, 1, 1])), optax=int_ce))
    for dt in ("float16", "bfloat16", "float32"):
        r = np.random.default_rng(0)
        x = r.standard_normal((4, 7)) * 4
        soft = r.dirichlet(np.ones(7) * 0.5, size=4)
        cases.append(AdversarialCase("fractional labels", dense_ce, dt, (x, soft),
                                     optax=dense_ce))
        cases.append(AdversarialCase("fractional labels, poly loss", "poly_loss_cross_entropy",
                                     dt, (x, soft), optax="poly_loss_cross_entropy"))
    # Huge V in float16: the row sum of exp(x - max) reaches V > 65504, which overflows
    # float16 if it is accumulated in the input dtype.
    v = 131072
    r = np.random.default_rng(1)
    x = np.concatenate([np.zeros((1, v)), r.uniform(-0.5, 0.5, (1, v))])
    y = np.array([3, v - 1])
    cases.append(AdversarialCase(f"V = {v} (sum of exp > float16 max)", int_ce, "float16",
                                 (x, y), optax=int_ce))
    cases.append(AdversarialCase(f"V = {v}, uniform labels", dense_ce, "float16",
                                 (x, np.full((2, v), 1.0 / v)), optax=dense_ce))
    n = 65536
    x = r.uniform(-1.0, 1.0, (n, 4))
    cases.append(AdversarialCase(f"mean over {n} rows (sum > float16 max)", int_ce,
                                 "float16", (x, r.integers(0, 4, n)), {"reduction": "mean"}))
    # Binary losses.
    for dt, b in big.items():
        x = _row([b, -b, b, -b, 0.0, 1.0, b / 2])
        yb = _row([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5])
        for fn, kw in (("sigmoid_binary_cross_entropy", {}),
                       ("sigmoid_focal_loss", {"gamma": 2.0}),
                       ("sigmoid_focal_loss", {"alpha": 0.25, "gamma": 0.5})):
            opts = ", ".join(f"{k}={val}" for k, val in kw.items())
            cases.append(AdversarialCase(f"logits ±{b:g}, labels 0/1/0.5{', ' if kw else ''}"
                                         f"{opts}", fn, dt, (x, yb), kw, optax=fn))
        for fn in ("hinge_loss", "squared_hinge_loss", "perceptron_loss"):
            cases.append(AdversarialCase(f"outputs ±{b:g}", fn, dt,
                                         (x, _row([1, -1, -1, 1, 1, -1, 1])),
                                         optax=fn if hasattr(_optax_losses(), fn) else None))
    xi = _row([np.inf, -np.inf, np.inf, -np.inf, 0.0])
    yi = _row([1.0, 0.0, 0.0, 1.0, 0.5])
    cases.append(AdversarialCase("logits ±inf, labels 0/1", "sigmoid_binary_cross_entropy",
                                 "float32", (xi, yi), optax="sigmoid_binary_cross_entropy"))
    for dt in ("float16", "bfloat16", "float32"):
        eps = float(jnp.finfo(dt).eps)
        p = _row([0.0, 1.0, 0.0, 1.0, 0.5, eps, 1 - eps / 2, 1e-4])
        yp = _row([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3])
        cases.append(AdversarialCase("probabilities 0/1 and near, labels 0/1/0.3",
                                     "binary_cross_entropy", dt, (p, yp), {"eps": eps}))
        pr = _row([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [eps, 1 - eps, 0.0], [0.2, 0.3, 0.5]])
        lr = _row([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]])
        cases.append(AdversarialCase("probabilities 0/1 and near, fractional labels",
                                     "categorical_cross_entropy", dt, (pr, lr), {"eps": eps}))
    for dt, b in big.items():
        s = _row([[b, -b, 0.0, 1.0], [-b, -b, b, b], [0.0, 0.5, 1.0, 1.5]])
        lab = np.array([0, 2, 1])
        for fn in ("multiclass_hinge_loss", "multiclass_squared_hinge_loss",
                   "multiclass_perceptron_loss"):
            cases.append(AdversarialCase(f"scores ±{b:g}", fn, dt, (s, lab),
                                         optax=fn if hasattr(_optax_losses(), fn) else None))
    # Fused linear + softmax cross-entropy: logits x @ W of the same extremes.
    for dt, b in big.items():
        x = _row([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
        w = _row([[b, -b, 0.0, 1.0, 0.0], [b, b, -b, 0.0, 2.0]])
        cases.append(AdversarialCase(f"logits x @ W up to ±{2 * b:g}",
                                     "linear_softmax_cross_entropy", dt,
                                     (x, np.array([0, 1, 2, 4]), w)))
    public = set(getattr(lossax, "__all__", ()))
    return [c for c in cases if c.function in public]


def _optax_losses():
    try:
        import optax
    except ImportError:  # pragma: no cover
        return None
    return optax.losses


def _label_logit(case: AdversarialCase, ref_args: list) -> np.ndarray:
    """Per output element: the magnitude of the logits the label selects."""
    x, labels = ref_args[0], case.args[1]
    with np.errstate(invalid="ignore"):
        if case.function == "linear_softmax_cross_entropy":
            x = x @ ref_args[2]  # the logits
        if case.function in ("softmax_cross_entropy", "poly_loss_cross_entropy"):
            t = np.broadcast_to(_f64(labels), x.shape)
            return np.sum(_xlogy_safe(t, np.abs(x)), axis=-1)
        if np.issubdtype(np.asarray(labels).dtype, np.integer) and x.ndim > np.ndim(labels):
            idx = np.clip(labels, 0, x.shape[-1] - 1)[..., None]
            return np.abs(np.take_along_axis(x, idx, -1)[..., 0])
        if case.function in ("binary_cross_entropy", "categorical_cross_entropy"):
            return np.float64(0.0)  # probabilities: no logit to round
        return np.abs(x)


def _grad_scale(case: AdversarialCase, ref_args: list, gref: np.ndarray) -> np.ndarray:
    """``1 + |g|``; for the fused loss ``1 + |dL/dz| @ |W|^T``, the conditioning of the
    matmul that maps the logits' gradient to that of ``x``."""
    if case.function == "linear_softmax_cross_entropy":
        x, labels, w = ref_args[:3]
        _, gz = oracles.softmax_cross_entropy_with_integer_labels(
            x @ w, labels, return_grad=True, **case.kwargs)
        return 1 + np.abs(gz) @ np.abs(w).T
    return 1 + np.where(np.isfinite(gref), np.abs(gref), 0)


def _reduced(case: AdversarialCase) -> bool:
    return case.kwargs.get("reduction", "none") != "none"


def _evaluate(fn, args):
    """``(output, vjp with ones w.r.t. the first argument)`` as float64 NumPy arrays."""
    def first(x0):
        return fn(x0, *args[1:])
    out, vjp = jax.vjp(first, args[0])
    (grad,) = vjp(jnp.ones_like(out))
    return _f64(out), _f64(grad)


def _measure(case: AdversarialCase, out, grad, ref, gref, ref_args, dtype):
    if out is None:
        return None
    scale = 1 + np.abs(ref) + _label_logit(case, ref_args) if not _reduced(case) else (
        1 + np.abs(ref))
    loss_err = ulp_error(out, ref, dtype, np.where(np.isfinite(scale), scale, 1.0))
    grad_err = ulp_error(grad, gref, dtype, _grad_scale(case, ref_args, gref))
    ref_ok = np.isfinite(_round_overflow(ref, dtype))
    gref_ok = np.isfinite(_round_overflow(gref, dtype))
    finite = bool(np.all(np.isfinite(out)[ref_ok]) and np.all(np.isfinite(grad)[gref_ok]))
    return {"loss_ulp": _nanmax(loss_err), "grad_ulp": _nanmax(grad_err), "finite": finite}


def _nanmax(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    a = a[~np.isnan(a)]
    return float(np.max(a)) if a.size else float("nan")


def evaluate_case(case: AdversarialCase, *, with_optax: bool = True) -> dict[str, Any]:
    """Runs one case through lossax, optax (where comparable) and the float64 oracle.

    Returns a dict with ``case``, ``function``, ``dtype``, ``reference_finite`` (all,
    some or none of the oracle's losses are finite), ``lossax`` and ``optax`` (each
    ``None`` or a dict of ``loss_ulp``, ``grad_ulp`` — the largest :func:`ulp_error`
    over the outputs, and over the gradient's elements — and ``finite``: finite wherever
    the oracle is).  ``with_optax=False`` skips optax.
    """
    import lossax

    dtype = jnp.dtype(case.dtype)
    args = []
    for a in case.args:
        a = np.asarray(a)
        args.append(jnp.asarray(a).astype(dtype) if np.issubdtype(a.dtype, np.floating)
                    else jnp.asarray(a.astype(np.int32)))
    # The oracle sees exactly the rounded inputs.
    ref_args = [_f64(a) if jnp.issubdtype(a.dtype, jnp.floating) else np.asarray(a)
                for a in args]
    oracle = getattr(oracles, case.function)
    ref, gref = oracle(*ref_args, **case.kwargs, return_grad=True)
    fn = functools.partial(getattr(lossax, case.function), **case.kwargs)
    out, grad = _evaluate(jax.jit(fn), args)
    row = {"case": case.name, "function": case.function, "dtype": case.dtype}
    finite = np.isfinite(_round_overflow(ref, dtype))
    row["reference_finite"] = "all" if finite.all() else ("none" if not finite.any() else "some")
    row["lossax"] = _measure(case, out, grad, ref, gref, ref_args, dtype)
    row["optax"] = None
    losses = _optax_losses()
    if with_optax and case.optax is not None and losses is not None:
        ofn = getattr(losses, case.optax)
        if _reduced(case):
            ofn = lambda *a, _f=ofn: jnp.mean(_f(*a))
        with _relaxed_promotion():
            oout, ograd = _evaluate(jax.jit(functools.partial(ofn, **case.kwargs)), args)
        row["optax"] = _measure(case, oout, ograd, ref, gref, ref_args, dtype)
    return row


@contextlib.contextmanager
def _relaxed_promotion():
    """optax relies on standard promotion; run it under the default rules."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def adversarial_table(cases: Sequence[AdversarialCase] | None = None) -> list[dict[str, Any]]:
    """Evaluates every adversarial case (see :func:`evaluate_case`); one dict per row."""
    return [evaluate_case(c) for c in (adversarial_cases() if cases is None else cases)]


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "**inf**"
    return f"{v:.1f}" if v < 1e4 else f"{v:.1e}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`adversarial_table` as a markdown table."""
    head = ("| function | case | dtype | ref finite | lossax loss | lossax grad | lossax "
            "finite | optax loss | optax grad | optax finite |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [f"`{r['function']}`", r["case"], r["dtype"], r["reference_finite"]]
        for who in ("lossax", "optax"):
            m = r[who]
            if m is None:
                cells += ["n/a"] * 3
            else:
                cells += [_fmt(m["loss_ulp"]), _fmt(m["grad_ulp"]),
                          "yes" if m["finite"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TABLE_PREAMBLE = """\
# Adversarial numerics

Each case feeds extreme inputs to lossax and to the optax function with the same
semantics, and compares both with a float64 NumPy oracle (`lossax.testing`) evaluated on
exactly the same (rounded) inputs.  Errors are in units of the output dtype's epsilon
(float16 2^-10, bfloat16 2^-7, float32 2^-23):

* loss: max over outputs of |loss - ref| / (eps · (1 + |ref| + |label logit|)), the
  scale being the conditioning (rounding a logit of size L to the dtype moves the loss
  by up to eps·L);
* gradient: max over elements of |g - g_ref| / (eps · (1 + |g_ref|)), the gradient of
  the summed loss with respect to the logits (scores, probabilities); for the fused
  linear loss, the gradient with respect to x relative to 1 + |dL/dz| · |W|ᵀ;
* finite: the output and gradient are finite wherever the reference's are.

"—" means the reference is undefined (NaN) everywhere, "n/a" that optax has no such
function or option.  Regenerate with
`python -W ignore::RuntimeWarning -m lossax.testing adversarial-table > docs/adversarial.md`.

"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lossax.testing adversarial-table`` prints the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv != ["adversarial-table"]:
        print("usage: python -m lossax.testing adversarial-table", file=sys.stderr)
        return 2
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    print(_TABLE_PREAMBLE + format_table(adversarial_table()))
    return 0
