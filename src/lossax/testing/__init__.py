"""Check your own losses the way lossax checks its kernels.

Three kinds of tools:

* **float64 NumPy oracles** (:mod:`lossax.testing.oracles`), one for every lossax loss,
  with the same names and arguments
  (``lossax.testing.softmax_cross_entropy_with_integer_labels(logits, labels, ...)``).
  They are written from the formulas with NumPy in float64, independently of the JAX
  kernels, and with ``return_grad=True`` also give the analytic gradient of the summed
  output with respect to the first argument.  Limits are taken where the formula alone
  is undefined but the loss is not: a target of 0 on a class whose logit is ``-inf``
  contributes 0, and logits of ``+inf`` are treated as equal, infinitely large values
  (the softmax is uniform over them).
* :func:`check_custom_vjp` (:mod:`lossax.testing.checks`): finite differences
  (``jax.test_util.check_grads``, reverse mode by default, forward mode too for a
  ``jax.custom_jvp``, up to second order) in float64, and optionally ``jax.grad``
  against a plain reference implementation, for losses with hand-written derivatives.
* Error measures in units of a dtype's epsilon (:func:`ulp_error`) and the adversarial
  numerics table (:func:`adversarial_table`, :mod:`lossax.testing.adversarial`), printed
  as markdown by::

      python -W ignore::RuntimeWarning -m lossax.testing adversarial-table

Examples:
  >>> import numpy as np
  >>> from lossax import testing
  >>> logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
  >>> loss, grad = testing.softmax_cross_entropy_with_integer_labels(
  ...     logits, np.array([1, 0]), return_grad=True)
  >>> print(loss.round(4))  # log 4, log(e^2 + 3) - 2
  [1.3863 0.3408]
  >>> print(grad[0])  # softmax(x) - onehot(y)
  [ 0.25 -0.75  0.25  0.25]
"""

from . import oracles
from .adversarial import AdversarialCase as AdversarialCase
from .adversarial import adversarial_cases as adversarial_cases
from .adversarial import adversarial_table as adversarial_table
from .adversarial import evaluate_case as evaluate_case
from .adversarial import format_table as format_table
from .adversarial import main as main
from .checks import check_custom_vjp as check_custom_vjp
from .checks import ulp_error as ulp_error
from .oracles import *  # noqa: F403  (every oracle: oracles.__all__)

__all__ = sorted([
    "AdversarialCase",
    "adversarial_cases",
    "adversarial_table",
    "check_custom_vjp",
    "format_table",
    "main",
    "ulp_error",
    *oracles.__all__,
])
