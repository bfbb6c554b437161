# A W8A8 int8 linear layer with bias and SiLU, SmoothQuant/vLLM style: the activations are quantized per
# token at run time (absmax / 127, codes in [-127, 127], round half to even), the weights are i8 codes per
# output channel with f32 scales (constants). Two kernels: the quantize row kernel (absmax reduction and
# codes in one pass) and an i8 x i8 -> i32 GEMM whose epilogue applies both scales, the bias and the SiLU
# (IMMA on sm_80, IGMMA on sm_90). A small run:
#   tilefuse run examples/w8a8_linear.tf --target cpu --set T=5 --set K=256 --set N=72
graph w8a8_linear(T=16, K=4096, N=11008) {
  %x = input f16[T, K]
  %q_w = input i8[K, N]
  %s_w = input f32[N]
  %bias = input f16[N]
  %xq = quantize(%x) {out_dtype=i8, group_size=-1}
  %q_x = result(%xq) {index=0}
  %s_x = result(%xq) {index=1}
  %acc = matmul(%q_x, %q_w) {out_dtype=i32}
  %y = pointwise(%acc, %s_x, %s_w, %bias) {expr=(add (mul (mul (cast f32 $0:i32) $1:f32) $2:f32) (cast f32 $3:f16))}
  %act = pointwise(%y) {expr=(cast f16 (mul $0:f32 (sigmoid $0:f32)))}
  output y = %act
}
