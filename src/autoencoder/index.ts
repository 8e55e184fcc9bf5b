/** The latent autoencoder (AutoencoderKL): the model in autoencoder.ts, its config in config.ts. */
export * from './config.ts';
export * from './autoencoder.ts';
