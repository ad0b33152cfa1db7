"""Deviceless AOT compiles (``python -m benchmarks --target ...``, ``benchmarks/aot/``).

The HLO cost model is checked on programs compiled for the host CPU and on small
hand-written modules (fast, no plugins).  Tests marked ``aot`` compile for TPU v5e and
H100 and need the ``aot`` extra (libtpu and the CUDA plugin); without it they skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from benchmarks import aot, cli
from benchmarks.aot import cases, hlo_cost, report, run, targets
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAVE_TPU = _have("libtpu")
HAVE_CUDA = _have("jax_plugins.xla_cuda12")


def _cost(f, *args, **jit_kw) -> dict:
    return hlo_cost.analyze(jax.jit(f, **jit_kw).lower(*args).compile().as_text())


def _matmuls(k: int):
    def f(a, b):
        return jax.lax.fori_loop(0, k, lambda i, c: jnp.tanh(c @ b), a)

    return f


# --------------------------------------------------------------------------------------
# The cost model on CPU-compiled programs.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_fori_loop_of_k_matmuls_counts_k_times(k):
    x = jax.ShapeDtypeStruct((128, 128), jnp.float32)
    one = 2 * 128**3
    text = jax.jit(_matmuls(k)).lower(x, x).compile().as_text()
    res = hlo_cost.analyze(text)
    assert res["flops"] == k * one
    # Without XLA's known_trip_count the count is read from the loop condition.
    stripped = re.sub(r'"known_trip_count":\{[^}]*\},?', "", text)
    res2 = hlo_cost.analyze(stripped)
    assert res2["flops"] == k * one
    assert all(lp["trip_count"] == k for lp in res2["loops"])
    if k > 1:
        assert res2["loops"]
        assert res2["loops"][0]["source"] == "condition"


def test_dynamic_update_slice_in_a_loop_counts_the_update():
    rows, cols = 16, 4096

    def f(buf, src):
        def body(i, b):
            return jax.lax.dynamic_update_slice(b, jnp.sin(src[i])[None], (i, 0))

        return jax.lax.fori_loop(0, rows, body, buf)

    x = jax.ShapeDtypeStruct((rows, cols), jnp.float32)
    res = _cost(f, x, x, donate_argnums=0)
    row = cols * 4
    # Each trip reads one row of src and writes one row of buf: 2 * rows * row bytes,
    # where charging the whole buffer would give rows * (2 * rows * row).
    assert 2 * rows * row <= res["bytes"] < 3 * rows * row


def test_collectives_counted_per_execution_and_statically():
    mesh = jax.make_mesh((8,), ("d",))
    k = 6

    def body(x):
        return jax.lax.fori_loop(0, k, lambda i, c: c + jnp.tanh(jax.lax.psum(c, "d")), x)

    f = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d"))
    x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P("d")))
    coll = _cost(f, x)["collectives"]
    assert coll["static"] == {"all-reduce": 1}
    assert coll["dynamic"] == {"all-reduce": k}
    assert coll["bytes"]["all-reduce"] == k * 8 * 128 * 4


def test_loop_free_dot_flops_match_xla():
    a = jax.ShapeDtypeStruct((64, 96), jnp.float32)
    b = jax.ShapeDtypeStruct((96, 32), jnp.float32)
    compiled = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
    res = hlo_cost.analyze(compiled.as_text())
    assert res["flops"] == 2 * 64 * 96 * 32
    xla = hlo_cost.xla_cost(compiled)["flops"]
    assert xla is None or abs(res["flops"] - xla) <= 0.05 * xla


# --------------------------------------------------------------------------------------
# The cost model on hand-written HLO.
# --------------------------------------------------------------------------------------

_LOOP = """\
HloModule m

%body (p: (s32[], f32[64,64])) -> (s32[], f32[64,64]) {
  %p = (s32[], f32[64,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %step = s32[] constant(2)
  %next = s32[] add(%i, %step)
  %x = f32[64,64]{1,0} get-tuple-element(%p), index=1
  %d = f32[64,64]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[64,64]{1,0}) tuple(%next, %d)
}

%cond (q: (s32[], f32[64,64])) -> pred[] {
  %q = (s32[], f32[64,64]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(BOUND)
  ROOT %c = pred[] compare(COMPARE), direction=DIR
}

ENTRY %main (a: f32[64,64]) -> f32[64,64] {
  %a = f32[64,64]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[64,64]{1,0}) tuple(%zero, %a)
  %w = (s32[], f32[64,64]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[64,64]{1,0} get-tuple-element(%w), index=1
}
"""


@pytest.mark.parametrize(("bound", "compare", "direction", "trips"), [
    (10, "%j, %n", "LT", 5),
    (9, "%j, %n", "LE", 5),
    (10, "%n, %j", "GT", 5),
    (11, "%j, %n", "LT", 6),
])
def test_trip_count_from_the_condition(bound, compare, direction, trips):
    text = (_LOOP.replace("BOUND", str(bound)).replace("COMPARE", compare)
            .replace("DIR", direction))
    res = hlo_cost.analyze(text)
    assert res["loops"] == [{"while": "w", "body": "body", "trip_count": trips,
                             "source": "condition"}]
    assert res["flops"] == trips * 2 * 64**3


def test_known_trip_count_wins_and_unknown_counts_once():
    text = _LOOP.replace("BOUND", "10").replace("COMPARE", "%j, %n").replace("DIR", "LT")
    known = text.replace("body=%body", 'body=%body, backend_config={"known_trip_count":'
                         '{"n":"12"}}')
    assert hlo_cost.analyze(known)["loops"][0]["trip_count"] == 12
    unknown = text.replace("ROOT %c = pred[] compare(%j, %n)",
                           "ROOT %c = pred[] compare(%j, %j)")
    res = hlo_cost.analyze(unknown)
    assert res["loops"][0]["trip_count"] is None
    assert res["flops"] == 2 * 64**3


_FUSIONS = """\
HloModule m

%dus (buf: f32[1024,4096], upd: f32[1,4096], i: s32[]) -> f32[1024,4096] {
  %buf = f32[1024,4096]{1,0} parameter(0)
  %upd = f32[1,4096]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %r = f32[1024,4096]{1,0} dynamic-update-slice(%buf, %upd, %i, %z)
}

%take (src: f32[1024,4096], i.1: s32[]) -> f32[1,4096] {
  %src = f32[1024,4096]{1,0} parameter(0)
  %i.1 = s32[] parameter(1)
  %z.1 = s32[] constant(0)
  %s = f32[1,4096]{1,0} dynamic-slice(%src, %i.1, %z.1), dynamic_slice_sizes={1,4096}
  ROOT %e = f32[1,4096]{1,0} exponential(%s)
}

%bdot (x: f32[64,64]) -> f32[64,64] {
  %x = f32[64,64]{1,0} parameter(0)
  ROOT %d = f32[64,64]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%bcopy (y: f32[64,64]) -> f32[64,64] {
  %y = f32[64,64]{1,0} parameter(0)
  ROOT %c = f32[64,64]{1,0} copy(%y)
}

ENTRY %main (a: f32[1024,4096], b: f32[1024,4096], k: s32[], p: pred[]) -> f32[1024,4096] {
  %a = f32[1024,4096]{1,0} parameter(0)
  %b = f32[1024,4096]{1,0} parameter(1)
  %k = s32[] parameter(2)
  %p = pred[] parameter(3)
  %m = f32[64,64]{1,0} parameter(4)
  %row = f32[1,4096]{1,0} fusion(%b, %k), kind=kLoop, calls=%take
  %out = f32[1024,4096]{1,0} fusion(%a, %row, %k), kind=kLoop, calls=%dus
  %cnd = f32[64,64]{1,0} conditional(%p, %m, %m), true_computation=%bdot, false_computation=%bcopy
  %v = f32[256]{0:S(1)} iota(), iota_dimension=0
  ROOT %t = (f32[1024,4096]{1,0}, f32[64,64]{1,0}, f32[256]{0:S(1)}) tuple(%out, %cnd, %v)
}
"""


def test_fusions_charge_the_slices_and_updates_they_touch():
    res = hlo_cost.analyze(_FUSIONS)
    row = 4096 * 4
    # take: a row read + a row written; dus: the update read and written in place
    # (+ scalars); conditional: the dearer branch (the dot's 2 reads + 1 write).
    assert res["bytes"] == pytest.approx(4 * row + 3 * 64 * 64 * 4, abs=64)
    assert res["flops"] == 2 * 64**3
    assert res["onchip_bytes"] == 256 * 4  # the iota written to S(1)


def test_parse_shape_reads_tuples_layouts_and_memory_spaces():
    leaves = hlo_cost.parse_shape(
        "(s32[]{:T(128)}, bf16[8,128]{1,0:T(8,128)(2,1)S(1)}, /*index=2*/f32[3]{0}, s4[4])")
    assert [(x.dtype, x.dims, x.memory_space) for x in leaves] == [
        ("s32", (), 0), ("bf16", (8, 128), 1), ("f32", (3,), 0), ("s4", (4,), 0)]
    assert [x.nbytes for x in leaves] == [4, 2048, 12, 2]


# --------------------------------------------------------------------------------------
# The command line, the cases, the targets, the report.
# --------------------------------------------------------------------------------------


def test_cli_parses_target_and_devices():
    args = cli.parse_args(["--target", "tpu-v5e", "--devices", "4", "--case-timeout", "30"])
    assert (args.target, args.devices, args.case_timeout) == ("tpu-v5e", 4, 30.0)
    args = cli.parse_args([])
    assert (args.target, args.devices) == (None, 1)


def test_cli_rejects_unknown_target(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--target", "tpu-v9"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_reports_bad_options_for_target(capsys):
    assert cli.main(["--target", "h100", "--impls", "nope", "--no-table"]) == 2
    assert "unknown implementation" in capsys.readouterr().err


@pytest.mark.parametrize(("devices", "n_cases", "layouts"), [
    (1, 8 + 12, {"single"}), (4, 8 + 24, {"dp", "fsdp"}),
])
def test_default_suite(devices, n_cases, layouts):
    args = cli.parse_args(["--target", "h100", "--devices", str(devices)])
    sel = aot.select(args)
    assert len(sel) == n_cases == len({c.key for c in sel})
    assert {c.layout for c in sel} == layouts
    assert {(c.n, c.v) for c in sel} == {(8192, 131072)}
    assert {c.d for c in sel if c.op == "linear_ce"} == {4096}
    assert {c.dtype for c in sel if c.op == "ce_int"} == {"bfloat16", "float32"}
    assert aot.output_name("h100", devices) == ("aot-h100" if devices == 1
                                                 else "aot-h100-4dev")


def test_suite_narrowed_by_options():
    args = cli.parse_args(["--target", "tpu-v5e", "--ops", "linear_ce", "--impls", "lossax",
                           "--shapes", "512x256x4096,64x128", "--modes", "fwd"])
    assert [c.key for c in aot.select(args)] == [
        "linear_ce/lossax/fwd/single/bfloat16/512x256x4096"]


def test_targets_table():
    assert set(targets.TARGETS) == {"tpu-v5e", "tpu-v6e", "tpu-v5p", "tpu-v4", "h100"}
    h100 = targets.get("h100")
    assert (h100.bf16_tflops, h100.hbm_gbps) == (989.0, 3350.0)
    assert h100.peak_flops("bf16") == 989e12
    assert h100.peak_flops("f32-highest") == 67e12
    v5e = targets.get("tpu-v5e")
    assert v5e.peak_flops("f32") == v5e.peak_flops("bf16") == 197e12
    assert targets.get("tpu-v4").per_device()["bf16_tflops"] == 137.5
    assert targets.H100_CONFIG.read_text().startswith("gpu_device_info")
    with pytest.raises(ValueError, match="unknown target"):
        targets.get("tpu-v9")


def test_report_table_fits_100_columns(tmp_path, capsys):
    case = cases.AotCase("linear_ce", "lossax-none", "fwd_bwd", "fsdp", "bfloat16",
                         8192, 131072, 4096)
    rec = {**case.as_dict(), "key": case.key, "shape": case.shape_label, "status": "ok",
           "reason": None, "compile_s": 12.3,
           "memory": {"temp_bytes": 2**31, "peak_bytes": 3 * 2**30},
           "cost": {"flops": 3.5e13, "bytes": 2.4e10, "flops_by_dtype": {"bf16": 3.5e13},
                    "collectives": {"dynamic": {"all-gather": 128}, "static": {
                        "all-gather": 2}, "bytes": {"all-gather": 1e9}},
                    "loops": [{"body": "b", "trip_count": None}],
                    "opaque_custom_calls": ["__gpu$xla.gpu.triton"]},
           "passes": 11.2, "matmuls": 4.0, "roofline": {"ms": 178.6}, "fits_hbm": True}
    timeout = {**rec, "impl": "lossax", "status": "timeout", "reason": "did not compile"}
    for k in ("memory", "cost", "passes", "matmuls", "roofline", "fits_hbm"):
        timeout.pop(k)
    results = {"target": targets.get("tpu-v4").as_dict(), "devices": 4,
               "target_info": {"device_kind": "TPU v4"}, "command": "python -m benchmarks",
               "created": "now", "total_s": 1.0, "records": [rec, timeout],
               "environment": {"cpu_model": "cpu", "cpu_count": 2,
                               "versions": {"jax": jax.__version__}}}
    report.print_table(results)
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith(("impl", "lossax"))]
    assert table
    assert max(map(len, table)) <= 100
    assert "timeout" in out
    assert "trip count unknown" in out
    report.write_markdown(results, tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "all-gather 128x (2 in HLO" in md
    assert "did not compile" in md


@pytest.mark.skipif(HAVE_TPU, reason="checks the run without libtpu")
def test_missing_plugin_gives_skipped_records():
    case = cases.AotCase("ce_int", "optax", "fwd", "single", "float32", 8, 16)
    records, _ = run.run_target("tpu-v5e", 1, [case], case_timeout=60)
    assert [r["status"] for r in records] == ["skipped"]
    assert "target unavailable" in records[0]["reason"]


# --------------------------------------------------------------------------------------
# Compiles for the targets (the aot extra).
# --------------------------------------------------------------------------------------

_SMALL = dict(n=512, v=4096)
_D = 256


def _needs(target: str):
    if target.startswith("tpu") and not HAVE_TPU:
        pytest.skip("libtpu is not installed (pip install -e '.[aot]')")
    if target == "h100" and not HAVE_CUDA:
        pytest.skip("jax-cuda12-plugin is not installed (pip install -e '.[aot]')")


@pytest.mark.aot
@pytest.mark.parametrize("target", ["tpu-v5e", "h100"])
def test_small_cases_compile_for_target(target):
    _needs(target)
    sel = [
        cases.AotCase("ce_int", "optax", "fwd_bwd", "single", "bfloat16", **_SMALL),
        cases.AotCase("ce_int", "lossax", "fwd_bwd", "single", "float32", **_SMALL),
        cases.AotCase("linear_ce", "optax-x@W", "fwd", "single", "bfloat16", **_SMALL, d=_D),
        cases.AotCase("linear_ce", "lossax", "fwd_bwd", "single", "bfloat16", **_SMALL,
                      d=_D),
    ]
    records, info = run.run_target(target, 1, sel, case_timeout=120)
    by = {"/".join((r["op"], r["impl"], r["mode"])): r for r in records}
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("reason") for r in records]
    assert info["target_info"]["platform"] == ("tpu" if target.startswith("tpu") else "gpu")
    for r in records:
        assert 0 < r["compile_s"] < 60
        assert r["memory"]["peak_bytes"] > 0
        assert r["fits_hbm"]
        assert r["roofline"]["ms"] > 0
        assert all(lp["trip_count"] is not None for lp in r["cost"]["loops"])
        assert r["cost"]["collectives"]["dynamic"] == {}
    for key in ("ce_int/optax/fwd_bwd", "ce_int/lossax/fwd_bwd"):  # logits read, grad written
        assert 2 <= by[key]["passes"] <= 6
    ref = by["linear_ce/optax-x@W/fwd"]
    assert ref["matmuls"] == pytest.approx(1.0, abs=0.01)
    if target.startswith("tpu"):  # loop-free: agrees with XLA's cost analysis
        assert ref["cost"]["flops"] == pytest.approx(ref["xla_cost"]["flops"], rel=0.05)
    else:
        assert ref["xla_cost"]["flops"] is None  # the CUDA plugin has no cost analysis
    assert 3 <= by["linear_ce/lossax/fwd_bwd"]["matmuls"] <= 5


@pytest.mark.aot
@pytest.mark.parametrize("target", ["tpu-v5e", "h100"])
def test_loops_scale_with_trip_count_on_target(target):
    _needs(target)
    script = f"""
import json, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from benchmarks.aot import hlo_cost, targets
mesh = targets.mesh(targets.get({target!r}), 1)
s = NamedSharding(mesh, P())
x = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16, sharding=s)
out = {{}}
for k in (1, 6):
    f = lambda a, b, k=k: jax.lax.fori_loop(0, k, lambda i, c: jnp.tanh(c @ b), a)
    c = jax.jit(f).lower(x, x).compile()
    out[k] = hlo_cost.analyze(c.as_text())["flops"]
c = jax.jit(lambda a, b: jnp.tanh(a @ b) @ b).lower(x, x).compile()
out["free"] = [hlo_cost.analyze(c.as_text())["flops"], hlo_cost.xla_cost(c)["flops"]]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=run.worker_env(),
                          cwd=run.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one = 2 * 256**3
    assert out["1"] == one
    assert out["6"] == 6 * one
    model, xla = out["free"]
    assert model == 2 * one
    if xla is not None:
        assert model == pytest.approx(xla, rel=0.05)


@pytest.mark.aot
@pytest.mark.parametrize("target", ["tpu-v5e", "h100"])
def test_four_devices_report_collectives(target):
    _needs(target)
    sel = [cases.AotCase("linear_ce", impl, "fwd_bwd", layout, "bfloat16", **_SMALL, d=_D)
           for impl, layout in (("optax-x@W", "dp"), ("optax-x@W", "fsdp"))]
    records, _ = run.run_target(target, 4, sel, case_timeout=120)
    assert [r["status"] for r in records] == ["ok", "ok"], [r.get("reason") for r in records]
    dp, fsdp = records
    for r in records:  # per device: a quarter of the rows, three matmuls' worth
        assert r["matmuls"] == pytest.approx(3.0, rel=0.05)
        dyn = r["cost"]["collectives"]["dynamic"]
        assert sum(dyn.values()) >= sum(r["cost"]["collectives"]["static"].values()) > 0
    # FSDP gathers W (or scatters its gradient); data parallel only reduces.
    assert {"all-gather", "reduce-scatter"} & set(fsdp["cost"]["collectives"]["dynamic"])
    assert fsdp["memory"]["argument_bytes"] < dp["memory"]["argument_bytes"]


@pytest.mark.aot
def test_a_case_past_its_time_limit_is_recorded_and_the_rest_go_on():
    _needs("h100")
    sel = [cases.AotCase("ce_int", "optax", "fwd_bwd", "single", "float32", **_SMALL),
           cases.AotCase("ce_int", "optax", "fwd", "single", "float32", **_SMALL)]
    records, info = run.run_target("h100", 1, sel, case_timeout=0.01)
    assert [r["status"] for r in records] == ["timeout", "timeout"]
    assert "did not compile within" in records[0]["reason"]
    assert info["workers"] == 2  # a fresh worker after each kill
