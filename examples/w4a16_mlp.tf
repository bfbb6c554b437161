# The decoder MLP of decoder_mlp.tf with AWQ int4 weights (W4A16): gate/up/down weights are int4 codes packed
# 8 to an i32 along N in AWQ's nibble order, zero points packed the same way, f16 scales per group of G=128
# rows. Each dequantize is the B loader of its GEMM: three kernels besides the RMSNorm.
# T tokens, hidden H, intermediate I; the packed sizes are their own parameters (the text form has no size
# arithmetic): H8 = H/8, I8 = I/8, HG = H/128, IG = I/128. A small run:
#   tilefuse run examples/w4a16_mlp.tf --target cpu --set T=4 --set H=256 --set I=384 \
#       --set H8=32 --set I8=48 --set HG=2 --set IG=3
graph w4a16_mlp(T=16, H=4096, I=11008, H8=512, I8=1376, HG=32, IG=86) {
  %x = input f16[T, H]
  %norm_w = input f16[H]
  %qw_gate = input i32[H, I8]
  %qz_gate = input i32[HG, I8]
  %s_gate = input f16[HG, I]
  %qw_up = input i32[H, I8]
  %qz_up = input i32[HG, I8]
  %s_up = input f16[HG, I]
  %qw_down = input i32[I, H8]
  %qz_down = input i32[IG, H8]
  %s_down = input f16[IG, H]
  %xf = pointwise(%x) {expr=(cast f32 $0:f16)}
  %sq = pointwise(%xf) {expr=(mul $0:f32 $0:f32)}
  %ms = reduce(%sq) {op="mean", axes=[1], keepdim=true}
  %inv = pointwise(%ms) {expr=(rsqrt (add $0:f32 1e-06:f32))}
  %h = pointwise(%xf, %inv, %norm_w) {expr=(cast f16 (mul (mul $0:f32 $1:f32) (cast f32 $2:f16)))}
  %w_gate = dequantize(%qw_gate, %s_gate, %qz_gate) {bits=4, group_size=128, out_dtype=f16, pack_axis=1, pack_order=[0, 4, 1, 5, 2, 6, 3, 7], symmetric=false, zeros_packed=true}
  %w_up = dequantize(%qw_up, %s_up, %qz_up) {bits=4, group_size=128, out_dtype=f16, pack_axis=1, pack_order=[0, 4, 1, 5, 2, 6, 3, 7], symmetric=false, zeros_packed=true}
  %w_down = dequantize(%qw_down, %s_down, %qz_down) {bits=4, group_size=128, out_dtype=f16, pack_axis=1, pack_order=[0, 4, 1, 5, 2, 6, 3, 7], symmetric=false, zeros_packed=true}
  %gate = matmul(%h, %w_gate) {out_dtype=f16}
  %silu = pointwise(%gate) {expr=(mul $0:f16 (sigmoid $0:f16))}
  %up = matmul(%h, %w_up) {out_dtype=f16}
  %act = pointwise(%silu, %up) {expr=(mul $0:f16 $1:f16)}
  %down = matmul(%act, %w_down) {out_dtype=f16}
  %y = pointwise(%down, %x) {expr=(add $0:f16 $1:f16)}
  output y = %y
}
