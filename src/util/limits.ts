/**
 * Size limits: the one home of the bounds sdlab puts on what an input may ask for, so that a
 * small file or flag cannot make it allocate without end. Each limit is far above what a real
 * model needs and says why it is where it is.
 */

/**
 * The largest image side (pixels) sdlab generates: 2048. Stable Diffusion 1.x is trained at 512
 * (768 for SD 2); at 2048×2048 the VAE decoder's full-resolution activations alone are
 * 2048·2048·128 floats (2 GiB) per image, and at 4096 they no longer fit in one typed array.
 */
export const MAX_IMAGE_SIDE = 2048;
