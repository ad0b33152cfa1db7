"""Runs the compile cases of one target in a worker process, with a time limit per case.

The worker (:mod:`benchmarks.aot.worker`) compiles the cases in turn and reports each
one.  A case that runs past ``case_timeout`` seconds is recorded as ``timeout``; the
worker is killed (which also frees libtpu's process lock) and a fresh one continues with
the cases left.  A worker that dies on a case records that case as ``error`` with the
end of its standard error; one that cannot set the target up (a plugin missing) marks
every case ``skipped`` with the reason.  Only one worker runs at a time.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cases import AotCase

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300.0  # imports, libtpu / plugin initialisation, the topology


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            q.put(json.loads(line))
        except json.JSONDecodeError:
            continue
    q.put(None)


def _tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines)[-chars:]


def worker_env() -> dict[str, str]:
    """The worker's environment: JAX on the host CPU (the CUDA plugin then registers
    without CUDA libraries) and this repository importable."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


def _record(case: AotCase, status: str, reason: str, seconds: float | None = None
            ) -> dict[str, Any]:
    rec = {**case.as_dict(), "key": case.key, "shape": case.shape_label, "status": status,
           "reason": reason}
    if seconds is not None:
        rec["compile_s"] = seconds
    return rec


def run_target(target: str, devices: int, cases: list[AotCase], case_timeout: float,
               dump_hlo: str | None = None,
               progress: Callable[[str], None] | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compiles ``cases`` for ``target``; returns (records in case order, worker info)."""
    progress = progress or (lambda s: None)
    records: dict[str, dict[str, Any]] = {}
    pending = list(cases)
    info: dict[str, Any] = {"workers": 0, "timeline": []}
    by_key = {c.key: c for c in cases}
    with tempfile.TemporaryDirectory(prefix="lossax-aot-") as tmp:
        while pending:
            job = Path(tmp) / f"job{info['workers']}.json"
            log = Path(tmp) / f"worker{info['workers']}.log"
            job.write_text(json.dumps({"target": target, "devices": devices,
                                       "cases": [c.as_dict() for c in pending],
                                       "dump_hlo": dump_hlo}))
            info["workers"] += 1
            with open(log, "w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.aot.worker", str(job)],
                    cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=err,
                    text=True, start_new_session=True)
            q: queue.Queue = queue.Queue()
            reader = threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True)
            reader.start()
            current: AotCase | None = None
            started = time.monotonic()
            ready = False
            try:
                while True:
                    limit = case_timeout if ready else STARTUP_TIMEOUT_S
                    left = limit - (time.monotonic() - started)
                    try:
                        msg = q.get(timeout=max(left, 0.05))
                    except queue.Empty:
                        if current is None:  # never got going
                            why = f"worker did not start within {limit:.0f} s"
                            for c in pending:
                                records[c.key] = _record(c, "error", why)
                            pending = []
                        else:
                            records[current.key] = _record(
                                current, "timeout",
                                f"did not compile within {case_timeout:.0f} s",
                                time.monotonic() - started)
                            info["timeline"].append({"case": current.key,
                                                     "seconds": time.monotonic() - started})
                            pending.remove(current)
                        break
                    if msg is None:  # the worker ended
                        proc.wait()
                        if current is not None:
                            why = (f"worker died (exit {proc.returncode}): "
                                   + _tail(log, 400))
                            records[current.key] = _record(current, "error", why)
                            pending.remove(current)
                        elif pending:
                            why = f"worker exited ({proc.returncode}) early: " + _tail(log)
                            for c in pending:
                                records[c.key] = _record(c, "error", why)
                            pending = []
                        break
                    event = msg.get("event")
                    if event == "fatal":
                        for c in pending:
                            records[c.key] = _record(c, "skipped",
                                                     f"target unavailable: {msg['reason']}")
                        pending = []
                        break
                    if event == "ready":
                        info.setdefault("target_info", msg["info"])
                        info["timeline"].append({"case": "worker start",
                                                 "seconds": time.monotonic() - started})
                        ready = True
                    elif event == "start":
                        current = by_key[msg["key"]]
                        progress(current.key)
                    elif event == "record":
                        records[msg["key"]] = msg["record"]
                        info["timeline"].append({"case": msg["key"],
                                                 "seconds": time.monotonic() - started})
                        pending = [c for c in pending if c.key != msg["key"]]
                        current = None
                    started = time.monotonic()
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                reader.join(timeout=10)
                proc.stdout.close()
    return [records[c.key] for c in cases if c.key in records], info
