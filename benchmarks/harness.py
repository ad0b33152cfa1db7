"""Measurement: AOT compile, memory analysis, one warm-up, interleaved timed runs.

For one case (op, shape, dtype, mode) every implementation is compiled ahead of time
(``jax.jit(f).lower(*args).compile()``, compile time recorded), its memory read from
``compiled.memory_analysis()``, run once to warm up, and then all implementations are
timed in turns (A B, B A, A B, ...) with ``block_until_ready`` until each has at least
``min_runs`` runs and ``min_time`` seconds, so that drift on a noisy machine hits them
alike.  Ratios between implementations are computed from medians of the same run.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import ops as ops_mod
from .ops import Op, Unavailable
from .shapes import Shape


@dataclasses.dataclass
class Settings:
    """How long and how often to time each implementation."""

    min_runs: int = 3
    min_time: float = 0.3  # seconds of timed runs per implementation
    max_runs: int = 500
    max_case_time: float = 60.0  # seconds; past this stop once every impl has min_runs
    memory_fraction: float = 0.7  # of the free memory an executable may ask for


def memory_of(compiled) -> dict[str, int | None]:
    """Bytes from ``compiled.memory_analysis()`` (per device for sharded executables)."""
    keys = {
        "temp_bytes": "temp_size_in_bytes",
        "argument_bytes": "argument_size_in_bytes",
        "output_bytes": "output_size_in_bytes",
        "alias_bytes": "alias_size_in_bytes",
        "generated_code_bytes": "generated_code_size_in_bytes",
    }
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        ma = None
    out: dict[str, int | None] = {
        k: (int(getattr(ma, attr)) if ma is not None and hasattr(ma, attr) else None)
        for k, attr in keys.items()
    }
    if out["temp_bytes"] is not None:
        out["peak_bytes"] = (
            out["temp_bytes"] + (out["argument_bytes"] or 0) + (out["output_bytes"] or 0)
            - (out["alias_bytes"] or 0)
        )
    else:
        out["peak_bytes"] = None
    return out


def free_memory_bytes() -> int | None:
    """Memory an executable may still use: free device memory, or MemAvailable on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        except Exception:
            return None
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def summarize(times_s: list[float]) -> dict[str, Any]:
    """Median and spread (min, max, quartiles) in milliseconds."""
    if not times_s:
        return {"runs": 0, "times_ms": [], "median_ms": None, "min_ms": None, "max_ms": None,
                "q1_ms": None, "q3_ms": None, "spread_pct": None}
    a = np.asarray(times_s, np.float64) * 1e3
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "runs": len(a),
        "times_ms": [round(float(t), 4) for t in a],
        "median_ms": float(med),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "spread_pct": float(100 * (q3 - q1) / med) if med > 0 else None,
    }


def _done(t: list[float], s: Settings) -> bool:
    return len(t) >= s.min_runs and sum(t) >= s.min_time


def time_interleaved(calls: dict[str, Callable[[], Any]], s: Settings) -> dict[str, list[float]]:
    """Times each call in turns until each meets ``min_runs`` and ``min_time``.

    Each round runs every call that still needs runs once, the starting call rotating
    from round to round; a call that has met both minima drops out of later rounds.
    """
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rnd = 0
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while True:
            active = [n for n in names if not _done(times[n], s)]
            if not active or rnd >= s.max_runs:
                break
            over = time.perf_counter() - start > s.max_case_time
            if over and all(len(times[n]) >= s.min_runs for n in names):
                break
            k = rnd % len(active)
            for n in active[k:] + active[:k]:
                t0 = time.perf_counter()
                out = calls[n]()
                jax.block_until_ready(out)
                times[n].append(time.perf_counter() - t0)
                del out
            rnd += 1
    finally:
        if gc_was:
            gc.enable()
    return times


def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) < 400 else msg[:400] + " ..."


def _shape_dict(op: Op, shape: Shape) -> dict[str, Any]:
    d = shape.as_dict()
    if op.kind != "fused":  # the hidden size only matters to the fused op
        d.update(d=None, label=f"{shape.n}x{shape.v}")
    return d


def base_record(op: Op, impl: str, shape: Shape, dtype: str, mode: str) -> dict[str, Any]:
    return {
        "op": op.name,
        "impl": impl,
        "mode": mode,
        "shape": _shape_dict(op, shape),
        "dtype": dtype,
        "status": "ok",
        "reason": None,
        "note": op.impl(impl).note if impl in op.impl_names else "",
        "devices": len(jax.devices()) if op.kind == "sharded" else 1,
        "per_device_memory": op.kind == "sharded",
        "compile_ms": None,
        "warmup_ms": None,
        "memory": None,
        **summarize([]),
    }


def run_case(
    op: Op,
    shape: Shape,
    dtype: str,
    mode: str,
    impl_names: list[str],
    inputs: tuple,
    settings: Settings,
    timed: bool = True,
) -> list[dict[str, Any]]:
    """Compiles, analyses and (if ``timed``) times every implementation of one case.

    ``inputs`` are concrete arrays for a timed case, or ShapeDtypeStructs for a
    compile-only case (memory figures only).
    """
    records: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for name in impl_names:
        rec = base_record(op, name, shape, dtype, mode)
        records[name] = rec
        impl = op.impl(name)
        try:
            f = impl.build()
        except Unavailable as e:
            rec.update(status="skipped", reason=str(e))
            continue
        except Exception as e:
            rec.update(status="error", reason=_short(e))
            continue
        try:
            args = inputs
            if impl.prepare is not None:
                args = (jax.eval_shape(impl.prepare, *inputs) if not timed
                        else jax.block_until_ready(jax.jit(impl.prepare)(*inputs)))
            t0 = time.perf_counter()
            compiled = jax.jit(ops_mod.mode_fn(op, f, mode)).lower(*args).compile()
            rec["compile_ms"] = (time.perf_counter() - t0) * 1e3
            rec["memory"] = memory_of(compiled)
        except Exception as e:
            rec.update(status="error", reason=_short(e))
            if os.environ.get("LOSSAX_BENCH_DEBUG"):
                traceback.print_exc()
            continue
        if not timed:
            rec.update(status="memory-only", reason="compile-only case (memory figures)")
            continue
        mem = rec["memory"]
        need = None
        if mem["temp_bytes"] is not None:
            need = mem["temp_bytes"] + (mem["output_bytes"] or 0) - (mem["alias_bytes"] or 0)
            if jax.devices()[0].platform == "cpu":
                need *= rec["devices"]  # host "devices" share the machine's memory
        free = free_memory_bytes()
        if need is not None and free is not None and need > settings.memory_fraction * free:
            rec.update(status="memory-only", reason=(
                f"needs {need / 2**30:.1f} GiB at run time, more than "
                f"{settings.memory_fraction:.0%} of the {free / 2**30:.1f} GiB free"))
            continue
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            rec["warmup_ms"] = (time.perf_counter() - t0) * 1e3
        except Exception as e:
            rec.update(status="error", reason=_short(e))
            continue
        calls[name] = (lambda c=compiled, a=args: c(*a))
    if calls:
        try:
            times = time_interleaved(calls, settings)
        except Exception as e:  # e.g. out of memory half-way: keep the case's records
            for name in calls:
                records[name].update(status="error", reason=_short(e))
            times = {}
        for name, t in times.items():
            records[name].update(summarize(t))
    calls.clear()
    add_ratios(list(records.values()), op.baseline)
    return list(records.values())


def add_ratios(records: list[dict[str, Any]], baseline: str) -> None:
    """Same-run ratios: each record's median (and temp bytes) over every other impl's."""
    by = {r["impl"]: r for r in records}
    base = by.get(baseline)
    for r in records:
        r["baseline"] = baseline
        r["ratios"] = {
            o["impl"]: r["median_ms"] / o["median_ms"]
            for o in records
            if o is not r and r["median_ms"] and o["median_ms"]
        }
        if r is base:
            r["x_baseline"] = 1.0 if r["median_ms"] else None
        else:
            r["x_baseline"] = r["ratios"].get(baseline)
        t, bt = (r.get("memory") or {}).get("temp_bytes"), ((base or {}).get("memory") or {}).get(
            "temp_bytes")
        r["temp_x_baseline"] = (t / bt) if (t is not None and bt) else None
