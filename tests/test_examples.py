"""The runnable examples (``examples/``) and the README's first snippets.

``examples/train_lm.py`` trains a small language model with optax's loss, lossax's and
lossax's fused loss: the three curves must agree closely and go down.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_lm_curves_agree_and_decrease(capsys):
    train_lm = _load(ROOT / "examples" / "train_lm.py")
    # JAX's default promotion rules, as a user has them (optax.adam mixes int32 and
    # Python floats, which the suite's strict mode rejects).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        results = train_lm.main(["--steps", "20", "--vocab", "256", "--dim", "16",
                                 "--hidden", "32", "--batch", "64", "--corpus", "4000",
                                 "--lr", "3e-2"])
    assert set(results) == {"optax", "lossax", "lossax-fused"}
    ref = results["optax"]["losses"]
    assert ref.shape == (20,)
    assert np.all(np.isfinite(ref))
    # Started from the uniform guess, the loss goes down (compare the ends, not single
    # steps: each step draws a new batch).
    assert ref[0] == pytest.approx(np.log(256), rel=0.05)
    assert ref[-5:].mean() < ref[:5].mean() - 0.2
    for name in ("lossax", "lossax-fused"):
        np.testing.assert_allclose(results[name]["losses"], ref, rtol=1e-4, atol=1e-4,
                                   err_msg=name)
        assert results[name]["temp_bytes"] >= 0
        assert results[name]["tokens_per_s"] > 0
    out = capsys.readouterr().out
    assert "largest difference from optax" in out
    assert "tokens/s" in out


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_first_use_runs(capsys):
    # The first snippet must run when pasted into a fresh interpreter.
    first = _python_blocks((ROOT / "README.md").read_text())[0]
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(first, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[0.3408 1.3863]" in out
    assert "(2, 4)" in out
