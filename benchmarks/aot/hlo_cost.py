"""A loop-aware cost model over optimized HLO text (``compiled.as_text()``).

XLA's own ``cost_analysis()`` counts a while body once, whatever its trip count, and the
CUDA plugin does not answer it at all.  This model walks the scheduled module from
``ENTRY``: a while loop costs its trip count times its body (and condition), a
conditional its dearest branch, a call its callee.  Each top-level instruction of a
walked computation is charged

- flops: ``2 * prod(output dims) * prod(contracting dims)`` for every dot and
  convolution, also those inside fusions (and cuBLAS gemm custom-calls); element-wise
  work is not counted (it is memory-bound, the bytes speak for it);
- bytes: its operands plus its result, except that nothing is charged for what only
  names or aliases a buffer (parameter, constant, tuple, get-tuple-element, bitcast,
  the ``*-done`` half of async copies, ...); a slice, dynamic slice or gather (also a
  fusion operand read only through one) is charged the part it reads; an in-place
  dynamic-update-slice (also as a fusion root) the update, not the whole buffer.

Bytes are split by memory space: ``bytes`` is the default space (HBM), ``onchip_bytes``
every annotated one (``S(1)``: TPU VMEM, host memory, ...).  Collectives (all-gather,
all-reduce, reduce-scatter, all-to-all, collective-permute, ...) are counted per
execution (times trip counts) and statically (each instruction once).

Trip counts: the ``known_trip_count`` that XLA:GPU writes into a while's backend config,
otherwise read from the loop: the condition compares the induction variable (a tuple
element that the body advances by a constant) with a bound (a constant, or a tuple
element the body passes through unchanged), both starting values read from the tuple
the while is given.  A loop whose count cannot be read is counted once and listed with
``trip_count: None`` under ``loops``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Any

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute", "ragged-all-to-all", "collective-broadcast")

# Instructions that move no data of their own.
_FREE = frozenset({
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
    "add-dependency", "partition-id", "replica-id", "opt-barrier", "domain",
    "async-done", "async-update", "while", "conditional", "call",
})
# Custom-calls that only allocate or annotate.
_FREE_CUSTOM_CALLS = frozenset({
    "AllocateBuffer", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
    "LayoutConstraint", "annotate_device_placement", "X64Combine", "X64SplitLow",
    "X64SplitHigh", "ConcatBitcast",  # XLA:TPU: slices laid out side by side, no copy
})

_ITEMSIZE = {"pred": 1, "token": 0, "bf16": 2, "c64": 8, "c128": 16, "opaque": 0}

_SHAPE_LEAF = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_NAME = re.compile(r"%([\w.\-]+)")


def itemsize(dtype: str) -> float:
    """Bytes per element of an HLO element type (``f32`` 4, ``s4`` 0.5, ``pred`` 1)."""
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    m = re.match(r"^[a-z]+?(\d+)", dtype)
    return int(m.group(1)) / 8 if m else 0


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One array of a (possibly tuple) shape."""

    dtype: str
    dims: tuple[int, ...]
    memory_space: int = 0

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> float:
        return self.elements * itemsize(self.dtype)


def parse_shape(text: str) -> list[Leaf]:
    """The array leaves of an HLO shape such as ``(f32[8,128]{1,0:T(8,128)S(1)}, s32[])``."""
    leaves = []
    for dtype, dims, layout in _SHAPE_LEAF.findall(text):
        d = tuple(int(x.lstrip("<=")) for x in dims.split(",") if x.strip())
        ms = re.search(r"S\((\d+)\)", layout or "")
        leaves.append(Leaf(dtype, d, int(ms.group(1)) if ms else 0))
    return leaves


def _closing(text: str, start: int) -> int:
    """The index of the bracket closing the one at ``text[start]``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    depth, quote = 0, False
    for i in range(start, len(text)):
        c = text[i]
        if c == '"' and text[i - 1] != "\\":
            quote = not quote
        if quote:
            continue
        if c in pairs:
            depth += 1
        elif c in ")}]":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


@dataclasses.dataclass
class Instr:
    name: str
    shape: list[Leaf]
    opcode: str
    operands: list[str]
    operand_text: str
    attrs: str
    root: bool = False

    def attr(self, key: str) -> str | None:
        """The value of ``key=value`` among the attributes (braces kept), or None."""
        m = re.search(r"(?:^|[,\s])" + re.escape(key) + r"=", self.attrs)
        if not m:
            return None
        i = m.end()
        if i < len(self.attrs) and self.attrs[i] in "{[(":
            return self.attrs[i:_closing(self.attrs, i) + 1]
        if i < len(self.attrs) and self.attrs[i] == '"':
            j = self.attrs.index('"', i + 1)
            return self.attrs[i + 1:j]
        m2 = re.match(r"[^,\s]+", self.attrs[i:])
        return m2.group(0) if m2 else ""

    def called(self, key: str) -> list[str]:
        v = self.attr(key)
        return _NAME.findall(v) if v else []

    @property
    def nbytes(self) -> float:
        return sum(leaf.nbytes for leaf in self.shape)


@dataclasses.dataclass
class Computation:
    name: str
    instrs: dict[str, Instr]
    order: list[str]
    entry: bool = False

    @property
    def root(self) -> Instr:
        for n in reversed(self.order):
            if self.instrs[n].root:
                return self.instrs[n]
        return self.instrs[self.order[-1]]

    def param(self, number: int) -> Instr | None:
        for i in self.instrs.values():
            if i.opcode == "parameter" and i.operand_text.strip() == str(number):
                return i
        return None

    def users(self, name: str) -> list[Instr]:
        return [i for i in self.instrs.values() if name in i.operands]


def _parse_instr(line: str) -> Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    root, name, rest = bool(m.group(1)), m.group(2).lstrip("%"), m.group(3)
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        shape_text, _, rest = rest.partition(" ")
    mo = re.match(r"([\w\-]+)\(", rest)
    if not mo:
        return None
    opcode = mo.group(1)
    close = _closing(rest, mo.end() - 1)
    operand_text = rest[mo.end():close]
    attrs = rest[close + 1:]
    operands = [] if opcode == "constant" else _NAME.findall(operand_text)
    return Instr(name, parse_shape(shape_text), opcode, operands, operand_text, attrs, root)


def parse_module(text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text, by name."""
    comps: dict[str, Computation] = {}
    cur: Computation | None = None
    for line in text.splitlines():
        if cur is None:
            m = _HEADER.match(line)
            if m and not line.startswith((" ", "\t")):
                cur = Computation(m.group(2).lstrip("%"), {}, [], entry=bool(m.group(1)))
            continue
        if line.startswith("}"):
            comps[cur.name] = cur
            cur = None
            continue
        ins = _parse_instr(line)
        if ins is not None:
            cur.instrs[ins.name] = ins
            cur.order.append(ins.name)
    return comps


# --------------------------------------------------------------------------------------
# Costs.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cost:
    flops: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    bytes: float = 0.0
    onchip_bytes: float = 0.0
    collectives: dict[str, float] = dataclasses.field(
        default_factory=lambda: defaultdict(float))
    collective_bytes: dict[str, float] = dataclasses.field(
        default_factory=lambda: defaultdict(float))

    def add(self, other: Cost, times: float = 1.0) -> None:
        for k, v in other.flops.items():
            self.flops[k] += v * times
        self.bytes += other.bytes * times
        self.onchip_bytes += other.onchip_bytes * times
        for k, v in other.collectives.items():
            self.collectives[k] += v * times
        for k, v in other.collective_bytes.items():
            self.collective_bytes[k] += v * times

    def charge(self, leaves: list[Leaf], factor: float = 1.0) -> None:
        for leaf in leaves:
            self.charge_bytes(leaf.nbytes * factor, leaf.memory_space)

    def charge_bytes(self, nbytes: float, memory_space: int = 0) -> None:
        if memory_space == 0:
            self.bytes += nbytes
        else:
            self.onchip_bytes += nbytes

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @staticmethod
    def maximum(costs: list[Cost]) -> Cost:
        """Element-wise maximum (a conditional: whichever branch is taken)."""
        out = Cost()
        for c in costs:
            for k, v in c.flops.items():
                out.flops[k] = max(out.flops[k], v)
            out.bytes = max(out.bytes, c.bytes)
            out.onchip_bytes = max(out.onchip_bytes, c.onchip_bytes)
            for k, v in c.collectives.items():
                out.collectives[k] = max(out.collectives[k], v)
            for k, v in c.collective_bytes.items():
                out.collective_bytes[k] = max(out.collective_bytes[k], v)
        return out


def _collective_kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in COLLECTIVES else None


def _dims_attr(instr: Instr, key: str) -> list[int]:
    v = instr.attr(key)
    return [int(x) for x in re.findall(r"\d+", v)] if v else []


def _flop_class(instr: Instr, lhs: Leaf | None) -> str:
    dtype = lhs.dtype if lhs is not None else "?"
    prec = instr.attr("operand_precision") or ""
    if "highest" in prec.lower() and dtype in ("f32", "f64"):
        return f"{dtype}-highest"
    return dtype


class HloCostModel:
    """The loop-aware cost of one optimized HLO module (see the module docstring)."""

    def __init__(self, text: str):
        self.comps = parse_module(text)
        entries = [c for c in self.comps.values() if c.entry]
        if not entries:
            raise ValueError("no ENTRY computation in the HLO text")
        self.entry = entries[0]
        self.loops: list[dict[str, Any]] = []
        self.opaque: set[str] = set()
        self._cache: dict[str, Cost] = {}
        self._flop_cache: dict[str, Cost] = {}

    # -- shapes of operands ------------------------------------------------------------

    def _operand(self, comp: Computation, name: str) -> Instr | None:
        return comp.instrs.get(name)

    def _operand_leaves(self, comp: Computation, name: str) -> list[Leaf]:
        op = self._operand(comp, name)
        return op.shape if op is not None else []

    # -- flops ---------------------------------------------------------------------------

    def _dot_flops(self, comp: Computation, ins: Instr) -> tuple[str, float] | None:
        out = ins.shape[0] if ins.shape else None
        if out is None:
            return None
        if ins.opcode == "dot":
            lhs = self._operand_leaves(comp, ins.operands[0]) if ins.operands else []
            lhs_leaf = lhs[0] if lhs else None
            contract = _dims_attr(ins, "lhs_contracting_dims")
            k = math.prod(lhs_leaf.dims[i] for i in contract) if lhs_leaf else 1
            return _flop_class(ins, lhs_leaf), 2.0 * out.elements * k
        if ins.opcode == "convolution":
            lhs = self._operand_leaves(comp, ins.operands[0])
            rhs = self._operand_leaves(comp, ins.operands[1])
            labels = ins.attr("dim_labels") or ""
            m = re.match(r"[^_]*_([^-]*)->", labels)
            if not rhs or not m:
                return None
            rl = m.group(1)
            k = 1
            for i, ch in enumerate(rl):
                if (ch == "i" or ch.isdigit()) and i < len(rhs[0].dims):
                    k *= rhs[0].dims[i]
            return _flop_class(ins, lhs[0] if lhs else None), 2.0 * out.elements * k
        if ins.opcode == "custom-call":
            target = ins.attr("custom_call_target") or ""
            cfg = ins.attr("backend_config") or ""
            if "gemm" in target or "matmul" in target:
                m = re.search(r'"lhs_contracting_dimensions"\s*:\s*\[([^\]]*)\]', cfg)
                lhs = self._operand_leaves(comp, ins.operands[0]) if ins.operands else []
                if m and lhs:
                    contract = [int(x) for x in re.findall(r"\d+", m.group(1))]
                    k = math.prod(lhs[0].dims[i] for i in contract)
                    return _flop_class(ins, lhs[0]), 2.0 * out.elements * k
            m = re.search(r'"flops"\s*:\s*"?(\d+)', cfg)  # e.g. a Pallas cost estimate
            if m:
                return "custom", float(m.group(1))
        return None

    def _nested_flops(self, comp_name: str) -> Cost:
        """Flops and collectives of a fused (or otherwise nested) computation, once."""
        if comp_name in self._flop_cache:
            return self._flop_cache[comp_name]
        out = Cost()
        comp = self.comps.get(comp_name)
        if comp is not None:
            for n in comp.order:
                ins = comp.instrs[n]
                fl = self._dot_flops(comp, ins)
                if fl is not None:
                    out.flops[fl[0]] += fl[1]
                kind = _collective_kind(ins.opcode)
                if kind:
                    out.collectives[kind] += 1
                    out.collective_bytes[kind] += sum(
                        sum(x.nbytes for x in self._operand_leaves(comp, o))
                        for o in ins.operands)
                for sub in ins.called("calls"):
                    out.add(self._nested_flops(sub))
        self._flop_cache[comp_name] = out
        return out

    # -- bytes of a fusion -------------------------------------------------------------

    def _through_alias(self, comp: Computation, name: str) -> Instr | None:
        ins = comp.instrs.get(name)
        while ins is not None and ins.opcode in ("bitcast", "copy") and ins.operands:
            ins = comp.instrs.get(ins.operands[0])
        return ins

    def _sliced_read(self, comp: Computation, ins: Instr, depth: int = 0) -> float | None:
        """Bytes read of ``ins`` if every use only slices it (through bitcasts), else None."""
        users = comp.users(ins.name)
        if not users or depth > 8:
            return None
        total = 0.0
        for u in users:
            if u.opcode in ("slice", "dynamic-slice"):
                total += u.nbytes
            elif u.opcode == "gather" and u.operands and u.operands[0] == ins.name:
                total += u.nbytes
            elif u.opcode == "bitcast":
                sub = self._sliced_read(comp, u, depth + 1)
                if sub is None:
                    return None
                total += sub
            elif u.opcode == "fusion":  # a nested fusion: how it reads its parameter
                called = u.called("calls")
                nested = self.comps.get(called[0]) if called else None
                if nested is None:
                    return None
                for k, o in enumerate(u.operands):
                    if o != ins.name:
                        continue
                    p = nested.param(k)
                    sub = self._sliced_read(nested, p, depth + 1) if p is not None else None
                    if sub is None:
                        return None
                    total += sub
            elif u.opcode in ("dynamic-update-slice", "scatter") and u.operands[0] == ins.name:
                continue  # the buffer updated in place: not read
            else:
                return None
        return total

    def _in_place_outputs(self, fused: Computation) -> tuple[dict[int, float], set[int]]:
        """For a fusion whose root (or a root tuple element) updates a parameter in place
        (dynamic-update-slice or scatter): {output index: bytes written}, {param numbers}."""
        root = fused.root
        elems = ([fused.instrs.get(o) for o in root.operands] if root.opcode == "tuple"
                 else [root])
        out: dict[int, float] = {}
        params: set[int] = set()
        for idx, e in enumerate(elems):
            e = self._through_alias(fused, e.name) if e is not None else None
            if e is None or e.opcode not in ("dynamic-update-slice", "scatter"):
                continue
            if e.opcode == "dynamic-update-slice":
                buffers, updates = e.operands[:1], e.operands[1:2]
            else:
                k = (len(e.operands) - 1) // 2
                buffers, updates = e.operands[:k], e.operands[k + 1:]
            bufs = [self._through_alias(fused, b) for b in buffers]
            if not bufs or any(b is None or b.opcode != "parameter" for b in bufs):
                continue
            out[idx] = sum(fused.instrs[u].nbytes for u in updates if u in fused.instrs)
            params |= {int(b.operand_text.strip()) for b in bufs}
        return out, params

    def _fusion_cost(self, comp: Computation, ins: Instr) -> Cost:
        cost = Cost()
        called = ins.called("calls")
        fused = self.comps.get(called[0]) if called else None
        if fused is None:
            for o in ins.operands:
                cost.charge(self._operand_leaves(comp, o))
            cost.charge(ins.shape)
            return cost
        cost.add(self._nested_flops(fused.name))
        dus_out, dus_params = self._in_place_outputs(fused)
        for i, o in enumerate(ins.operands):
            if i in dus_params:
                continue
            leaves = self._operand_leaves(comp, o)
            p = fused.param(i)
            read = self._sliced_read(fused, p) if p is not None else None
            if read is not None and leaves:
                full = sum(x.nbytes for x in leaves)
                frac = read / full if full else 0.0
                cost.charge(leaves, min(frac, 1.0))
            else:
                cost.charge(leaves)
        for idx, leaf in enumerate(ins.shape):
            if idx in dus_out:
                frac = dus_out[idx] / leaf.nbytes if leaf.nbytes else 0.0
                cost.charge([leaf], min(frac, 1.0))
            else:
                cost.charge([leaf])
        return cost

    # -- loops ---------------------------------------------------------------------------

    def _through(self, comp: Computation, name: str) -> Instr | None:
        ins = comp.instrs.get(name)
        while ins is not None and ins.opcode in ("copy", "bitcast", "convert") and ins.operands:
            ins = comp.instrs.get(ins.operands[0])
        return ins

    def _resolve(self, comp: Computation, name: str, outer=None, depth: int = 0):
        """``("const", c)`` or ``("idx", i)`` (element ``i`` of the loop's tuple) for a
        scalar: through copies, tuples built in place, and fusion parameters (``outer``:
        the caller and the fusion instruction); None otherwise."""
        ins = self._through(comp, name)
        if ins is None or depth > 16:
            return None
        if ins.opcode == "constant":
            try:
                return ("const", int(float(ins.operand_text.strip())))
            except ValueError:
                return None
        if ins.opcode == "parameter" and outer is not None:
            caller, fusion = outer
            k = int(ins.operand_text.strip())
            if k < len(fusion.operands):
                return self._resolve(caller, fusion.operands[k], None, depth + 1)
            return None
        if ins.opcode == "get-tuple-element":
            src = self._through(comp, ins.operands[0])
            idx = int(ins.attr("index") or -1)
            if src is None:
                return None
            if src.opcode == "parameter" and outer is None:
                return ("idx", idx)
            if src.opcode == "tuple" and 0 <= idx < len(src.operands):
                return self._resolve(comp, src.operands[idx], outer, depth + 1)
        return None

    def _arith(self, comp: Computation, name: str):
        """(instruction, computation, outer) of a scalar op, looking inside a fusion."""
        ins = self._through(comp, name)
        if ins is not None and ins.opcode == "fusion":
            called = ins.called("calls")
            fused = self.comps.get(called[0]) if called else None
            if fused is None:
                return None, comp, None
            return self._through(fused, fused.root.name), fused, (comp, ins)
        return ins, comp, None

    def _compare(self, cond: Computation):
        """(direction, lhs, rhs) of the loop condition, each side ("idx", i) or ("const", c)."""
        cmp, comp, outer = self._arith(cond, cond.root.name)
        if cmp is None or cmp.opcode != "compare" or len(cmp.operands) != 2:
            return None
        return (cmp.attr("direction"), self._resolve(comp, cmp.operands[0], outer),
                self._resolve(comp, cmp.operands[1], outer))

    def _init_value(self, comp: Computation, while_ins: Instr, index: int) -> int | None:
        init = self._through(comp, while_ins.operands[0]) if while_ins.operands else None
        if init is None or init.opcode != "tuple" or index >= len(init.operands):
            return None
        v = self._resolve(comp, init.operands[index])
        return v[1] if v is not None and v[0] == "const" else None

    def _step(self, body: Computation, index: int) -> int | None:
        """The constant the body adds to tuple element ``index``, or None."""
        root = body.root
        if root.opcode != "tuple" or index >= len(root.operands):
            return None
        add, comp, outer = self._arith(body, root.operands[index])
        if add is None or add.opcode not in ("add", "subtract") or len(add.operands) != 2:
            return None
        a, b = (self._resolve(comp, o, outer) for o in add.operands)
        sign = -1 if add.opcode == "subtract" else 1
        if a == ("idx", index) and b is not None and b[0] == "const":
            return sign * b[1]
        if b == ("idx", index) and a is not None and a[0] == "const" and sign == 1:
            return a[1]
        return None

    def trip_count(self, comp: Computation, ins: Instr) -> tuple[int | None, str]:
        cfg = ins.attr("backend_config") or ""
        m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', cfg)
        if m:
            return int(m.group(1)), "known_trip_count"
        cond = self.comps.get((ins.called("condition") or [""])[0])
        body = self.comps.get((ins.called("body") or [""])[0])
        if cond is None or body is None:
            return None, "no condition"
        cmp = self._compare(cond)
        if cmp is None:
            return None, "condition not understood"
        direction, lhs, rhs = cmp
        flip = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE", "NE": "NE", "EQ": "EQ"}
        # Find the induction variable: a tuple element the body steps by a constant.
        sides = [(lhs, rhs, direction), (rhs, lhs, flip.get(direction, direction))]
        for iv, bound, d in sides:
            if iv is None or iv[0] != "idx":
                continue
            step = self._step(body, iv[1])
            if not step:
                continue
            start = self._init_value(comp, ins, iv[1])
            if bound is None:
                continue
            if bound[0] == "const":
                end = bound[1]
            else:  # a loop-invariant tuple element
                if self._step(body, bound[1]) is not None:
                    continue
                end = self._init_value(comp, ins, bound[1])
            if start is None or end is None:
                continue
            if d in ("LT", "GT", "NE"):
                n = math.ceil((end - start) / step)
            elif d in ("LE", "GE"):
                n = math.floor((end - start) / step) + 1
            else:
                continue
            return max(n, 0), "condition"
        return None, "condition not understood"

    # -- walking -------------------------------------------------------------------------

    def _instr_cost(self, comp: Computation, ins: Instr) -> Cost:
        op = ins.opcode
        cost = Cost()
        if op == "fusion":
            return self._fusion_cost(comp, ins)
        if op == "while":
            n, source = self.trip_count(comp, ins)
            body = (ins.called("body") or [""])[0]
            cond = (ins.called("condition") or [""])[0]
            self.loops.append({"while": ins.name, "body": body, "trip_count": n,
                               "source": source})
            times = n if n is not None else 1
            cost.add(self.computation_cost(body), times)
            cost.add(self.computation_cost(cond), times + 1 if n is not None else 1)
            return cost
        if op == "conditional":
            branches = ins.called("branch_computations") or (
                ins.called("true_computation") + ins.called("false_computation"))
            return Cost.maximum([self.computation_cost(b) for b in branches])
        if op in ("call", "async-start"):
            for c in ins.called("to_apply") + ins.called("calls"):
                cost.add(self.computation_cost(c))
            return cost
        if op in _FREE:
            return cost
        kind = _collective_kind(op)
        if kind:
            ob = sum(sum(x.nbytes for x in self._operand_leaves(comp, o)) for o in ins.operands)
            cost.collectives[kind] += 1
            cost.collective_bytes[kind] += ob
        if op in ("slice-start", "dynamic-slice-start"):  # async slice: the part read
            src = self._operand_leaves(comp, ins.operands[0])
            dest = ins.shape[1] if len(ins.shape) > 1 else None
            cost.charge_bytes(dest.nbytes if dest else 0.0, src[0].memory_space if src else 0)
            return cost
        if op.endswith("-start"):  # async: the operands now, the result at its -done
            for o in ins.operands:
                cost.charge(self._operand_leaves(comp, o))
            return cost
        if op.endswith("-done"):
            cost.charge(ins.shape)
            return cost
        fl = self._dot_flops(comp, ins)
        if fl is not None:
            cost.flops[fl[0]] += fl[1]
        if op == "custom-call":
            target = ins.attr("custom_call_target") or ""
            if target in _FREE_CUSTOM_CALLS:
                return cost
            if fl is None:
                self.opaque.add(target)
        if op in ("slice", "dynamic-slice", "gather"):  # the part read, where it lives
            src = self._operand_leaves(comp, ins.operands[0])
            space = src[0].memory_space if src else 0
            cost.charge_bytes(ins.nbytes, space)
            cost.charge(ins.shape)
            if op == "gather":
                cost.charge(self._operand_leaves(comp, ins.operands[1]))
        elif op == "dynamic-update-slice":  # in place: the update read and written
            buf = self._operand_leaves(comp, ins.operands[0])
            upd = self._operand_leaves(comp, ins.operands[1])
            cost.charge(upd)
            cost.charge_bytes(sum(x.nbytes for x in upd), buf[0].memory_space if buf else 0)
        elif op == "scatter":  # in place: the indices and updates read, the updates written
            k = (len(ins.operands) - 1) // 2
            buf = self._operand_leaves(comp, ins.operands[0])
            cost.charge(self._operand_leaves(comp, ins.operands[k]))
            for o in ins.operands[k + 1:]:
                upd = self._operand_leaves(comp, o)
                cost.charge(upd)
                cost.charge_bytes(sum(x.nbytes for x in upd),
                                  buf[0].memory_space if buf else 0)
        else:
            for o in ins.operands:
                cost.charge(self._operand_leaves(comp, o))
            cost.charge(ins.shape)
        return cost

    def computation_cost(self, name: str) -> Cost:
        if name in self._cache:
            return self._cache[name]
        comp = self.comps.get(name)
        total = Cost()
        if comp is not None:
            for n in comp.order:
                total.add(self._instr_cost(comp, comp.instrs[n]))
        self._cache[name] = total
        return total

    def static_collectives(self) -> dict[str, int]:
        """Collective instructions reachable from ENTRY, each counted once."""
        seen: set[str] = set()
        counts: dict[str, int] = defaultdict(int)
        stack = [self.entry.name]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.comps:
                continue
            seen.add(name)
            for ins in self.comps[name].instrs.values():
                kind = _collective_kind(ins.opcode)
                if kind:
                    counts[kind] += 1
                stack += _NAME.findall(" ".join(
                    ins.attr(k) or "" for k in ("calls", "body", "condition",
                                                "branch_computations", "true_computation",
                                                "false_computation")))
                if ins.opcode in ("call", "async-start"):
                    stack += ins.called("to_apply")
        return dict(counts)

    def analyze(self) -> dict[str, Any]:
        self.loops = []
        self._cache.clear()
        cost = self.computation_cost(self.entry.name)
        return {
            "flops": cost.total_flops,
            "flops_by_dtype": {k: v for k, v in sorted(cost.flops.items()) if v},
            "bytes": cost.bytes,
            "onchip_bytes": cost.onchip_bytes,
            "collectives": {
                "dynamic": {k: round(v) for k, v in sorted(cost.collectives.items())
                            if v},
                "static": dict(sorted(self.static_collectives().items())),
                "bytes": {k: v for k, v in sorted(cost.collective_bytes.items()) if v},
            },
            "loops": self.loops,
            "opaque_custom_calls": sorted(self.opaque),
        }


def analyze(hlo_text: str) -> dict[str, Any]:
    """The loop-aware cost of an optimized HLO module's text (see the module docstring)."""
    return HloCostModel(hlo_text).analyze()


def xla_cost(compiled) -> dict[str, float | None]:
    """XLA's own ``cost_analysis()`` flops and bytes (loop bodies counted once), or Nones."""
    try:
        ca = compiled.cost_analysis()
    except Exception:
        ca = None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else None
    if not ca:
        return {"flops": None, "bytes_accessed": None}
    return {"flops": ca.get("flops"), "bytes_accessed": ca.get("bytes accessed")}
