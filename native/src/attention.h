// Fused scaled-dot-product attention: out = softmax(scale · Q Kᵀ) V for every batch entry and
// head, in the [B, L, heads·D] layout the models' projections produce (no head transposes).
#pragma once

namespace sdlab {

struct AttnShape {
  long B, Lq, Lk, heads, D, Dv;  // q [B, Lq, heads·D], k [B, Lk, heads·D], v [B, Lk, heads·Dv]
};

// out [B, Lq, heads·Dv]. The [Lq, Lk] score matrix is never stored: each task takes a block of
// query rows of one (batch, head) and walks the keys in tiles, keeping a running row maximum and
// sum (the online softmax of Milakov & Gimelshein 2018, as FlashAttention uses it), so memory is
// O(rows · tile) per thread and the scores stay in cache.
void attention(const AttnShape& s, const float* q, const float* k, const float* v, float scale, float* out);

}  // namespace sdlab
