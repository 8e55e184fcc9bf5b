/**
 * The size limits sdlab enforces on what it reads, in one place. Each bounds memory or time that
 * a small input could otherwise make unbounded (a 3 MB PNG that decodes to 3.6 GB, a config line
 * that builds a billion layers); each is far above what any real model or image needs. Errors
 * state the limit they hit, and the README's reliability paragraph lists them.
 *
 *   if (layers > MAX_LAYERS_PER_BLOCK) fail(`layers_per_block ${layers} is over sdlab's limit of ${MAX_LAYERS_PER_BLOCK}`);
 */

/** Parameters of one model: 2 G (8 GB in float32). SD 1.x's UNet has 0.86 G, its VAE 0.08 G. */
export const MAX_MODEL_PARAMS = 2_000_000_000;

/** Resolution levels of a UNet / VAE / image encoder (entries of block_out_channels). SD: 4. */
export const MAX_BLOCKS = 8;

/** Resnets per level (layers_per_block) and transformer layers per block. SD: 2 and 1; SDXL's deepest: 10. */
export const MAX_LAYERS_PER_BLOCK = 16;

/** Transformer layers of a text encoder (num_hidden_layers). CLIP ViT-L: 12, OpenCLIP ViT-bigG: 32. */
export const MAX_ENCODER_LAYERS = 64;

/** Token positions of a text encoder (max_position_embeddings; attention is quadratic in it). CLIP: 77. */
export const MAX_TEXT_POSITIONS = 1024;

/** Timesteps of a noise schedule (num_train_timesteps; the tables are built eagerly). Everyone: 1000. */
export const MAX_TRAIN_TIMESTEPS = 100_000;

/** Side of an image read from a PNG, in pixels. */
export const MAX_IMAGE_SIDE = 4096;

/** Pixels of an image read from a PNG (16 Mpx = 4096 × 4096). */
export const MAX_IMAGE_PIXELS = 4096 * 4096;

/** Bytes of a PNG file (a 16 Mpx RGBA image at 16 bits per channel is 128 MB before compression). */
export const MAX_PNG_BYTES = 256 * 1024 * 1024;
/** A PNG text chunk (tEXt/zTXt/iTXt: --from-png's `parameters`) holds, or inflates to, at most this many bytes: a zlib bomb fails first. */
export const MAX_PNG_TEXT_BYTES = 4 * 1024 * 1024;

/**
 * Latent pixels (h × w) of one image the VAE encodes or decodes: 128 × 128, SD's latents at
 * 1024 × 1024 px. The VAE's mid-block attention costs time quadratic in them: the small MNIST
 * VAE decoded a 128 × 128 latent in 7 s and a 256 × 256 one in 94 s (2 CPU cores, native backend).
 */
export const MAX_LATENT_PIXELS = 128 * 128;

/** Images in one latents file given to `decode` (it writes one PNG per image): 4096. */
export const MAX_DECODE_IMAGES = 4096;

/**
 * The largest image side (pixels) txt2img generates: 2048, within MAX_LATENT_PIXELS as well
 * (Stable Diffusion's VAE works at 1/8 scale, so at most 1024 × 1024 pixels in all). SD 1.x is
 * trained at 512 (SD 2 at 768); past 4096 a side the decoder's activations no longer fit in one
 * typed array.
 */
export const MAX_GENERATED_SIDE = 2048;

/**
 * Entries of a zip archive (a torch `.ckpt`): 1 M. An SD 1.x checkpoint holds ~1,100 tensors,
 * one with its EMA copy and optimizer state a few thousand.
 */
export const MAX_ZIP_ENTRIES = 1_000_000;

/** Bytes of a zip archive's central directory (read whole): 128 MB, ~1 M entries with long names. */
export const MAX_ZIP_DIRECTORY_BYTES = 128 * 1024 * 1024;

/** Bytes of a checkpoint's pickle (data.pkl, read whole): 64 MB. SD 1.x's is ~0.2 MB (tensors live outside it). */
export const MAX_PICKLE_BYTES = 64 * 1024 * 1024;

/** Open MARKs (nested tuples/lists/dicts under construction) in a pickle: 64. A state dict needs 3. */
export const MAX_PICKLE_NESTING = 64;

/** Dimensions of one tensor in a checkpoint: 32 (PyTorch's own limit is 64; SD's weights have at most 4). */
export const MAX_TENSOR_DIMS = 32;

/**
 * Elements of one checkpoint tensor that is a view with more elements than its storage holds
 * (an expanded tensor: a stride of 0 repeats values): 16 M (64 MB in float32). CLIP's
 * position_ids are such a view; a hostile one could otherwise ask for 2^60 values from one byte.
 */
export const MAX_EXPANDED_ELEMENTS = 16 * 1024 * 1024;
