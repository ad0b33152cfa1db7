"""The compile process of ``--target``: ``python -m benchmarks.aot.worker JOB.json``.

Builds the target's mesh once, then compiles each case of the job in turn and writes
one JSON line per event to its standard output (``ready``, then ``start`` and ``record``
per case; ``fatal`` if the target cannot be set up).  Anything else printed goes to
standard error.  The parent (:mod:`benchmarks.aot.run`) enforces the per-case time limit
by killing this process and starting a new one for the cases left.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..harness import memory_of
from . import cases as cases_mod
from . import hlo_cost, targets
from .cases import AotCase, Unavailable


def _short(e: BaseException, limit: int = 600) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def derive(rec: dict[str, Any], case: AotCase, target: targets.Target, devices: int) -> None:
    """Passes over the logits, flops in matmuls, the roofline and HBM fit, per device."""
    cost = rec["cost"]
    rec["passes"] = cost["bytes"] / cases_mod.logits_bytes(case, devices)
    mm = cases_mod.matmul_flops(case, devices)
    rec["matmuls"] = cost["flops"] / mm if mm else None
    peak = target.per_device()
    t_flops = sum(f / target.peak_flops(c) for c, f in cost["flops_by_dtype"].items())
    t_bytes = cost["bytes"] / (peak["hbm_gbps"] * 1e9)
    rec["roofline"] = {"flops_ms": t_flops * 1e3, "bytes_ms": t_bytes * 1e3,
                       "ms": max(t_flops, t_bytes) * 1e3,
                       "bound": "compute" if t_flops > t_bytes else "memory"}
    mem = rec.get("memory") or {}
    rec["fits_hbm"] = (None if mem.get("peak_bytes") is None
                       else mem["peak_bytes"] <= peak["hbm_bytes"])


def compile_case(case: AotCase, mesh, target: targets.Target, devices: int,
                 dump_dir: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {**case.as_dict(), "key": case.key, "shape": case.shape_label,
                           "status": "ok", "reason": None}
    try:
        fn, args = cases_mod.jitted(case, mesh)
    except Unavailable as e:
        rec.update(status="skipped", reason=str(e))
        return rec
    except Exception as e:
        rec.update(status="error", reason="build: " + _short(e))
        return rec
    try:
        t0 = time.perf_counter()
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    except Unavailable as e:
        rec.update(status="skipped", reason=str(e))
        return rec
    except Exception as e:
        if os.environ.get("LOSSAX_BENCH_DEBUG"):
            traceback.print_exc()
        rec.update(status="error", reason=_short(e))
        return rec
    rec["lower_s"], rec["xla_compile_s"], rec["compile_s"] = t1 - t0, t2 - t1, t2 - t0
    rec["memory"] = memory_of(compiled)
    text = compiled.as_text()
    if dump_dir:
        name = case.key.replace("/", "_").replace("@", "at") + ".hlo.txt"
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / name).write_text(text)
    try:
        rec["cost"] = hlo_cost.analyze(text)
    except Exception as e:  # the model must not lose the compile's other figures
        rec.update(status="error", reason="HLO cost model: " + _short(e))
        return rec
    rec["xla_cost"] = hlo_cost.xla_cost(compiled)
    derive(rec, case, target, devices)
    return rec


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print must not garble the protocol

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        import jax

        target = targets.get(job["target"])
        mesh = targets.mesh(target, job["devices"])
        dev = mesh.devices.flat[0]
        info = {"device_kind": dev.device_kind, "platform": dev.platform,
                "devices": [str(d) for d in mesh.devices.flat],
                "host_backend": jax.default_backend()}
    except Exception as e:
        send({"event": "fatal", "reason": _short(e)})
        return 3
    send({"event": "ready", "info": info})
    for d in job["cases"]:
        case = AotCase.from_dict(d)
        send({"event": "start", "key": case.key})
        rec = compile_case(case, mesh, target, job["devices"], job.get("dump_hlo"))
        send({"event": "record", "key": case.key, "record": rec})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
