"""Builders for the ops beyond the pointwise/reduction/matmul core (those are in frontend.py), one
module per op family: attention and its masks, dequantize, sparse, Gaussian splatting, paged decode."""

from __future__ import annotations

from .attention import attention, attention_backward
from .masks import (block_mask, causal_mask, document_mask, per_head_mask, sliding_window_mask, softcap_score,
                    softmax_threshold, streaming_mask, strided_mask, topk_block_mask)
from .paged import page_summaries, paged_attention, paginate, quantize_kv, recent_cache
from .quantize import quantize, w8a8_linear
from .quant import AWQ_PACK_ORDER, NF4_CODEBOOK, dequantize, dequantize_awq, dequantize_fp8_block, dequantize_nf4
from .quant import dequantize_fp8_act
from .sparse import sddmm, sparse_24, sparse_bsr, sparse_csr, sparse_linear, sparse_softmax, spmm
from .splat import (project_gaussians, project_gaussians_backward, rasterize_gaussians, rasterize_gaussians_backward,
                    rasterize_sparse_features, sh_to_color, sh_to_color_backward, splat_backward)

__all__ = ["AWQ_PACK_ORDER", "NF4_CODEBOOK", "attention", "attention_backward", "block_mask", "causal_mask",
           "dequantize", "dequantize_awq", "dequantize_fp8_block", "dequantize_nf4", "document_mask",
           "page_summaries", "paged_attention", "paginate", "per_head_mask", "project_gaussians", "quantize_kv",
           "rasterize_gaussians", "recent_cache", "sddmm", "softcap_score", "softmax_threshold", "sparse_24",
           "rasterize_sparse_features",
           "sh_to_color", "sparse_bsr", "sparse_csr", "spmm", "streaming_mask", "strided_mask", "sliding_window_mask",
           "topk_block_mask"]
__all__ += ["dequantize_fp8_act", "sh_to_color_backward"]
__all__ += ["quantize", "w8a8_linear"]
__all__ += ["project_gaussians_backward", "rasterize_gaussians_backward", "splat_backward"]
__all__ += ["sparse_linear", "sparse_softmax"]
