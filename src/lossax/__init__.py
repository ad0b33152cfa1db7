"""lossax: numerically stable, fast, memory-lean loss kernels for JAX."""

from ._softmax import poly_loss_cross_entropy as poly_loss_cross_entropy
from ._softmax import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from ._softmax import softmax_cross_entropy as softmax_cross_entropy
from ._softmax import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)

__version__ = "0.1.0"

__all__ = [
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]
