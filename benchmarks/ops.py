"""The ops registry: what each benchmarked op feeds its implementations, and the peers.

Each :class:`Op` builds its inputs for a shape and dtype and knows each implementation
(``lossax``, ``optax``, a naive plain-JAX version, and library peers where installed).
An implementation whose function does not exist (an older lossax, a peer that is not
installed) is reported as skipped with the reason, never as an error.

Every implementation's forward returns either the per-row loss or the summed loss
(``Impl.reduction``), so that the test suite can check that all implementations of an
op compute the same number before their times are compared.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .shapes import Shape

MODES = ("fwd", "fwd_bwd")
IGNORE_INDEX = -100


class Unavailable(Exception):
    """An implementation cannot run here (function missing, peer not installed, ...)."""


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of an op.

    ``build()`` returns the loss callable (arguments as the op's inputs, after
    ``prepare``) or raises :class:`Unavailable`.  ``prepare`` adapts the shared inputs
    (e.g. transposes the weights for a peer that wants ``[V, D]``, marks labels as
    ignored) once, outside the timed region.
    """

    name: str
    build: Callable[[], Callable[..., jax.Array]]
    prepare: Callable[..., tuple] | None = None
    reduction: str = "none"  # what the forward returns: "none" (per row) or "sum"
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Op:
    """One benchmarked op: inputs, implementations and the ideal cost model."""

    name: str
    title: str
    kind: str  # "classes" | "elementwise" | "fused" | "sharded"
    inputs: Callable[[Shape, Any], Callable[[], tuple]]  # (shape, dtype) -> generator
    impls: tuple[Impl, ...]
    baseline: str = "optax"
    diff_argnums: tuple[int, ...] = (0,)
    # Ideal cost on a memory-bound backend, in passes over a logits-sized array:
    # (reads, read+writes) per mode.  None: the floor is a matmul (fused op).
    passes: dict[str, tuple[int, int]] | None = None
    uses_exp: bool = False  # softmax ops: also report the exp-throughput floor
    min_devices: int = 1

    def impl(self, name: str) -> Impl:
        for i in self.impls:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def impl_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.impls)

    def check_shape(self, shape: Shape, devices: int) -> str | None:
        """The reason this op cannot run at ``shape``, or None."""
        if self.kind == "fused" and shape.d is None:
            return f"needs a hidden size: give NxDxV (got {shape.label})"
        if self.kind == "sharded":
            if devices < self.min_devices:
                return f"needs more than one device (have {devices})"
            if shape.v % devices:
                return f"V={shape.v} is not divisible by {devices} devices"
        return None


# --------------------------------------------------------------------------------------
# Inputs.  A counter-based integer hash makes large inputs in one cheap pass on the
# backend (jax.random takes ~9 s for 1 GiB on a 2-core CPU); the values of the inputs
# do not change the time of these kernels.
# --------------------------------------------------------------------------------------


def _hash_u32(n: int, seed: int) -> jax.Array:
    if n >= 2**32:
        raise ValueError(f"input of {n} elements is too large for the 32-bit hash")
    offset = jnp.uint32((seed * 0x85EBCA77 + 1) % 2**32)
    h = lax.iota(jnp.uint32, n) * jnp.uint32(0x9E3779B1) + offset
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _uniform(shape: tuple[int, ...], seed: int, lo: float, hi: float, dtype) -> jax.Array:
    n = 1
    for s in shape:
        n *= s
    u = (_hash_u32(n, seed) >> 8).astype(jnp.float32) * (2.0**-24)  # [0, 1)
    return (lo + (hi - lo) * u).reshape(shape).astype(dtype)


def _ints(shape: tuple[int, ...], seed: int, high: int) -> jax.Array:
    n = 1
    for s in shape:
        n *= s
    return (_hash_u32(n, seed) % jnp.uint32(high)).astype(jnp.int32).reshape(shape)


def _class_inputs(shape: Shape, dtype) -> Callable[[], tuple]:
    n, v = shape.n, shape.v
    return lambda: (_uniform((n, v), 1, -4.0, 4.0, dtype), _ints((n,), 2, v))


def _dense_inputs(shape: Shape, dtype) -> Callable[[], tuple]:
    n, v = shape.n, shape.v

    def fn():
        t = _uniform((n, v), 2, 0.0, 1.0, jnp.float32)
        t = t / jnp.sum(t, axis=-1, keepdims=True)  # a probability distribution per row
        return _uniform((n, v), 1, -4.0, 4.0, dtype), t.astype(dtype)

    return fn


def _binary_inputs(shape: Shape, dtype) -> Callable[[], tuple]:
    s = (shape.n, shape.v)
    return lambda: (
        _uniform(s, 1, -6.0, 6.0, dtype),
        (_uniform(s, 2, 0.0, 1.0, jnp.float32) < 0.5).astype(dtype),
    )


def _signed_inputs(shape: Shape, dtype) -> Callable[[], tuple]:
    s = (shape.n, shape.v)
    return lambda: (
        _uniform(s, 1, -2.0, 2.0, dtype),
        jnp.where(_uniform(s, 2, 0.0, 1.0, jnp.float32) < 0.5, -1.0, 1.0).astype(dtype),
    )


def _fused_inputs(shape: Shape, dtype) -> Callable[[], tuple]:
    n, d, v = shape.n, shape.d, shape.v
    scale = float(d) ** -0.5
    return lambda: (
        _uniform((n, d), 1, -1.0, 1.0, dtype),
        _ints((n,), 2, v),
        _uniform((d, v), 3, -4 * scale, 4 * scale, dtype),
    )


def _shardings(op: Op, mesh) -> tuple | None:
    if op.kind != "sharded":
        return None
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = mesh if mesh is not None else host_mesh()
    return (NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P()))


def make_inputs(op: Op, shape: Shape, dtype, mesh=None) -> tuple:
    """The op's inputs on the backend, made in one jitted pass (sharded for sharded ops)."""
    fn = op.inputs(shape, jnp.dtype(dtype))
    return jax.block_until_ready(jax.jit(fn, out_shardings=_shardings(op, mesh))())


def abstract_inputs(op: Op, shape: Shape, dtype, mesh=None) -> tuple:
    """The op's inputs as ShapeDtypeStructs (with shardings), for compile-only cases."""
    out = jax.eval_shape(op.inputs(shape, jnp.dtype(dtype)))
    shardings = _shardings(op, mesh) or (None,) * len(out)
    return tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                 for a, s in zip(out, shardings, strict=True))


def host_mesh():
    """A 1-D ``"model"`` mesh over all devices, with Auto axes (GSPMD may reshard)."""
    from jax.sharding import AxisType

    n = len(jax.devices())
    return jax.make_mesh((n,), ("model",), axis_types=(AxisType.Auto,))


# --------------------------------------------------------------------------------------
# Implementations.
# --------------------------------------------------------------------------------------


def _lossax(name: str) -> Callable:
    """``lossax.<name>`` (dotted names for submodules), or Unavailable."""
    try:
        obj: Any = importlib.import_module("lossax")
    except ImportError as e:  # pragma: no cover - lossax is this repository
        raise Unavailable(f"lossax not importable: {e}") from e
    path = name.split(".")
    for i, part in enumerate(path):
        if not hasattr(obj, part):
            try:  # a submodule not imported by lossax/__init__.py
                obj = importlib.import_module("lossax." + ".".join(path[: i + 1]))
                continue
            except ImportError:
                raise Unavailable(f"lossax.{name} does not exist in this lossax") from None
        obj = getattr(obj, part)
    return obj


def _optax(name: str) -> Callable:
    try:
        losses = importlib.import_module("optax.losses")
    except ImportError as e:
        raise Unavailable("optax is not installed (pip install -e '.[bench]')") from e
    if not hasattr(losses, name):
        raise Unavailable(f"optax.losses.{name} does not exist in this optax")
    return getattr(losses, name)


def _peer(module: str, attr: str, pip: str) -> Callable:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{pip} is not installed (pip install {pip})") from e
    except Exception as e:  # a broken install must not stop the suite
        raise Unavailable(f"{pip} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(mod, attr):
        raise Unavailable(f"{module}.{attr} does not exist in this {pip}")
    return getattr(mod, attr)


def _naive_ce_int(logits, labels):
    # The textbook version: log_softmax materialised, then a gather.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _naive_ce_dense(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(labels.astype(jnp.float32) * logp, axis=-1)


def _naive_bce(logits, labels):
    x = logits.astype(jnp.float32)
    return (jax.nn.softplus(x) - x * labels.astype(jnp.float32)).astype(logits.dtype)


# Bare kernels: the same math as the default call, no options, a custom VJP with the
# closed-form gradient, float32 compute.  A reference row for each op (issue 12: the
# default call should stay within 1.3x of it), so that options never hide a tax.


def _softplus(x):
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _bare(loss: Callable, grad: Callable) -> Callable[[], Callable]:
    """A custom-VJP kernel ``loss(x, y)`` (float32 compute) whose backward is
    ``g * grad(x, y)``, for ``x`` only."""
    def build():
        @jax.custom_vjp
        def f(x, y):
            return loss(x.astype(jnp.float32), y.astype(jnp.float32)).astype(x.dtype)

        def fwd(x, y):
            return f(x, y), (x, y)

        def bwd(res, g):
            x, y = res
            dx = g.astype(jnp.float32) * grad(x.astype(jnp.float32), y.astype(jnp.float32))
            return dx.astype(x.dtype), None

        f.defvjp(fwd, bwd)
        return f
    return build


def _focal_q(x, y):
    s = jax.nn.sigmoid(x)
    return (1 - y) * s + y * (1 - s), s  # 1 - p_t


def _bare_focal_loss(x, y):
    return _focal_q(x, y)[0] ** 2 * (_softplus(x) - x * y)


def _bare_focal_grad(x, y):
    # q^2 (s - y) + 2 q (1 - 2y) s (1 - s) ce
    q, s = _focal_q(x, y)
    return q * (q * (s - y) + 2 * (1 - 2 * y) * s * (1 - s) * (_softplus(x) - x * y))


def _bare_ce_int():
    @jax.custom_vjp
    def f(x, y):
        xc = x.astype(jnp.float32)
        m = lax.stop_gradient(jnp.max(xc, axis=-1, keepdims=True))
        lse = jnp.log(jnp.sum(jnp.exp(xc - m), axis=-1)) + m[..., 0]
        return lse - jnp.take_along_axis(xc, y[..., None], axis=-1)[..., 0]

    def fwd(x, y):
        return f(x, y), (x, y)

    def bwd(res, g):  # softmax(x) - onehot(y)
        x, y = res
        p = jax.nn.softmax(x.astype(jnp.float32), axis=-1)
        onehot = jax.nn.one_hot(y, x.shape[-1], dtype=jnp.float32)
        return (g[..., None] * (p - onehot)).astype(x.dtype), None

    f.defvjp(fwd, bwd)
    return f


_bare_bce = _bare(lambda x, y: _softplus(x) - x * y,  # sigmoid(x) - y
                  lambda x, y: jax.nn.sigmoid(x) - y)
_bare_focal = _bare(_bare_focal_loss, _bare_focal_grad)
_bare_hinge = _bare(lambda x, t: jnp.maximum(0.0, 1 - x * t),  # -t step(1 - x t)
                    lambda x, t: jnp.where(1 - x * t > 0, -t, 0.0))


def _with_ignored(logits, labels):
    """~10% of labels set to ignore_index (lossax+opts only)."""
    drop = _ints(labels.shape, 7, 10) == 0
    return logits, jnp.where(drop, IGNORE_INDEX, labels).astype(labels.dtype)


def _lossax_opts():
    f = _lossax("softmax_cross_entropy_with_integer_labels")

    def fn(logits, labels):
        return f(logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=0.1, z_loss=1e-4)

    return fn


def _fused_lossax():
    try:
        f = _lossax("linear_softmax_cross_entropy")
    except Unavailable:
        f = _lossax("fused.linear_softmax_cross_entropy")
    return lambda x, labels, w: f(x, labels, w)


def _materialise(ce: Callable[[], Callable]) -> Callable[[], Callable]:
    def build():
        f = ce()
        return lambda x, labels, w: f(x @ w, labels)

    return build


def _tokamax():
    f = _peer("tokamax", "linear_softmax_cross_entropy_loss", "tokamax")
    try:  # tokamax reads absl flags, which would otherwise parse our sys.argv
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass
    return lambda x, labels, w: f(x, labels, w, reduction="sum")


def _jax_cce():
    f = _peer("jax_cce", "linear_cross_entropy", "jax-cce")
    # jax-cce returns the mean over rows: scaled to the sum like the others.
    return lambda x, labels, wt: f(x, wt, labels) * x.shape[0]


def _transpose_w(x, labels, w):
    return x, labels, w.T


def _sharded_lossax():
    f = _lossax("sharded.softmax_cross_entropy_with_integer_labels")
    mesh = host_mesh()
    return lambda logits, labels: f(logits, labels, mesh=mesh, vocab_axis_name="model")


def _gathered(build_ce: Callable[[], Callable]) -> Callable[[], Callable]:
    def build():
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        f = build_ce()
        replicated = NamedSharding(host_mesh(), P())
        return lambda logits, labels: f(lax.with_sharding_constraint(logits, replicated), labels)

    return build


def _const(f: Callable) -> Callable[[], Callable]:
    return lambda: f


_CE_INT = "softmax_cross_entropy_with_integer_labels"

OPS: dict[str, Op] = {
    "ce_int": Op(
        "ce_int", "softmax cross-entropy, integer labels", "classes", _class_inputs,
        (
            Impl("lossax", lambda: _lossax(_CE_INT)),
            Impl("lossax+opts", _lossax_opts, prepare=_with_ignored,
                 note="ignore_index=-100 on ~10% of labels, label_smoothing=0.1, z_loss=1e-4"),
            Impl("optax", lambda: _optax(_CE_INT)),
            Impl("naive", _const(_naive_ce_int), note="log_softmax + take_along_axis"),
            Impl("bare", _bare_ce_int, note="logsumexp(x) - x[y] (max-shifted), custom VJP "
                 "softmax(x) - onehot(y), no options"),
        ),
        passes={"fwd": (1, 0), "fwd_bwd": (1, 1)}, uses_exp=True,
    ),
    "ce_dense": Op(
        "ce_dense", "softmax cross-entropy, dense labels", "classes", _dense_inputs,
        (
            Impl("lossax", lambda: _lossax("softmax_cross_entropy")),
            Impl("optax", lambda: _optax("softmax_cross_entropy")),
            Impl("naive", _const(_naive_ce_dense), note="-sum(labels * log_softmax)"),
        ),
        passes={"fwd": (2, 0), "fwd_bwd": (3, 1)}, uses_exp=True,
    ),
    "bce": Op(
        "bce", "sigmoid binary cross-entropy", "elementwise", _binary_inputs,
        (
            Impl("lossax", lambda: _lossax("sigmoid_binary_cross_entropy")),
            Impl("optax", lambda: _optax("sigmoid_binary_cross_entropy")),
            Impl("naive", _const(_naive_bce), note="softplus(x) - x*y, plain autodiff"),
            Impl("bare", _bare_bce, note="softplus(x) - x*y, custom VJP sigmoid(x) - y, "
                 "no options"),
        ),
        passes={"fwd": (1, 1), "fwd_bwd": (1, 1)},
    ),
    "focal": Op(
        "focal", "sigmoid focal loss (gamma=2)", "elementwise", _binary_inputs,
        (
            Impl("lossax", lambda: _lossax("sigmoid_focal_loss")),
            Impl("optax", lambda: _optax("sigmoid_focal_loss")),
            Impl("bare", _bare_focal, note="q^2 (softplus(x) - x*y), custom VJP, closed "
                 "form, no options"),
        ),
        passes={"fwd": (1, 1), "fwd_bwd": (1, 1)},
    ),
    "hinge": Op(
        "hinge", "hinge loss", "elementwise", _signed_inputs,
        (
            Impl("lossax", lambda: _lossax("hinge_loss")),
            Impl("optax", lambda: _optax("hinge_loss")),
            Impl("bare", _bare_hinge, note="max(0, 1 - x*t), custom VJP -t*step, no "
                 "options"),
        ),
        passes={"fwd": (1, 1), "fwd_bwd": (1, 1)},
    ),
    "multiclass_hinge": Op(
        "multiclass_hinge", "multiclass hinge loss", "classes", _class_inputs,
        (
            Impl("lossax", lambda: _lossax("multiclass_hinge_loss")),
            Impl("optax", lambda: _optax("multiclass_hinge_loss")),
        ),
        passes={"fwd": (1, 0), "fwd_bwd": (1, 1)},
    ),
    "fused_ce": Op(
        "fused_ce", "linear + softmax cross-entropy (x @ W fused)", "fused", _fused_inputs,
        (
            Impl("lossax", _fused_lossax, note="lossax.linear_softmax_cross_entropy"),
            Impl("materialise+lossax", _materialise(lambda: _lossax(_CE_INT)),
                 note="x @ W, then lossax softmax CE"),
            Impl("optax", _materialise(lambda: _optax(_CE_INT)), note="x @ W, then optax"),
            Impl("tokamax", _tokamax, reduction="sum",
                 note="tokamax.linear_softmax_cross_entropy_loss (default implementation)"),
            Impl("jax-cce", _jax_cce, prepare=_transpose_w, reduction="sum",
                 note="jax_cce.linear_cross_entropy, W given as [V, D]"),
        ),
        baseline="materialise+lossax", diff_argnums=(0, 2), passes=None,
    ),
    "sharded_ce": Op(
        "sharded_ce", "vocab-sharded softmax cross-entropy, integer labels", "sharded",
        _class_inputs,
        (
            Impl("lossax", _sharded_lossax,
                 note="lossax.sharded.softmax_cross_entropy_with_integer_labels"),
            Impl("gather+lossax", _gathered(lambda: _lossax(_CE_INT)),
                 note="all-gather the logits, then the plain lossax kernel"),
            Impl("optax", lambda: _optax(_CE_INT), note="optax on sharded logits (GSPMD)"),
        ),
        passes={"fwd": (1, 0), "fwd_bwd": (1, 1)}, uses_exp=True, min_devices=2,
    ),
}


def mode_fn(op: Op, f: Callable, mode: str) -> Callable:
    """The function timed for ``mode``: the loss, or value_and_grad of its float32 sum."""
    if mode == "fwd":
        return f
    if mode == "fwd_bwd":
        return jax.value_and_grad(
            lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=op.diff_argnums
        )
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


