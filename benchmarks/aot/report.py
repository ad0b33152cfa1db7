"""Output of ``--target``: a compact terminal table, JSON and markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MODE = {"fwd": "fwd", "fwd_bwd": "f+b"}

METHOD = """\
Nothing ran: every figure comes from the executable that XLA compiled for the target on
a CPU-only host (deviceless ahead-of-time compilation, `jax.experimental.topologies`),
one device's program under SPMD.

- **compile s**: tracing, lowering and XLA compilation of the case.
- **temp / peak GiB**: `compiled.memory_analysis()` per device: temporaries, and
  temporaries + arguments + outputs - aliased.
- **GFLOP, GB**: a loop-aware cost model over the optimized HLO (`benchmarks/aot/
  hlo_cost.py`): while bodies times their trip counts; flops of dots and convolutions
  only; bytes are operands + results of each top-level instruction in HBM (slices and
  in-place updates charged for the part they touch). XLA's own `cost_analysis()` counts
  a loop body once (`xla_cost` in the JSON) and is absent for GPUs.
- **passes**: bytes / the bytes of one device's share of the [N, V] logits in the case's
  dtype. **matmuls**: flops / (2 N D V per device).
- **coll**: collectives executed (loop trips included); the kinds, static counts and
  bytes are in the JSON.
- **roof ms**: max(flops / peak flop/s for the dots' dtype, bytes / HBM bandwidth) with
  the published peaks below: a lower bound, not a prediction. GPU compiles without a
  device are not autotuned (default matmul tilings); memory and traffic are the sturdier
  signals there.
"""


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def _num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def _coll(rec: dict[str, Any]) -> str:
    dyn = ((rec.get("cost") or {}).get("collectives") or {}).get("dynamic") or {}
    return str(int(sum(dyn.values()))) if rec.get("cost") else "-"


def _status(rec: dict[str, Any]) -> str:
    s = rec["status"]
    if s == "ok" and rec.get("fits_hbm") is False:
        return "> HBM"
    return "" if s == "ok" else s


HEADER = ["impl", "mode", "compile s", "temp GiB", "peak GiB", "GFLOP", "GB", "passes",
          "matmuls", "coll", "roof ms", "status"]


def row(rec: dict[str, Any]) -> list[str]:
    mem = rec.get("memory") or {}
    cost = rec.get("cost") or {}
    roof = rec.get("roofline") or {}
    return [
        rec["impl"], MODE.get(rec["mode"], rec["mode"]), _num(rec.get("compile_s"), ".1f"),
        _gib(mem.get("temp_bytes")), _gib(mem.get("peak_bytes")),
        _num(cost["flops"] / 1e9 if cost else None, ".0f"),
        _num(cost["bytes"] / 1e9 if cost else None, ".2f"),
        _num(rec.get("passes"), ".2f"), _num(rec.get("matmuls"), ".2f"), _coll(rec),
        _num(roof.get("ms"), ".2f"), _status(rec),
    ]


def groups(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records grouped by (op, layout, dtype, shape), in order of appearance."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        title = f"{r['op']} {r['shape']} {r['dtype']} {r['layout']}"
        out.setdefault(title, []).append(r)
    return list(out.items())


def _plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    left = {0, 1, len(header) - 1}

    def fmt(cells):
        return " ".join(c.ljust(w) if i in left else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _notes(records: list[dict[str, Any]]) -> list[str]:
    notes = []
    for r in records:
        if r["status"] != "ok":
            notes.append(f"{r['key']}: {r['status']}: {r.get('reason')}")
        cost = r.get("cost") or {}
        unknown = [lp["body"] for lp in cost.get("loops", []) if lp["trip_count"] is None]
        if unknown:
            notes.append(f"{r['key']}: loops counted once (trip count unknown): "
                         + ", ".join(unknown))
        if cost.get("opaque_custom_calls"):
            notes.append(f"{r['key']}: custom-calls without a flop count: "
                         + ", ".join(cost["opaque_custom_calls"]))
    return notes


def title(results: dict[str, Any]) -> str:
    t = results["target"]
    k = results["devices"]
    kind = (results.get("target_info") or {}).get("device_kind") or t["chip"]
    return (f"lossax deviceless AOT: {t['name']} ({kind}), {k} device{'s' if k > 1 else ''}"
            f"{', figures per device' if k > 1 else ''}")


def print_table(results: dict[str, Any], file=None) -> None:
    print(title(results), file=file)
    for name, recs in groups(results["records"]):
        print(f"\n{name}", file=file)
        print(_plain(HEADER, [row(r) for r in recs]), file=file)
    notes = _notes(results["records"])
    if notes:
        print("", file=file)
        for n in notes:
            print(n if len(n) <= 300 else n[:300] + " ...", file=file)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def _md(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _coll_text(rec: dict[str, Any]) -> str:
    c = (rec.get("cost") or {}).get("collectives") or {}
    dyn, st, by = c.get("dynamic") or {}, c.get("static") or {}, c.get("bytes") or {}
    return ", ".join(f"{k} {dyn.get(k, 0)}x ({st.get(k, 0)} in HLO, {by.get(k, 0) / 2**20:.1f}"
                     " MiB)" for k in sorted(set(dyn) | set(st)))


def write_markdown(results: dict[str, Any], path: Path) -> None:
    t = results["target"]
    p = t["per_device"]
    env = results["environment"]
    v = env["versions"]
    lines = [f"# {title(results)}", "",
             f"`{results['command']}`, {results['created']}, {results['total_s']:.0f} s on "
             f"{env['cpu_model']} ({env['cpu_count']} cores).", "",
             "Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]) + ".", "",
             "## Target", "",
             _md(["target", "device kind", "bf16 TFLOP/s", "fp32 TFLOP/s", "TF32 TFLOP/s",
                  "HBM GB/s", "HBM GB", "source"],
                 [[t["name"], (results.get("target_info") or {}).get("device_kind", "-"),
                   _num(p["bf16_tflops"], "g"), _num(p["fp32_tflops"], "g"),
                   _num(p["tf32_tflops"], "g"), _num(p["hbm_gbps"], "g"),
                   _num(p["hbm_bytes"] / 1e9, ".1f"), t["source"]]]), "",
             "Peak figures of one device" + (
                 ": a v4 device is one of a chip's two TensorCores, half the chip."
                 if t.get("cores_per_chip", 1) > 1 else "."), "",
             "## Method", "", METHOD, "## Results", ""]
    for name, recs in groups(results["records"]):
        lines += [f"### {name}", "", _md(HEADER, [row(r) for r in recs]), ""]
    colls = [(r["key"], _coll_text(r)) for r in results["records"] if _coll_text(r)]
    if colls:
        lines += ["## Collectives per execution", "",
                  _md(["case", "collectives"], [[k, c] for k, c in colls]), ""]
    notes = _notes(results["records"])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(lines))
