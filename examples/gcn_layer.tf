# A GCN layer (Kipf & Welling): y = relu(A @ (X @ W) + b), A the graph's normalised adjacency in CSR
# (indptr [V+1], indices [E] = neighbour ids, weights [E] = edge weights), V = 512 nodes.
# X @ W is a matmul kernel; the aggregation, bias and relu are one spmm kernel (the sparse constructor
# is its prologue, the bias and relu its epilogue; rows ordered by degree on the device with SWIZZLE=1).
# Fed by `tilefuse run`, the structure is a random power-law graph (ir/sampling.power_law_structure:
# Pareto row degrees, a few hubs, many low-degree and some isolated nodes); from Python pass your own
# arrays (scipy's A.indptr, A.indices, A.data). The node count is written in the sparse attribute and
# the indptr shape (attributes do not take header parameters yet); E, F and H can be --set:
#   tilefuse run examples/gcn_layer.tf --target cpu --set F=32 --set H=16
graph gcn_layer(E=4096, F=64, H=32) {
  %indptr = input i32[513]
  %indices = input i32[E]
  %weights = input f32[E]
  %x = input f32[512, F]
  %w = input f32[F, H]
  %b = input f32[H]
  %adj = sparse(%indptr, %indices, %weights) {format="csr", shape=[512, 512]}
  %xw = matmul(%x, %w) {out_dtype=f32}
  %agg = spmm(%adj, %xw)
  %z = pointwise(%agg, %b) {expr=(add $0:f32 $1:f32)}
  %y = pointwise(%z) {expr=(max $0:f32 0.0:f32)}
  output y = %y
}
