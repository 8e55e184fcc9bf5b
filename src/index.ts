/**
 * sdlab as a library: `import { ... } from 'sdlab'`. The names follow the story of Stable
 * Diffusion — a TextEncoder turns the prompt's tokens into vectors, a UNet predicts the noise in
 * the latents at a timestep, a Scheduler removes it step by step (classifier-free guidance pushes
 * it toward the text), and an Autoencoder decodes the latents into pixels — and each part is
 * also trainable here on digits.
 *
 *   import { useBackend, loadRun, saveImageGrid } from 'sdlab';
 *   await useBackend();                                         // native SIMD backend, else cpu
 *   const { pipeline, sampling } = loadRun('runs/default');     // after `npx sdlab train all`
 *   const { images } = pipeline.call({ prompt: 'a handwritten 7', numInferenceSteps: sampling.settings.steps,
 *                                      guidanceScale: sampling.settings.guidance, seed: 0 });
 *   await saveImageGrid('seven.png', images, { scale: 4 });     // README "Library" has it as a file to run
 *
 * Everything here is also reachable by folder (src/<folder>/index.ts); this file names the
 * public surface, concept by concept.
 */
import { type BackendSelection, selectBackend } from './backend/index.ts';

// ---- tensors' backends
export { selectBackend, probeBackend, BACKEND_CHOICES, type BackendChoice, type BackendSelection } from './backend/index.ts';
/** Selects the fastest available backend (`auto`: tfjs-node-gpu, tfjs-node, native, cpu) or the one named. */
export async function useBackend(choice?: string): Promise<BackendSelection> {
  return selectBackend(choice);
}

// ---- the text encoder (CLIP): prompt → tokens → one vector per token
export * from './clip/index.ts';

// ---- the UNet: noise prediction at a timestep, cross-attending to the text
export * from './unet/index.ts';

// ---- the autoencoder (VAE): pixels ↔ latents
export * from './autoencoder/index.ts';

// ---- noise schedules and schedulers (forward noising; DDPM, DDIM, PNDM, Euler, Euler a, DPM++ 2M, LCM; Karras sigmas)
export * from './schedule/index.ts';

// ---- layers (attention, ResNet blocks, timestep embedding, modules) and fused ops
export * from './nn/index.ts';
export { groupNorm, layerNorm, silu, gelu } from './ops/index.ts';

// ---- pipelines: text → image, and loading trained runs, diffusers folders, single files
export * from './sample/index.ts';
export { loadRunPipeline as loadRun } from './sample/load.ts';

// ---- training (trainers for each part, the shared loop, the losses)
export { train, TrainingError, type TrainTask, type TrainOptions, type TrainResult, type StepContext, type EpochContext } from './train/trainer.ts';
export { AdamW, learningRate, clipGradNorm } from './train/optimizer.ts';
export { trainVae, VAE_TRAIN_DEFAULTS, type VaeTrainOptions, type VaeTrainResult } from './train/vae.ts';
export { trainClip, CLIP_TRAIN_DEFAULTS, mnistCaptionTokenizer, captionTokenizer, type ClipTrainOptions, type ClipTrainResult } from './train/clip.ts';
export { trainUnet, UNET_TRAIN_DEFAULTS, type UnetTrainOptions, type UnetTrainResult } from './train/unet.ts';
export { trainAll, type TrainAllOptions, type TrainAllResult } from './train/all.ts';
export { TRAIN_ALL_PRESETS, type TrainAllPresetName } from './train/presets.ts';
export { diffusionLoss, minSnrWeight, perExampleMse } from './train/losses.ts';
export { makeBatchMaker, type DiffusionBatch } from './train/diffusion_batch.ts';

// ---- data: digits or your own images (IDX files, image folders, a tf.data.Dataset), captions, pixel ranges
export { loadDataset, splitDataset, padDataset, subset, imageAt, batches, type Dataset, type LoadOptions } from './data/index.ts';
export { loadImageFolder, datasetFromTf, type TfDataset, FASHION_MNIST_CLASSES, readRunClasses, type RunClasses } from './data/index.ts';
export { captionOf, classPrompts, captionVocabulary, CLASS_TEMPLATES, type CaptionKind } from './data/index.ts';
export { toCanvasMode, cropPixels, padPixels, centredCanvas, vaeCanvas, type Canvas, type CanvasMode } from './data/canvas.ts';
export { captionFor, promptForDigit, DIGIT_WORDS } from './data/captions.ts';
export { toSigned, toUnit, normalize, denormalize } from './data/pixels.ts';

// ---- evaluation
export { evaluateClip, cosineSimilarity, zeroShotPredict, zeroShotScores, saveSimilarityMatrix, renderSimilarityMatrix, type Matrix } from './eval/clip.ts';

// ---- graded course exercises (notebooks/exercises/): grade a learner's function against sdlab's own
export { checkExercise, EXERCISES, type ExerciseReport, type CheckResult, type Exercise, type CheckExerciseOptions } from './exercises/index.ts';

// ---- pictures and files
export { saveImageGrid, savePng, saveGif, saveLossCurve, renderGrid, renderLossCurve, encodePng, encodeGif, type FloatImage, type GridOptions, type Series, type PlotOptions } from './viz/index.ts';
export { readPng, readPngSize, readPngText } from './io/index.ts';
export { readSafetensors, writeSafetensors, SafetensorsFile } from './io/index.ts';
export { CkptFile, openTensorFile, type TensorFile } from './io/index.ts';
export { Random } from './util/random.ts';
export { TorchGenerator } from './util/torch_random.ts';
export { unetFlops, vaeDecodeFlops, textEncoderFlops, type FlopCount } from './eval/flops.ts';

// ---- the size limits every input is checked against (MAX_MODEL_PARAMS, MAX_IMAGE_SIDE, ...)
export * from './util/limits.ts';
