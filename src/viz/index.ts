/**
 * Pictures: PNG image grids, animated GIFs and loss curves, all written atomically
 * (util/fs.ts writeFileAtomic), drawn into a small RGBA Raster with a built-in 3x5 font.
 */
export { Raster, textWidth, GLYPH_WIDTH, GLYPH_HEIGHT, type RGB, type FloatImage } from './raster.ts';
export { saveImageGrid, renderGrid, gridLayout, encodePng, savePng, textChunk, toFloatImages, type GridOptions, type GridLayout, type ImagesInput, type PngWriteOptions } from './png.ts';
export { saveGif, encodeGif, type GifOptions } from './gif.ts';
export { saveLossCurve, renderLossCurve, niceTicks, formatTick, PALETTE, type Series, type PlotOptions } from './plot.ts';
