"""Differential tests against optax 0.2.x over random shapes, axes, tuple axes and masks.

lossax is a drop-in for ``optax.losses``: wherever optax's value (or gradient) is
finite, lossax's must equal it within float tolerance (and be finite itself).  The
configurations come from a seeded generator, one jitted function per configuration
computing both libraries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lossax
from helpers import rng

RTOL = ATOL = 2e-5


def random_config(seed, *, dense):
    """Logits shape, class axis (int, tuple or None) and a mask kind, at random."""
    r = rng(1000 + seed)
    ndim = int(r.integers(1, 5))
    shape = tuple(int(d) for d in r.integers(1, 5, size=ndim))
    kind = r.choice(["int", "tuple", "none"] if dense else ["int", "tuple"],
                    p=[0.45, 0.4, 0.15] if dense else [0.5, 0.5])
    if kind == "int":
        axis = int(r.integers(-ndim, ndim))
    elif kind == "tuple":
        k = int(r.integers(1, ndim + 1))
        axis = tuple(int(a) for a in r.permutation(ndim)[:k])
        # mix in negative spellings of the same axes
        axis = tuple(a - ndim if r.random() < 0.3 else a for a in axis)
    else:
        axis = None
    masks = ["none", "batch", "full"]
    if kind == "int":
        masks.append("broadcast")
    if axis is None:
        masks.remove("batch")
    return shape, axis, masks[seed % len(masks)], r


def class_axes(shape, axis):
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a % ndim for a in axes)


def make_mask(kind, shape, axes, r):
    batch_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    if kind == "none":
        return None
    if kind == "batch":
        w = r.random(batch_shape) < 0.7
        if w.size > 1:
            w.flat[0] = False
        return jnp.asarray(w)
    if kind == "broadcast":  # logits' rank, size 1 along the class axis
        bshape = tuple(1 if i in axes else d for i, d in enumerate(shape))
        return jnp.asarray(r.random(bshape) < 0.7)
    w = r.random(shape) < 0.7
    if w.size > 1:
        w.flat[0] = False  # some classes masked; possibly whole rows
    return jnp.asarray(w)


def compare(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    finite = np.isfinite(theirs)
    assert np.isfinite(ours[finite]).all(), what
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=RTOL, atol=ATOL,
                               err_msg=what)


@pytest.mark.parametrize("seed", range(10))
def test_integer_labels_parity(seed):
    shape, axis, mask, r = random_config(seed, dense=False)
    axes = class_axes(shape, axis)
    num_classes = int(np.prod([shape[a] for a in axes]))
    batch_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    x = jnp.asarray(r.standard_normal(shape).astype(np.float32) * 3)
    y = jnp.asarray(r.integers(0, num_classes, batch_shape).astype(np.int32))
    where = make_mask(mask, shape, axes, r)
    ct = jnp.asarray(r.standard_normal(batch_shape).astype(np.float32))

    def both(x):
        def vg(f):
            out, vjp = jax.vjp(f, x)
            return out, vjp(ct)[0]
        ours = vg(lambda a: lossax.softmax_cross_entropy_with_integer_labels(a, y, axis, where))
        theirs = vg(lambda a: optax.losses.softmax_cross_entropy_with_integer_labels(
            a, y, axis, where))
        return ours, theirs

    (lv, lg), (ov, og) = jax.jit(both)(x)
    what = f"shape={shape} axis={axis} mask={mask}"
    compare(lv, ov, "loss " + what)
    compare(lg, og, "grad " + what)
    assert np.isfinite(np.asarray(lv)).all()
    assert np.isfinite(np.asarray(lg)).all()


@pytest.mark.parametrize("seed", range(10))
def test_dense_labels_parity(seed):
    shape, axis, mask, r = random_config(seed, dense=True)
    axes = class_axes(shape, axis)
    batch_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    x = jnp.asarray(r.standard_normal(shape).astype(np.float32) * 3)
    t = r.random(shape).astype(np.float32)
    t = jnp.asarray(t / t.sum(axis=axes, keepdims=True))
    where = make_mask(mask, shape, axes, r)
    ct = jnp.asarray(r.standard_normal(batch_shape).astype(np.float32))

    def both(x, t):
        def vg(f):
            out, vjp = jax.vjp(f, x, t)
            return out, *vjp(ct)
        ours = vg(lambda a, b: lossax.softmax_cross_entropy(a, b, axis, where))
        theirs = vg(lambda a, b: optax.losses.softmax_cross_entropy(a, b, axis, where))
        return ours, theirs

    ours, theirs = jax.jit(both)(x, t)
    what = f"shape={shape} axis={axis} mask={mask}"
    for name, o, p in zip(["loss", "d logits", "d labels"], ours, theirs, strict=True):
        compare(o, p, f"{name} {what}")
    assert np.isfinite(np.asarray(ours[0])).all()
    assert np.isfinite(np.asarray(ours[1])).all()


@pytest.mark.parametrize("seed", range(4))
def test_poly_loss_parity(seed):
    shape, axis, mask, r = random_config(seed + 50, dense=True)
    axes = class_axes(shape, axis)
    x = jnp.asarray(r.standard_normal(shape).astype(np.float32) * 2)
    t = r.random(shape).astype(np.float32)
    t = jnp.asarray(t / t.sum(axis=axes, keepdims=True))
    where = make_mask("full" if mask == "batch" else mask, shape, axes, r)
    eps = float(r.choice([-1.0, 0.5, 2.0]))

    def both(x):
        def vg(f):
            return jax.value_and_grad(lambda a: jnp.sum(f(a)))(x), f(x)
        ours = vg(lambda a: lossax.poly_loss_cross_entropy(a, t, epsilon=eps, axis=axis,
                                                           where=where))
        theirs = vg(lambda a: optax.losses.poly_loss_cross_entropy(a, t, epsilon=eps,
                                                                   axis=axis, where=where))
        return ours, theirs

    ((_, lg), lv), ((_, og), ov) = jax.jit(both)(x)
    what = f"shape={shape} axis={axis} mask={mask} eps={eps}"
    compare(lv, ov, "loss " + what)
    compare(lg, og, "grad " + what)


@pytest.mark.parametrize("seed", range(3))
def test_safe_softmax_cross_entropy_parity(seed):
    r = rng(seed)
    shape = tuple(int(d) for d in r.integers(1, 5, size=int(r.integers(1, 4))))
    x = r.standard_normal(shape).astype(np.float32) * 3
    t = r.random(shape).astype(np.float32)
    t = t / t.sum(-1, keepdims=True)
    # -inf logits where the label is 0: optax's safe variant is finite there.
    hole = (r.random(shape) < 0.3) & (np.argmax(x, -1)[..., None] != np.arange(shape[-1]))
    x, t = np.where(hole, -np.inf, x), np.where(hole, 0.0, t).astype(np.float32)
    x, t = jnp.asarray(x.astype(np.float32)), jnp.asarray(t)
    ct = jnp.asarray(r.standard_normal(shape[:-1]).astype(np.float32))

    def both(x):
        def vg(lib):
            out, vjp = jax.vjp(lambda a: lib.safe_softmax_cross_entropy(a, t), x)
            return out, vjp(ct)[0]
        return vg(lossax), vg(optax.losses)

    (lv, lg), (ov, og) = jax.jit(both)(x)
    compare(lv, ov, f"loss {shape}")
    compare(lg, og, f"grad {shape}")
    assert np.isfinite(np.asarray(lv)).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_parity_with_optax(dtype):
    # optax computes in the input dtype; lossax in float32: lossax is at least as close
    # to the float32 result, and within the dtype's rounding of optax.
    r = rng(7)
    x32 = jnp.asarray(r.standard_normal((8, 33)).astype(np.float32) * 3)
    x = x32.astype(dtype)
    y = jnp.asarray(r.integers(0, 33, 8).astype(np.int32))
    exact, ours, theirs = jax.jit(lambda x: (
        optax.losses.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), y),
        lossax.softmax_cross_entropy_with_integer_labels(x, y),
        optax.losses.softmax_cross_entropy_with_integer_labels(x, y)))(x)
    assert ours.dtype == theirs.dtype == dtype
    err_ours = np.abs(np.asarray(ours, np.float64) - np.asarray(exact, np.float64)).max()
    err_theirs = np.abs(np.asarray(theirs, np.float64) - np.asarray(exact, np.float64)).max()
    assert err_ours <= err_theirs
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                               rtol=3e-2, atol=3e-2)


def test_where_masks_of_both_shapes_agree_with_optax_examples():
    # optax's own docstring example, and a per-row mask equal to masking every class.
    logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    labels = jnp.array([0, 1])
    np.testing.assert_allclose(
        lossax.softmax_cross_entropy_with_integer_labels(logits, labels), [0.2761, 2.9518],
        atol=1e-4)
    shape = (1, 2, 3, 4)
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    y = jnp.ravel_multi_index((jnp.array([[1, 2]]), jnp.array([[1, 3]])), shape[2:])
    np.testing.assert_allclose(
        lossax.softmax_cross_entropy_with_integer_labels(x, y, axis=(2, 3)),
        [[6.4587, 0.4587]], atol=1e-4)
    rows = jnp.array([True, False])
    full = jnp.broadcast_to(rows[:, None], (2, 3))
    t = jax.nn.one_hot(labels, 3)
    f = jax.jit(lambda w, lib: (lib.softmax_cross_entropy_with_integer_labels(
        logits, labels, where=w), lib.softmax_cross_entropy(logits, t, where=w)),
        static_argnums=1)
    for w in (rows, full):
        ours, theirs = f(w, lossax), f(w, optax.losses)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
        np.testing.assert_allclose(ours, f(rows, lossax), rtol=1e-6)
