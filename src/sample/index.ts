/** Sampling: the text-to-image pipeline, its loaders (diffusers dir, LDM file, sdlab run), LoRA merging, A1111 infotext and prompt syntax, a run's sampling settings, prompts, the reverse-process GIF and sample sheets. */
export * from './pipeline.ts';
export * from './noise.ts';
export * from './image_processor.ts';
export * from './load.ts';
export * from './settings.ts';
export * from './prompts.ts';
export * from './animate.ts';
export * from './sheet.ts';
export * from './lora.ts';
export * from './infotext.ts';
export * from './prompt_weighting.ts';
