"""lossax: numerically stable, fast, memory-lean loss kernels for JAX."""

from . import sharded as sharded
from . import testing as testing
from ._checked import checked as checked
from ._hinge import hinge_loss as hinge_loss
from ._hinge import multiclass_hinge_loss as multiclass_hinge_loss
from ._hinge import multiclass_perceptron_loss as multiclass_perceptron_loss
from ._hinge import multiclass_squared_hinge_loss as multiclass_squared_hinge_loss
from ._hinge import perceptron_loss as perceptron_loss
from ._hinge import squared_hinge_loss as squared_hinge_loss
from ._metrics import top_k_accuracy as top_k_accuracy
from ._probabilities import binary_cross_entropy as binary_cross_entropy
from ._probabilities import categorical_cross_entropy as categorical_cross_entropy
from ._sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from ._sigmoid import sigmoid_focal_loss as sigmoid_focal_loss
from ._softmax import poly_loss_cross_entropy as poly_loss_cross_entropy
from ._softmax import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from ._softmax import softmax_cross_entropy as softmax_cross_entropy
from ._softmax import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from .fused import linear_softmax_cross_entropy as linear_softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "checked",
    "hinge_loss",
    "linear_softmax_cross_entropy",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_squared_hinge_loss",
    "perceptron_loss",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "squared_hinge_loss",
    "top_k_accuracy",
]
