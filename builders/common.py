"""What the builder modules share: a multi-result node as one `Tensor` per result."""

from __future__ import annotations

from typing import Any

from ..frontend import Tensor
from ..ir.ops import Op, make, results_of


def results(node: Any) -> tuple[Tensor, ...]:
    """One `Tensor` per result of a multi-result node (attention with lse, projection, ...)."""
    return tuple(Tensor(make(Op.RESULT, [node], index=i)) for i in range(len(results_of(node))))
