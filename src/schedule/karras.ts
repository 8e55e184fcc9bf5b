/**
 * Karras sigmas (`use_karras_sigmas`, A1111's "Karras" samplers): the noise levels of
 * "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et al. 2022,
 * arXiv 2206.00364, eq. 5), ρ = 7,
 *
 *   σ_i = (σ_max^(1/ρ) + i/(n−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,   i = 0 .. n−1,
 *
 * which spend more of the n steps at low noise than an even spacing of timesteps does. The
 * model still takes a timestep, so each σ_i is mapped back to a (fractional) train timestep by
 * interpolating linearly in log σ between the two train timesteps whose σ bracket it (diffusers'
 * `_sigma_to_t`). Euler, Euler a and DPM++ 2M call these two; the numbers follow diffusers v0.24
 * (EulerDiscreteScheduler / DPMSolverMultistepScheduler): the ramp in float64, the log-σ table
 * in float32 as numpy holds it.
 */

import { npLinspace } from './base.ts';

const f32 = Math.fround;

/** ρ of Karras et al.: 7 (the value diffusers and k-diffusion use). */
export const KARRAS_RHO = 7;

/** n Karras sigmas from σ_max down to σ_min (eq. 5), float64. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const minInvRho = sigmaMin ** (1 / KARRAS_RHO);
  const maxInvRho = sigmaMax ** (1 / KARRAS_RHO);
  return npLinspace(0, 1, n).map((ramp) => (maxInvRho + ramp * (minInvRho - maxInvRho)) ** KARRAS_RHO);
}

/**
 * log σ_t per train timestep, as np.log of diffusers' float32 σ table: a float32 result, here
 * correctly rounded. numpy's SIMD float32 log is not always (1 ulp off on 190 of SD's 1000
 * entries on an AVX2 machine, and which ones depends on the CPU), so Euler's fractional Karras
 * timesteps can differ from diffusers' by one float32 ulp (≤ 6e-5); the σs do not.
 */
export function logSigmaTable(sigmas: ArrayLike<number>): Float64Array {
  return Float64Array.from(sigmas, (s) => f32(Math.log(s)));
}

/**
 * The fractional train timestep whose σ is `sigma` (diffusers' _sigma_to_t): the last t with
 * log σ_t ≤ log σ (at most T−2), then linear interpolation in log σ towards t+1, clipped to
 * [t, t+1]. `logSigmas` is logSigmaTable's float32 table; the weight's denominator is float32
 * as numpy computes it from two float32 entries.
 */
export function sigmaToT(sigma: number, logSigmas: ArrayLike<number>): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  const T = logSigmas.length;
  let low = 0;
  for (let i = 0; i < T; i++) if (logSigma - logSigmas[i] >= 0) low = i;
  low = Math.min(low, T - 2);
  const lo = logSigmas[low];
  const hi = logSigmas[low + 1];
  const w = Math.min(1, Math.max(0, (lo - logSigma) / f32(lo - hi)));
  return (1 - w) * low + w * (low + 1);
}
