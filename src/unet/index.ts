/** The text-conditioned latent UNet (UNet2DConditionModel); see unet.ts. */
export * from './unet.ts';
