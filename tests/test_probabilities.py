"""Cross-entropy on probabilities: binary_cross_entropy and categorical_cross_entropy.

Expected values come from float64 numpy references written here from the formulas, from
optax (through a softmax), or from numbers worked by hand in a comment.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lossax
from helpers import (
    FLOAT_DTYPES,
    assert_close,
    labels_of,
    logits_of,
    rng,
    temp_bytes,
    to_f64,
    value_and_grads,
)

PBCE = lossax.binary_cross_entropy
PCCE = lossax.categorical_cross_entropy


# --------------------------------------------------------------------------------------
# Helpers: value_and_grads, labels_of, logits_of, temp_bytes come from helpers.py.
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# References.
# --------------------------------------------------------------------------------------


def ref_prob_bce(p, y, eps):
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    pc = np.clip(p, eps, 1 - eps)
    loss = -(y * np.log(pc) + (1 - y) * np.log1p(-pc))
    grad = np.where((p >= eps) & (p <= 1 - eps), (1 - y) / (1 - pc) - y / pc, 0.0)
    return loss, grad


def ref_prob_cce(p, y, eps, mask=None):
    """float64, over the last axis; masked classes contribute 0."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    keep = np.ones(p.shape, bool) if mask is None else mask
    pc = np.clip(p, eps, 1 - eps)
    loss = np.sum(np.where(keep, -y * np.log(pc), 0.0), -1)
    grad = np.where(keep & (p >= eps) & (p <= 1 - eps), -y / pc, 0.0)
    return loss, grad


def probs_of(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(jax.nn.softmax(logits_of(shape, seed, scale=2.0))).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_binary_cross_entropy_matches_reference(dtype):
    p = jnp.asarray(rng(10).random((50,)).astype(np.float32)).astype(dtype)
    y = labels_of("soft", (50,)).astype(dtype)
    eps = float(jnp.finfo(dtype).eps)
    out, (g,) = value_and_grads(PBCE, p, y)
    ref, ref_g = ref_prob_bce(to_f64(p), to_f64(y), eps)
    assert out.dtype == dtype
    assert g.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(g, ref_g, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_probabilities_of_zero_and_one_are_finite(dtype):
    # p = 0 or 1 against the wrong label: -log(eps) (eps = the dtype's epsilon), and
    # gradient 0 (the clip's derivative); against the right label: -log(1 - eps).
    p = jnp.asarray([0.0, 1.0, 0.0, 1.0]).astype(dtype)
    y = jnp.asarray([1.0, 0.0, 0.0, 1.0]).astype(dtype)
    eps = float(jnp.finfo(dtype).eps)
    out, (g,) = value_and_grads(PBCE, p, y)
    out, g = np.asarray(out.astype(jnp.float32)), np.asarray(g.astype(jnp.float32))
    assert_close(out, [-np.log(eps)] * 2 + [-np.log1p(-eps)] * 2, dtype)
    np.testing.assert_array_equal(g, 0.0)
    onehot = jnp.asarray([[1.0, 0.0], [0.0, 1.0]]).astype(dtype)
    q = jnp.asarray([[0.0, 1.0], [0.0, 1.0]]).astype(dtype)
    assert_close(PCCE(q, onehot), [-np.log(eps), -np.log1p(-eps)], dtype)
    assert np.isfinite(np.asarray(value_and_grads(PCCE, q, onehot)[1][0], np.float32)).all()


def test_binary_cross_entropy_explicit_eps_and_hand_values():
    # -log 0.9, -log 0.8, -log(0.01): p = 0 clipped to eps = 0.01.
    out = PBCE(jnp.asarray([0.9, 0.2, 0.0]), jnp.asarray([1.0, 0.0, 1.0]), eps=0.01)
    assert_close(out, [-np.log(0.9), -np.log(0.8), -np.log(0.01)])


def test_categorical_cross_entropy_worked_example():
    # Outputs (0.4, 0.4, 0.2) with target class 1: -ln 0.4 = 0.916; (0.1, 0.2, 0.7) with
    # target class 2: -ln 0.7 = 0.357.
    probs = jnp.asarray([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    labels = jnp.asarray([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert_close(PCCE(probs, labels), [-np.log(0.4), -np.log(0.7)])
    assert_close(PCCE(probs, labels).round(3), [0.916, 0.357])


@pytest.mark.parametrize(("dtype", "batch", "v", "mask"), [
    (jnp.float32, (), 5, None), (jnp.float32, (4,), 1, "row"), (jnp.float32, (3,), 7, "class"),
    (jnp.float32, (2, 3), 33, "row"), (jnp.bfloat16, (3,), 7, None),
    (jnp.bfloat16, (2, 3), 33, "class"), (jnp.float16, (4,), 1, None),
    (jnp.float16, (3,), 7, "row")])
def test_categorical_cross_entropy_matches_reference(dtype, batch, v, mask):
    p = probs_of((*batch, v), seed=v, dtype=dtype)
    y = jnp.asarray(rng(v).random((*batch, v)).astype(np.float32))
    where, cls = None, None
    if mask == "row":
        rw = rng(1).random(batch) < 0.6
        where, cls = jnp.asarray(rw), np.broadcast_to(np.asarray(rw)[..., None], p.shape)
    elif mask == "class":
        cw = rng(1).random((*batch, v)) < 0.6
        cw.reshape(-1, v)[0] = False  # a fully masked row: loss 0, gradient 0
        where, cls = jnp.asarray(cw), cw
    eps = float(jnp.finfo(dtype).eps)
    out, (g,) = value_and_grads(lambda a, b: PCCE(a, b, where=where), p, y)
    ref, ref_g = ref_prob_cce(to_f64(p), to_f64(y), eps, cls)
    assert out.dtype == dtype
    assert out.shape == batch
    assert_close(out, ref, dtype)
    assert_close(g, ref_g, dtype)


def test_categorical_cross_entropy_axes():
    p = probs_of((3, 4, 5), seed=3)
    y = jnp.asarray(rng(4).random((3, 4, 5)).astype(np.float32))
    eps = float(jnp.finfo(jnp.float32).eps)
    ref0, _ = ref_prob_cce(np.moveaxis(to_f64(p), 0, -1), np.moveaxis(to_f64(y), 0, -1), eps)
    assert_close(PCCE(p, y, axis=0), ref0)
    flat = lambda a: np.moveaxis(to_f64(a), 1, 0).reshape(4, 15)  # class axes (0, 2)
    ref02, _ = ref_prob_cce(flat(p), flat(y), eps)
    assert_close(PCCE(p, y, axis=(0, 2)), ref02)
    ref_all, _ = ref_prob_cce(to_f64(p).reshape(-1), to_f64(y).reshape(-1), eps)
    assert_close(PCCE(p, y, axis=None), ref_all)


def test_categorical_cross_entropy_long_rows_blocked():
    # V above the CPU blocking threshold (32768), not a multiple of the block.
    p = probs_of((2, 40003), seed=5)
    y = jax.nn.one_hot(jnp.asarray([7, 40002]), 40003)
    eps = float(jnp.finfo(jnp.float32).eps)
    assert_close(PCCE(p, y), ref_prob_cce(to_f64(p), to_f64(y), eps)[0])


def test_categorical_on_softmax_matches_optax_logits_gradient():
    # Through a softmax, the probabilities' loss and its gradient with respect to the
    # logits are optax's softmax cross-entropy (probabilities away from the clip).
    x = logits_of((4, 6), scale=1.0)
    y = jax.nn.one_hot(jnp.asarray([0, 3, 5, 1]), 6)
    out, (g,) = value_and_grads(lambda a, b: PCCE(jax.nn.softmax(a), b), x, y)
    ref, (g_ref,) = value_and_grads(optax.losses.softmax_cross_entropy, x, y)
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_probability_losses_errors():
    p = jnp.full((2, 3), 0.5, jnp.float32)
    for eps in (0.0, 0.5, -0.1, 0.75):
        with pytest.raises(ValueError, match="eps"):
            PBCE(p, p, eps=eps)
        with pytest.raises(ValueError, match="eps"):
            PCCE(p, p, eps=eps)
    with pytest.raises(ValueError, match="eps=1e-10 is too small for float32"):
        PBCE(p, p, eps=1e-10)
    with pytest.raises(TypeError, match="probs"):
        PBCE(jnp.zeros((3,), jnp.int32), p)
    with pytest.raises(ValueError, match=r"labels has shape \(2,\)"):
        PCCE(p, jnp.zeros((2,)))
    with pytest.raises(TypeError, match="where"):
        PCCE(p, p, where=jnp.ones((2,), jnp.int32))


def test_categorical_no_temporaries():
    if jax.default_backend() != "cpu":
        pytest.skip("pins XLA:CPU's fusion")
    spec = jax.ShapeDtypeStruct((256, 1000), jnp.float32)
    f = lambda a, b: PCCE(a, b).mean()
    for mode in (f, jax.grad(f), jax.value_and_grad(f)):
        assert temp_bytes(mode, spec, spec) < 256 * 1000
