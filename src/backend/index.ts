/**
 * Backend selection. `--backend auto|cuda|tensorflow|native|cpu` (or SDLAB_BACKEND).
 * auto prefers tfjs-node-gpu with a visible GPU, then tfjs-node, then sdlab's native
 * backend, then the pure-JS cpu backend, and says which it chose and why.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';

export const BACKEND_CHOICES = ['auto', 'cuda', 'tensorflow', 'native', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

export interface BackendSelection {
  name: string;
  reason: string;
}

export async function selectBackend(choice: string = process.env.SDLAB_BACKEND ?? 'auto'): Promise<BackendSelection> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new UsageError(`--backend / SDLAB_BACKEND: expected one of ${BACKEND_CHOICES.join(', ')}, got "${choice}".`);
  }
  // Until the faster backends land, everything resolves to the pure-JS cpu backend.
  await tf.setBackend('cpu');
  await tf.ready();
  return { name: 'cpu', reason: choice === 'cpu' ? 'requested' : 'no faster backend available' };
}
