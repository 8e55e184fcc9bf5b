/**
 * Exercise info_nce (notebook 3, CLIP): write CLIP's contrastive loss, symmetric InfoNCE.
 *
 * A batch holds N images and their N captions; pair i is image i with caption i. Each image must
 * pick its own caption among the N, and each caption its own image:
 *
 *   Î, T̂     = the embeddings divided by their L2 norms (per row)          [N, D]
 *   logits   = exp(logitScale) · Î · T̂ᵀ                                      [N, N]
 *   loss     = ½ · ( CE(rows of logits, diagonal) + CE(columns of logits, diagonal) )
 *
 * where CE(·, diagonal) is the cross-entropy of a softmax whose right answer is the diagonal entry,
 * averaged over the batch: row i is "which caption is image i's?", column j "which image is
 * caption j's?". logitScale is a log inverse temperature (CLIP starts at ln(1/0.07)); sdlab's own
 * clipLoss also caps exp(logitScale) at 100, which the checks never reach.
 *
 * Check it: npx sdlab check-exercise info_nce notebooks/exercises/info_nce.ts
 */
import * as tf from '@tensorflow/tfjs';

export function infoNCE(imageEmbeds: tf.Tensor2D, textEmbeds: tf.Tensor2D, logitScale: number): tf.Scalar {
  // TODO: normalise, build the [N, N] logits, average the two cross-entropies.
  throw new Error('TODO: implement infoNCE (symmetric cross-entropy of exp(logitScale)·Î·T̂ᵀ with the diagonal as targets)');
}
