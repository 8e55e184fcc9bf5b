/**
 * `sdlab txt2img`: Stable Diffusion 1.x / 2.x inference from imported weights.
 *
 *   npx sdlab txt2img --model path/to/stable-diffusion-v1-5 --prompt "a photograph of an astronaut riding a horse"
 *   npx sdlab txt2img --model v1-5-pruned-emaonly.safetensors --yaml v1-inference.yaml \
 *       --tokenizer path/to/stable-diffusion-v1-5 --prompt "..." --negative-prompt "blurry" \
 *       --steps 30 --scheduler euler --guidance 7.5 --seed 42 --height 512 --width 512 --out out/astronaut
 *
 * --model is a diffusers directory (model_index.json, tokenizer/, text_encoder/, unet/, vae/,
 * scheduler/) or an original single-file checkpoint (.safetensors, CompVis/LDM layout; its yaml
 * with --yaml, else SD 1.x's v1-inference settings). A single file has no tokenizer: --tokenizer
 * names a folder with CLIP's vocab.json + merges.txt (any SD 1.x diffusers directory has one).
 * The scheduler defaults to the model's own (PNDM for SD 1.5); --scheduler picks another,
 * configured from the model's scheduler_config.json; --karras (euler, euler_a, dpm++2m) and
 * --timestep-spacing (e.g. trailing for SD-Turbo) override that config, and --lora FILE[:scale]
 * (repeatable) merges a LoRA into the UNet and text encoder before sampling (src/sample/lora.ts):
 *
 *   npx sdlab txt2img --model DIR --scheduler lcm --steps 4 --guidance 1 --prompt "..."
 *   npx sdlab txt2img --model DIR --scheduler dpm++2m --karras --steps 25 --prompt "..."
 *   npx sdlab txt2img --model sd-turbo --scheduler euler_a --timestep-spacing trailing --steps 1 --guidance 1 --prompt "..."
 *
 * SD 2.x works from both layouts (a single file's family comes from its tensors when there is no
 * yaml: 768-v; `--prediction epsilon` for 512-base); --prediction overrides what the model's config
 * says the UNet predicts.
 *
 * The flags are shared with img2img and inpaint (./sd_common.ts: --rng, --init-latents,
 * --save-latents too).
 *
 * Writes to --out: 0000.png, ... (one per image), grid.png (when more than one) and
 * txt2img.json (the settings, to reproduce the images).
 */
import type { Command } from 'commander';
import { type SdOptions, type SdResult, addSdOptions, loadModel, runSd, sdAction } from './sd_common.ts';

export type Txt2ImgOptions = SdOptions;
export type Txt2ImgResult = SdResult;
export { loadModel };

export async function runTxt2Img(opts: Txt2ImgOptions): Promise<Txt2ImgResult> {
  return runSd('txt2img', opts);
}

export function register(program: Command): void {
  addSdOptions(
    program.command('txt2img').description('Stable Diffusion 1.x/2.x text-to-image from a diffusers directory or a single .safetensors checkpoint'),
    'out/txt2img',
  ).action(sdAction('txt2img'));
}
