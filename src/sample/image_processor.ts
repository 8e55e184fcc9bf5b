/**
 * The init image and mask of img2img / inpainting, prepared as diffusers v0.24's VaeImageProcessor
 * prepares PIL images (what `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`
 * do with a PNG a user opened with PIL):
 *
 *   size     img2img: the image's own size, each side rounded DOWN to a multiple of the VAE factor
 *            f (8 for SD) — `get_default_height_width`; inpainting: height/width, default the
 *            UNet's sample_size × f (512 for SD 1.5), NOT the image's size. sdlab's --height/--width
 *            set the size for both (diffusers 0.24's img2img has no such arguments).
 *   resize   when the image is not that size: PIL's Image.resize(LANCZOS) to exactly that size —
 *            a stretch, no crop, aspect ratio not kept (0.24 has no resize_mode) — reproduced
 *            here bit for bit (`pilResizeLanczos`: Pillow's two-pass 8-bit fixed-point resampler).
 *   image    RGB u8 → u8/255·2 − 1 in float32, [1, H, W, 3] (sdlab's NHWC; diffusers' NCHW).
 *   mask     convert('L') (PIL's luma for colour masks), resized the same way, u8/255, then
 *            binarised at 0.5: 127 keeps, 128 repaints, 1 (white) = repaint; soft edges are lost.
 *
 * PNGs come through src/io/png.ts (size-bounded); alpha is dropped as PIL's convert('RGB') drops it.
 */
import { readPng } from '../io/png.ts';

/** 8-bit pixels, HWC. */
export interface U8Image {
  data: Uint8Array;
  height: number;
  width: number;
  channels: 1 | 3;
}

/** A PNG as RGB u8 (alpha dropped, grey repeated: PIL's convert('RGB')). */
export function readRgbImage(file: string): U8Image {
  const { width, height, data } = readPng(file);
  const out = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    out[3 * i] = data[4 * i];
    out[3 * i + 1] = data[4 * i + 1];
    out[3 * i + 2] = data[4 * i + 2];
  }
  return { data: out, height, width, channels: 3 };
}

/** A PNG as grey u8: PIL's convert('L') (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16; grey PNGs unchanged). */
export function readGreyImage(file: string): U8Image {
  const { width, height, data } = readPng(file);
  const out = new Uint8Array(width * height);
  for (let i = 0; i < width * height; i++) out[i] = (data[4 * i] * 19595 + data[4 * i + 1] * 38470 + data[4 * i + 2] * 7471 + 0x8000) >>> 16;
  return { data: out, height, width, channels: 1 };
}

/**
 * The processing size of an image (VaeImageProcessor.get_default_height_width): the given height
 * and width, else the image's, each rounded down to a multiple of `f`.
 */
export function processingSize(image: { height: number; width: number }, f: number, height?: number, width?: number): { height: number; width: number } {
  const h = height ?? image.height;
  const w = width ?? image.width;
  return { height: h - (h % f), width: w - (w % f) };
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampler (libImaging/Resample.c), for LANCZOS on 8-bit images

const PRECISION_BITS = 32 - 8 - 2;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

/** Pillow's truncated-sinc Lanczos kernel, support 3. */
function lanczos(x: number): number {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input index and integer weights. */
function coefficients(inSize: number, outSize: number): { first: Int32Array; weights: number[][] } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const first = new Int32Array(outSize);
  const weights: number[][] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k: number[] = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const v = lanczos((x + xmin - center + 0.5) * ss);
      k.push(v);
      ww += v;
    }
    first[xx] = xmin;
    weights.push(k.map((v) => {
      const n = ww !== 0 ? v / ww : v;
      return Math.trunc(n < 0 ? -0.5 + n * (1 << PRECISION_BITS) : 0.5 + n * (1 << PRECISION_BITS));
    }));
  }
  return { first, weights };
}

function clip8(v: number): number {
  if (v >= 1 << PRECISION_BITS << 8) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/**
 * PIL's `image.resize((width, height), Image.LANCZOS)` on an 8-bit image, bit for bit: a
 * horizontal pass (when the width changes), its result rounded to u8, then a vertical pass.
 */
export function pilResizeLanczos(img: U8Image, width: number, height: number): U8Image {
  const c = img.channels;
  let src = img.data;
  let [w, h] = [img.width, img.height];
  if (width !== w) {
    const { first, weights } = coefficients(w, width);
    const out = new Uint8Array(width * h * c);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < width; xx++) {
        const k = weights[xx];
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < k.length; x++) ss += src[(y * w + first[xx] + x) * c + ch] * k[x];
          out[(y * width + xx) * c + ch] = clip8(ss);
        }
      }
    }
    [src, w] = [out, width];
  }
  if (height !== h) {
    const { first, weights } = coefficients(h, height);
    const out = new Uint8Array(w * height * c);
    for (let yy = 0; yy < height; yy++) {
      const k = weights[yy];
      for (let x = 0; x < w; x++) {
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < k.length; y++) ss += src[((first[yy] + y) * w + x) * c + ch] * k[y];
          out[(yy * w + x) * c + ch] = clip8(ss);
        }
      }
    }
    [src, h] = [out, height];
  }
  return { data: src === img.data ? img.data.slice() : src, height: h, width: w, channels: c };
}

// ---------------------------------------------------------------------------------------------
// preprocess

const f32 = Math.fround;

/** The init image for the VAE: resized to height × width if needed, u8/255·2 − 1 (float32 as numpy computes it), NHWC [1, H, W, 3]. */
export function preprocessImage(img: U8Image, height: number, width: number): { data: Float32Array; shape: [1, number, number, 3] } {
  if (img.channels !== 3) throw new Error('preprocessImage: expected an RGB image.');
  const r = img.height === height && img.width === width ? img : pilResizeLanczos(img, width, height);
  const out = new Float32Array(r.data.length);
  for (let i = 0; i < out.length; i++) out[i] = f32(2 * f32(r.data[i] / 255) - 1);
  return { data: out, shape: [1, height, width, 3] };
}

/** The inpainting mask: resized to height × width if needed, u8/255 binarised at 0.5 (1 = repaint), NHWC [1, H, W, 1]. */
export function preprocessMask(img: U8Image, height: number, width: number): { data: Float32Array; shape: [1, number, number, 1] } {
  if (img.channels !== 1) throw new Error('preprocessMask: expected a grey image.');
  const r = img.height === height && img.width === width ? img : pilResizeLanczos(img, width, height);
  const out = new Float32Array(r.data.length);
  for (let i = 0; i < out.length; i++) out[i] = f32(r.data[i] / 255) >= 0.5 ? 1 : 0;
  return { data: out, shape: [1, height, width, 1] };
}
