"""``python -m benchmarks``: run the suite, print the table, write the results.

Examples::

    python -m benchmarks                       # the default suite (2-4 min on 2 CPU cores)
    python -m benchmarks --quick               # tiny shapes, every op (< 1 min)
    python -m benchmarks --ops ce_int --shapes lm-32k,lm-128k --dtypes float32,bfloat16
    python -m benchmarks --ops fused_ce --shapes 4096x1024x32768 --modes fwd_bwd
    python -m benchmarks --save-results        # also writes benchmarks/results/<backend>-<device>.*
    python -m benchmarks --list                # ops, implementations and shape presets
    python -m benchmarks --plan                # the cases of a command, with time estimates
    python -m benchmarks --target tpu-v5e      # compile for a TPU/GPU without one (aot extra)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from . import aot, environment, floor, harness, headline, plan, report
from .ops import OPS, abstract_inputs, host_mesh, make_inputs
from .shapes import PRESETS, parse_shapes

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark lossax's loss kernels against optax, a naive JAX version "
        "and library peers, on whatever backend JAX finds.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="ops: " + ", ".join(OPS) + "\nshape presets: " + "; ".join(
            f"{k} ({s.describe})" for k, s in PRESETS.items()),
    )
    p.add_argument("--ops", help="comma-separated ops (default: all); see --list")
    p.add_argument("--impls", help="comma-separated implementations (default: all), e.g. "
                   "lossax,optax,naive,lossax+opts,materialise+lossax,tokamax,jax-cce")
    p.add_argument("--shapes", help="comma-separated presets or NxV / NxDxV; with this the "
                   "run is every op x shape x dtype x mode instead of the default suite")
    p.add_argument("--dtypes", help="comma-separated dtypes, e.g. float32,bfloat16")
    p.add_argument("--modes", help="fwd, fwd_bwd or both (comma-separated)")
    p.add_argument("--memory-only", action="store_true",
                   help="compile every case for its memory figures only; time nothing")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and short timing: a smoke test (< 1 min)")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out/)")
    p.add_argument("--save-results", nargs="?", const=str(RESULTS_DIR), default=None,
                   metavar="DIR", help="also copy the results to DIR/<backend>-<device>."
                   "{json,md,png} (default DIR: benchmarks/results/)")
    p.add_argument("--min-runs", type=int, help="timed runs per implementation (default 3; "
                   "quick 2)")
    p.add_argument("--min-time", type=float, help="seconds of timed runs per implementation "
                   "(default 0.3; quick 0.02)")
    p.add_argument("--max-case-time", type=float, help="seconds per case after which no more "
                   "runs are added once min-runs is met (default 60; quick 5)")
    p.add_argument("--host-devices", type=int, default=8, help="on a single-device CPU, run "
                   "the sharded op in a subprocess with this many host devices (0: skip it)")
    p.add_argument("--peak-gbps", type=float, help="device memory bandwidth for %% of peak "
                   "(default: from a table of accelerators)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-table", action="store_true", help="do not print the results table")
    p.add_argument("--plain", action="store_true", help="plain-text output even if rich is "
                   "installed")
    p.add_argument("--list", action="store_true", help="list ops, implementations, presets")
    p.add_argument("--plan", action="store_true", help="list the cases this command would "
                   "run, with an estimate of each one's seconds on a 2-core CPU; run nothing")
    p.add_argument("--cases-file", help=argparse.SUPPRESS)  # the sharded subprocess
    aot.add_arguments(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Progress: a rich bar when available, else one line per step on stderr.  Each step is
# weighted by the plan's estimate of its seconds; the time left is that estimate for the
# steps to come, rescaled by how fast this machine went through the steps done.
# --------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    m, s = divmod(max(0, round(seconds)), 60)
    return f"{m}:{s:02d}"


class _Progress:
    def __init__(self, total: int, enabled: bool, use_rich: bool,
                 weight: float | None = None):
        self.total, self.enabled, self.done = total, enabled, 0
        self.weight = float(weight or total)  # estimated seconds (or steps) in all
        self.weight_done = 0.0
        self.t0 = time.perf_counter()
        self._bar = None
        if enabled and use_rich and report.HAVE_RICH:
            import rich.console
            import rich.progress as rp

            self._bar = rp.Progress(
                rp.SpinnerColumn(), rp.TextColumn("{task.description}", style="bold"),
                rp.BarColumn(bar_width=24), rp.TextColumn("{task.fields[steps]}"),
                rp.TimeElapsedColumn(), rp.TextColumn("{task.fields[eta]}"),
                console=rich.console.Console(stderr=True), transient=False)
            self._task = self._bar.add_task("", total=self.weight, steps=self._steps(),
                                            eta=self._eta())
            self._bar.start()

    def _steps(self) -> str:
        return f"{self.done}/{self.total}"

    def eta_seconds(self) -> float:
        """Estimated seconds left: the estimate, scaled by the speed observed so far."""
        left = max(0.0, self.weight - self.weight_done)
        elapsed = time.perf_counter() - self.t0
        if self.weight_done >= 0.05 * self.weight and elapsed > 5:
            return left * min(4.0, max(0.25, elapsed / self.weight_done))
        return left

    def _eta(self) -> str:
        return f"~{_clock(self.eta_seconds())} left"

    def start(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, description=text[:44], eta=self._eta())
        else:
            elapsed = _clock(time.perf_counter() - self.t0)
            print(f"[{self.done + 1}/{self.total}] {text}  ({elapsed} elapsed, "
                  f"{self._eta()})", file=sys.stderr, flush=True)

    def advance(self, n: int = 1, weight: float | None = None) -> None:
        self.done += n
        self.weight_done += n if weight is None else weight
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.weight_done, self.weight),
                             steps=self._steps(), eta=self._eta())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description="done", eta="")
            self._bar.stop()


# --------------------------------------------------------------------------------------
# Running the cases.
# --------------------------------------------------------------------------------------


def _skipped(c: plan.Case, mode: str, reason: str) -> list[dict[str, Any]]:
    op = OPS[c.op]
    recs = []
    for name in c.impl_names():
        r = harness.base_record(op, name, c.shape, c.dtype, mode)
        r.update(status="skipped", reason=reason, ratios={}, baseline=op.baseline,
                 x_baseline=None, temp_x_baseline=None)
        floor.apply(r, op, None, None)
        recs.append(r)
    return recs


def run_cases(cases: list[plan.Case], settings: harness.Settings, progress: _Progress,
              peak_gbps: float | None, timeline: list[dict[str, Any]] | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs ``cases`` in this process; returns (records, floors by key).

    Appends each case's wall time (inputs, floor, compiles and runs) to ``timeline``.
    """
    records: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    devices = len(jax.devices())
    timeline = [] if timeline is None else timeline
    for c in cases:
        t_case = time.perf_counter()
        op = OPS[c.op]
        w = plan.estimate_seconds(c, settings.min_runs, settings.min_time,
                                  settings.max_case_time) / len(c.modes)
        label = c.shape.label if op.kind == "fused" else f"{c.shape.n}x{c.shape.v}"
        desc = f"{c.op} {label} {c.dtype}"
        reason = op.check_shape(c.shape, devices)
        if reason:
            for mode in c.modes:
                records += _skipped(c, mode, reason)
            progress.advance(len(c.modes), w * len(c.modes))
            continue
        mesh = host_mesh() if op.kind == "sharded" else None
        progress.start(f"{desc}: making inputs")
        try:
            inputs = (make_inputs(op, c.shape, c.dtype, mesh) if c.timed
                      else abstract_inputs(op, c.shape, c.dtype, mesh))
        except Exception as e:  # e.g. out of memory: keep going with the other cases
            for mode in c.modes:
                records += _skipped(c, mode, f"inputs failed: {type(e).__name__}: {e}")
            progress.advance(len(c.modes), w * len(c.modes))
            continue
        fl = None
        if c.timed:
            key = floor.floor_key(op, inputs)
            have = floors.get(key, {})
            missing = floor.needed(op, c.modes) - {k[:-3] for k in have if k.endswith("_ms")}
            if missing and "error" not in have:
                progress.start(f"{desc}: floor")
                try:  # the floor's kernels are plain: a third of the timing suffices
                    floor_settings = dataclasses.replace(settings,
                                                         min_time=settings.min_time / 3)
                    floors[key] = {**have, **floor.measure(op, inputs, floor_settings,
                                                           missing)}
                except Exception as e:
                    floors[key] = {"key": key, "error": f"{type(e).__name__}: {e}"}
            fl = floors[key]
        for mode in c.modes:
            progress.start(f"{desc} {report.MODE_TEXT[mode]}")
            case_settings = dataclasses.replace(
                settings, min_runs=max(settings.min_runs, c.min_runs))
            recs = harness.run_case(op, c.shape, c.dtype, mode, list(c.impl_names()), inputs,
                                    case_settings, timed=c.timed)
            for r in recs:
                floor.apply(r, op, fl, peak_gbps)
            records += recs
            progress.advance(1, w)
        del inputs
        gc.collect()
        timeline.append({"case": f"{desc} {','.join(c.modes)}" + ("" if c.timed else
                         " (memory only)"), "seconds": time.perf_counter() - t_case})
    return records, floors


def run_subprocess(cases: list[plan.Case], args: argparse.Namespace,
                   settings: harness.Settings, n_devices: int
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Runs ``cases`` in a child process with ``n_devices`` host devices."""
    flags = (os.environ.get("XLA_FLAGS", "")
             + f" --xla_force_host_platform_device_count={n_devices}").strip()
    info = {"devices": n_devices, "xla_flags": flags, "returncode": None}
    with tempfile.TemporaryDirectory(prefix="lossax-bench-") as tmp:
        cases_file = Path(tmp) / "cases.json"
        cases_file.write_text(json.dumps([c.as_dict() for c in cases]))
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "benchmarks", "--cases-file", str(cases_file),
               "--out", str(out), "--no-progress", "--no-plots", "--no-table",
               "--host-devices", "0", "--min-runs", str(settings.min_runs),
               "--min-time", str(settings.min_time),
               "--max-case-time", str(settings.max_case_time)]
        if args.peak_gbps:
            cmd += ["--peak-gbps", str(args.peak_gbps)]
        env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        info["returncode"] = proc.returncode
        if proc.returncode == 0 and (out / "results.json").exists():
            child = json.loads((out / "results.json").read_text())
            info["timeline"] = child.get("timeline", [])
            return child["records"], child["floors"], info
    why = f"subprocess failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"
    recs = [r for c in cases for m in c.modes for r in _skipped(c, m, why)]
    for r in recs:
        r["status"] = "error"
    return recs, [], info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.target:  # deviceless compiles for a TPU or GPU: benchmarks/aot/
        return aot.main(args, argv)
    if args.list:
        for op in OPS.values():
            print(f"{op.name:18s} {op.title}")
            for i in op.impls:
                print(f"    {i.name:20s} {i.note}")
        print("shape presets (elementwise ops use N x V elements; D: fused op only):")
        for k, s in PRESETS.items():
            print(f"    {k:20s} {s.describe}")
        return 0
    t_start = time.perf_counter()
    quick = args.quick
    settings = harness.Settings(
        min_runs=args.min_runs or (2 if quick else 3),
        min_time=args.min_time if args.min_time is not None else (0.02 if quick else 0.3),
        max_case_time=args.max_case_time or (5.0 if quick else 60.0),
    )
    if args.cases_file:
        cases = [plan.Case.from_dict(d) for d in json.loads(Path(args.cases_file).read_text())]
    else:
        try:
            shapes = parse_shapes(args.shapes) if args.shapes else None
            cases = plan.select(quick, args.ops, args.impls, shapes, args.dtypes, args.modes)
            if args.memory_only:
                cases = [dataclasses.replace(c, timed=False) for c in cases]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    def estimate(c: plan.Case) -> float:
        return plan.estimate_seconds(c, settings.min_runs, settings.min_time,
                                     settings.max_case_time)

    if args.plan:
        rows = [[c.op, c.shape.label if OPS[c.op].kind == "fused" else f"{c.shape.n}x{c.shape.v}",
                 report.DTYPE_SHORT.get(c.dtype, c.dtype),
                 ",".join(report.MODE_TEXT[m] for m in c.modes), f"{estimate(c):.0f}",
                 "timed" if c.timed else "memory", ",".join(c.impl_names())] for c in cases]
        print(report.plain_table(["op", "shape", "dtype", "modes", "~s", "kind", "impls"],
                                 rows, frozenset({4})))
        print(f"\n{len(cases)} cases, about {_clock(sum(map(estimate, cases)))} (m:ss) on "
              "a 2-core CPU, plus start-up")
        return 0
    env = environment.collect()
    peak = args.peak_gbps or (None if env["backend"] == "cpu" else floor.peak_gbps(
        env["device_kind"]))
    env["device_peak_gbps"] = peak

    child_cases: list[plan.Case] = []
    if env["backend"] == "cpu" and env["device_count"] == 1 and args.host_devices > 1:
        child_cases = [c for c in cases if OPS[c.op].kind == "sharded"]
        cases = [c for c in cases if OPS[c.op].kind != "sharded"]
    total = sum(len(c.modes) for c in cases) + sum(len(c.modes) for c in child_cases)
    child_weight = (plan.SUBPROCESS_S + sum(map(estimate, child_cases))) if child_cases else 0
    weight = sum(map(estimate, cases)) + child_weight
    if not args.no_progress:
        print(f"lossax benchmarks on {environment.describe(env)}: {len(cases + child_cases)} "
              f"cases, {total} steps, about {_clock(weight)} (m:ss) on a 2-core CPU. Each "
              "step compiles its implementations, then times them in turns.",
              file=sys.stderr, flush=True)
    progress = _Progress(total, not args.no_progress, not args.plain, weight)
    sub_info = None
    timeline: list[dict[str, Any]] = []
    try:
        records, floors_by_key = run_cases(cases, settings, progress, peak, timeline)
        floors = list(floors_by_key.values())
        if child_cases:
            progress.start(f"sharded_ce: subprocess with {args.host_devices} host devices")
            t_child = time.perf_counter()
            recs, fls, sub_info = run_subprocess(child_cases, args, settings, args.host_devices)
            records += recs
            floors += fls
            timeline.append({"case": "sharded subprocess (total)",
                             "seconds": time.perf_counter() - t_child})
            progress.advance(sum(len(c.modes) for c in child_cases), child_weight)
    finally:
        progress.close()

    results: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "argv": argv,
        "environment": env,
        "settings": {"quick": quick, "memory_only": args.memory_only, "min_runs": settings.min_runs,
                     "min_time": settings.min_time, "max_runs": settings.max_runs,
                     "max_case_time": settings.max_case_time},
        "ops": {k: op.title for k, op in OPS.items()},
        "impl_notes": {k: {i.name: i.note for i in op.impls} for k, op in OPS.items()},
        "cases": [c.as_dict() for c in cases + child_cases],
        "floors": floors,
        "records": records,
        "headline": headline.evaluate(records),
        "subprocess": sub_info,
        "timeline": timeline,
        "total_s": None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_name = None
    if not args.no_plots:
        why = report.plot(records, out / report.PLOT_NAME,
                          f"lossax benchmarks, {environment.describe(env)}")
        if why is None:
            plot_name = report.PLOT_NAME
        elif not args.no_table:
            print(f"(no plot: {why})", file=sys.stderr)
    results["total_s"] = time.perf_counter() - t_start
    report.write_json(results, out / "results.json")
    report.write_markdown(results, out / "results.md", plot_name)
    if not args.no_table:
        report.print_terminal(results, use_rich=not args.plain)
        print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}"
              + (f", {out / plot_name}" if plot_name else ""), file=sys.stderr)
    if args.save_results:
        written = report.save_committed(out, Path(args.save_results), environment.slug(env),
                                        plot_name is not None)
        if not args.no_table:
            print("saved " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
