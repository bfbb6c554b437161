"""What is computed: dtypes, scalar expressions, graph ops, text form, verifier, reference."""

from . import dtypes, expr
from .graph import Graph
from .ops import Node, Op, VerifyError, make
from .text import ParseError, load_graph, parse_expr, parse_graph

# Later-issue op families: imported for their registrations (inference + reference semantics).
from . import attention_op, quant_op, sparse_op, splat_op  # noqa: E402,F401
from . import paged_attention_op  # noqa: E402,F401
from . import attention_bwd_op  # noqa: E402,F401
from . import quantize_op  # noqa: E402,F401
from . import splat_bwd_op  # noqa: E402,F401
from . import splat_sh_op  # noqa: E402,F401
from . import verify_limits  # noqa: E402,F401  (the size rules of ir/limits.py, into ops.NODE_CHECKS)

__all__ = ["Graph", "Node", "Op", "ParseError", "VerifyError", "dtypes", "expr", "load_graph", "make",
           "parse_expr", "parse_graph"]
