"""Fused linear + softmax cross-entropy: the loss of ``x @ W`` without the logits.

One public function behind one dispatch (``api.IMPLEMENTATIONS``): ``"chunked"``
(the default: blocks of classes, tiles of rows, a custom VJP with O(N) residuals) and
``"reference"`` (materialises the logits; the test oracle and the forward-mode path).
"""

from .api import IMPLEMENTATIONS as IMPLEMENTATIONS
from .api import linear_softmax_cross_entropy as linear_softmax_cross_entropy

__all__ = ["IMPLEMENTATIONS", "linear_softmax_cross_entropy"]
