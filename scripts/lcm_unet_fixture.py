#!/usr/bin/python3
"""Builds test/fixtures/lcm_unet: a tiny LCM-distilled-style UNet (time_cond_proj_dim) and upstream
diffusers v0.24 numbers for LatentConsistencyModelPipeline's loop on it.

What runs upstream: diffusers v0.24.0 from source (UNet2DConditionModel with time_cond_proj_dim,
LCMScheduler, AutoencoderKL) on Debian's python3-torch (1.13). LatentConsistencyModelPipeline
itself imports transformers, which is not available: its get_guidance_scale_embedding is taken
from the pipeline's source file (ast) and run as is, and its denoising loop is written out here
statement for statement (no classifier-free guidance: the prompt's rows only; w = guidance − 1;
unet(latents, t, timestep_cond=w_embedding, encoder_hidden_states=prompt_embeds); scheduler.step
with the generator; the image decoded from the last `denoised`). The prompt embeddings are the
sd1_pipelines fixture's (transformers' CLIP on sd1_tiny for its prompt), so a run from the prompt
text checks the text path too. The UNet is sd1_tiny's shape family (its block types, cross
attention width 32, sd1_tiny's VAE and text encoder fit) with narrower levels to stay small.

Usage (no network; huggingface_hub / safetensors are stubs, as in scripts/sd2_fixture.py):
  git -C diffusers archive v0.24.0 src | tar x -C /tmp/d024
  /usr/bin/python3 scripts/lcm_unet_fixture.py --diffusers-src /tmp/d024/src --out test/fixtures/lcm_unet
"""
import argparse
import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd2_fixture import read_safetensors, write_safetensors, write_stubs  # noqa: E402

PIPELINE_FILE = "diffusers/pipelines/latent_consistency_models/pipeline_latent_consistency_text2img.py"
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 8.0
STEPS = 4
COND_DIM = 32

# An LCM model's scheduler_config.json (LCM_Dreamshaper_v7-style: LCMScheduler, SD's betas,
# original_inference_steps 50).
SCHED_CFG = {
    "_class_name": "LCMScheduler", "_diffusers_version": "0.24.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "original_inference_steps": 50,
    "prediction_type": "epsilon", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
    "set_alpha_to_one": True, "steps_offset": 1, "thresholding": False, "timestep_scaling": 10.0,
    "timestep_spacing": "leading", "trained_betas": None,
}


def upstream_guidance_embedding(src):
    """LatentConsistencyModelPipeline.get_guidance_scale_embedding, compiled from its source."""
    import torch

    tree = ast.parse(open(os.path.join(src, PIPELINE_FILE)).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LatentConsistencyModelPipeline")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "get_guidance_scale_embedding")
    ns = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), PIPELINE_FILE, "exec"), ns)
    return lambda w, embedding_dim: ns["get_guidance_scale_embedding"](None, w, embedding_dim=embedding_dim)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diffusers-src", required=True)
    ap.add_argument("--stubs", help="a folder with huggingface_hub/safetensors stubs (default: written to a temp folder)")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "../../shared/fixtures"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path[:0] = [args.stubs or write_stubs(), args.diffusers_src]

    import numpy as np
    import torch
    import diffusers
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel

    assert diffusers.__version__ == "0.24.0", diffusers.__version__
    torch.set_num_threads(1)
    guidance_embedding = upstream_guidance_embedding(args.diffusers_src)
    tiny = os.path.join(args.shared, "sd1_tiny")
    out = args.out
    os.makedirs(os.path.join(out, "unet"), exist_ok=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)

    # ---- UNet: sd1_tiny's config with time_cond_proj_dim, 32 channels at both levels; seeded
    # random weights of a useful scale (diffusers' init leaves the time path nearly without effect
    # on the output), rounded to fp16 so the stored file is exact.
    cfg = {k: v for k, v in json.load(open(os.path.join(tiny, "model/unet/config.json"))).items() if not k.startswith("_")}
    # 8 norm groups: with one channel per group (32 groups of 32) GroupNorm would cancel the
    # per-channel time offsets, and with them any effect of timestep_cond.
    cfg.update(block_out_channels=[32, 32], norm_num_groups=8, time_cond_proj_dim=COND_DIM)
    torch.manual_seed(1313)
    unet = UNet2DConditionModel(**cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_((torch.randn_like(p) * 0.15).half().float())
    assert unet.time_embedding.cond_proj.bias is None
    unet.save_config(os.path.join(out, "unet"))
    write_safetensors(os.path.join(out, "unet/diffusion_pytorch_model.safetensors"), unet.state_dict(), "F16")
    with open(os.path.join(out, "scheduler/scheduler_config.json"), "w") as f:
        json.dump(SCHED_CFG, f, indent=2, sort_keys=True)

    vae = AutoencoderKL.from_config(json.load(open(os.path.join(tiny, "model/vae/config.json")))).eval()
    vae.load_state_dict(read_safetensors(os.path.join(tiny, "model/vae/diffusion_pytorch_model.safetensors")))
    pipes = read_safetensors(os.path.join(args.shared, "sd1_pipelines/reference.safetensors"))

    ref = {}
    g = torch.Generator().manual_seed(13)
    # ---- The UNet alone: two rows, different timesteps and guidance embeddings; and without a condition.
    ref["unet.sample"] = torch.randn(2, 4, 16, 16, generator=g)
    ref["unet.timestep"] = torch.tensor([999.0, 259.0])
    ref["unet.encoder_hidden_states"] = torch.randn(2, 77, 32, generator=g)
    ref["unet.w"] = torch.tensor([GUIDANCE - 1, 0.5])
    ref["unet.timestep_cond"] = guidance_embedding(ref["unet.w"], COND_DIM)
    with torch.no_grad():
        ref["unet.out"] = unet(ref["unet.sample"], torch.tensor([999, 259]), encoder_hidden_states=ref["unet.encoder_hidden_states"], timestep_cond=ref["unet.timestep_cond"]).sample
        ref["unet.out_nocond"] = unet(ref["unet.sample"], torch.tensor([999, 259]), encoder_hidden_states=ref["unet.encoder_hidden_states"]).sample

    # ---- LatentConsistencyModelPipeline.__call__ (v0.24), its loop written out: no CFG (batch of
    # the prompt only), explicit latents, the scheduler's draws recorded.
    prompt_embeds = pipes["lcm.txt2img.prompt_embeds"]  # [1, 77, 32]: transformers' CLIP for PROMPT
    ref["loop.prompt_embeds"] = prompt_embeds
    scheduler = LCMScheduler.from_config(SCHED_CFG)
    scheduler.set_timesteps(STEPS, "cpu", original_inference_steps=None)
    timesteps = scheduler.timesteps
    ref["loop.initial_latents"] = torch.randn(1, 4, 16, 16, generator=g)
    latents = ref["loop.initial_latents"] * scheduler.init_noise_sigma
    w = torch.tensor(GUIDANCE - 1).repeat(1)
    w_embedding = guidance_embedding(w, COND_DIM).to(dtype=latents.dtype)
    ref["loop.w_embedding"] = w_embedding

    draws = []
    real_randn = scheduling_lcm.randn_tensor

    def recording_randn(*a, **k):
        x = real_randn(*a, **k)
        draws.append(x.clone())
        return x

    scheduling_lcm.randn_tensor = recording_randn
    gen = torch.Generator().manual_seed(1314)
    steps, denoised_all = [], []
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            latents = latents.to(prompt_embeds.dtype)
            model_pred = unet(latents, t, timestep_cond=w_embedding, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if i == 0:
                ref["loop.unet_output_step0"] = model_pred
            latents, denoised = scheduler.step(model_pred, t, latents, generator=gen, return_dict=False)
            steps.append(latents)
            denoised_all.append(denoised)
        denoised = denoised.to(prompt_embeds.dtype)
        image = vae.decode(denoised / vae.config.scaling_factor, return_dict=False)[0]
    scheduling_lcm.randn_tensor = real_randn
    ref["loop.step_latents"] = torch.stack(steps)
    ref["loop.denoised"] = torch.stack(denoised_all)
    ref["loop.final_latents"] = latents
    ref["loop.image"] = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)  # postprocess 'np': NHWC in [0, 1]
    for i, d in enumerate(draws):
        ref[f"loop.randn.{i}"] = d
    write_safetensors(os.path.join(out, "reference.safetensors"), {k: v.float() for k, v in ref.items()}, "F32")

    manifest = {
        "description": "tiny LCM-distilled-style UNet (sd1_tiny's block types, 32 channels at 2 levels, 8 norm groups, time_cond_proj_dim 32, seeded randn · 0.15 rounded to fp16) and LatentConsistencyModelPipeline's loop on it: 4 steps, guidance 8 (w = 7, no CFG), explicit latents, sd1_tiny's VAE, prompt embeddings from sd1_pipelines (lcm.txt2img.prompt_embeds)",
        "generator": "scripts/lcm_unet_fixture.py",
        "provenance": {"diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__,
                       "pipeline": PIPELINE_FILE + " (get_guidance_scale_embedding run from source; __call__'s loop written out)"},
        "unet": {"inputs": ["unet.sample", "unet.timestep", "unet.encoder_hidden_states", "unet.timestep_cond"], "w": "unet.w (timestep_cond = guidance embedding of w)",
                 "output": "unet.out", "output_without_timestep_cond": "unet.out_nocond"},
        "loop": {"prompt": PROMPT, "guidance_scale": GUIDANCE, "num_inference_steps": STEPS, "height": 32, "width": 32,
                 "timesteps": [int(t) for t in timesteps], "init_noise_sigma": float(scheduler.init_noise_sigma),
                 "latents": "loop.initial_latents (before init_noise_sigma)", "draws": len(draws), "scheduler": "scheduler/scheduler_config.json",
                 "vae": "sd1_tiny model/vae", "text_encoder": "sd1_tiny model/text_encoder (the embeddings are upstream's, from sd1_pipelines)"},
        "tensors": {k: list(v.shape) for k, v in ref.items()},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
