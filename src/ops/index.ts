/**
 * sdlab's fused tensor ops, the lowest layer (it imports only tfjs): groupNorm, layerNorm, silu,
 * gelu, fusedAdamW and scaledDotProductAttention, each one kernel on a backend that has it (sdlab's 'native' backend) and
 * the plain tfjs composition on any other; and the kernel names/attributes a backend implements
 * them under. See fused.ts and kernel_names.ts. kernel_fixes.ts corrects a tfjs cpu kernel when the
 * ops load, so every model user gets it, whichever backend module it imports.
 *
 *   import { groupNorm, silu } from '../ops/index.ts';
 */
export * from './kernel_names.ts';
export * from './fused.ts';
export * from './attention.ts';
export { nearestSources } from './kernel_fixes.ts';
