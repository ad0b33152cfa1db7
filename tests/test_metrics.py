"""top_k_accuracy: values against a float64 numpy reference and lax.top_k, ties, NaN and
infinite scores, masks, axes, long rows, gradients and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossax
from helpers import FLOAT_DTYPES, count_traces, rng, to_f64

TOPK = lossax.top_k_accuracy


def ref_topk(x, y, k, row_mask=None, cls_mask=None):
    """float64, from the definition: a hit when fewer than k included classes score
    strictly above the label's class; any NaN in the row is a miss; an excluded label
    class is a miss; an excluded row gives 0; a label outside [0, V) gives NaN."""
    x = np.asarray(to_f64(x))
    y = np.asarray(y)
    v = x.shape[-1]
    out = np.zeros(y.shape)
    for i in np.ndindex(y.shape):
        row, lab = x[i], int(y[i])
        cls = np.ones(v, bool) if cls_mask is None else cls_mask[i]
        if row_mask is not None and not row_mask[i]:
            continue
        if not 0 <= lab < v:
            out[i] = np.nan
            continue
        if np.isnan(row[cls]).any() or not cls[lab]:
            continue
        out[i] = float(np.sum((row > row[lab]) & cls) < k)
    return out


def run(*args, **kwargs):
    return jax.jit(lambda a, b: TOPK(a, b, **kwargs))(*args)


@pytest.mark.parametrize(("batch", "v", "k"), [((), 6, 1), ((8,), 1, 1), ((16,), 10, 2),
                                              ((16,), 10, 5), ((3, 4), 33, 1), ((3, 4), 33, 5)])
def test_matches_reference_and_lax_top_k(batch, v, k):
    r = rng(v + k)
    x = jnp.asarray(r.standard_normal((*batch, v)).astype(np.float32))  # no ties
    y = jnp.asarray(r.integers(0, v, batch).astype(np.int32))
    out = run(x, y, k=k)
    assert out.shape == batch
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, ref_topk(x, y, k))
    # Without ties, the same as membership in lax.top_k's indices.
    _, idx = jax.lax.top_k(x, min(k, v))
    np.testing.assert_array_equal(out, np.any(np.asarray(idx) == np.asarray(y)[..., None], -1))


def test_ties_count_as_a_hit():
    # Classes strictly above the label's: 1 (class 1), 1 (class 2; the tie with class 1
    # does not count), 1 (class 0), 0 (all tied).
    x = jnp.asarray([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1], [2.0, 2.0, 2.0]])
    y = jnp.asarray([2, 0, 1, 2])
    np.testing.assert_array_equal(run(x, y, k=1), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(run(x, y, k=2), [1.0, 1.0, 1.0, 1.0])


def test_nan_and_infinite_scores():
    inf, nan = jnp.inf, jnp.nan
    x = jnp.asarray([[inf, inf, 0.0],  # the label ties another +inf: a top-1 hit
                     [-inf, -inf, 0.0],  # one class above -inf: a top-2 hit
                     [0.0, -inf, 3.0],  # two classes above the label's -inf
                     [nan, 1.0, 2.0],  # a NaN elsewhere in the row: a miss
                     [1.0, nan, 0.0],  # a NaN label score: never a hit
                     [1e38, -1e38, inf]])
    y = jnp.asarray([0, 0, 1, 2, 1, 2])
    for k, want in [(1, [1, 0, 0, 0, 0, 1]), (2, [1, 1, 0, 0, 0, 1]), (3, [1, 1, 1, 0, 0, 1])]:
        np.testing.assert_array_equal(run(x, y, k=k), want)
        np.testing.assert_array_equal(run(x, y, k=k), ref_topk(x, y, k))


@pytest.mark.parametrize("kind", ["row", "class"])
def test_where_masks(kind):
    r = rng(3)
    x = jnp.asarray(r.standard_normal((6, 7)).astype(np.float32))
    y = jnp.asarray(r.integers(0, 7, (6,)).astype(np.int32))
    if kind == "row":
        w = r.random(6) < 0.5
        want = ref_topk(x, y, 2, row_mask=w)
    else:
        w = r.random((6, 7)) < 0.6
        w[0] = False  # a fully masked row: 0
        w[1, np.asarray(y)[1]] = False  # its label's class excluded: a miss
        want = ref_topk(x, y, 2, cls_mask=w)
    out = run(x, y, k=2, where=jnp.asarray(w))
    np.testing.assert_array_equal(out, want)
    assert out[0] == 0


def test_class_mask_hides_nan_and_higher_scores():
    x = jnp.asarray([[jnp.nan, 5.0, 1.0, 0.0]])
    w = jnp.asarray([[False, False, True, True]])
    np.testing.assert_array_equal(run(x, jnp.asarray([2]), k=1, where=w), [1.0])


def test_axes():
    r = rng(4)
    x = jnp.asarray(r.standard_normal((5, 3, 4)).astype(np.float32))
    y0 = jnp.asarray(r.integers(0, 5, (3, 4)).astype(np.int32))
    np.testing.assert_array_equal(run(x, y0, k=2, axis=0),
                                  ref_topk(np.moveaxis(np.asarray(x), 0, -1), y0, 2))
    y12 = jnp.asarray(r.integers(0, 12, (5,)).astype(np.int32))
    np.testing.assert_array_equal(run(x, y12, k=3, axis=(1, 2)),
                                  ref_topk(np.asarray(x).reshape(5, 12), y12, 3))


def test_k_at_least_num_classes_hits_every_row():
    x = jnp.asarray(rng(5).standard_normal((4, 3)).astype(np.float32))
    np.testing.assert_array_equal(run(x, jnp.asarray([0, 1, 2, 0]), k=3), 1.0)
    np.testing.assert_array_equal(run(x, jnp.asarray([0, 1, 2, 0]), k=10), 1.0)


def test_long_rows_blocked():
    # V = 262147: above the CPU blocking threshold and not a multiple of the block.
    r = rng(6)
    x = jnp.asarray(r.standard_normal((2, 262147)).astype(np.float32))
    order = np.argsort(-np.asarray(x), -1)
    y = jnp.asarray([order[0, 4], order[1, 5]], jnp.int32)  # ranks 5 and 6
    np.testing.assert_array_equal(run(x, y, k=5), [1.0, 0.0])
    np.testing.assert_array_equal(run(x, y, k=6), [1.0, 1.0])


def test_label_out_of_range_gives_nan_in_included_rows():
    x = jnp.zeros((3, 4), jnp.float32)
    out = run(x, jnp.asarray([1, 4, -1]), k=1, where=jnp.asarray([True, True, False]))
    np.testing.assert_array_equal(out, [1.0, np.nan, 0.0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtypes_compare_exactly(dtype):
    # 1 + 2^-7 and 1 are distinct in bfloat16 and float16: the label is second.
    x = jnp.asarray([[1.0, 1.0 + 2 ** -7, 0.5]]).astype(dtype)
    out = run(x, jnp.asarray([0]), k=1)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.astype(jnp.float32), [0.0])
    np.testing.assert_array_equal(run(x, jnp.asarray([0]), k=2).astype(jnp.float32), [1.0])


def test_gradients_are_zero_in_both_modes():
    x = jnp.asarray(rng(7).standard_normal((4, 5)).astype(np.float32))
    y = jnp.asarray([0, 1, 2, 3])
    g = jax.jit(jax.grad(lambda a: TOPK(a, y, k=2).sum()))(x)
    np.testing.assert_array_equal(g, 0.0)
    _, t = jax.jit(lambda a: jax.jvp(lambda b: TOPK(b, y, k=2), (a,), (jnp.ones_like(a),)))(x)
    np.testing.assert_array_equal(t, 0.0)


def test_one_pass_without_temporaries_for_a_large_vocabulary():
    # 64 x 262144 scores: no temporary of the scores' size (shapes only: nothing is
    # allocated), where a compare-and-count would write a 64 MiB array.
    if jax.default_backend() != "cpu":
        pytest.skip("pins XLA:CPU's fusion")
    spec = jax.ShapeDtypeStruct((64, 262144), jnp.float32)
    lab = jax.ShapeDtypeStruct((64,), jnp.int32)
    compiled = jax.jit(lambda a, b: TOPK(a, b, k=5)).lower(spec, lab).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 64 * 262144 * 4 // 16


def test_one_trace_for_new_values():
    fn = count_traces(TOPK)
    jitted = jax.jit(fn, static_argnames="k")
    for seed in range(3):
        x = jnp.asarray(rng(seed).standard_normal((4, 5)).astype(np.float32))
        jitted(x, jnp.asarray([0, 1, 2, 3]), k=2).block_until_ready()
    assert fn.traces == 1


def test_errors_name_the_argument():
    x = jnp.zeros((3, 4), jnp.float32)
    y = jnp.zeros((3,), jnp.int32)
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        TOPK(x, y, k=0)
    with pytest.raises(TypeError, match=r"k must be an int; got 1\.5"):
        TOPK(x, y, k=1.5)
    with pytest.raises(TypeError, match="k must be a Python int"):
        TOPK(x, y, k=True)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        TOPK(x, jnp.zeros((3,), jnp.float32))
    with pytest.raises(ValueError, match=r"labels has shape \(4,\); expected the batch shape"):
        TOPK(x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match="logits"):
        TOPK(jnp.zeros((3, 4), jnp.int32), y)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        TOPK(x, y, axis=2)
