/**
 * `sdlab inpaint`: Stable Diffusion inpainting (diffusers' StableDiffusionInpaintPipeline).
 *
 *   npx sdlab inpaint --model path/to/stable-diffusion-inpainting --init-image photo.png --mask mask.png \
 *       --prompt "a white cat sitting on a bench" --steps 50 --seed 1 --out out/cat
 *
 * White mask pixels are repainted (the mask is binarised at 0.5: 128 and up repaint), the rest
 * is kept. A 9-channel inpainting UNet (sd-v1-5-inpainting) sees [latents, mask, masked-image
 * latents]; an ordinary 4-channel model is inpainted by blending the encoded image, noised to
 * each step's level, into the kept region after every step. The size is --height/--width,
 * default the model's (512 for SD 1.5) — NOT the image's, as in diffusers: image and mask are
 * resized to it (PIL Lanczos, no crop) and must have the same size as each other. --strength
 * below 1 starts from the noised image instead of pure noise. All of txt2img's flags apply
 * (./sd_common.ts); --init-latents is diffusers' `latents`.
 */
import type { Command } from 'commander';
import { float } from '../util/options.ts';
import { type SdOptions, type SdResult, addSdOptions, runSd, sdAction } from './sd_common.ts';

export async function runInpaint(opts: SdOptions): Promise<SdResult> {
  return runSd('inpaint', opts);
}

export function register(program: Command): void {
  addSdOptions(
    program
      .command('inpaint')
      .description('Stable Diffusion inpainting: repaint the white part of --mask in --init-image (9-channel inpainting UNets, or 4-channel models with latent blending)')
      .option('--init-image <png>', 'the image to repaint, required unless --from-png names one (RGB; alpha dropped), resized to --height/--width (default: the model\'s size, 512 for SD 1.5; PIL Lanczos, no crop)')
      .option('--mask <png>', 'the mask, same size as the image, required unless --from-png names one: white (>= 128 after PIL\'s convert("L")) = repaint, black = keep')
      .option('--strength <s>', 'share of the schedule that runs, in (0, 1]: below 1 starts from the noised image', float(0, 1), 1),
    'out/inpaint',
  ).action(sdAction('inpaint'));
}
