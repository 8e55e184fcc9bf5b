/**
 * `sdlab img2img`: Stable Diffusion image-to-image (diffusers' StableDiffusionImg2ImgPipeline).
 *
 *   npx sdlab img2img --model path/to/stable-diffusion-v1-5 --init-image sketch.png --strength 0.6 \
 *       --prompt "a fantasy landscape, trending on artstation" --steps 50 --seed 1 --out out/landscape
 *
 * The init image is encoded by the VAE (a posterior sample), noised to the timestep where the
 * last int(steps · strength) steps begin, and denoised from there: strength 1 ignores almost
 * all of it, small strengths change little. Its size is the image's, rounded down to a
 * multiple of 8 (PIL Lanczos resize when it is not one); --height/--width resize it to that
 * size instead (a stretch, no crop, as diffusers' VaeImageProcessor). All of txt2img's flags
 * apply (./sd_common.ts); --init-latents / --save-latents hold the noise added to the image.
 */
import type { Command } from 'commander';
import { float } from '../util/options.ts';
import { type SdOptions, type SdResult, addSdOptions, runSd, sdAction } from './sd_common.ts';

export async function runImg2Img(opts: SdOptions): Promise<SdResult> {
  return runSd('img2img', opts);
}

export function register(program: Command): void {
  addSdOptions(
    program
      .command('img2img')
      .description('Stable Diffusion image-to-image: start from --init-image noised to --strength, as diffusers\' img2img pipeline')
      .option('--init-image <png>', 'the image to start from, required unless --from-png names one (RGB; alpha dropped). Size: its own rounded down to a multiple of 8, or --height/--width (PIL Lanczos resize, no crop)')
      .option('--strength <s>', 'share of the schedule that runs, in (0, 1]: int(steps · s) steps from the noised image (1 = almost a new image)', float(0, 1), 0.8),
    'out/img2img',
  ).action(sdAction('img2img'));
}
