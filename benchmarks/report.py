"""Output: terminal table, ``results.json``, ``results.md`` and the vocabulary-sweep plot.

``rich`` (tables) and ``matplotlib`` (plots) are optional: without them the table is
plain text and the plot is skipped with a message.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import environment

try:  # optional: pretty tables and a progress bar
    import rich.console
    import rich.table

    HAVE_RICH = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_RICH = False

PLOT_NAME = "vocab_sweep.png"
SCHEMA_VERSION = 1
MODE_TEXT = {"fwd": "fwd", "fwd_bwd": "fwd+bwd"}


# --------------------------------------------------------------------------------------
# Formatting.
# --------------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(b: int | None) -> str:
    if b is None:
        return "-"
    m = b / 2**20
    return f"{m:.1f}" if m >= 0.1 or m == 0 else f"{m:.3f}"


def _status(r: dict[str, Any]) -> str:
    return "" if r["status"] == "ok" else r["status"]


_COLUMNS = ("op", "shape", "dtype", "mode", "impl", "median ms", "spread", "x base",
            "x floor", "temp MiB", "peak MiB", "compile ms", "status")


def _row(r: dict[str, Any]) -> list[str]:
    mem = r.get("memory") or {}
    return [
        r["op"], r["shape"]["label"], r["dtype"], MODE_TEXT.get(r["mode"], r["mode"]),
        r["impl"], _ms(r.get("median_ms")),
        "-" if r.get("spread_pct") is None else f"{r['spread_pct']:.0f}%",
        _ratio(r.get("x_baseline")), _ratio(r.get("x_floor")),
        _mib(mem.get("temp_bytes")), _mib(mem.get("peak_bytes")),
        _num(r.get("compile_ms"), ".0f"), _status(r),
    ]


def _headline_row(h: dict[str, Any]) -> list[str]:
    thr = "-" if h["threshold"] is None else f"<= {h['threshold']:.2f}x"
    return [h["target"], _ratio(h["measured"]), thr, h["status"], h["detail"]]


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def print_terminal(results: dict[str, Any], file=None, use_rich: bool | None = None) -> None:
    """The results table and the headline view, on the terminal."""
    file = file or sys.stdout
    use_rich = HAVE_RICH if use_rich is None else (use_rich and HAVE_RICH)
    rows = [_row(r) for r in results["records"]]  # in run order: case by case
    hl = [_headline_row(h) for h in results["headline"] if h["status"] != "not run"]
    env = results["environment"]
    title = f"lossax benchmarks, {environment.describe(env)}: {results['total_s']:.0f} s"
    hl_header = ["target", "measured", "threshold", "status", "detail"]
    if use_rich:
        console = rich.console.Console(file=file, width=max(180, shutil.get_terminal_size()[0]))
        t = rich.table.Table(title=title, show_lines=False)
        for c in _COLUMNS:
            t.add_column(c, justify="right" if c not in ("op", "impl", "status") else "left",
                         no_wrap=True)
        prev = None
        for r, raw in zip(rows, results["records"], strict=True):
            key = (raw["op"], raw["shape"]["label"], raw["dtype"], raw["mode"])
            if prev is not None and key != prev:
                t.add_section()
            prev = key
            t.add_row(*r)
        console.print(t)
        if hl:
            h = rich.table.Table(title="headline (same-run ratios; reported, not asserted)")
            for c in hl_header:
                h.add_column(c)
            style = {"pass": "green", "fail": "red"}
            for row, raw in zip(hl, [x for x in results["headline"]
                                     if x["status"] != "not run"], strict=True):
                h.add_row(*row, style=style.get(raw["status"]))
            console.print(h)
    else:
        print(title, file=file)
        print(_plain_table(list(_COLUMNS), rows), file=file)
        if hl:
            print("\nheadline (same-run ratios; reported, not asserted)", file=file)
            print(_plain_table(hl_header, hl), file=file)


# --------------------------------------------------------------------------------------
# results.json and results.md.
# --------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples become lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(results), indent=1, sort_keys=False) + "\n")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


METHOD = """\
Each implementation is compiled ahead of time (`jax.jit(f).lower(*args).compile()`;
the compile time is recorded), its memory read from `compiled.memory_analysis()`
(temporaries, arguments, outputs; *peak* = their sum less aliased bytes; per device
for the sharded op), run once to warm up, and then the implementations of a case are
timed in turns (A B, B A, ...) with `block_until_ready` until each has at least
`min_runs` runs and `min_time` seconds.  Times are medians; *spread* is the
interquartile range over the median.  *x base* is the median over the baseline's
median in the same run (optax; for the fused op, materialising the logits and calling
lossax's kernel).  *fwd+bwd* is `jax.value_and_grad` of the float32 sum of the loss
with respect to the logits (fused op: `x` and `W`).
*x floor* divides by the backend's own cost of touching an array of the logits' size,
measured in the same run: forward ideal = 1 read (`jnp.sum(x)`), forward+backward =
2 reads + 1 write (`jnp.sum(x)` + `x + 1`); dense labels read the labels too;
elementwise losses read two arrays and write one.  *x exp* divides by the exp
throughput (`sum(exp(x))`, plus `exp(x)` written for forward+backward).  The fused
op's floor is the time of `x @ W` (which writes the logits) once forward and three
times forward+backward; a fused kernel can beat it, since it never writes the logits.
Inputs are made by an integer hash on the backend (logits uniform in [-4, 4)); values
do not change the time of these kernels."""


def write_markdown(results: dict[str, Any], path: Path, plot_name: str | None) -> None:
    env = results["environment"]
    s = results["settings"]
    v = env["versions"]
    out = [f"# lossax benchmarks, {environment.describe(env)}", ""]
    out.append(_md_table(["", ""], [
        ["backend", f"{env['backend']} ({env['device_count']} device(s))"],
        ["device", env["device_kind"]],
        ["CPU", f"{env['cpu_model']} ({env['cpu_count']} cores)"],
        ["versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)],
        ["flags", ", ".join(f"{k}={val}" for k, val in env["flags"].items()) or "-"],
        ["command", f"`{results['command']}`"],
        ["settings", f"min_runs={s['min_runs']}, min_time={s['min_time']} s"],
        ["peak bandwidth", "-" if env.get("device_peak_gbps") is None
         else f"{env['device_peak_gbps']:.0f} GB/s (for % peak BW)"],
        ["date", results["created"]],
        ["total", f"{results['total_s']:.0f} s"],
    ]))
    sub = results.get("subprocess")
    if sub:
        out += ["", f"The sharded cases ran in a subprocess with {sub['devices']} host devices "
                f"(`XLA_FLAGS={sub['xla_flags']}`)."]
    hl = [h for h in results["headline"] if h["status"] != "not run"]
    if hl:
        out += ["", "## Headline", "",
                "Same-run ratios against the targets the project's issues set; reported, "
                "never asserted.", ""]
        out.append(_md_table(["target", "measured", "threshold", "status", "detail"],
                             [_headline_row(h) for h in hl]))
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results["records"]:
        by_op[r["op"]].append(r)
    out += ["", "## Results", ""]
    header = ["shape", "dtype", "mode", "impl", "median ms", "spread", "x base", "x floor",
              "x exp", "GB/s", "temp MiB", "peak MiB", "compile ms", "status"]
    with_peak = any(r.get("pct_peak_bw") is not None for r in results["records"])
    if with_peak:  # accelerators: achieved bandwidth against the device's
        header.insert(10, "% peak BW")
    for op, recs in by_op.items():
        out += [f"### {results['ops'].get(op, op)} (`{op}`)", ""]
        rows = []
        for r in recs:
            mem = r.get("memory") or {}
            status = _status(r)
            if r.get("reason") and r["status"] not in ("ok",):
                status = f"{status}: {r['reason']}"
            rows.append([
                r["shape"]["label"], r["dtype"], MODE_TEXT[r["mode"]], r["impl"],
                _ms(r.get("median_ms")),
                "-" if r.get("spread_pct") is None else f"{r['spread_pct']:.0f}%",
                _ratio(r.get("x_baseline")), _ratio(r.get("x_floor")),
                _ratio(r.get("x_exp_floor")), _num(r.get("achieved_gbps")),
                _mib(mem.get("temp_bytes")), _mib(mem.get("peak_bytes")),
                _num(r.get("compile_ms"), ".0f"), status,
            ])
            if with_peak:
                rows[-1].insert(10, _num(r.get("pct_peak_bw"), ".0f"))
        out.append(_md_table(header, rows))
        out.append("")
    if results["floors"]:
        out += ["## Floors (same run)", ""]
        rows = [[f["key"], _ms(f.get("read_ms")), _num(f.get("read_gbps")),
                 _ms(f.get("copy_ms")), _ms(f.get("exp_sum_ms")), _ms(f.get("exp_write_ms")),
                 _ms(f.get("matmul_ms")), _num(f.get("matmul_gflops"))]
                for f in results["floors"]]
        out.append(_md_table(["array", "read ms", "read GB/s", "copy ms", "exp_sum ms",
                              "exp_write ms", "matmul ms", "matmul GFLOP/s"], rows))
        out.append("")
    if plot_name:
        out += ["## Time and peak memory vs V", "", f"![time and memory vs V]({plot_name})", ""]
    out += ["## Method", "", METHOD, ""]
    if results.get("timeline"):
        out += ["## Run time by case", ""]
        rows = [[t["case"], f"{t['seconds']:.1f}"] for t in results["timeline"]]
        sub = (results.get("subprocess") or {}).get("timeline") or []
        rows += [[f"(subprocess) {t['case']}", f"{t['seconds']:.1f}"] for t in sub]
        out.append(_md_table(["case", "seconds"], rows))
        out.append("")
    path.write_text("\n".join(out))


# --------------------------------------------------------------------------------------
# Plots.
# --------------------------------------------------------------------------------------


_COLORS = {"lossax": "C0", "optax": "C1", "naive": "C2", "lossax+opts": "C3",
           "materialise+lossax": "C4", "tokamax": "C5", "jax-cce": "C6", "gather+lossax": "C7"}


def sweep_groups(records: list[dict[str, Any]],
                 min_points: int = 3) -> dict[tuple, list[dict[str, Any]]]:
    """Records grouped by (op, dtype, mode, N, D) with ``min_points`` or more V values."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (r.get("memory") or {}).get("peak_bytes") is None:
            continue
        s = r["shape"]
        groups[(r["op"], r["dtype"], r["mode"], s["n"], s.get("d"))].append(r)
    return {k: g for k, g in groups.items() if len({r["shape"]["v"] for r in g}) >= min_points}


def plot(records: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Time and peak memory vs V, one row per sweep, lossax beside each peer.

    Returns None on success, else why no plot was written.
    """
    groups = sweep_groups(records)
    if not groups:
        return "no sweep over V in this run"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for (op, dtype, mode, n, d), (ax_t, ax_m) in zip(groups, axes, strict=True):
        recs = groups[(op, dtype, mode, n, d)]
        impls = list(dict.fromkeys(r["impl"] for r in recs))
        timed_v = sorted({r["shape"]["v"] for r in recs if r.get("median_ms")})
        for impl in impls:
            rs = sorted((r for r in recs if r["impl"] == impl), key=lambda r: r["shape"]["v"])
            style = dict(marker="o", lw=2.5 if impl == "lossax" else 1.2,
                         ls="-" if impl.startswith("lossax") else "--", label=impl,
                         color=_COLORS.get(impl))
            tv = [(r["shape"]["v"], r["median_ms"]) for r in rs if r.get("median_ms")]
            if len(timed_v) >= 2 and tv:
                ax_t.plot(*zip(*tv, strict=True), **style)
            mv = [(r["shape"]["v"], r["memory"]["peak_bytes"] / 2**20) for r in rs]
            ax_m.plot(*zip(*mv, strict=True), **style)
        shape = f"N={n}" + (f", D={d}" if d else "")
        panels = [(ax_m, "peak memory [MiB]")]
        if len(timed_v) >= 2:
            panels.insert(0, (ax_t, "median time [ms]"))
        for ax, what in panels:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("V (classes)")
            ax.set_ylabel(what)
            ax.set_title(f"{op} {dtype} {MODE_TEXT[mode]}, {shape}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        if len(timed_v) < 2:  # a sweep compiled for memory only: list what was timed
            lines = ["compiled for memory only; timed:"] + [
                f"  V={r['shape']['v']}: {r['impl']} {_ms(r['median_ms'])} ms"
                for r in recs if r.get("median_ms")]
            ax_t.axis("off")
            ax_t.set_title(f"{op} {dtype} {MODE_TEXT[mode]}, {shape}", fontsize=10)
            ax_t.text(0.05, 0.5, "\n".join(lines), ha="left", va="center",
                      transform=ax_t.transAxes, fontsize=9, family="monospace")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------
# Committed copies.
# --------------------------------------------------------------------------------------


def save_committed(out_dir: Path, results_dir: Path, name: str, has_plot: bool) -> list[Path]:
    """Copies results.{json,md} (and the plot) to ``results_dir/<name>.*``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    js = results_dir / f"{name}.json"
    shutil.copyfile(out_dir / "results.json", js)
    written.append(js)
    md = (out_dir / "results.md").read_text()
    if has_plot:
        png = results_dir / f"{name}.png"
        shutil.copyfile(out_dir / PLOT_NAME, png)
        written.append(png)
        md = md.replace(f"]({PLOT_NAME})", f"]({name}.png)")
    (results_dir / f"{name}.md").write_text(md)
    written.append(results_dir / f"{name}.md")
    return written
