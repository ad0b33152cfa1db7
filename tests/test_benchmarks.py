"""The benchmark harness (``python -m benchmarks``): schema, plans, peers, bookkeeping.

No timing figure is asserted: these tests check that the harness runs, writes what it
documents, compares like with like (every implementation of an op computes the same
loss and gradient), and does its arithmetic (ratios, floors, headline) correctly.
They need only the ``test`` extra: rich and matplotlib are optional.
"""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from benchmarks import cli, floor, harness, headline, ops, plan, report, summary
from benchmarks.shapes import PRESETS, Shape, parse_shape

import lossax

RECORD_KEYS = {
    "op", "impl", "mode", "shape", "dtype", "status", "reason", "devices", "compile_ms",
    "warmup_ms", "memory", "runs", "times_ms", "median_ms", "min_ms", "max_ms", "q1_ms",
    "q3_ms", "spread_pct", "baseline", "x_baseline", "temp_x_baseline", "ratios",
    "floor_ms", "x_floor", "exp_floor_ms", "x_exp_floor", "ideal_bytes", "achieved_gbps",
}
MEMORY_KEYS = {"temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "peak_bytes"}


def test_cli_quick_writes_documented_schema(tmp_path, capsys):
    rc = cli.main([
        "--quick", "--ops", "ce_int,bce", "--impls", "lossax,optax", "--shapes", "16x128",
        "--out", str(tmp_path), "--no-progress", "--no-plots", "--plain", "--host-devices", "0",
    ])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("# lossax benchmarks")
    for key in ("schema_version", "created", "command", "environment", "settings", "floors",
                "records", "headline", "cases", "total_s"):
        assert key in res
    env = res["environment"]
    for key in ("backend", "device_kind", "device_count", "cpu_model", "versions", "flags"):
        assert key in env
    assert env["versions"]["jax"] == jax.__version__
    assert res["settings"]["quick"] is True
    # 2 ops x 1 shape x 1 dtype x 2 modes x 2 impls.
    assert len(res["records"]) == 8
    seen = set()
    for r in res["records"]:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["status"] == "ok", r["reason"]
        assert MEMORY_KEYS <= set(r["memory"])
        assert r["shape"]["n"] == 16
        assert r["shape"]["v"] == 128
        assert r["runs"] >= 2
        assert len(r["times_ms"]) == r["runs"]
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        seen.add((r["op"], r["mode"], r["impl"]))
    assert len(seen) == 8
    for h in res["headline"]:
        assert {"target", "measured", "threshold", "status", "pass"} <= set(h)
        assert h["status"] == "not run"  # no headline shape in this run
    # Accelerators get a % of peak bandwidth column.
    res["environment"]["device_peak_gbps"] = 1000.0
    res["records"][0]["pct_peak_bw"] = 12.5
    report.write_markdown(res, tmp_path / "gpu.md", None)
    md = (tmp_path / "gpu.md").read_text()
    assert "% peak BW" in md
    assert "1000 GB/s" in md
    out = capsys.readouterr().out
    assert "ce_int" in out
    assert "bce" in out


def test_plain_output_without_rich(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "HAVE_RICH", False)
    rc = cli.main(["--quick", "--ops", "hinge", "--shapes", "8x16", "--modes", "fwd",
                   "--out", str(tmp_path), "--no-plots", "--host-devices", "0",
                   "--min-time", "0"])
    assert rc == 0
    out = capsys.readouterr()
    assert "hinge" in out.out
    assert "[1/1]" in out.err


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert cli.main(["--ops", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown op 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Plans and targets.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [plan.DEFAULT_PLAN, plan.QUICK_PLAN], ids=["default", "quick"])
def test_plans_are_runnable(suite):
    for c in suite:
        op = ops.OPS[c.op]
        assert op.check_shape(c.shape, 8) is None, c
        assert c.impl_names(), c
        assert set(c.modes) <= set(ops.MODES)
        assert jnp.dtype(c.dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def test_default_plan_covers_every_headline_target():
    def cases(t, impl):
        n, v, d = t.shape
        return [
            c for c in plan.DEFAULT_PLAN
            if c.op == t.op and c.dtype == t.dtype and t.mode in c.modes
            and (c.shape.n, c.shape.v) == (n, v) and (d is None or c.shape.d == d)
            and impl in c.impl_names()
        ]

    for t in headline.TARGETS:
        if t.metric == "time":  # both timed in one case: a same-run ratio
            assert [c for c in cases(t, t.impl) if c.timed and t.vs in c.impl_names()], t.key
        else:
            assert cases(t, t.impl), t.key
            assert cases(t, t.vs), t.key


def test_select_filters_and_cross_product():
    cases = plan.select(False, ops="bce", dtypes="bfloat16", modes="fwd")
    assert cases
    assert all(
        c.op == "bce" and c.dtype == "bfloat16" and c.modes == ("fwd",) for c in cases)
    cases = plan.select(False, ops="ce_int,hinge", impls="optax",
                        shapes=[PRESETS["small"], parse_shape("8x16")])
    assert len(cases) == 4
    assert all(c.impl_names() == ("optax",) for c in cases)
    with pytest.raises(ValueError, match="unknown impl"):
        plan.select(True, impls="nope")


def test_parse_shape():
    assert parse_shape("lm-32k") == PRESETS["lm-32k"]
    s = parse_shape("4096x1024x32768")
    assert (s.n, s.d, s.v, s.label) == (4096, 1024, 32768, "4096x1024x32768")
    s = parse_shape("8x16")
    assert (s.n, s.v, s.d, s.elements) == (8, 16, None, 128)
    with pytest.raises(ValueError, match="unknown shape"):
        parse_shape("8by16")


# --------------------------------------------------------------------------------------
# Like with like: every implementation of an op computes the same loss and gradient.
# --------------------------------------------------------------------------------------

_SMALL = {"classes": Shape("t", 12, 40), "elementwise": Shape("t", 6, 20),
          "fused": Shape("t", 12, 40, 16), "sharded": Shape("t", 12, 40)}


@pytest.mark.parametrize("name", list(ops.OPS))
def test_implementations_agree(name):
    op = ops.OPS[name]
    shape = _SMALL[op.kind]
    devices = len(jax.devices())
    if op.check_shape(shape, devices):
        pytest.skip(op.check_shape(shape, devices))
    mesh = ops.host_mesh() if op.kind == "sharded" else None
    inputs = ops.make_inputs(op, shape, "float32", mesh)
    values, grads = {}, {}
    for impl in op.impls:
        if impl.name == "lossax+opts":  # different options: checked separately below
            continue
        try:
            f = impl.build()
        except ops.Unavailable:
            continue
        args = jax.jit(impl.prepare)(*inputs) if impl.prepare else inputs
        out = jax.jit(f)(*args)
        values[impl.name] = float(jnp.sum(out.astype(jnp.float32)))
        _, g = jax.jit(ops.mode_fn(op, f, "fwd_bwd"))(*args)
        if impl.name == "jax-cce":  # weights given transposed
            g = (g[0], g[1].T)
        grads[impl.name] = [np.asarray(a, np.float64) for a in g]
    ref = "naive" if "naive" in values else op.baseline
    if ref not in values:
        pytest.skip(f"{ref} is not available")
    assert len(values) >= 2, values
    for impl, val in values.items():
        np.testing.assert_allclose(val, values[ref], rtol=2e-5, err_msg=impl)
        for a, b in zip(grads[impl], grads[ref], strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=impl)


def test_lossax_opts_marks_labels_ignored():
    op = ops.OPS["ce_int"]
    logits, labels = ops.make_inputs(op, Shape("t", 2000, 8), "float32")
    _, y = op.impl("lossax+opts").prepare(logits, labels)
    frac = float(jnp.mean(y == ops.IGNORE_INDEX))
    assert 0.07 < frac < 0.13
    np.testing.assert_array_equal(np.where(y == ops.IGNORE_INDEX, labels, y), labels)
    loss = jax.jit(op.impl("lossax+opts").build())(logits, y)
    assert np.all(np.asarray(loss)[np.asarray(y) == ops.IGNORE_INDEX] == 0)


def test_generated_inputs_are_in_range():
    labels = ops.make_inputs(ops.OPS["ce_int"], Shape("t", 4096, 7), "bfloat16")[1]
    assert labels.dtype == jnp.int32
    assert int(labels.min()) == 0
    assert int(labels.max()) == 6
    x, t = ops.make_inputs(ops.OPS["ce_dense"], Shape("t", 5, 300), "float32")
    np.testing.assert_allclose(np.asarray(t).sum(-1), 1.0, rtol=1e-5)
    assert -4.0 <= float(x.min())
    assert float(x.max()) < 4.0
    assert float(x.std()) > 1.0
    x, t = ops.make_inputs(ops.OPS["hinge"], Shape("t", 8, 64), "float32")
    assert set(np.unique(np.asarray(t)).tolist()) == {-1.0, 1.0}


def test_missing_lossax_function_is_skipped(monkeypatch):
    monkeypatch.delattr(lossax, "hinge_loss")
    op = ops.OPS["hinge"]
    shape = Shape("t", 4, 8)
    recs = harness.run_case(op, shape, "float32", "fwd", ["lossax", "optax"],
                            ops.make_inputs(op, shape, "float32"),
                            harness.Settings(min_runs=2, min_time=0.0))
    by = {r["impl"]: r for r in recs}
    assert by["lossax"]["status"] == "skipped"
    assert "lossax.hinge_loss" in by["lossax"]["reason"]
    assert by["optax"]["status"] == "ok"
    assert by["optax"]["runs"] >= 2


def test_compile_only_case_allocates_nothing():
    op = ops.OPS["ce_int"]
    shape = Shape("t", 1 << 16, 1 << 15)  # 8 GiB of logits: never materialised
    inputs = ops.abstract_inputs(op, shape, "float32")
    recs = harness.run_case(op, shape, "float32", "fwd", ["optax"], inputs,
                            harness.Settings(), timed=False)
    mem = recs[0]["memory"]
    assert recs[0]["status"] == "memory-only"
    assert mem["argument_bytes"] >= 4 * shape.elements
    assert mem["peak_bytes"] == (mem["temp_bytes"] + mem["argument_bytes"]
                                 + mem["output_bytes"] - mem["alias_bytes"])


# --------------------------------------------------------------------------------------
# Bookkeeping: interleaving, ratios, floors, headline.
# --------------------------------------------------------------------------------------


def test_time_interleaved_takes_turns():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = harness.time_interleaved(calls, harness.Settings(min_runs=3, min_time=0.0))
    assert len(times["a"]) == 3
    assert len(times["b"]) == 3
    assert order == ["a", "b", "b", "a", "a", "b"]  # A B, B A, A B


def test_add_ratios_and_summary():
    s = harness.summarize([0.001, 0.003, 0.002, 0.004])
    assert s["runs"] == 4
    assert s["median_ms"] == pytest.approx(2.5)
    assert s["spread_pct"] == pytest.approx(100 * (3.25 - 1.75) / 2.5)
    recs = [{"impl": "optax", "median_ms": 4.0, "memory": {"temp_bytes": 100}},
            {"impl": "lossax", "median_ms": 1.0, "memory": {"temp_bytes": 25}}]
    harness.add_ratios(recs, "optax")
    assert recs[1]["x_baseline"] == pytest.approx(0.25)
    assert recs[1]["ratios"] == {"optax": pytest.approx(0.25)}
    assert recs[1]["temp_x_baseline"] == pytest.approx(0.25)
    assert recs[0]["x_baseline"] == 1.0


def test_floor_model():
    fl = {"bytes": 10**6, "read_ms": 2.0, "copy_ms": 5.0, "exp_sum_ms": 3.0,
          "exp_write_ms": 6.0}
    r = {"mode": "fwd_bwd", "median_ms": 14.0}
    floor.apply(r, ops.OPS["ce_int"], fl, device_peak_gbps=1.0)
    # 2 reads + 1 write = read + copy; exp: exp_sum + exp_write; 3 MB in 14 ms.
    assert r["floor_ms"] == 7.0
    assert r["x_floor"] == 2.0
    assert r["exp_floor_ms"] == 9.0
    assert r["x_exp_floor"] == pytest.approx(14 / 9)
    assert r["ideal_bytes"] == 3 * 10**6
    assert r["achieved_gbps"] == pytest.approx(3e6 / 14e-3 / 1e9)
    assert r["pct_peak_bw"] == pytest.approx(100 * r["achieved_gbps"])
    r = {"mode": "fwd", "median_ms": 4.0}
    floor.apply(r, ops.OPS["ce_int"], fl, None)
    assert r["floor_ms"] == 2.0
    assert r["exp_floor_ms"] == 3.0
    assert r["pct_peak_bw"] is None
    r = {"mode": "fwd_bwd", "median_ms": 30.0}
    floor.apply(r, ops.OPS["fused_ce"], {"bytes": 1, "matmul_ms": 5.0, "matmul_flops": 10**9},
                None)
    assert r["floor_ms"] == 15.0
    assert r["x_floor"] == 2.0
    assert r["ideal_flops"] == 3 * 10**9
    assert floor.peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert floor.peak_gbps("NVIDIA H200") == 4800.0
    assert floor.peak_gbps("cpu") is None


def test_floor_measure_runs():
    op = ops.OPS["ce_int"]
    inputs = ops.make_inputs(op, Shape("t", 64, 256), "bfloat16")
    fl = floor.measure(op, inputs, harness.Settings(min_runs=2, min_time=0.0))
    assert fl["bytes"] == 64 * 256 * 2
    for k in ("read_ms", "copy_ms", "exp_sum_ms", "exp_write_ms", "read_gbps"):
        assert fl[k] > 0


def _rec(op, impl, mode, n, v, dtype, median, temp, d=None):
    return {"op": op, "impl": impl, "mode": mode, "dtype": dtype, "median_ms": median,
            "shape": {"n": n, "v": v, "d": d}, "status": "ok",
            "memory": {"temp_bytes": temp, "peak_bytes": temp}}


def test_headline_evaluate():
    recs = [_rec("ce_int", "lossax", "fwd", 2048, 131072, "float32", 3.0, 10),
            _rec("ce_int", "optax", "fwd", 2048, 131072, "float32", 10.0, 20),
            _rec("ce_int", "lossax", "fwd_bwd", 4096, 32768, "float32", 5.0, 30),
            _rec("ce_int", "optax", "fwd_bwd", 4096, 32768, "float32", 4.0, 20)]
    harness.add_ratios(recs[:2], "optax")
    harness.add_ratios(recs[2:], "optax")
    rows = {h["key"]: h for h in headline.evaluate(recs)}
    assert rows["ce-128k-fwd"]["measured"] == pytest.approx(0.3)
    assert rows["ce-128k-fwd"]["status"] == "pass"
    assert rows["ce-128k-fwd"]["pass"] is True
    assert rows["ce-32k-fwd_bwd"]["measured"] == pytest.approx(1.25)
    assert rows["ce-32k-fwd_bwd"]["status"] == "fail"
    assert rows["ce-32k-temp"]["measured"] == pytest.approx(1.5)
    assert rows["ce-32k-temp"]["status"] == "fail"
    assert rows["bce-fwd"]["status"] == "not run"


def test_memory_of_compiled():
    c = jax.jit(lambda x: jnp.exp(x) * 2).lower(jnp.ones((128, 64))).compile()
    mem = harness.memory_of(c)
    assert mem["argument_bytes"] == 128 * 64 * 4
    assert mem["output_bytes"] == 128 * 64 * 4
    assert mem["peak_bytes"] == (mem["temp_bytes"] + mem["argument_bytes"]
                                 + mem["output_bytes"] - mem["alias_bytes"])


# --------------------------------------------------------------------------------------
# Readable output: 100 columns, the plan's estimate, the plot's panels, the summary.
# --------------------------------------------------------------------------------------


def _results(records):
    return {"environment": {"backend": "cpu", "cpu_model": "Test CPU", "cpu_count": 2,
                            "device_kind": "cpu", "device_count": 1,
                            "versions": {"jax": "0.10.2", "optax": "0.2.8"}},
            "total_s": 12.0, "ops": {k: op.title for k, op in ops.OPS.items()},
            "records": records, "headline": headline.evaluate(records),
            "command": "python -m benchmarks", "created": "2026-12-01T00:00:00+00:00"}


def _sweep_records():
    recs = []
    for v in (8192, 32768, 131072, 262144):
        timed = v < 262144
        case = [_rec("ce_int", "lossax", "fwd_bwd", 1024, v, "float32",
                     (1.2 if v < 131072 else 0.9) * v / 1e3 if timed else None, 16384),
                _rec("ce_int", "optax", "fwd_bwd", 1024, v, "float32",
                     v / 1e3 if timed else None, 27000),
                _rec("fused_ce", "lossax", "fwd_bwd", 4096, v, "float32", None, 2**25,
                     d=1024),
                _rec("fused_ce", "materialise+lossax", "fwd_bwd", 4096, v, "float32", None,
                     4096 * v * 4, d=1024)]
        for r in case:
            r["status"] = "ok" if r["median_ms"] else "memory-only"
            r["spread_pct"] = 5.0 if r["median_ms"] else None
        harness.add_ratios(case[:2], "optax")
        harness.add_ratios(case[2:], "materialise+lossax")
        recs += case
    recs.append(_rec("sharded_ce", "lossax", "fwd_bwd", 4096, 131072, "float32", 2005.0,
                     81920))
    recs[-1]["reason"] = None
    harness.add_ratios(recs[-1:], "optax")
    return recs


@pytest.mark.parametrize("use_rich", [False, True], ids=["plain", "rich"])
def test_terminal_tables_fit_100_columns(use_rich):
    if use_rich and not report.HAVE_RICH:
        pytest.skip("rich is not installed")
    res = _results(_sweep_records())
    res["headline"] = [dict(h, status="fail", measured=1.14, detail="354 ms vs 310 ms",
                            threshold=1.05, **{"pass": False})
                       for h in res["headline"]]  # every row shown, the longest texts
    f = io.StringIO()
    report.print_terminal(res, file=f, use_rich=use_rich)
    lines = f.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    text = f.getvalue()
    assert "4096x1024x262144 f32 f+b" in text  # the case, as a heading
    assert "mem only" in text
    assert "x floor: time / the memory-" in text.replace("\n", " ")  # the legend


def test_plan_estimate_and_default_run_time():
    est = [plan.estimate_seconds(c) for c in plan.DEFAULT_PLAN]
    assert all(e > 0 for e in est)
    # The default run must stay near 3 minutes on 2 cores (the model's seconds are those
    # of a 2-core AMD EPYC; a slow machine takes up to twice as long).
    assert sum(est) < 150
    assert max(est) < 25
    big = plan.Case("ce_int", Shape("t", 4096, 32768), "float32", ("fwd_bwd",))
    small = plan.Case("ce_int", Shape("t", 64, 512), "float32", ("fwd_bwd",))
    assert plan.estimate_seconds(big) > 2 * plan.estimate_seconds(small)
    assert plan.estimate_seconds(dataclasses.replace(big, timed=False)) < 3


def test_plan_option_lists_cases_and_runs_nothing(capsys):
    assert cli.main(["--plan", "--ops", "fused_ce"]) == 0
    out = capsys.readouterr().out
    assert "4096x1024x262144" in out
    assert "memory" in out
    assert "cases, about" in out


def test_progress_reports_time_left(capsys):
    p = cli._Progress(4, True, False, weight=40.0)
    p.start("case one")
    p.t0 -= 10  # 10 s spent on a quarter of the estimate: the rest scales likewise
    p.advance(1, 10.0)
    assert p.eta_seconds() == pytest.approx(30.0, rel=0.05)
    p.start("case two")
    err = capsys.readouterr().err
    assert "[1/4] case one" in err
    assert "[2/4] case two" in err
    assert "left" in err


def test_floor_measures_only_what_the_modes_need():
    ce, bce, fused = ops.OPS["ce_int"], ops.OPS["bce"], ops.OPS["fused_ce"]
    assert floor.needed(ce, ("fwd",)) == {"read", "exp_sum"}
    assert floor.needed(ce, ops.MODES) == {"read", "copy", "exp_sum", "exp_write"}
    assert floor.needed(bce, ("fwd",)) == {"read", "copy"}
    assert floor.needed(fused, ("fwd_bwd",)) == {"matmul"}
    r = {"mode": "fwd", "median_ms": 4.0}
    floor.apply(r, ce, {"bytes": 10, "read_ms": 2.0, "exp_sum_ms": 1.0}, None)
    assert r["x_floor"] == 2.0
    assert r["x_exp_floor"] == 4.0


def test_plot_shows_temporaries_and_time_ratio(tmp_path):
    pytest.importorskip("matplotlib")
    recs = _sweep_records()
    panels = report._panels(report.sweep_groups(recs))
    # CE: temporaries and time against optax (3 timed V); fused: memory only, one panel.
    assert panels == [("temp", ("ce_int", "float32", "fwd_bwd", 1024, None)),
                      ("time", ("ce_int", "float32", "fwd_bwd", 1024, None)),
                      ("temp", ("fused_ce", "float32", "fwd_bwd", 4096, 1024))]
    assert report.plot(recs, tmp_path / "p.png", "test") is None
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert report.plot(recs[-1:], tmp_path / "q.png", "test") == "no sweep over V in this run"


def test_summary_tables(tmp_path, capsys):
    recs = _sweep_records()
    recs += [_rec("ce_int", "lossax", "fwd", 2048, 131072, "float32", 177.0, 8192),
             _rec("ce_int", "optax", "fwd", 2048, 131072, "float32", 1232.0, 8192)]
    harness.add_ratios(recs[-2:], "optax")
    res = _results(recs)
    table = summary.headline_table(res)
    assert table.splitlines()[0] == "| case (fp32 unless noted) | lossax vs peer | target |"
    assert ("| softmax CE, integer labels, 2048 x 131072, forward | **0.14x** optax "
            "(177 ms vs 1232 ms) | ≤ 0.35x |") in table
    assert len(summary.headline_table(res, every=True).splitlines()) > len(table.splitlines())
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert summary.main([str(path)]) == 0
    assert "**0.14x** optax" in capsys.readouterr().out
    aot = summary.aot_table()  # from the committed aot-*.json, or says there are none
    assert "tpu-v5e" in aot
