# A LLaMA-style decoder MLP block: RMSNorm -> gate/up GEMMs (+bias) -> SiLU(gate) * up -> down GEMM + residual.
# T tokens (dynamic: one compiled graph serves T = 1 .. 8192, 16 is the typical value), hidden H,
# intermediate I. Override sizes with --set, e.g. --set T=4 --set H=64 --set I=96 (T=4 makes T static).
graph decoder_mlp(T=dyn[1..8192, hint=16], H=4096, I=11008) {
  %x = input f16[T, H]
  %norm_w = input f16[H]
  %w_gate = input f16[H, I]
  %b_gate = input f16[I]
  %w_up = input f16[H, I]
  %b_up = input f16[I]
  %w_down = input f16[I, H]
  %xf = pointwise(%x) {expr=(cast f32 $0:f16)}
  %sq = pointwise(%xf) {expr=(mul $0:f32 $0:f32)}
  %ms = reduce(%sq) {op="mean", axes=[1], keepdim=true}
  %inv = pointwise(%ms) {expr=(rsqrt (add $0:f32 1e-06:f32))}
  %h = pointwise(%xf, %inv, %norm_w) {expr=(cast f16 (mul (mul $0:f32 $1:f32) (cast f32 $2:f16)))}
  %gate = matmul(%h, %w_gate) {out_dtype=f16}
  %gate_b = pointwise(%gate, %b_gate) {expr=(add $0:f16 $1:f16)}
  %silu = pointwise(%gate_b) {expr=(mul $0:f16 (sigmoid $0:f16))}
  %up = matmul(%h, %w_up) {out_dtype=f16}
  %up_b = pointwise(%up, %b_up) {expr=(add $0:f16 $1:f16)}
  %act = pointwise(%silu, %up_b) {expr=(mul $0:f16 $1:f16)}
  %down = matmul(%act, %w_down) {out_dtype=f16}
  %y = pointwise(%down, %x) {expr=(add $0:f16 $1:f16)}
  output y = %y
}
