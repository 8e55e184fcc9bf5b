/** Sampling: the text-to-image pipeline, its loaders (diffusers dir, LDM file, sdlab run), prompts and the reverse-process GIF. */
export * from './pipeline.ts';
export * from './load.ts';
export * from './prompts.ts';
export * from './animate.ts';
