"""``python -m benchmarks --target tpu-v5e|tpu-v6e|tpu-v5p|tpu-v4|h100 [--devices K]``.

Deviceless ahead-of-time compilation of lossax beside its peers for a TPU or GPU from a
CPU-only host: nothing runs, every figure comes from the compiled executable (memory
analysis, a loop-aware cost model over the optimized HLO, the collectives, a roofline
from published peaks).  Needs the ``aot`` extra (``pip install -e '.[aot]'``: libtpu and
the CUDA plugin).

Modules: ``targets`` (topologies and peak figures), ``cases`` (what is compiled),
``hlo_cost`` (the HLO cost model), ``worker`` (the compile process), ``run`` (the
per-case time limit), ``report`` (table, JSON, markdown).

Examples::

    python -m benchmarks --target tpu-v5e                 # the default suite, 1 device
    python -m benchmarks --target h100 --devices 4 --save-results
    python -m benchmarks --target tpu-v5e --ops linear_ce --impls lossax,optax-x@W \\
        --shapes 4096x2048x65536 --modes fwd_bwd
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .cases import IMPLS
from .targets import TARGETS

_VERSIONS = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt", "lossax",
             "optax", "tokamax", "jax-cce", "numpy", "ml_dtypes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--target`` options of ``python -m benchmarks``."""
    g = parser.add_argument_group(
        "deviceless AOT (needs the aot extra)",
        "compile for an accelerator from this host and report what the executable costs; "
        "--shapes/--dtypes/--modes/--out/--save-results apply too, --ops ce_int,linear_ce "
        "and --impls " + ",".join(sorted({i for v in IMPLS.values() for i in v})))
    g.add_argument("--target", choices=sorted(TARGETS), help="compile for this accelerator "
                   "(nothing runs) and write aot-<target>[-<K>dev].{json,md}")
    g.add_argument("--devices", type=int, default=1, metavar="K",
                   help="devices of the target (default 1); K > 1 adds data-parallel and "
                   "FSDP layouts, figures per device")
    g.add_argument("--case-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a case may take to compile before it is recorded as "
                   "timeout (default 60)")
    g.add_argument("--dump-hlo", metavar="DIR", help="also write each optimized HLO here")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in _VERSIONS:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def select(args: argparse.Namespace) -> list:
    """The cases of ``args`` (the default suite, narrowed)."""
    from ..shapes import parse_shapes
    from . import cases

    if args.devices < 1:
        raise ValueError(f"--devices must be at least 1; got {args.devices}")
    shapes = None
    if args.shapes:
        shapes = [(s.n, s.d, s.v) for s in parse_shapes(args.shapes)]
    return cases.suite(args.devices, _split(args.ops), _split(args.impls), shapes,
                       _split(args.dtypes), _split(args.modes))


def output_name(target: str, devices: int) -> str:
    return f"aot-{target}" + (f"-{devices}dev" if devices > 1 else "")


def main(args: argparse.Namespace, argv: list[str]) -> int:
    from .. import environment
    from . import report, run, targets

    t_start = time.perf_counter()
    try:
        selected = select(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    target = targets.get(args.target)
    done = [0]

    def progress(key: str) -> None:
        done[0] += 1
        if not args.no_progress:
            print(f"[{done[0]}/{len(selected)}] {args.target}: {key}", file=sys.stderr,
                  flush=True)

    records, info = run.run_target(args.target, args.devices, selected, args.case_timeout,
                                   args.dump_hlo, progress)
    results: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "kind": "aot",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "target": target.as_dict(),
        "devices": args.devices,
        "target_info": info.get("target_info"),
        "environment": {"host": platform.platform(), "cpu_model": environment.cpu_model(),
                        "cpu_count": os.cpu_count(), "versions": versions()},
        "settings": {"case_timeout_s": args.case_timeout, "workers": info["workers"]},
        "records": records,
        "timeline": info["timeline"],
        "total_s": time.perf_counter() - t_start,
    }
    name = output_name(args.target, args.devices)
    written = []
    for d in [Path(args.out)] + ([Path(args.save_results)] if args.save_results else []):
        d.mkdir(parents=True, exist_ok=True)
        report.write_json(results, d / f"{name}.json")
        report.write_markdown(results, d / f"{name}.md")
        written += [d / f"{name}.json", d / f"{name}.md"]
    if not args.no_table:
        report.print_table(results)
        print("\nwrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
