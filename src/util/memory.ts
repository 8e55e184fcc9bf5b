/**
 * Between the phases of a long job (loading → denoising → decoding), memory that is free but held
 * for reuse — a backend's recycled tensor buffers, the C heap's free pages — goes back to the
 * system, so the next phase's buffers of other sizes do not pile up on top of it (SD 1.5 at
 * 512 px: README "Stable Diffusion", peak memory). The native backend installs the release when
 * it loads (util knows no backend: imports run downward); elsewhere this does nothing.
 */
let release: (() => void) | null = null;

export function setMemoryRelease(fn: (() => void) | null): void {
  release = fn;
}

/** Hands cached free memory back to the system (the next allocations pay for fresh pages once). */
export function releaseCachedMemory(): void {
  release?.();
}
