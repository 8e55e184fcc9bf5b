/** Float64 pieces of the InfoNCE references (test/clip_model.test.ts, test/train-clip.test.ts). */

/** logits[i][j] = s · ⟨img_i, txt_j⟩ with s = exp(logitScale) capped at 100, as CLIP caps it. */
export function scaledLogits(img: number[][], txt: number[][], logitScale: number): number[][] {
  const s = Math.exp(Math.min(logitScale, Math.log(100)));
  return img.map((a) => txt.map((b) => s * a.reduce((acc, v, k) => acc + v * b[k], 0)));
}

/** log Σ exp(x), shifted by the maximum. */
export function logSumExp(xs: number[]): number {
  const m = Math.max(...xs);
  return m + Math.log(xs.reduce((acc, x) => acc + Math.exp(x - m), 0));
}
