/**
 * Optional native versions of plain array loops that sit below the backends (weight loading):
 * the native backend installs them when its addon loads, and the loops fall back to JavaScript
 * without them. util knows no backend; the backend calls setArrayAccel (imports run downward).
 */
export interface ArrayAccel {
  /** out[i] = the float16 bits src[i] as float32, exactly (out.length ≥ src.length). */
  halvesToFloats(src: Uint16Array, out: Float32Array): void;
}

let accel: ArrayAccel | null = null;

export function setArrayAccel(a: ArrayAccel | null): void {
  accel = a;
}

export function arrayAccel(): ArrayAccel | null {
  return accel;
}
