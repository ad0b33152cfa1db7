"""No surprises in a long training run: one trace per shape/dtype/options, strict dtype and
rank promotion, no host synchronisation inside a kernel, no leaked tracers.

Generic over ``lossax.__all__`` (the inputs come from ``tests/inputs.py``), so a newly
exported function is covered without editing this file.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest

import helpers
import inputs
import lossax

PUBLIC = sorted(n for n in lossax.__all__ if n != "checked")
LOSSES = [n for n in PUBLIC if n not in inputs.NOT_A_LOSS]


def _inputs(name, seed=0, dtype=jnp.float32, batch_shape=(3,), num_classes=5):
    return inputs.example_inputs(name, batch_shape=batch_shape, num_classes=num_classes,
                                   dtype=dtype, seed=seed)


def _summed(fn):
    return lambda first, *rest: jnp.sum(fn(first, *rest).astype(jnp.float32))


# -- One trace per shape / dtype / options -------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC)
def test_one_trace_per_shape_dtype_and_options(name):
    fn = getattr(lossax, name)
    traces = []

    def counted(*args, **options):
        traces.append(tuple(a.shape for a in args))
        return fn(*args, **options)
    variant = inputs.OPTION_VARIANT[name] or {}
    jitted = jax.jit(counted, static_argnames=tuple(variant))
    for seed in range(3):  # new values, same shapes: no retrace
        args, kwargs = _inputs(name, seed=seed)
        jax.block_until_ready(jitted(*args, **kwargs))
    assert len(traces) == 1
    if variant:  # a new static option: one more trace, then cached
        for seed in range(2):
            args, kwargs = _inputs(name, seed=seed)
            jax.block_until_ready(jitted(*args, **kwargs, **variant))
        assert len(traces) == 2
        equal_options = {k: (type(v)(v) if isinstance(v, float | int) else v)
                         for k, v in variant.items()}
        jax.block_until_ready(jitted(*args, **kwargs, **equal_options))
        assert len(traces) == 2
    n = len(traces)
    for seed in range(2):  # a new dtype: one more trace
        args, kwargs = _inputs(name, seed=seed, dtype=jnp.bfloat16)
        jax.block_until_ready(jitted(*args, **kwargs))
    assert len(traces) == n + 1
    for seed in range(2):  # a new shape: one more trace
        args, kwargs = _inputs(name, seed=seed, batch_shape=(2, 2))
        jax.block_until_ready(jitted(*args, **kwargs))
    assert len(traces) == n + 2


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_traced_once_over_repeated_calls(name):
    fn = getattr(lossax, name)
    traces = []

    def counted(*args):
        traces.append(1)
        return _summed(fn)(*args)
    step = jax.jit(jax.value_and_grad(counted))
    for seed in range(3):
        args, _ = _inputs(name, seed=seed)
        jax.block_until_ready(step(*args))
    assert len(traces) == 1


# -- Strict promotion ------------------------------------------------------------------------


def _mixed_dtype_inputs(name, dtype):
    """Inputs whose second argument has a different dtype from the first where allowed."""
    args, kwargs = _inputs(name, dtype=dtype)
    args = list(args)
    second = args[1]
    if jnp.issubdtype(second.dtype, jnp.integer):
        args[1] = second.astype(jnp.int8 if dtype != jnp.float32 else jnp.uint8)
    else:
        args[1] = second.astype(jnp.bfloat16 if dtype == jnp.float32 else jnp.float32)
    return tuple(args), kwargs


@pytest.mark.parametrize("dtype", [
    pytest.param(jnp.float32, id="float32"), pytest.param(jnp.bfloat16, id="bfloat16"),
    pytest.param(jnp.float16, id="float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", PUBLIC)
def test_strict_promotion_and_rank_promotion_raise(name, dtype):
    """Mixed dtypes between arguments (bfloat16 logits with float32 labels, int8 labels)
    work under strict promotion; the output has the first argument's dtype."""
    fn = getattr(lossax, name)
    args, _ = _mixed_dtype_inputs(name, dtype)
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        assert jax.eval_shape(fn, *args).dtype == jnp.dtype(dtype)
        if name not in inputs.NOT_A_LOSS:
            _, grad = jax.jit(jax.value_and_grad(_summed(fn)))(*args)
            assert grad.dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("name", PUBLIC)
def test_float64_stays_float64(name, x64):
    fn = getattr(lossax, name)
    args, _ = _inputs(name, dtype=jnp.float64)
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        out = jax.jit(fn)(*args)
    assert out.dtype == jnp.float64


# -- No host synchronisation -----------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC)
def test_no_transfers_inside_a_jitted_call(name):
    """With inputs on the device, tracing, compiling and running the jitted loss (and its
    gradient) makes no implicit transfer (a NumPy constant shipped on every call, a value
    read back); a read of a traced value would fail to trace at all."""
    fn = getattr(lossax, name)
    args = jax.device_put(_inputs(name, seed=1)[0])
    f = jax.jit(fn)
    g = None if name in inputs.NOT_A_LOSS else jax.jit(jax.grad(_summed(fn)))
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(f(*args))
        if g is not None:
            jax.block_until_ready(g(*args))


_HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "__complex__", "item",
               "tolist")


@contextlib.contextmanager
def _no_host_reads():
    """Makes Python-level reads of a concrete array's value raise.

    On CPU, ``jax.transfer_guard_device_to_host`` does not fire (the buffers already live
    in host memory), so the reads that would synchronise with an accelerator are caught
    here instead: ``bool(x)``/``float(x)``/``int(x)``/``x.item()``, which is how a kernel
    would branch on a value.  (``np.asarray(x)`` goes through the buffer protocol and is
    not caught.)
    """
    cls = type(jnp.zeros(()))
    saved = {n: cls.__dict__[n] for n in _HOST_READS if n in cls.__dict__}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"a kernel read an array's value on the host ({name})")
        return method
    try:
        for n in _HOST_READS:
            setattr(cls, n, refuse(n))
        yield
    finally:
        for n in _HOST_READS:
            if n in saved:
                setattr(cls, n, saved[n])
            else:
                delattr(cls, n)


def test_no_host_reads_guard_catches_a_read():
    x = jnp.array([1.0, 2.0])
    with _no_host_reads(), pytest.raises(AssertionError, match="on the host"):
        bool(jnp.any(x > 1))  # what `if jnp.any(x > 1):` in a kernel would do
    assert bool(jnp.any(x > 1))  # restored


@pytest.mark.parametrize("name", PUBLIC)
def test_no_host_reads_in_an_eager_call(name):
    """Called eagerly, a kernel never reads a value back to decide what to do."""
    fn = getattr(lossax, name)
    args = jax.device_put(_inputs(name, seed=2)[0])
    with _no_host_reads():
        out = fn(*args)
    jax.block_until_ready(out)


# -- Leaked tracers ----------------------------------------------------------------------------


_KEPT = []  # module state, made before the check: frozen while it runs


def test_the_leak_check_finds_a_tracer_kept_in_module_state():
    def leaky(x):
        _KEPT.append(x * 2)
        return x.sum()

    with pytest.raises(Exception, match="Leaked"), helpers.checking_leaks():
        jax.jit(jax.value_and_grad(leaky))(jnp.ones(3))
    _KEPT.clear()


@pytest.mark.parametrize("name", PUBLIC)
def test_no_leaked_tracers(name):
    """Tracing the loss and its gradient leaves no tracer behind (a kernel caching a
    traced value in module state, say).  Leak checking disables JAX's caches, so this
    traces once: the jitted value and gradient together."""
    fn = getattr(lossax, name)
    args, _ = _inputs(name, seed=3)
    if name in inputs.NOT_A_LOSS:
        step = jax.jit(fn)
    else:
        step = jax.jit(jax.value_and_grad(_summed(fn)))
    with helpers.checking_leaks():
        jax.block_until_ready(step(*args))
