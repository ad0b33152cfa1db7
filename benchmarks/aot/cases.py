"""The cases ``--target`` compiles: each loss as ``jax.jit(jax.value_and_grad(loss))`` (and
its forward), with input and output shardings on a mesh of the target's devices.

Ops (every implementation returns the mean loss over the rows, a scalar):

- ``ce_int``: softmax cross-entropy with integer labels on given logits ``[N, V]``.
- ``linear_ce``: the loss head ``x [N, D] @ W [D, V]`` then the cross-entropy, gradients
  for ``x`` and ``W``: lossax's fused op (``reduction="mean"``, and ``"none"`` with the
  mean taken outside), ``x @ W`` then lossax's or optax's cross-entropy, tokamax and
  jax-cce.

Layouts: ``single`` (one device); with ``--devices K > 1`` ``dp`` (rows over the ``data``
axis, W replicated) for every case and ``fsdp`` (rows over ``data`` and W ``[D, V]``
split over D) for ``linear_ce``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

OPS = ("ce_int", "linear_ce")
MODES = ("fwd", "fwd_bwd")
LAYOUTS = ("single", "dp", "fsdp")
DEFAULT_N, DEFAULT_V, DEFAULT_D = 8192, 131072, 4096

IMPLS: dict[str, dict[str, str]] = {
    "ce_int": {
        "lossax": "lossax.softmax_cross_entropy_with_integer_labels(reduction='mean')",
        "optax": "optax.losses.softmax_cross_entropy_with_integer_labels(...).mean()",
    },
    "linear_ce": {
        "lossax": "lossax.linear_softmax_cross_entropy(x, labels, W, reduction='mean')",
        "lossax-none": "lossax.linear_softmax_cross_entropy(x, labels, W).mean()",
        "lossax-x@W": "lossax softmax CE (reduction='mean') on x @ W",
        "optax-x@W": "optax softmax CE on x @ W, .mean()",
        "tokamax": "tokamax.linear_softmax_cross_entropy_loss(reduction='mean'), default "
                   "dispatch",
        "jax-cce": "jax_cce.linear_cross_entropy(x, W.T, labels), W given as [V, D]",
    },
}
DEFAULT_DTYPES = {"ce_int": ("bfloat16", "float32"), "linear_ce": ("bfloat16",)}


class Unavailable(Exception):
    """The implementation cannot be built here (a peer not installed, ...)."""


@dataclasses.dataclass(frozen=True)
class AotCase:
    op: str
    impl: str
    mode: str
    layout: str
    dtype: str
    n: int
    v: int
    d: int | None = None

    @property
    def key(self) -> str:
        shape = f"{self.n}x{self.v}" if self.d is None else f"{self.n}x{self.d}x{self.v}"
        return f"{self.op}/{self.impl}/{self.mode}/{self.layout}/{self.dtype}/{shape}"

    @property
    def shape_label(self) -> str:
        return f"{self.n}x{self.v}" if self.d is None else f"{self.n}x{self.d}x{self.v}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AotCase:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def suite(devices: int, ops: list[str] | None = None, impls: list[str] | None = None,
          shapes: list[tuple[int, int | None, int]] | None = None,
          dtypes: list[str] | None = None, modes: list[str] | None = None) -> list[AotCase]:
    """The cases to compile: the default suite, narrowed by the options given.

    ``shapes`` are ``(n, d, v)``; a shape without ``d`` only serves ``ce_int``.
    """
    ops = ops or list(OPS)
    for o in ops:
        if o not in OPS:
            raise ValueError(f"unknown op {o!r} for --target; one of {', '.join(OPS)}")
    modes = modes or list(MODES)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; one of {', '.join(MODES)}")
    shapes = shapes or [(DEFAULT_N, DEFAULT_D, DEFAULT_V)]
    known = {i for o in ops for i in IMPLS[o]}
    for i in impls or ():
        if i not in known:
            raise ValueError(f"unknown implementation {i!r} for --target; one of "
                             f"{', '.join(sorted(known))}")
    out = []
    for op in ops:
        layouts = ["single"] if devices == 1 else (
            ["dp", "fsdp"] if op == "linear_ce" else ["dp"])
        for n, d, v in shapes:
            if op == "linear_ce" and d is None:
                continue
            for dtype in dtypes or DEFAULT_DTYPES[op]:
                for layout in layouts:
                    for impl in IMPLS[op]:
                        if impls and impl not in impls:
                            continue
                        for mode in modes:
                            out.append(AotCase(op, impl, mode, layout, dtype, n, v,
                                               d if op == "linear_ce" else None))
    return out


# --------------------------------------------------------------------------------------
# Building one case (in the worker process).
# --------------------------------------------------------------------------------------


def _import(module: str, attr: str, pip: str) -> Callable:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{pip} is not installed") from e
    except Exception as e:  # a broken install must not stop the run
        raise Unavailable(f"{pip} failed to import: {type(e).__name__}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise Unavailable(f"{module}.{attr} does not exist in this {pip}")
        obj = getattr(obj, part)
    return obj


def loss_fn(case: AotCase) -> Callable:
    """The scalar loss of ``case``: ``(logits, labels)`` or ``(x, labels, W)``."""
    if case.op == "ce_int":
        if case.impl == "lossax":
            f = _import("lossax", "softmax_cross_entropy_with_integer_labels", "lossax")
            return lambda logits, labels: f(logits, labels, reduction="mean")
        if case.impl == "optax":
            f = _import("optax.losses", "softmax_cross_entropy_with_integer_labels", "optax")
            return lambda logits, labels: f(logits, labels).mean()
    if case.op == "linear_ce":
        if case.impl == "lossax":
            f = _import("lossax", "linear_softmax_cross_entropy", "lossax")
            return lambda x, labels, w: f(x, labels, w, reduction="mean")
        if case.impl == "lossax-none":
            f = _import("lossax", "linear_softmax_cross_entropy", "lossax")
            return lambda x, labels, w: f(x, labels, w).mean()
        if case.impl == "lossax-x@W":
            f = _import("lossax", "softmax_cross_entropy_with_integer_labels", "lossax")
            return lambda x, labels, w: f(x @ w, labels, reduction="mean")
        if case.impl == "optax-x@W":
            f = _import("optax.losses", "softmax_cross_entropy_with_integer_labels", "optax")
            return lambda x, labels, w: f(x @ w, labels).mean()
        if case.impl == "tokamax":
            f = _import("tokamax", "linear_softmax_cross_entropy_loss", "tokamax")
            try:  # tokamax reads absl flags, which would otherwise parse our sys.argv
                from absl import flags

                if not flags.FLAGS.is_parsed():
                    flags.FLAGS.mark_as_parsed()
            except ImportError:
                pass
            return lambda x, labels, w: f(x, labels, w, reduction="mean")
        if case.impl == "jax-cce":
            f = _import("jax_cce", "linear_cross_entropy", "jax-cce")
            return lambda x, labels, wt: f(x, wt, labels)
    raise ValueError(f"unknown case {case.key}")


def arg_specs(case: AotCase, mesh) -> tuple[tuple, tuple[int, ...]]:
    """(ShapeDtypeStructs with shardings, the argnums differentiated)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rows = P() if case.layout == "single" else P("data")
    dt = jnp.dtype(case.dtype)

    def spec(shape, dtype, pspec):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, pspec))

    labels = spec((case.n,), jnp.int32, rows)
    if case.op == "ce_int":
        return (spec((case.n, case.v), dt, P(*rows, None)), labels), (0,)
    x = spec((case.n, case.d), dt, P(*rows, None))
    w_spec = P("data", None) if case.layout == "fsdp" else P()
    if case.impl == "jax-cce":  # W as [V, D]
        wt_spec = P(None, "data") if case.layout == "fsdp" else P()
        w = spec((case.v, case.d), dt, wt_spec)
    else:
        w = spec((case.d, case.v), dt, w_spec)
    return (x, labels, w), (0, 2)


def jitted(case: AotCase, mesh):
    """``(jax.jit(fn, in_shardings, out_shardings), args)`` ready to ``lower``."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    f = loss_fn(case)
    args, argnums = arg_specs(case, mesh)
    scalar = NamedSharding(mesh, P())
    if case.mode == "fwd":
        fn, out = f, scalar
    else:
        fn = jax.value_and_grad(f, argnums=argnums)
        out = (scalar, tuple(args[i].sharding for i in argnums))
    return jax.jit(fn, in_shardings=tuple(a.sharding for a in args), out_shardings=out), args


def logits_bytes(case: AotCase, devices: int) -> float:
    """Bytes of one device's share of the ``[N, V]`` logits, in the case's dtype."""
    import numpy as np

    share = 1 if case.layout == "single" else devices
    return case.n * case.v * np.dtype(_np_dtype(case.dtype)).itemsize / share


def matmul_flops(case: AotCase, devices: int) -> float | None:
    """Flops of one device's share of ``x @ W`` (2 N D V), or None without a D."""
    if case.d is None:
        return None
    share = 1 if case.layout == "single" else devices
    return 2.0 * case.n * case.d * case.v / share


def _np_dtype(name: str):
    import ml_dtypes
    import numpy as np

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
