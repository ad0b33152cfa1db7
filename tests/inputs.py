"""Inputs for lossax's generic tests, which run every public function on them.

``KIND`` says how each public function takes its inputs, ``example_inputs`` draws valid
random ones, ``OPTION_VARIANT`` names a static option that changes the computation (a
new trace is expected) and ``NOT_A_LOSS`` the functions with no gradient.  A function
added to ``lossax.__all__`` needs an entry here (``tests/test_testing.py`` checks it).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

# How each public function takes its inputs:
#   int:         (logits [..., V], integer labels [...])
#   dense:       (logits [..., V], target distributions [..., V])
#   prob_dense:  (probabilities [..., V], target distributions [..., V])
#   binary:      (logits [...], labels in [0, 1] [...])            element-wise
#   prob_binary: (probabilities [...], labels in [0, 1] [...])     element-wise
#   pm1:         (scores [...], targets in {-1, +1} [...])         element-wise
#   linear:      (x [..., D], integer labels [...], weights [D, V])
KIND = {
    "softmax_cross_entropy_with_integer_labels": "int",
    "softmax_cross_entropy": "dense",
    "safe_softmax_cross_entropy": "dense",
    "poly_loss_cross_entropy": "dense",
    "categorical_cross_entropy": "prob_dense",
    "sigmoid_binary_cross_entropy": "binary",
    "sigmoid_focal_loss": "binary",
    "binary_cross_entropy": "prob_binary",
    "hinge_loss": "pm1",
    "squared_hinge_loss": "pm1",
    "perceptron_loss": "pm1",
    "multiclass_hinge_loss": "int",
    "multiclass_squared_hinge_loss": "int",
    "multiclass_perceptron_loss": "int",
    "top_k_accuracy": "int",
    "linear_softmax_cross_entropy": "linear",
}

# A static option that changes the computation (a new trace is expected), per function.
OPTION_VARIANT = {
    "softmax_cross_entropy_with_integer_labels": {"label_smoothing": 0.1},
    "softmax_cross_entropy": {"z_loss": 1e-3},
    "safe_softmax_cross_entropy": None,
    "poly_loss_cross_entropy": {"axis": 0},
    "categorical_cross_entropy": {"eps": 1e-3},
    "sigmoid_binary_cross_entropy": {"label_smoothing": 0.1},
    "sigmoid_focal_loss": {"gamma": 1.0},
    "binary_cross_entropy": {"eps": 1e-3},
    "hinge_loss": {"margin": 2.0},
    "squared_hinge_loss": {"margin": 2.0},
    "perceptron_loss": None,
    "multiclass_hinge_loss": {"form": "weston_watkins"},
    "multiclass_squared_hinge_loss": {"margin": 0.5},
    "multiclass_perceptron_loss": None,
    "top_k_accuracy": {"k": 2},
    "linear_softmax_cross_entropy": {"z_loss": 1e-3},
}

# Functions that are not differentiable (piecewise constant): no gradient checks.
NOT_A_LOSS = frozenset({"top_k_accuracy"})


def example_inputs(name: str, batch_shape: tuple[int, ...] = (3,), num_classes: int = 5,
                   dtype: Any = jnp.float32, seed: int = 0, hidden: int = 4):
    """``(args, kwargs)``: valid random inputs for the public function ``name``."""
    kind = KIND[name]
    r = np.random.default_rng(seed)
    full = (*batch_shape, num_classes)

    def fl(a):
        return jnp.asarray(np.asarray(a, np.float32)).astype(dtype)

    def dist(shape):
        return r.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)

    def ints():
        return jnp.asarray(r.integers(0, num_classes, batch_shape, dtype=np.int32))
    if kind == "int":
        return (fl(r.standard_normal(full) * 2), ints()), {}
    if kind == "dense":
        return (fl(r.standard_normal(full) * 2), jnp.asarray(dist(full))), {}
    if kind == "prob_dense":
        return (fl(dist(full)), jnp.asarray(dist(full))), {}
    if kind == "binary":
        return (fl(r.standard_normal(full) * 2),
                jnp.asarray(r.uniform(0, 1, full), jnp.float32)), {}
    if kind == "prob_binary":
        return (fl(r.uniform(0.05, 0.95, full)),
                jnp.asarray(r.uniform(0, 1, full), jnp.float32)), {}
    if kind == "pm1":
        return (fl(r.standard_normal(full) * 2),
                jnp.asarray(r.choice([-1.0, 1.0], full), jnp.float32)), {}
    if kind == "linear":
        return (fl(r.standard_normal((*batch_shape, hidden))), ints(),
                fl(r.standard_normal((hidden, num_classes)))), {}
    raise KeyError(name)


