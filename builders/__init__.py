"""Builders for the ops beyond the pointwise/reduction/matmul core (those are in frontend.py), one
module per op family: attention and its masks, dequantize, sparse, Gaussian splatting, paged decode."""

from __future__ import annotations

from .attention import attention, attention_backward
from .masks import (block_mask, causal_mask, document_mask, per_head_mask, sliding_window_mask, softcap_score,
                    softmax_threshold, streaming_mask, strided_mask, topk_block_mask)
from .paged import page_summaries, paged_attention, paginate, quantize_kv, recent_cache
from .quant import AWQ_PACK_ORDER, NF4_CODEBOOK, dequantize, dequantize_awq, dequantize_fp8_block, dequantize_nf4
from .sparse import sddmm, sparse_24, sparse_bsr, sparse_csr, sparse_linear, sparse_softmax, spmm
from .splat import project_gaussians, rasterize_gaussians

__all__ = ["AWQ_PACK_ORDER", "NF4_CODEBOOK", "attention", "attention_backward", "block_mask", "causal_mask",
           "dequantize", "dequantize_awq", "dequantize_fp8_block", "dequantize_nf4", "document_mask",
           "page_summaries", "paged_attention", "paginate", "per_head_mask", "project_gaussians", "quantize_kv",
           "rasterize_gaussians", "recent_cache", "sddmm", "softcap_score", "softmax_threshold", "sparse_24",
           "sparse_bsr", "sparse_csr", "sparse_linear", "sparse_softmax", "spmm", "streaming_mask", "strided_mask",
           "sliding_window_mask", "topk_block_mask"]
