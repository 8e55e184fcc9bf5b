/**
 * Training: a shared harness (trainer.ts) and one trainer per model.
 *
 *   train(task, opts)          the loop: AdamW + warm-up/cosine, grad clipping, exact resume,
 *                              Ctrl-C saves, NaN stops with the last good state, progress bar,
 *                              history.json + loss.png in <run>/train/<task>/
 *   AdamW, learningRate        optimizer.ts (state = step + two moment buffers per parameter)
 *   saveState / loadState      state.ts (<run>/train/<task>/state.safetensors)
 *   EpochBatcher               data.ts (the i-th batch of an epoch's seeded order)
 *   trainVae(opts)             vae.ts  (`npx sdlab train vae`)
 */
export * from './optimizer.ts';
export * from './state.ts';
export * from './data.ts';
export * from './trainer.ts';
export * from './vae.ts';
