/** The tests' small VAE training run (tiny model, 8×8 digits from an IDX folder, batch 4, quiet). */
import type { AutoencoderKLConfig } from '../../src/autoencoder/index.ts';
import { TINY_VAE } from '../../src/train/presets.ts';
import type { VaeTrainOptions } from '../../src/train/vae.ts';

export function tinyVaeRun(runDir: string, dataDir: string, o: { epochs: number; limit: number; config?: Partial<AutoencoderKLConfig> }): VaeTrainOptions {
  return {
    runDir,
    seed: 5,
    epochs: o.epochs,
    batchSize: 4,
    lr: 3e-3,
    weightDecay: 0.01,
    warmupSteps: 2,
    decay: 'cosine',
    minLrRatio: 0.1,
    loss: 'mse',
    beta: 1e-4,
    preset: 'mnist',
    config: o.config ?? TINY_VAE,
    data: dataDir,
    limit: o.limit,
    gridSize: 16,
    quiet: true,
    handleSigint: false,
  };
}
