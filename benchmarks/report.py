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
    import rich.box
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


WIDTH = 100  # the terminal tables fit this many columns; results.md has every column
DTYPE_SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}
_COLUMNS = ("case / impl", "ms", "spread", "x base", "x floor", "temp MiB", "peak MiB")
_STATUS_SHORT = {"memory-only": "mem only", "skipped": "skipped", "error": "error"}
LEGEND = (
    "ms: median time of one call. spread: interquartile range / median. x base: time / the "
    "baseline's time in the same run (named above each table). x floor: time / the memory-"
    "bandwidth floor, the time this machine needs just to read the logits once (fwd) or "
    "read them twice and write the gradient (fwd+bwd); fused op: time / that of x @ W (once "
    "fwd, 3 times fwd+bwd). temp MiB: XLA's temporaries, the "
    "scratch memory of the compiled call besides its inputs and outputs. peak MiB: temp + "
    "arguments + outputs. mem only: compiled for its memory figures, not timed. Every "
    "column, with compile times and floors: results.md."
)


def case_label(r: dict[str, Any]) -> str:
    """``4096x32768 bf16 f+b``: shape, short dtype and mode of a record."""
    mode = "fwd" if r["mode"] == "fwd" else "f+b"
    s = r["shape"]
    label = s.get("label") or "x".join(str(k) for k in (s["n"], s.get("d"), s["v"]) if k)
    return f"{label} {DTYPE_SHORT.get(r['dtype'], r['dtype'])} {mode}"


def _row(r: dict[str, Any]) -> list[str]:
    mem = r.get("memory") or {}
    ms = _ms(r.get("median_ms")) if r.get("median_ms") else _STATUS_SHORT.get(
        r["status"], r["status"] if r["status"] != "ok" else "-")
    return [
        "  " + r["impl"], ms,
        "-" if r.get("spread_pct") is None else f"{r['spread_pct']:.0f}%",
        _ratio(r.get("x_baseline")), _ratio(r.get("x_floor")),
        _mib(mem.get("temp_bytes")), _mib(mem.get("peak_bytes")),
    ]


def _headline_row(h: dict[str, Any]) -> list[str]:
    thr = "-" if h["threshold"] is None else f"<= {h['threshold']:.2f}x"
    return [h["target"], _ratio(h["measured"]), thr, h["status"], h["detail"]]


_OP_SHORT = {"ce_int": "CE int", "ce_dense": "CE dense", "bce": "BCE", "focal": "focal",
             "hinge": "hinge", "multiclass_hinge": "mc hinge", "fused_ce": "fused CE",
             "sharded_ce": "sharded CE"}
_METRIC_SHORT = {"time": "time", "temp_bytes": "temp", "peak_bytes": "peak"}


def headline_case(h: dict[str, Any]) -> str:
    """``CE int 4096x32768 bf16 f+b: lossax / optax time``: a headline row, short."""
    n, v, d = h["shape"]
    shape = f"{n}x{v}" if d is None else f"{n}x{d}x{v}"
    mode = "fwd" if h["mode"] == "fwd" else "f+b"
    return (f"{_OP_SHORT.get(h['op'], h['op'])} {shape} {DTYPE_SHORT.get(h['dtype'])} {mode}: "
            f"{h['impl']} / {h['vs']}, {_METRIC_SHORT.get(h['metric'], h['metric'])}")


def _headline_short(h: dict[str, Any]) -> list[str]:
    verdict = h["status"]
    if h["threshold"] is not None and h["status"] in ("pass", "fail"):
        verdict += f" <={h['threshold']:.2f}x" if h["pass"] else f" >{h['threshold']:.2f}x"
    return [headline_case(h), _ratio(h["measured"]), verdict, h["detail"]]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def plain_table(header: list[str], rows: list[list[str] | str],
                right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell; a str row is a heading line of its own."""
    cells = [r for r in rows if not isinstance(r, str)]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]

    def line(row: list[str] | str) -> str:
        if isinstance(row, str):
            return row
        return "  ".join((c.rjust(w) if i in right else c.ljust(w))
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _by_op(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_op[r["op"]].append(r)
    return by_op


def _op_title(results: dict[str, Any], op: str, recs: list[dict[str, Any]]) -> str:
    base = recs[0].get("baseline") or "optax"
    return f"{results['ops'].get(op, op)} ({op}); x base: time / {base}'s"


def _case_rows(recs: list[dict[str, Any]]) -> list[list[str] | str]:
    """Rows of one op: a heading (the case, a str) before the rows of each case."""
    rows: list[list[str] | str] = []
    prev = None
    for r in recs:
        case = case_label(r)
        if case != prev:
            rows.append(case)
            prev = case
        rows.append(_row(r))
    return rows


def print_terminal(results: dict[str, Any], file=None, use_rich: bool | None = None) -> None:
    """The results (one table per op) and the headline view, within 100 columns."""
    import textwrap

    file = file or sys.stdout
    use_rich = HAVE_RICH if use_rich is None else (use_rich and HAVE_RICH)
    env = results["environment"]
    title = f"lossax benchmarks, {environment.describe(env)}: {results['total_s']:.0f} s"
    hl_raw = [h for h in results["headline"] if h["status"] != "not run"]
    hl_header = ["case: impl / peer, metric", "ratio", "status (target)", "detail"]
    hl = [_headline_short(h) for h in hl_raw]
    right = frozenset({1, 2, 3, 4, 5, 6})
    legend = textwrap.fill(LEGEND, WIDTH)
    if use_rich:
        tty = getattr(file, "isatty", lambda: False)()
        width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24))[0]) if tty else WIDTH
        console = rich.console.Console(file=file, width=width)
        console.print(title, style="bold")
        for op, recs in _by_op(results["records"]).items():
            t = rich.table.Table(title=_op_title(results, op, recs), box=rich.box.SIMPLE_HEAD,
                                 title_justify="left", pad_edge=False, padding=(0, 1))
            for i, c in enumerate(_COLUMNS):
                t.add_column(c, justify="right" if i in right else "left", no_wrap=True)
            for row in _case_rows(recs):
                if isinstance(row, str):
                    t.add_row(row, style="bold")
                else:
                    t.add_row(*row)
            console.print(t)
        console.print(legend, style="dim", soft_wrap=False)
        if hl:
            h = rich.table.Table(title="headline (same-run ratios; reported, not asserted)",
                                 box=rich.box.SIMPLE_HEAD, title_justify="left",
                                 pad_edge=False, padding=(0, 1))
            for i, c in enumerate(hl_header):
                h.add_column(c, justify="right" if i == 1 else "left", no_wrap=i in (1, 2),
                             overflow="fold")
            style = {"pass": "green", "fail": "red"}
            for row, raw in zip(hl, hl_raw, strict=True):
                h.add_row(*row, style=style.get(raw["status"]))
            console.print(h)
    else:
        print(title, file=file)
        for op, recs in _by_op(results["records"]).items():
            print(f"\n{_op_title(results, op, recs)}", file=file)
            print(plain_table(list(_COLUMNS), _case_rows(recs), right), file=file)
        print("\n" + legend, file=file)
        if hl:
            print("\nheadline (same-run ratios; reported, not asserted)", file=file)
            print(f"{'status':<13} {'ratio':>6}  case: impl / peer, metric  (detail)",
                  file=file)
            for case, ratio, verdict, detail in hl:
                line = f"{verdict:<13} {ratio:>6}  {case}"
                if len(line) + len(detail) + 4 <= WIDTH:
                    line += f"  ({detail})"
                elif detail:
                    line += "\n" + _clip(f"{'':22}({detail})", WIDTH)
                print(line, file=file)


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
        out += ["## Temporaries and time vs V", "",
                f"![temporaries and time against optax vs V]({plot_name})", ""]
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
           "materialise+lossax": "C4", "tokamax": "C5", "jax-cce": "C6", "gather+lossax": "C7",
           "bare": "C8"}


def sweep_groups(records: list[dict[str, Any]],
                 min_points: int = 3) -> dict[tuple, list[dict[str, Any]]]:
    """Records grouped by (op, dtype, mode, N, D) with ``min_points`` or more V values."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (r.get("memory") or {}).get("temp_bytes") is None:
            continue
        s = r["shape"]
        groups[(r["op"], r["dtype"], r["mode"], s["n"], s.get("d"))].append(r)
    return {k: g for k, g in groups.items() if len({r["shape"]["v"] for r in g}) >= min_points}


def _bytes_label(b: float, _pos: Any = None) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:g} {unit}"
    return f"{b:g} B"


def _v_label(v: float, _pos: Any = None) -> str:
    return f"{v / 1024:g}k" if v >= 1024 else f"{v:g}"


def _panels(groups: dict[tuple, list[dict[str, Any]]]) -> list[tuple[str, tuple]]:
    """("temp", group) for every sweep; ("time", group) where 2+ V values were timed."""
    panels = []
    for key, recs in groups.items():
        panels.append(("temp", key))
        base = recs[0].get("baseline")
        timed = {r["shape"]["v"] for r in recs
                 if r.get("x_baseline") is not None and r["impl"] != base}
        if len(timed) >= 2:
            panels.append(("time", key))
    return panels


def plot(records: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Temporaries vs V, and time against the baseline (a line at 1.0) vs V, for each
    sweep over V; lossax beside each peer.  Returns None on success, else why no plot
    was written."""
    groups = sweep_groups(records)
    if not groups:
        return "no sweep over V in this run"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    panels = _panels(groups)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.9 * nrows),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        fig.delaxes(ax)  # no empty panels
    for (kind, key), ax in zip(panels, flat, strict=False):
        op, dtype, mode, n, d = key
        recs = groups[key]
        base = recs[0].get("baseline") or "optax"
        shape = f"N={n}" + (f", D={d}" if d else "")
        what = f"{_OP_SHORT.get(op, op)} {DTYPE_SHORT.get(dtype, dtype)} {MODE_TEXT[mode]}"
        for impl in dict.fromkeys(r["impl"] for r in recs):
            rs = sorted((r for r in recs if r["impl"] == impl), key=lambda r: r["shape"]["v"])
            style = dict(marker="o", lw=2.5 if impl == "lossax" else 1.2,
                         ls="-" if impl.startswith("lossax") else "--", label=impl,
                         color=_COLORS.get(impl))
            if kind == "temp":
                pts = [(r["shape"]["v"], r["memory"]["temp_bytes"]) for r in rs
                       if r["memory"]["temp_bytes"]]
            else:
                if impl == base:
                    continue
                pts = [(r["shape"]["v"], r["x_baseline"]) for r in rs
                       if r.get("x_baseline") is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(_v_label))
        ax.set_xlabel("V (classes)")
        if kind == "temp":
            ax.yaxis.set_major_formatter(FuncFormatter(_bytes_label))
            ax.set_ylabel("temporaries (memory_analysis)")
            ax.set_title(f"{what}, {shape}: temporaries", fontsize=10)
        else:
            ax.axhline(1.0, color=_COLORS.get(base, "k"), lw=1.2, ls="--",
                       label=f"{base} (= 1)")
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, 0.5), max(hi * 1.15, 2.0))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(f"median time / {base}'s (lower is faster)")
            ax.set_title(f"{what}, {shape}: time vs {base}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
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
