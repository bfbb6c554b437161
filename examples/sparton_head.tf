# The SPLADE/Sparton retrieval head: a vocabulary-sized score per document, the max over sequence
# positions of log1p(relu(h @ W + b)); h [B, S, D] are the encoder's hidden states, W [D, V] the
# vocabulary projection. One matmul kernel: each tile takes the max over its rows of the raw logits, a
# finishing launch combines the tiles' maxima and applies log1p(relu(. + b)) to the [B, V] result
# (monotone, so max and f commute), so the [B, S, V] logits are never written.
#   tilefuse show examples/sparton_head.tf
#   tilefuse run examples/sparton_head.tf --target interp --set S=37 --set V=100
graph sparton_head(B=2, S=128, D=64, V=1000) {
  %h = input f16[B, S, D]
  %w = input f16[D, V]
  %b = input f16[V]
  %logits = matmul(%h, %w) {out_dtype=f16}
  %biased = pointwise(%logits, %b) {expr=(add $0:f16 $1:f16)}
  %act = pointwise(%biased) {expr=(log1p (max $0:f16 0.0:f16))}
  %s = reduce(%act) {axes=[1], op="max"}
  output s = %s
}
