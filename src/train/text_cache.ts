/**
 * The frozen text encoder's output per caption, for the UNet trainer: the encoder runs once per
 * distinct caption (there are ~1,300), and batches are gathered from the cache.
 *
 *   const text = new TextCache(textEncoder, tokenizer);
 *   const context = text.batch(['a thick 7', '', 'seven']);   // [3, L, D] lastHiddenState
 */
import * as tf from '@tensorflow/tfjs';
import type { TextEncoder } from '../clip/text_encoder.ts';
import type { Tokenizer } from '../clip/tokenizer.ts';

/**
 * The frozen text encoder's lastHiddenState per caption, computed once per distinct caption.
 * Each caption is encoded alone (batch 1), so the cached numbers do not depend on which captions
 * happened to be encoded together — a resumed run sees exactly the same vectors.
 */
export class TextCache {
  private readonly cache = new Map<string, Float32Array>();
  readonly length: number;
  readonly width: number;

  constructor(readonly textEncoder: TextEncoder, readonly tokenizer: Tokenizer) {
    this.length = tokenizer.maxLength;
    this.width = textEncoder.hiddenSize;
  }

  get size(): number {
    return this.cache.size;
  }

  get(caption: string): Float32Array {
    let v = this.cache.get(caption);
    if (!v) {
      const ids = this.tokenizer.encode(caption).inputIds;
      v = tf.tidy(() => this.textEncoder.forward(tf.tensor2d([ids], [1, ids.length], 'int32')).lastHiddenState.dataSync() as Float32Array);
      this.cache.set(caption, v);
    }
    return v;
  }

  /** [B, L, D] for `captions`. */
  batch(captions: readonly string[]): tf.Tensor3D {
    const per = this.length * this.width;
    const out = new Float32Array(captions.length * per);
    captions.forEach((c, k) => out.set(this.get(c), k * per));
    return tf.tensor3d(out, [captions.length, this.length, this.width]);
  }
}
