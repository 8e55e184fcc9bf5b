/**
 * The pieces of `sdlab eval`'s hardened metric, against closed forms and hand-worked cases:
 *   - the degradations of the sanity table: Gaussian blur of an impulse is the outer product of
 *     exp(−x²/2σ²) weights (written out here, not taken from the code), ink is conserved away
 *     from the border, noise has the asked spread, repeats repeat;
 *   - the multi-layer FID: one layer is the plain Fréchet distance; a layer that is another one
 *     scaled by 3 gets weight 1/9 and adds exactly as much as the original; weights come from the
 *     reference set only;
 *   - the near-duplicate rate on vectors whose cosines are worked out by hand.
 */
import { describe, it, expect } from 'vitest';
import { gaussianBlur, gaussianKernel, pixelNoise, repeatImages } from '../src/eval/degrade.ts';
import { type FeatureGroup, fidReference, multiLayerFid, nearDuplicateRate } from '../src/eval/features.ts';
import { featureStats, frechetDistance } from '../src/eval/fid.ts';
import { Random } from '../src/util/random.ts';

describe('degradations', () => {
  it('blurs an impulse into the outer product of Gaussian weights, conserving ink', () => {
    const size = 32;
    const img = new Float32Array(size * size).fill(-1);
    img[16 * size + 15] = 1; // one pixel of full ink ([0, 1] value 1)
    for (const sigma of [0.75, 1.5]) {
      const out = gaussianBlur(img, 1, size, sigma);
      const r = Math.ceil(3 * sigma);
      let z = 0;
      for (let i = -r; i <= r; i++) z += Math.exp(-(i * i) / (2 * sigma * sigma));
      let ink = 0;
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const unit = (out[y * size + x] + 1) / 2;
          ink += unit;
          const dy = y - 16, dx = x - 15;
          const want = Math.abs(dy) <= r && Math.abs(dx) <= r ? (Math.exp(-(dy * dy) / (2 * sigma * sigma)) * Math.exp(-(dx * dx) / (2 * sigma * sigma))) / (z * z) : 0;
          expect(unit).toBeCloseTo(want, 6);
        }
      }
      expect(ink).toBeCloseTo(1, 5);
    }
    const k = gaussianKernel(0.75);
    expect(k.length).toBe(2 * 3 + 1);
    expect(k.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(k[2]).toBeCloseTo(k[4], 15);
  });

  it('a constant image stays constant inside and darkens only at the border (background beyond the edge)', () => {
    const size = 16;
    const img = new Float32Array(size * size).fill(0); // [0, 1] value 0.5 everywhere
    const out = gaussianBlur(img, 1, size, 1);
    expect(out[8 * size + 8]).toBeCloseTo(0, 6);
    expect(out[0]).toBeLessThan(-0.4); // a corner keeps about a quarter: 0.5·(~0.6)² → below −0.4 in [-1, 1]
  });

  it('pixel noise: + N(0, σ²) on the [0, 1] scale, clipped', () => {
    const n = 20000;
    const mid = new Float32Array(n).fill(0); // 0.5 on the [0, 1] scale: no clipping at σ 0.1
    const out = pixelNoise(mid, 0.1, new Random(1));
    const unit = Array.from(out, (v) => (v + 1) / 2);
    const mean = unit.reduce((a, b) => a + b, 0) / n;
    const sd = Math.sqrt(unit.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
    expect(mean).toBeCloseTo(0.5, 2);
    expect(sd).toBeGreaterThan(0.097);
    expect(sd).toBeLessThan(0.103);
    const black = pixelNoise(new Float32Array(1000).fill(-1), 0.1, new Random(2));
    expect(Math.min(...black)).toBe(-1); // clipped at 0 on the [0, 1] scale
    expect(black.filter((v) => v === -1).length).toBeGreaterThan(400); // about half
  });

  it('repeats the first images, each `times` in a row', () => {
    const px = 2;
    const imgs = Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3]);
    expect(Array.from(repeatImages(imgs, px, 2, 3, 7))).toEqual([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]);
  });
});

/** n Gaussian rows of dim d with mean `shift`. */
function gaussianRows(n: number, d: number, rng: Random, shift = 0, scale = 1): Float32Array {
  return Float32Array.from({ length: n * d }, () => shift + scale * rng.normal());
}

describe('multi-layer FID', () => {
  const n = 200, d = 4;
  const rng = new Random(7);
  const refA = gaussianRows(n, d, rng);
  const other = gaussianRows(n, d, rng, 0.5, 1.3);

  it('with one layer it is the plain Fréchet distance', () => {
    const ref = fidReference([{ name: 'f', dim: d, data: refA }], n);
    const got = multiLayerFid(ref, [{ name: 'f', dim: d, data: other }], n);
    const want = frechetDistance(featureStats(refA, n, d), featureStats(other, n, d)).fid;
    expect(ref.weights).toEqual([1]);
    expect(got.fid).toBeCloseTo(want, 9);
    expect(got.featureLayerOnly).toBeCloseTo(want, 9);
    expect(got.perLayer).toHaveLength(1);
  });

  it('a layer scaled by 3 gets weight 1/9 and counts exactly as much as the unscaled one', () => {
    const times3 = (x: Float32Array) => x.map((v) => 3 * v);
    const groupsOf = (x: Float32Array): FeatureGroup[] => [{ name: 'f', dim: d, data: x }, { name: 'g', dim: d, data: times3(x) }];
    const ref = fidReference(groupsOf(refA), n);
    expect(ref.weights[1]).toBeCloseTo(1 / 9, 9);
    const got = multiLayerFid(ref, groupsOf(other), n);
    expect(got.perLayer[1]).toBeCloseTo(got.perLayer[0], 6);
    expect(got.fid).toBeCloseTo(2 * got.featureLayerOnly, 6);
    // The weights are the reference's: scoring a set that is wider in the second layer does not change them.
    const wide = multiLayerFid(ref, [{ name: 'f', dim: d, data: other }, { name: 'g', dim: d, data: other.map((v) => 30 * v) }], n);
    expect(wide.perLayer[1]).toBeGreaterThan(10 * got.perLayer[1]);
  });
});

describe('near-duplicate rate', () => {
  it('counts the images with another at cosine ≥ 0.995 in the same set', () => {
    // Rows (2-d): a = (1, 0); b = (1, 0.05): cos(a, b) = 1/√1.0025 ≈ 0.99875 → twins.
    // c = (0, 1); e = (0.1, 1): cos = 1/√1.01 ≈ 0.99504 → twins. f = (−1, 0): alone. g = (0.7, 0.7): alone.
    const rows = [1, 0, 1, 0.05, 0, 1, 0.1, 1, -1, 0, 0.7, 0.7];
    const group: FeatureGroup = { name: 'f', dim: 2, data: Float32Array.from(rows) };
    expect(nearDuplicateRate([group], 6, [1])).toBeCloseTo(4 / 6, 12);
    expect(nearDuplicateRate([group], 6, [1], 0.999)).toBe(0);
    expect(nearDuplicateRate([group], 6, [1], 0.998)).toBeCloseTo(2 / 6, 12);
  });

  it('weights scale the layers before the cosine', () => {
    // Two layers: the first identical for both images, the second opposite. Weighted 1:1 the
    // cosine is 0; with the second layer weighted 0 they are twins.
    const l1: FeatureGroup = { name: 'a', dim: 1, data: Float32Array.from([1, 1]) };
    const l2: FeatureGroup = { name: 'b', dim: 1, data: Float32Array.from([1, -1]) };
    expect(nearDuplicateRate([l1, l2], 2, [1, 1])).toBe(0);
    expect(nearDuplicateRate([l1, l2], 2, [1, 0])).toBe(1);
  });
});
