"""What a run measures: the default suite, the ``--quick`` suite, and CLI selections.

The default suite is a curated list of cases (not a full cross product) so that it
covers every headline target and the vocabulary sweeps for the plots and still finishes
in under 5 minutes on a 2-core CPU.  ``--shapes`` switches to the cross product of the
given ops x shapes x dtypes x modes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .ops import MODES, OPS
from .shapes import PRESETS, Shape


@dataclasses.dataclass(frozen=True)
class Case:
    """One op at one shape and dtype, in one or more modes, for some implementations."""

    op: str
    shape: Shape
    dtype: str = "float32"
    modes: tuple[str, ...] = MODES
    impls: tuple[str, ...] | None = None  # None: every implementation of the op
    timed: bool = True  # False: compile only, memory figures (no allocation)
    min_runs: int = 0  # at least this many timed runs (headline cases: a steadier median)

    def impl_names(self) -> tuple[str, ...]:
        names = OPS[self.op].impl_names
        return names if self.impls is None else tuple(i for i in names if i in self.impls)

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "shape": self.shape.as_dict(), "dtype": self.dtype,
                "modes": list(self.modes), "impls": None if self.impls is None else list(
                    self.impls), "timed": self.timed, "min_runs": self.min_runs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        return cls(d["op"], Shape.from_dict(d["shape"]), d["dtype"], tuple(d["modes"]),
                   None if d["impls"] is None else tuple(d["impls"]), d["timed"],
                   d.get("min_runs", 0))


def _s(n: int, v: int, d: int | None = None) -> Shape:
    label = f"{n}x{v}" if d is None else f"{n}x{d}x{v}"
    return Shape(label, n, v, d)


P = PRESETS
F32, BF16 = "float32", "bfloat16"
_PEERS = ("lossax", "optax", "naive")
_PAIR = ("lossax", "optax")

DEFAULT_PLAN: tuple[Case, ...] = (
    # Softmax cross-entropy, integer labels: the headline cases.
    # The naive version runs at the smaller shapes only: at these its 1-2 GiB of
    # temporaries (page faults) disturb the runs of the others and double the time.
    Case("ce_int", P["lm-128k"], F32, ("fwd",), _PAIR, min_runs=5),
    Case("ce_int", P["lm-32k"], F32, MODES, ("lossax", "lossax+opts", "optax", "bare"),
         min_runs=7),
    Case("ce_int", P["lm-32k"], BF16, MODES, _PAIR, min_runs=5),
    Case("ce_int", P["imagenet"], F32, MODES, _PEERS),
    # Time and memory vs V at 1024 rows (the plot); 256k compiled for memory only.
    *(Case("ce_int", _s(1024, v), F32, ("fwd_bwd",), _PEERS if v < 131072 else _PAIR)
      for v in (8192, 32768, 131072)),
    Case("ce_int", P["lm-256k"], F32, ("fwd_bwd",), _PEERS, timed=False),
    # Dense labels, BCE, focal, hinge family (each with its bare kernel, issue 12).
    Case("ce_dense", P["imagenet"], F32),
    Case("ce_dense", _s(1024, 32768), F32),
    Case("bce", P["binary"], F32, min_runs=20),
    Case("bce", P["binary"], BF16),
    Case("focal", P["binary"], F32, min_runs=20),
    Case("hinge", P["binary"], F32, min_runs=20),
    Case("multiclass_hinge", P["imagenet"], F32),
    # Fused linear + CE: the headline size against materialising the logits; every peer
    # (optax, tokamax, jax-cce when installed) at a 16x cheaper size; memory vs V.
    Case("fused_ce", P["lm-32k"], F32, ("fwd_bwd",), ("lossax", "materialise+lossax")),
    Case("fused_ce", _s(1024, 32768, 256), F32),
    *(Case("fused_ce", _s(4096, v, 1024), F32, ("fwd_bwd",), timed=False)
      for v in (8192, 32768, 131072, 262144)),
    # Vocabulary-sharded CE (on CPU: 8 host devices, in a subprocess).  Gathering the
    # logits is compiled for its memory only: 8 host copies of 2 GiB do not fit, and
    # the all-gather between host devices is an emulation, not a measurement.
    Case("sharded_ce", _s(4096, 131072), F32, MODES, ("lossax", "optax")),
    Case("sharded_ce", _s(4096, 131072), F32, MODES, ("gather+lossax",), timed=False),
    Case("sharded_ce", _s(1024, 32768), F32, MODES, ("lossax", "optax")),
)

QUICK_PLAN: tuple[Case, ...] = (
    Case("ce_int", P["tiny"], F32),
    *(Case("ce_int", _s(64, v), F32, ("fwd_bwd",)) for v in (2048, 8192)),
    Case("ce_int", P["tiny"], BF16, ("fwd_bwd",), ("lossax", "optax")),
    Case("ce_dense", P["tiny"], F32),
    Case("bce", P["tiny"], F32),
    Case("focal", P["tiny"], F32),
    Case("hinge", P["tiny"], F32),
    Case("multiclass_hinge", P["tiny"], F32),
    Case("fused_ce", P["tiny"], F32),
    *(Case("fused_ce", _s(64, v, 64), F32, ("fwd_bwd",), timed=False) for v in (1024, 2048)),
    Case("sharded_ce", P["tiny"], F32),
)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def select(
    quick: bool,
    ops: str | None = None,
    impls: str | None = None,
    shapes: list[Shape] | None = None,
    dtypes: str | None = None,
    modes: str | None = None,
) -> list[Case]:
    """The cases of a run.

    Without ``shapes``: the default (or quick) suite, restricted to ``ops`` and
    ``impls``, with ``dtypes``/``modes`` replacing the suite's own when given.  With
    ``shapes``: every op (or those in ``ops``) at every shape, dtype (float32 unless
    given) and mode.
    """
    op_list, impl_list = _split(ops), _split(impls)
    dtype_list, mode_list = _split(dtypes), _split(modes)
    for o in op_list or ():
        if o not in OPS:
            raise ValueError(f"unknown op {o!r}; ops: {', '.join(OPS)}")
    for m in mode_list or ():
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
    known = {i for op in OPS.values() for i in op.impl_names}
    for i in impl_list or ():
        if i not in known:
            raise ValueError(f"unknown impl {i!r}; impls: {', '.join(sorted(known))}")
    if shapes:
        cases = [Case(o, s, d, tuple(mode_list or MODES))
                 for o in (op_list or list(OPS)) for s in shapes
                 for d in (dtype_list or [F32])]
    else:
        base = QUICK_PLAN if quick else DEFAULT_PLAN
        cases = []
        for c in base:
            if op_list is not None and c.op not in op_list:
                continue
            for d in dtype_list or [c.dtype]:
                cases.append(dataclasses.replace(
                    c, dtype=d, modes=tuple(mode_list) if mode_list else c.modes))
    out, seen = [], set()
    for c in cases:
        if impl_list is not None:
            keep = tuple(i for i in c.impl_names() if i in impl_list)
            if not keep:
                continue
            c = dataclasses.replace(c, impls=keep)
        key = (c.op, c.shape.label, c.dtype, c.modes, c.impls, c.timed)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
