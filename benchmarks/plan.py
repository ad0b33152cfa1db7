"""What a run measures: the default suite, the ``--quick`` suite, and CLI selections.

The default suite is a curated list of cases (not a full cross product) so that it
covers every headline target and the vocabulary sweeps for the plot and still finishes
in 2-4 minutes on a 2-core CPU.  ``--shapes`` switches to the cross product of the
given ops x shapes x dtypes x modes.  :func:`estimate_seconds` is a rough cost model of
a case (calibrated on a 2-core AMD EPYC): it drives the progress bar's time estimate and
``python -m benchmarks --plan``, which lists the cases with their estimates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from . import floor
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
    # A small case first: the progress bar calibrates its time estimate on it.
    Case("ce_int", P["imagenet"], F32, MODES, _PEERS),
    Case("ce_int", P["lm-128k"], F32, ("fwd",), _PAIR, min_runs=5),
    Case("ce_int", P["lm-32k"], F32, MODES, ("lossax", "lossax+opts", "optax", "bare"),
         min_runs=5),
    Case("ce_int", P["lm-32k"], BF16, MODES, _PAIR, min_runs=5),
    # Time and temporaries vs V at 1024 rows (the plot); 256k compiled for memory only.
    *(Case("ce_int", _s(1024, v), F32, ("fwd_bwd",), _PEERS if v < 131072 else _PAIR)
      for v in (8192, 32768, 131072)),
    Case("ce_int", P["lm-256k"], F32, ("fwd_bwd",), _PEERS, timed=False),
    # Dense labels, BCE, focal, hinge family (each with its bare kernel, issue 12).
    Case("ce_dense", P["imagenet"], F32),
    Case("ce_dense", _s(1024, 32768), F32),
    Case("bce", P["binary"], F32, min_runs=20),
    Case("bce", P["binary"], BF16),
    Case("focal", P["binary"], F32, min_runs=10),  # optax's focal takes ~140 ms a call
    Case("hinge", P["binary"], F32, min_runs=20),
    Case("multiclass_hinge", P["imagenet"], F32),
    # Fused linear + CE: every peer (optax, tokamax, jax-cce when installed) at N=1024,
    # D=256 (the 4096 x 1024 x 32768 case takes 75 s on 2 cores: run it with --shapes);
    # temporaries vs V at N=4096, D=1024, compiled only.
    Case("fused_ce", _s(1024, 32768, 256), F32, ("fwd_bwd",)),
    *(Case("fused_ce", _s(4096, v, 1024), F32, ("fwd_bwd",), timed=False)
      for v in (8192, 32768, 131072, 262144)),
    # Vocabulary-sharded CE (on CPU: 8 host devices, in a subprocess).  At 4096 x 131072
    # compiled for memory only (gathering the logits: 8 host copies of 2 GiB do not fit,
    # and the all-gather between host devices is an emulation, not a measurement);
    # timed against optax (GSPMD) at 1024 x 131072.
    Case("sharded_ce", _s(4096, 131072), F32, MODES, ("lossax", "gather+lossax"),
         timed=False),
    Case("sharded_ce", _s(1024, 131072), F32, MODES, ("lossax", "optax")),
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


# --------------------------------------------------------------------------------------
# A rough cost model: the progress bar's time estimate and --plan.
# --------------------------------------------------------------------------------------

# Seconds per element of the logits for one run (fused op: per flop), and per compile,
# measured on a 2-core AMD EPYC (jax 0.10).  The progress bar rescales the estimate by
# the speed it observes, so only the proportions between cases need to be right.
_RUN_S = {"fwd": 1.0e-9, "fwd_bwd": 2.7e-9}  # softmax / elementwise losses
_LONG_ROW_FWD = 2.5  # fwd over rows of 64k+ classes: optax's reductions are slow on CPU
_FLOOR_S = {"read": 0.2e-9, "copy": 1.5e-9, "exp_sum": 0.4e-9, "exp_write": 2.0e-9}
_FLOPS = 100e9  # the fused op's matmuls
_COMPILE_S = {"fwd": 0.25, "fwd_bwd": 0.45}
_FUSED_COMPILE_S = {"fwd": 0.25, "fwd_bwd": 0.45}
SUBPROCESS_S = 4.0  # starting the sharded op's child process


def _timed_s(run_s: float, min_runs: int, min_time: float, max_case_time: float) -> float:
    """Warm-up plus the timed runs of one implementation."""
    runs = max(min_runs, math.ceil(min_time / run_s)) if run_s > 0 else min_runs
    return run_s * (1 + min(runs, max(min_runs, max_case_time / run_s)))


def estimate_seconds(case: Case, min_runs: int = 3, min_time: float = 0.3,
                     max_case_time: float = 60.0) -> float:
    """Rough wall time of ``case`` (inputs, floor, compiles, runs) on a 2-core CPU."""
    op = OPS[case.op]
    s = case.shape
    n_impls = len(case.impl_names())
    fused = op.kind == "fused"
    compile_s = _FUSED_COMPILE_S if fused else _COMPILE_S
    total = sum(compile_s[m] for m in case.modes) * n_impls
    if not case.timed:
        return total + 0.3
    runs = max(min_runs, case.min_runs)
    elems = s.n * s.v
    total += 3e-9 * elems * (2 if op.kind == "elementwise" else 1)  # making the inputs
    if fused:
        matmul = 2 * s.n * (s.d or 1) * s.v / _FLOPS
        total += _timed_s(matmul, min_runs, min_time / 3, max_case_time)  # the floor
        for m in case.modes:
            total += n_impls * _timed_s(matmul * (1 if m == "fwd" else 4), runs, min_time,
                                        max_case_time)
        return total
    for k in floor.needed(op, case.modes):  # timed with a third of min_time
        total += _timed_s(_FLOOR_S[k] * elems, min_runs, min_time / 3, max_case_time)
    for m in case.modes:
        run_s = _RUN_S[m] * elems * (_LONG_ROW_FWD if m == "fwd" and s.v > 65536 else 1)
        total += n_impls * _timed_s(run_s, runs, min_time, max_case_time)
    return total
