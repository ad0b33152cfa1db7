"""The README's short performance tables, printed from saved results (Markdown).

Examples::

    python -m benchmarks.summary                         # newest CPU/GPU results
    python -m benchmarks.summary bench-out/results.json  # a given run
    python -m benchmarks.summary --all                   # every headline target
    python -m benchmarks.summary --aot                   # TPU v5e and H100 compiles

Without a path it reads the newest ``benchmarks/results/*.json`` that is not an
``aot-*`` file.  Paste the output into README.md (and ``--all`` into
docs/performance.md) after ``python -m benchmarks --save-results``, so that the figures
in the prose always come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The README's rows: headline key -> the case in words.  --all adds every other target.
README_ROWS: dict[str, str] = {
    "ce-128k-fwd": "softmax CE, integer labels, {shape}, forward",
    "ce-32k-bf16-fwd_bwd": "{shape} bf16, forward + backward",
    "ce-32k-fwd": "{shape}, forward",
    "ce-32k-fwd_bwd": "{shape}, forward + backward",
    "ce-32k-bf16-temp": "{shape} bf16, temporaries",
    "ce-opts": "`ignore_index` + `label_smoothing` + `z_loss`, forward + backward",
    "bce-fwd_bwd": "`sigmoid_binary_cross_entropy`, 2^22 elements, forward + backward",
    "fused-32k": "`linear_softmax_cross_entropy`, {shape}, forward + backward",
    "fused-vs-cce-temp": "the same, {shape}, temporaries",
    "sharded-temp": "`lossax.sharded`, {shape} on 8 host devices, temporaries per device",
}
_VS = {"materialise+lossax": "`x @ W` then the loss", "gather+lossax": "gathering the logits",
       "lossax": "plain lossax", "bare": "the bare kernel"}


def _latest() -> Path:
    found = sorted((p for p in RESULTS_DIR.glob("*.json") if not p.name.startswith("aot-")),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no results in {RESULTS_DIR}: run python -m benchmarks "
                         "--save-results, or give a results.json")
    return found[-1]


def _shape(h: dict[str, Any]) -> str:
    n, v, d = h["shape"]
    return f"{n} x {v}" if d is None else f"N={n} D={d} V={v}"


def _cell(h: dict[str, Any]) -> tuple[str, str]:
    """('**0.14x** optax (177 ms vs 1232 ms)', '≤ 0.35x') for a headline row."""
    vs = _VS.get(h["vs"], h["vs"])
    if h["measured"] is None:
        return f"n/a ({h['detail']})", "-"
    ratio = f"{h['measured']:.2f}x" if h["measured"] >= 0.01 else "< 0.01x"
    if h["status"] == "pass" and h["measured"] < 1:  # a clear win in bold
        ratio = f"**{ratio}**"
    target = "-" if h["threshold"] is None else f"≤ {h['threshold']:.3g}x"
    if h["status"] == "fail":
        target += ": **missed**"
    return f"{ratio} {vs} ({h['detail']})", target


def headline_table(results: dict[str, Any], every: bool = False) -> str:
    rows = {h["key"]: h for h in results["headline"] if h["status"] != "not run"}
    keys = list(README_ROWS) + ([k for k in rows if k not in README_ROWS] if every else [])
    out = ["| case (fp32 unless noted) | lossax vs peer | target |", "|---|---|---|"]
    for k in keys:
        if k in rows:
            what = README_ROWS.get(k, rows[k]["target"]).format(shape=_shape(rows[k]))
            out.append("| {} | {} | {} |".format(what, *_cell(rows[k])))
    return "\n".join(out)


def describe(results: dict[str, Any]) -> str:
    env = results["environment"]
    v = env["versions"]
    device = (f"{env['cpu_model']}, {env['cpu_count']} cores" if env["backend"] == "cpu"
              else f"{env['device_kind']} x{env['device_count']}")
    return (f"`{results['command']}` on {device} (jax {v.get('jax')}, optax "
            f"{v.get('optax')}), {results['created'][:10]}, {results['total_s']:.0f} s")


# --------------------------------------------------------------------------------------
# Deviceless compiles (python -m benchmarks --target ...).
# --------------------------------------------------------------------------------------

AOT_ROWS = (  # (op, impl, label)
    ("ce_int", "lossax", "softmax CE int: lossax"),
    ("ce_int", "optax", "softmax CE int: optax"),
    ("linear_ce", "lossax-x@W", "`h @ W` then lossax CE"),
    ("linear_ce", "optax-x@W", "`h @ W` then optax CE"),
    ("linear_ce", "lossax-none", "fused, `reduction=\"none\"`"),
    ("linear_ce", "lossax", "fused, `reduction=\"mean\"`"),
)


def _aot_figures(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for r in results["records"]:
        if (r["layout"], r["mode"], r["dtype"], r["status"]) == ("single", "fwd_bwd",
                                                                  "bfloat16", "ok"):
            out[(r["op"], r["impl"])] = r
    return out


def _bytes(b: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def aot_table(targets: tuple[str, ...] = ("tpu-v5e", "h100")) -> str:
    loaded = []
    for t in targets:
        path = RESULTS_DIR / f"aot-{t}.json"
        if path.exists():
            loaded.append((t, _aot_figures(json.loads(path.read_text()))))
    if not loaded:
        return f"(no aot-*.json in {RESULTS_DIR}: python -m benchmarks --target tpu-v5e)"
    head = ["bf16, forward + backward"]
    for t, _ in loaded:
        head += [f"{t} temp", f"{t} HBM traffic", f"{t} roofline"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shapes = set()
    for op, impl, label in AOT_ROWS:
        cells = [label]
        for _, figs in loaded:
            r = figs.get((op, impl))
            if r is None:
                cells += ["-", "-", "-"]
                continue
            shapes.add(f"{op} {r['shape']}")
            cells += [_bytes(r["memory"]["temp_bytes"]),
                      f"{r['cost']['bytes'] / 1e9:.1f} GB", f"{r['roofline']['ms']:.0f} ms"]
        out.append("| " + " | ".join(cells) + " |")
    shapes_text = ", ".join(sorted(shapes))
    return "\n".join(out) + f"\n\nShapes: {shapes_text} (N x V, N x D x V), bf16."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.summary",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", help="a results.json (default: the newest saved)")
    p.add_argument("--all", action="store_true", help="every headline target, not only "
                   "the README's")
    p.add_argument("--aot", action="store_true", help="the deviceless TPU v5e / H100 table")
    args = p.parse_args(argv)
    if args.aot:
        print(aot_table())
        return 0
    path = Path(args.results) if args.results else _latest()
    results = json.loads(path.read_text())
    print(f"From {describe(results)}:\n", file=sys.stderr)
    print(headline_table(results, every=args.all))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
