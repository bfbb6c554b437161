# An LServe-style attention layer: 32 query heads over 8 KV heads (GQA). Heads 0..15 are dense causal
# heads; heads 16..31 are streaming heads that see only 64 sink tokens and the 256 most recent tokens.
# The compiler derives the block sparsity (2 head patterns) and skips the empty key blocks.
# Check it under the interpreter: tilefuse run examples/streaming_attention.tf --target interp --set S=512 --set D=64
graph streaming_attention(B=1, S=4096, D=128) {
  %q = input f16[B, 32, S, D]
  %k = input f16[B, 8, S, D]
  %v = input f16[B, 8, S, D]
  %out = attention(%q, %k, %v) {mask_mod=(where (lt h:i32 16:i32) (le kv_idx:i32 q_idx:i32) (and (le kv_idx:i32 q_idx:i32) (or (lt kv_idx:i32 64:i32) (gt kv_idx:i32 (sub q_idx:i32 256:i32)))))}
  output out = %out
}
