/** The text-conditioned latent UNet (UNet2DConditionModel): the model in unet.ts, its config in config.ts. */
export * from './config.ts';
export * from './unet.ts';
