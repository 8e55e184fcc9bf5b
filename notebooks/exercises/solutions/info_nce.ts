/** Reference solution of the info_nce exercise (notebook 3). Check: npx sdlab check-exercise info_nce notebooks/exercises/solutions/info_nce.ts */
import * as tf from '@tensorflow/tfjs';

/** Symmetric InfoNCE (CLIP's loss): image i belongs with caption i, and no other in the batch. */
export function infoNCE(imageEmbeds: tf.Tensor2D, textEmbeds: tf.Tensor2D, logitScale: number): tf.Scalar {
  return tf.tidy(() => {
    const normalise = (x: tf.Tensor2D) => tf.div(x, tf.norm(x, 'euclidean', -1, true));
    const logits = tf.mul(tf.matMul(normalise(imageEmbeds), normalise(textEmbeds), false, true), Math.exp(logitScale)); // [N, N]
    const targets = tf.oneHot(tf.range(0, imageEmbeds.shape[0], 1, 'int32'), imageEmbeds.shape[0]); // the diagonal
    const imageToText = tf.losses.softmaxCrossEntropy(targets, logits); // each row: which caption?
    const textToImage = tf.losses.softmaxCrossEntropy(targets, tf.transpose(logits)); // each column: which image?
    return tf.div(tf.add(imageToText, textToImage), 2) as tf.Scalar;
  });
}
