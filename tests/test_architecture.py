"""The architecture, checked: one module per loss family, and no family imports another.

A family module imports the numerics core (``_numerics``) and ``_backend``, never a
sibling family: what two families share belongs in the core (docs/architecture.md).  The
imports are read from the source with :mod:`ast` (every ``import`` statement, including
those inside functions), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import lossax

SRC = pathlib.Path(lossax.__file__).parent

# Module (dotted, under lossax) -> family.  A package stands for all of its modules.
FAMILIES = {
    "lossax._softmax": "softmax",
    "lossax.fused": "softmax",
    "lossax.sharded": "softmax",
    "lossax._sigmoid": "sigmoid",
    "lossax._probabilities": "probabilities",
    "lossax._hinge": "hinge",
    "lossax._metrics": "metrics",
}
CORE = ("lossax._numerics", "lossax._backend")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _family(module: str) -> str | None:
    for prefix, family in FAMILIES.items():
        if module == prefix or module.startswith(prefix + "."):
            return family
    return None


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(module: str, path: pathlib.Path) -> set[str]:
    """The lossax modules ``module`` imports (``from . import x`` counts as ``pkg.x``)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    known = _modules()
    return {m for m in out if m in known and m != module}


MODULES = _modules()


def test_every_family_has_its_module():
    for prefix in FAMILIES:
        assert prefix in MODULES, f"{prefix} is listed as a family module but does not exist"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _family(m)))
def test_family_modules_do_not_import_a_sibling_family(module):
    family = _family(module)
    bad = sorted(m for m in _imports(module, MODULES[module])
                 if _family(m) not in (None, family))
    assert not bad, (
        f"{module} (family {family!r}) imports {bad} from another family; move what they "
        "share to lossax._numerics (or lossax._backend if it is backend-specific)")


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_family(module):
    bad = sorted(m for m in _imports(module, MODULES[module]) if _family(m))
    assert not bad, f"{module} imports the loss families {bad}: the core must not"


def test_backend_imports_nothing_from_lossax():
    assert _imports("lossax._backend", MODULES["lossax._backend"]) == set()


def test_the_import_parser_sees_relative_and_nested_imports(tmp_path):
    # A check that finds nothing must be able to find something.
    assert "lossax._softmax" in _imports("lossax.sharded", MODULES["lossax.sharded"])
    assert "lossax._softmax" in _imports("lossax.fused.chunked",
                                         MODULES["lossax.fused.chunked"])
    assert "lossax._numerics" in _imports("lossax._hinge", MODULES["lossax._hinge"])
    fake = tmp_path / "_hinge.py"
    fake.write_text("def f():\n    from ._sigmoid import g\n    import lossax._metrics\n")
    assert _imports("lossax._hinge", fake) == {"lossax._sigmoid", "lossax._metrics"}
