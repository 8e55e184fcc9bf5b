/** The latent autoencoder (AutoencoderKL); see autoencoder.ts. */
export * from './autoencoder.ts';
