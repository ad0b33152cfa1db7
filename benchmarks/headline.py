"""The headline view: each target the project's issues set, the measured ratio, pass/fail.

Every ratio is read from one run (both implementations timed in turns in the same
case).  Targets are reported, never asserted: a noisy machine can miss one.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    text: str
    op: str
    shape: tuple[int, int, int | None]  # (N, V, D)
    dtype: str
    mode: str
    impl: str
    vs: str
    metric: str = "time"  # "time" | "temp_bytes" | "peak_bytes"
    max_ratio: float | None = None  # None: reported for information only


LM32 = (4096, 32768, None)
TARGETS: tuple[Target, ...] = (
    Target("ce-128k-fwd", "softmax CE int 2048x131072 fp32 fwd <= 0.35x optax",
           "ce_int", (2048, 131072, None), "float32", "fwd", "lossax", "optax", "time", 0.35),
    Target("ce-32k-bf16-fwd_bwd", "softmax CE int 4096x32768 bf16 fwd+bwd <= 0.6x optax",
           "ce_int", LM32, "bfloat16", "fwd_bwd", "lossax", "optax", "time", 0.6),
    Target("ce-32k-fwd", "softmax CE int 4096x32768 fp32 fwd <= 1.05x optax",
           "ce_int", LM32, "float32", "fwd", "lossax", "optax", "time", 1.05),
    Target("ce-32k-fwd_bwd", "softmax CE int 4096x32768 fp32 fwd+bwd <= 1.05x optax",
           "ce_int", LM32, "float32", "fwd_bwd", "lossax", "optax", "time", 1.05),
    Target("ce-32k-temp", "softmax CE int 4096x32768 fp32 value_and_grad temp bytes "
           "<= optax's", "ce_int", LM32, "float32", "fwd_bwd", "lossax", "optax",
           "temp_bytes", 1.0),
    Target("ce-32k-bf16-temp", "softmax CE int 4096x32768 bf16 value_and_grad temp bytes "
           "<= optax's", "ce_int", LM32, "bfloat16", "fwd_bwd", "lossax", "optax",
           "temp_bytes", 1.0),
    Target("ce-opts", "ignore_index + label_smoothing + z_loss, 4096x32768 fp32 fwd+bwd "
           "<= 1.15x plain lossax", "ce_int", LM32, "float32", "fwd_bwd", "lossax+opts",
           "lossax", "time", 1.15),
    Target("bce-fwd", "BCE 2^22 fp32 fwd <= 0.3x optax", "bce", (4096, 1024, None),
           "float32", "fwd", "lossax", "optax", "time", 0.3),
    Target("bce-fwd_bwd", "BCE 2^22 fp32 fwd+bwd <= 0.3x optax", "bce", (4096, 1024, None),
           "float32", "fwd_bwd", "lossax", "optax", "time", 0.3),
    Target("hinge-fwd", "hinge 2^22 fp32 fwd <= 1.05x optax", "hinge",
           (4096, 1024, None), "float32", "fwd", "lossax", "optax", "time", 1.05),
    Target("hinge-fwd_bwd", "hinge 2^22 fp32 fwd+bwd <= 1.05x optax", "hinge",
           (4096, 1024, None), "float32", "fwd_bwd", "lossax", "optax", "time", 1.05),
    Target("mc-hinge-fwd", "multiclass hinge 1024x1000 fp32 fwd <= 1.05x optax",
           "multiclass_hinge", (1024, 1000, None), "float32", "fwd", "lossax", "optax",
           "time", 1.05),
    Target("mc-hinge-fwd_bwd", "multiclass hinge 1024x1000 fp32 fwd+bwd <= 1.05x "
           "optax", "multiclass_hinge", (1024, 1000, None), "float32", "fwd_bwd", "lossax",
           "optax", "time", 1.05),
    # Issue 12: options must not tax the default call (bare: the same math, no options,
    # a custom VJP with the closed-form gradient).
    *(Target(f"{key}-bare-{mode}", f"{text} {mode.replace('_', '+')}: default call <= 1.3x "
             "bare", op, shape, "float32", mode, "lossax", "bare", "time", 1.3)
      for key, text, op, shape in (
          ("bce", "BCE 2^22 fp32", "bce", (4096, 1024, None)),
          ("focal", "focal 2^22 fp32", "focal", (4096, 1024, None)),
          ("hinge", "hinge 2^22 fp32", "hinge", (4096, 1024, None)),
          ("ce", "softmax CE int 4096x32768 fp32", "ce_int", LM32))
      for mode in ("fwd", "fwd_bwd")),
    # Timed at N=1024, D=256 (every peer in one case); N=4096, D=1024 takes 75 s on 2
    # cores: `python -m benchmarks --ops fused_ce --shapes 4096x1024x32768 --modes fwd_bwd`.
    Target("fused-32k", "fused linear CE N=1024 D=256 V=32768 fp32 fwd+bwd <= 1.3x "
           "materialise+lossax", "fused_ce", (1024, 32768, 256), "float32", "fwd_bwd",
           "lossax", "materialise+lossax", "time", 1.3),
    Target("fused-vs-cce-time", "fused linear CE N=1024 D=256 V=32768 fp32 fwd+bwd faster "
           "than jax-cce", "fused_ce", (1024, 32768, 256), "float32", "fwd_bwd", "lossax",
           "jax-cce", "time", 1.0),
    Target("fused-vs-cce-temp", "fused linear CE N=4096 D=1024 V=32768 fwd+bwd temp bytes "
           "<= jax-cce's", "fused_ce", (4096, 32768, 1024), "float32", "fwd_bwd", "lossax",
           "jax-cce", "temp_bytes", 1.0),
    Target("fused-256k-mem", "fused linear CE N=4096 D=1024 V=262144 fwd+bwd peak bytes vs "
           "materialise+lossax", "fused_ce", (4096, 262144, 1024), "float32", "fwd_bwd",
           "lossax", "materialise+lossax", "peak_bytes"),
    Target("sharded-time", "sharded CE N=1024 V=131072 fp32 fwd+bwd (host devices) vs optax "
           "(GSPMD)", "sharded_ce", (1024, 131072, None), "float32", "fwd_bwd", "lossax",
           "optax", "time"),
    Target("sharded-temp", "sharded CE N=4096 V=131072 fp32 fwd+bwd per-device temp bytes "
           "<= 1/8 of gathering the logits", "sharded_ce", (4096, 131072, None), "float32",
           "fwd_bwd", "lossax", "gather+lossax", "temp_bytes", 0.125),
    Target("sharded-mem", "sharded CE N=4096 V=131072 fp32 fwd+bwd per-device peak bytes vs "
           "gathering the logits", "sharded_ce", (4096, 131072, None), "float32", "fwd_bwd",
           "lossax", "gather+lossax", "peak_bytes"),
)


def _ms(x: float) -> str:
    return f"{x:.3g} ms" if x < 100 else f"{x:.0f} ms"


def _bytes(b: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def _find(records: list[dict[str, Any]], t: Target, impl: str) -> dict[str, Any] | None:
    n, v, d = t.shape
    for r in records:
        s = r["shape"]
        if (r["op"], r["mode"], r["dtype"], r["impl"]) == (t.op, t.mode, t.dtype, impl) and (
            s["n"], s["v"], s.get("d")) == (n, v, d):
            return r
    return None


def evaluate(records: list[dict[str, Any]], targets=TARGETS) -> list[dict[str, Any]]:
    """One row per target: measured ratio, threshold, status (pass/fail/info/...)."""
    rows = []
    for t in targets:
        row: dict[str, Any] = {
            "key": t.key, "target": t.text, "op": t.op, "shape": list(t.shape),
            "dtype": t.dtype, "mode": t.mode, "impl": t.impl, "vs": t.vs, "metric": t.metric,
            "threshold": t.max_ratio, "measured": None, "pass": None, "status": "not run",
            "detail": "",
        }
        a, b = _find(records, t, t.impl), _find(records, t, t.vs)
        if a is None or b is None:
            row["detail"] = "case not in this run"
            rows.append(row)
            continue
        if t.metric == "time":
            ratio = (a.get("ratios") or {}).get(t.vs)
            if ratio is not None:
                row["detail"] = f"{_ms(a['median_ms'])} vs {_ms(b['median_ms'])}"
            else:
                why = [f"{r['impl']}: {r['status']} ({r.get('reason') or 'no timing'})"
                       for r in (a, b) if not r.get("median_ms")]
                row["detail"] = "; ".join(why)
        else:
            ma, mb = (a.get("memory") or {}).get(t.metric), (b.get("memory") or {}).get(
                t.metric)
            ratio = ma / mb if (ma is not None and mb) else None
            if ratio is not None:
                row["detail"] = f"{_bytes(ma)} vs {_bytes(mb)}"
            else:
                row["detail"] = "memory analysis unavailable"
        row["measured"] = ratio
        if ratio is None:
            row["status"] = "n/a"
        elif t.max_ratio is None:
            row["status"] = "info"
        else:
            row["pass"] = bool(ratio <= t.max_ratio)
            row["status"] = "pass" if row["pass"] else "fail"
        rows.append(row)
    return rows
