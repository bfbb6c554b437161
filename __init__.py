"""tilefuse: an ahead-of-time kernel compiler and autotuner for small graphs of tensor ops."""

from typing import Any

from .frontend import (GraphBuilder, Tensor, abs, apply, cast, cos, exp, exp2, expand, gelu, layer_norm, log,
                       log1p, matmul, max, maximum, mean, min, minimum, permute, reduce, relu, reshape,
                       rms_norm, rsqrt, sigmoid, silu, sin, slice_, softmax, sqrt, sum, tanh, where)
from .builders import (AWQ_PACK_ORDER, NF4_CODEBOOK, attention, attention_backward, block_mask, causal_mask,
                       dequantize, dequantize_awq, dequantize_fp8_block, dequantize_nf4, document_mask,
                       page_summaries, paged_attention, paginate, per_head_mask, project_gaussians, quantize_kv,
                       rasterize_gaussians, rasterize_sparse_features, recent_cache, sddmm, sh_to_color,
                       sliding_window_mask, softcap_score,
                       softmax_threshold, sparse_24, sparse_bsr, sparse_csr, spmm, streaming_mask, strided_mask,
                       topk_block_mask)
from .builders import dequantize_fp8_act
from .builders import quantize, w8a8_linear
from .builders import project_gaussians_backward, rasterize_gaussians_backward, sh_to_color_backward, splat_backward
from .builders import sparse_linear, sparse_softmax
from .ir import Graph, ParseError, VerifyError, load_graph, parse_graph

__version__ = "0.1.0"

__all__ = ["Graph", "GraphBuilder", "ParseError", "Tensor", "VerifyError", "abs", "apply", "cast", "compile",
           "cos", "exp", "exp2", "expand", "gelu", "layer_norm", "load_graph", "log", "log1p", "matmul", "max",
           "maximum", "mean", "min", "minimum", "parse_graph", "permute", "reduce", "relu", "reshape",
           "rms_norm", "rsqrt", "sigmoid", "silu", "sin", "slice_", "softmax", "sqrt", "sum", "tanh", "where"]
__all__ += ["AWQ_PACK_ORDER", "NF4_CODEBOOK", "attention", "block_mask", "causal_mask", "dequantize",
            "dequantize_awq", "dequantize_fp8_block", "dequantize_nf4", "document_mask", "per_head_mask",
            "project_gaussians", "rasterize_gaussians", "sddmm", "sliding_window_mask", "softcap_score",
            "sparse_24", "sparse_bsr", "sparse_csr", "spmm", "streaming_mask", "strided_mask",
            "topk_block_mask"]
__all__ += ["page_summaries", "paged_attention", "paginate", "quantize_kv", "recent_cache"]
__all__ += ["attention_backward", "softmax_threshold"]
__all__ += ["dequantize_fp8_act"]
__all__ += ["quantize", "w8a8_linear"]
__all__ += ["project_gaussians_backward", "rasterize_gaussians_backward", "splat_backward"]
__all__ += ["rasterize_sparse_features", "sh_to_color", "sh_to_color_backward"]
__all__ += ["sparse_linear", "sparse_softmax"]


def compile(graph: Any, target: str = "cpu", **kw: Any) -> Any:  # noqa: A001 - the public verb
    """Compile a graph (or GraphBuilder) for `target` ("cpu", "interp", "sm_80", "sm_90"); keywords as
    compiler.compile_graph (configs, aot, db, cost_model, buckets), any other is a CompileOptionError."""
    from .compiler import check_compile_options, compile_graph

    check_compile_options(kw)
    return compile_graph(graph, target=target, **kw)
