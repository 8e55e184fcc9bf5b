/**
 * PLACEHOLDER (helper "pipe"): the real torch-identical generator is written by helper "rng" and
 * replaces this file at the merge. Contract (brief i13common.md): `new TorchGenerator(seed)`;
 * `normalArray(n)` returns exactly torch.randn(n, generator=torch.Generator('cpu').manual_seed(seed)),
 * successive calls continuing the stream as successive torch.randn calls do.
 */
export class TorchGenerator {
  constructor(readonly seed: number) {
    throw new Error('TorchGenerator: not yet (placeholder until the rng helper\'s implementation is merged).');
  }

  normalArray(_n: number): Float32Array {
    throw new Error('TorchGenerator: not yet.');
  }
}
