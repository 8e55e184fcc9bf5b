/**
 * Training: three trainers, one per model of the digit generator, on one shared loop; `train all`
 * runs them in order. Each trains into a run directory (default runs/default): the usable model in
 * <run>/<model>/ (diffusers layout), its training state, history, loss curve and pictures in
 * <run>/train/<model>/.
 *
 *   trainVae    vae.ts    `npx sdlab train vae`
 *               the autoencoder (AutoencoderKL): pixels ↔ latents. Loss: reconstruction (MSE or
 *               L1) + β·KL; afterwards it measures scaling_factor = 1/std of the latents.
 *   trainClip   clip.ts   `npx sdlab train clip`
 *               the text encoder, with an image encoder (CLIP), on generated captions. Loss:
 *               symmetric InfoNCE over the batch, same-digit pairs counted part-positive.
 *   trainUnet   unet.ts   `npx sdlab train unet`
 *               the latent-diffusion UNet, on the frozen VAE's latents and CLIP's text states.
 *               Loss: MSE to the ε or v target at a random timestep (min-SNR-γ weighted in the
 *               recipe); the EMA of its weights is the exported model.
 *   trainAll    all.ts    `npx sdlab train all --preset quick|full`
 *               the three in order (VAE → CLIP → UNet) with a preset's settings (presets.ts),
 *               skipping finished stages, then a sample sheet (src/sample/sheet.ts).
 *
 * What they share:
 *   train(task, opts)          the loop (trainer.ts): AdamW + warm-up/cosine, grad clipping,
 *                              exact resume, Ctrl-C saves, NaN stops with the last good state,
 *                              progress bar, history.json + loss.png in <run>/train/<task>/
 *   AdamW, learningRate        optimizer.ts (state = step + two moment buffers per parameter)
 *   saveState / loadState      state.ts (<run>/train/<task>/state.safetensors)
 *   EpochBatcher               data.ts (the i-th batch of an epoch's seeded order)
 *   vaeConfigOverrides, …      recipe.ts (what the CLI's architecture flags mean)
 *
 * Each trainer's file header gives its loss in full, its data and what it writes; presets.ts
 * says what the recipe was measured against. This index re-exports the loop and the VAE trainer;
 * import the others from their files.
 */
export * from './optimizer.ts';
export * from './state.ts';
export * from './data.ts';
export * from './trainer.ts';
export * from './vae.ts';
