"""The floor: what the backend itself needs to touch an array of the logits' size.

Measured in the same process and on the same array as the kernels, with the same timing
method:

- ``read``: ``jnp.sum(x, dtype=float32)``, one read of ``x``.
- ``copy``: ``x + 1``, one read and one write of a fresh output buffer (page faults
  included, as every kernel that returns a gradient pays them).
- ``exp_sum``: ``sum(exp(x))``, one read and one exponential per element.
- ``exp_write``: ``exp(x)``, one read, one exponential and one write per element.
- ``matmul`` (fused op): ``x @ W``.

An op states its ideal cost per mode as ``(reads, copies)`` passes over a logits-sized
array: softmax cross-entropy forward reads the logits once, ``(1, 0)``; forward+backward
reads them twice and writes the gradient once, ``(1, 1)`` = 2 reads + 1 write.  Each
kernel is then reported as a multiple of ``reads * read + copies * copy`` (``x_floor``),
for softmax ops also of the exp throughput (forward ``exp_sum``; forward+backward
``exp_sum + exp_write``), and as achieved GB/s on the ideal bytes.  The fused op's floor
is one matmul forward and three forward+backward.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .harness import Settings, summarize, time_interleaved
from .ops import Op

# Peak memory bandwidth (GB/s) of accelerators, matched by substring of device_kind
# (first match wins; the most specific names first).  Override with --peak-gbps.
PEAK_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("GH200", 4000.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("T4", 320.0),
    ("V100", 900.0),
    ("TPU v6 lite", 1640.0),
    ("TPU v5 lite", 819.0),
    ("TPU v5p", 2765.0),
    ("TPU v5", 2765.0),
    ("TPU v4", 1200.0),
)


def peak_gbps(device_kind: str) -> float | None:
    for key, gbps in PEAK_GBPS:
        if key.lower() in device_kind.lower():
            return gbps
    return None


def _kernels(op: Op, inputs: tuple) -> dict[str, tuple[Any, tuple]]:
    if op.passes is None:  # fused: a bare matmul
        x, _, w = inputs
        return {"matmul": (lambda x, w: x @ w, (x, w))}
    x = inputs[0]
    f32 = jnp.float32
    out = {
        "read": (lambda x: jnp.sum(x, dtype=f32), (x,)),
        "copy": (lambda x: x + 1, (x,)),
    }
    if op.uses_exp:
        out["exp_sum"] = (lambda x: jnp.sum(jnp.exp(x.astype(f32))), (x,))
        out["exp_write"] = (lambda x: jnp.exp(x.astype(f32)).astype(x.dtype), (x,))
    return out


def needed(op: Op, modes: tuple[str, ...] | list[str]) -> set[str]:
    """The floor kernels that ``modes`` of ``op`` are divided by (fwd-only softmax cases
    skip the writes, which are the slow ones on CPU)."""
    if op.passes is None:
        return {"matmul"}
    names = {"read"}
    if any(op.passes[m][1] for m in modes):
        names.add("copy")
    if op.uses_exp:
        names.add("exp_sum")
        if "fwd_bwd" in modes:
            names.add("exp_write")
    return names


def floor_key(op: Op, inputs: tuple) -> str:
    arrays = (inputs[0], inputs[2]) if op.passes is None else (inputs[0],)
    parts = [f"{'x'.join(map(str, a.shape))}:{a.dtype}" for a in arrays]
    kind = "matmul" if op.passes is None else ("exp" if op.uses_exp else "mem")
    sharded = "sharded" if op.kind == "sharded" else "single"
    return f"{kind}|{sharded}|" + "|".join(parts)


def measure(op: Op, inputs: tuple, settings: Settings,
            only: set[str] | None = None) -> dict[str, Any]:
    """Times the floor kernels (those in ``only``, default all) for this op's inputs;
    returns ms per kernel and bandwidth."""
    kernels = {k: v for k, v in _kernels(op, inputs).items() if only is None or k in only}
    calls = {}
    for name, (fn, args) in kernels.items():
        compiled = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(compiled(*args))  # warm-up
        calls[name] = (lambda c=compiled, a=args: c(*a))
    times = time_interleaved(calls, settings)
    x = inputs[0]
    res: dict[str, Any] = {
        "key": floor_key(op, inputs),
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "bytes": int(x.size * x.dtype.itemsize),
        "sharded": op.kind == "sharded",
    }
    for name, t in times.items():
        s = summarize(t)
        res[f"{name}_ms"] = s["median_ms"]
        res[f"{name}_spread_pct"] = s["spread_pct"]
    if res.get("read_ms"):
        res["read_gbps"] = res["bytes"] / (res["read_ms"] * 1e-3) / 1e9
    if res.get("copy_ms"):
        res["copy_gbps"] = 2 * res["bytes"] / (res["copy_ms"] * 1e-3) / 1e9
    if res.get("matmul_ms"):
        _, _, w = inputs
        res["matmul_flops"] = 2 * x.shape[0] * x.shape[1] * w.shape[1]
        res["matmul_gflops"] = res["matmul_flops"] / (res["matmul_ms"] * 1e-3) / 1e9
    return res


def apply(record: dict[str, Any], op: Op, floor: dict[str, Any] | None,
          device_peak_gbps: float | None) -> None:
    """Adds floor_ms, x_floor, exp_floor_ms, x_exp_floor, achieved GB/s (or GFLOP/s)."""
    mode = record["mode"]
    fields: dict[str, Any] = {
        "floor_ms": None, "x_floor": None, "exp_floor_ms": None, "x_exp_floor": None,
        "ideal_bytes": None, "achieved_gbps": None, "pct_peak_bw": None,
        "ideal_flops": None, "achieved_gflops": None,
    }
    med = record.get("median_ms")
    if floor is not None:
        if op.passes is None:
            n_mm = 1 if mode == "fwd" else 3
            if floor.get("matmul_ms"):
                fields["floor_ms"] = n_mm * floor["matmul_ms"]
                fields["ideal_flops"] = n_mm * floor["matmul_flops"]
        else:
            reads, copies = op.passes[mode]
            if floor.get("read_ms") and (floor.get("copy_ms") or not copies):
                fields["floor_ms"] = reads * floor["read_ms"] + (
                    copies * floor["copy_ms"] if copies else 0.0)
            if floor.get("bytes"):
                fields["ideal_bytes"] = (reads + 2 * copies) * floor["bytes"]
            write = mode == "fwd_bwd"
            if op.uses_exp and floor.get("exp_sum_ms") and (floor.get("exp_write_ms")
                                                            or not write):
                fields["exp_floor_ms"] = floor["exp_sum_ms"] + (
                    floor["exp_write_ms"] if write else 0.0)
    if med:
        if fields["floor_ms"]:
            fields["x_floor"] = med / fields["floor_ms"]
        if fields["exp_floor_ms"]:
            fields["x_exp_floor"] = med / fields["exp_floor_ms"]
        if fields["ideal_bytes"]:
            fields["achieved_gbps"] = fields["ideal_bytes"] / (med * 1e-3) / 1e9
            if device_peak_gbps:
                fields["pct_peak_bw"] = 100 * fields["achieved_gbps"] / device_peak_gbps
        if fields["ideal_flops"]:
            fields["achieved_gflops"] = fields["ideal_flops"] / (med * 1e-3) / 1e9
    record.update(fields)
