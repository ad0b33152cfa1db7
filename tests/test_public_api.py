"""The public surface: optax-compatible signatures, __all__, version, py.typed, doctests.

The signature test is generic over the names lossax shares with ``optax.losses``, so
every loss added later is pinned automatically.  The doctests of every lossax module
run here too, so that a plain ``python -m pytest`` (as CI runs it) executes them.
"""

import ast
import doctest
import importlib
import importlib.metadata
import importlib.resources
import inspect
import pathlib
import pkgutil
import tomllib

import jax.numpy as jnp
import optax
import pytest

import lossax

SHARED = sorted(set(lossax.__all__) & set(dir(optax.losses)))
P = inspect.Parameter


def test_the_softmax_losses_are_shared_with_optax():
    # Guards the generic test below against passing vacuously.
    assert {"softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels",
            "safe_softmax_cross_entropy", "poly_loss_cross_entropy"} <= set(SHARED)


def _same_default(a, b):
    if a is P.empty or b is P.empty:
        return a is b
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # arrays and other objects without a plain truth value
        return a is b


@pytest.mark.parametrize("name", SHARED)
def test_signature_matches_optax(name):
    ours = list(inspect.signature(getattr(lossax, name)).parameters.values())
    theirs = list(inspect.signature(getattr(optax.losses, name)).parameters.values())
    # optax's parameters first, same names, order, kinds and defaults ...
    assert len(ours) >= len(theirs), f"{name}: lossax drops optax parameters"
    for o, t in zip(ours, theirs, strict=False):
        assert o.name == t.name, f"{name}: parameter {o.name!r} where optax has {t.name!r}"
        assert o.kind == t.kind, f"{name}({o.name}): {o.kind} where optax has {t.kind}"
        assert _same_default(o.default, t.default), (
            f"{name}({o.name}): default {o.default!r} where optax has {t.default!r}")
    # ... then only lossax's own options, keyword-only, each with a default.
    for extra in ours[len(theirs):]:
        assert extra.kind == P.KEYWORD_ONLY, f"{name}({extra.name}) must be keyword-only"
        assert extra.default is not P.empty, f"{name}({extra.name}) needs a default"


def test_all_matches_the_reexports():
    init = pathlib.Path(lossax.__file__)
    tree = ast.parse(init.read_text())
    reexported = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                # `from ._mod import f as f`: the explicit re-export form.
                assert alias.asname == alias.name, f"re-export {alias.name} as {alias.asname}"
                if not inspect.ismodule(getattr(lossax, alias.name)):
                    reexported.add(alias.name)
    assert set(lossax.__all__) == reexported
    assert len(lossax.__all__) == len(set(lossax.__all__))
    assert lossax.__all__ == sorted(lossax.__all__)
    for name in lossax.__all__:
        assert not name.startswith("_")
        assert callable(getattr(lossax, name))


def test_version():
    assert isinstance(lossax.__version__, str)
    assert lossax.__version__ == importlib.metadata.version("lossax")
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    with open(pyproject, "rb") as f:
        config = tomllib.load(f)
    assert "version" in config["project"]["dynamic"]  # written once, in lossax/__init__.py
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lossax.__version__"}


def test_py_typed_ships():
    assert (importlib.resources.files("lossax") / "py.typed").is_file()
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    with open(pyproject, "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["lossax"]


def test_public_functions_are_documented_and_typed():
    for name in lossax.__all__:
        fn = getattr(lossax, name)
        doc = inspect.getdoc(fn) or ""
        assert "Args:" in doc, name
        assert "Returns:" in doc, name
        assert ">>>" in doc, f"{name} has no doctest example"


MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lossax.__path__, prefix="lossax.")
)


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    mod = importlib.import_module(module)
    old = jnp.get_printoptions()
    try:
        result = doctest.testmod(
            mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    finally:
        jnp.set_printoptions(**old)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module}"


def test_softmax_and_numerics_doctests_exist():
    for module in ("lossax._softmax", "lossax._numerics"):
        finder = doctest.DocTestFinder()
        tests = finder.find(importlib.import_module(module))
        assert sum(len(t.examples) for t in tests) > 0, module
