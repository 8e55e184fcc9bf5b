#!/usr/bin/python3
"""Builds test/fixtures/sd2_tiny: a tiny SD-2-style model and upstream diffusers v0.24 numbers for it.

What runs upstream: diffusers v0.24.0 from source (its UNet2DConditionModel, AutoencoderKL,
DDIMScheduler, EulerDiscreteScheduler) on Debian's python3-torch (1.13), plus diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py for the single-file layout (UNet and the
OpenCLIP text encoder: convert_text_enc_state_dict_v20). transformers is not available, so the
text encoder's *outputs* are not referenced here (the sd1_tiny fixture covers the CLIP text
transformer; SD 2's differences are gelu and the OpenCLIP names): the loops take prompt
embeddings as an input.

SD 2 features exercised: use_linear_projection, upcast_attention, a different head count per
block ([2, 4, 8]: down blocks, the mid block (the last), and the up blocks in reverse), and
v-prediction (DDIM and Euler, guidance 7.5, 10 steps).

Usage (no network; huggingface_hub / safetensors are import-time stubs this script writes):
  apt-get install python3-torch python3-filelock python3-regex python3-tqdm python3-importlib-metadata
  git -C diffusers archive v0.24.0 src scripts | tar x -C /tmp/d024
  /usr/bin/python3 scripts/sd2_fixture.py --diffusers-src /tmp/d024/src \
      --convert-script /tmp/d024/scripts/convert_diffusers_to_original_stable_diffusion.py \
      --out test/fixtures/sd2_tiny
"""
import argparse
import importlib.util
import json
import os
import struct
import sys

import tempfile

import numpy as np

# Import-time names diffusers v0.24 needs from huggingface_hub (nothing here touches the network).
STUBS = {
    "huggingface_hub/__init__.py": """
__version__ = "0.19.4"
def _no(*a, **k): raise RuntimeError("huggingface_hub stub: no network")
HfFolder = type("HfFolder", (), {"get_token": staticmethod(lambda: None)})
class ModelCard: pass
class ModelCardData: pass
create_repo = hf_hub_download = upload_folder = whoami = model_info = cached_download = snapshot_download = _no
""",
    "huggingface_hub/constants.py": """
import os
hf_cache_home = os.path.expanduser("~/.cache/huggingface")
HUGGINGFACE_HUB_CACHE = os.path.join(hf_cache_home, "hub")
HF_HUB_CACHE = HUGGINGFACE_HUB_CACHE
HF_HUB_OFFLINE = True
""",
    "huggingface_hub/file_download.py": 'import re\nREGEX_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")\n',
    "huggingface_hub/utils.py": """
class EntryNotFoundError(Exception): pass
class RepositoryNotFoundError(Exception): pass
class RevisionNotFoundError(Exception): pass
class HfHubHTTPError(Exception): pass
class LocalEntryNotFoundError(Exception): pass
def is_jinja_available(): return False
def validate_hf_hub_args(f): return f
""",
    "safetensors/__init__.py": 'def safe_open(*a, **k): raise RuntimeError("safetensors stub")\n',
    "safetensors/torch.py": 'def load_file(*a, **k): raise RuntimeError("stub")\ndef save_file(*a, **k): raise RuntimeError("stub")\n',
}


def write_stubs():
    d = tempfile.mkdtemp(prefix="sd2-fixture-stubs-")
    for rel, text in STUBS.items():
        os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(d, rel), "w") as f:
            f.write(text)
    return d


def write_safetensors(path, tensors, dtype):
    """Minimal safetensors writer (F16 or F32, C order, names sorted, header padded to 8)."""
    np_dtype = {"F16": np.float16, "F32": np.float32}[dtype]
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name].detach().cpu().numpy().astype(np_dtype))
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    import torch

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        dt = {"F16": np.float16, "F32": np.float32}[e["dtype"]]
        a, b = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dt).reshape(e["shape"]).astype(np.float32).copy())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diffusers-src", required=True)
    ap.add_argument("--convert-script", required=True)
    ap.add_argument("--stubs", help="a folder with huggingface_hub/safetensors stubs (default: written to a temp folder)")
    ap.add_argument("--sd1-tiny", default=os.path.join(os.path.dirname(__file__), "../../shared/fixtures/sd1_tiny"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path[:0] = [args.stubs or write_stubs(), args.diffusers_src]

    import torch
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel

    assert diffusers.__version__ == "0.24.0", diffusers.__version__
    spec = importlib.util.spec_from_file_location("convert_d2o", args.convert_script)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)

    torch.manual_seed(2024)
    out = args.out
    os.makedirs(os.path.join(out, "model/unet"), exist_ok=True)
    os.makedirs(os.path.join(out, "model/text_encoder"), exist_ok=True)
    os.makedirs(os.path.join(out, "model/scheduler"), exist_ok=True)

    # ---- UNet: SD 2's shape in miniature (3 levels, attention on the first two, heads per block).
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 32),
        layers_per_block=2,
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=32,
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=32,
    ).eval()
    with torch.no_grad():
        # Random weights of a useful scale, rounded to fp16 so the stored file is exact.
        for p in unet.parameters():
            p.copy_((torch.randn_like(p) * 0.15).half().float())
    unet.save_config(os.path.join(out, "model/unet"))
    unet_sd = unet.state_dict()
    write_safetensors(os.path.join(out, "model/unet/diffusion_pytorch_model.safetensors"), unet_sd, "F16")

    # ---- Text encoder weights in transformers CLIPTextModel names (OpenCLIP-shaped: gelu),
    # 3 layers; its outputs are not referenced (no transformers), only its single-file names.
    # A 64-token vocabulary keeps the files small (SD's is 49408: tests feed ids < 64).
    D, F, L, V, P = 32, 64, 3, 64, 77
    te = {
        "text_model.embeddings.token_embedding.weight": torch.randn(V, D) * 0.02,
        "text_model.embeddings.position_embedding.weight": torch.randn(P, D) * 0.01,
        "text_model.final_layer_norm.weight": 1 + torch.randn(D) * 0.1,
        "text_model.final_layer_norm.bias": torch.randn(D) * 0.1,
    }
    for i in range(L):
        pre = f"text_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            te[pre + f"self_attn.{n}.weight"] = torch.randn(D, D) / D**0.5
            te[pre + f"self_attn.{n}.bias"] = torch.randn(D) * 0.1
        for n in ("layer_norm1", "layer_norm2"):
            te[pre + f"{n}.weight"] = 1 + torch.randn(D) * 0.1
            te[pre + f"{n}.bias"] = torch.randn(D) * 0.1
        te[pre + "mlp.fc1.weight"] = torch.randn(F, D) / D**0.5
        te[pre + "mlp.fc1.bias"] = torch.randn(F) * 0.1
        te[pre + "mlp.fc2.weight"] = torch.randn(D, F) / F**0.5
        te[pre + "mlp.fc2.bias"] = torch.randn(D) * 0.1
    te = {k: v.half().float() for k, v in te.items()}
    write_safetensors(os.path.join(out, "model/text_encoder/model.safetensors"), te, "F16")
    te_config = {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": D, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": F, "layer_norm_eps": 1e-05,
        "max_position_embeddings": P, "model_type": "clip_text_model", "num_attention_heads": 4,
        "num_hidden_layers": L, "pad_token_id": 1, "projection_dim": 512, "torch_dtype": "float16",
        "transformers_version": "4.37.0.dev0", "vocab_size": V,
    }
    with open(os.path.join(out, "model/text_encoder/config.json"), "w") as f:
        json.dump(te_config, f, indent=2, sort_keys=True)

    # ---- The single file, by diffusers' own reverse converter (UNet + OpenCLIP text encoder).
    ldm = {"model.diffusion_model." + k: v for k, v in conv.convert_unet_state_dict(dict(unet_sd)).items()}
    te_t = {"transformer." + k: v for k, v in te.items()}
    ldm.update({"cond_stage_model.model." + k: v for k, v in conv.convert_text_enc_state_dict_v20(te_t).items()})
    write_safetensors(os.path.join(out, "sd2_tiny_ldm.safetensors"), ldm, "F16")

    # ---- Scheduler: stabilityai/stable-diffusion-2-1's scheduler_config.json.
    sched_cfg = {
        "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    }
    with open(os.path.join(out, "model/scheduler/scheduler_config.json"), "w") as f:
        json.dump(sched_cfg, f, indent=2, sort_keys=True)

    # ---- References.
    ref = {}
    g = torch.Generator().manual_seed(7)
    ref["unet.sample"] = torch.randn(2, 4, 8, 8, generator=g)
    ref["unet.timestep"] = torch.tensor([999.0, 1.0])
    ref["unet.encoder_hidden_states"] = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ref["unet.out"] = unet(ref["unet.sample"], torch.tensor([999, 1]), encoder_hidden_states=ref["unet.encoder_hidden_states"]).sample

    vae = AutoencoderKL.from_config(json.load(open(os.path.join(args.sd1_tiny, "model/vae/config.json")))).eval()
    vae.load_state_dict(read_safetensors(os.path.join(args.sd1_tiny, "model/vae/diffusion_pytorch_model.safetensors")))

    ref["loop.prompt_embeds"] = torch.randn(2, 77, 32, generator=g)  # [uncond, cond]
    # sd1_tiny's VAE downsamples by 2 (two levels): 16×16 px ↔ 8×8 latents.
    ref["loop.latents"] = torch.randn(1, 4, 8, 8, generator=g)
    cases = {}
    for name, cls in (("ddim_v", DDIMScheduler), ("euler_v", EulerDiscreteScheduler)):
        s = cls.from_config(sched_cfg)
        s.set_timesteps(10)
        lat = ref["loop.latents"] * s.init_noise_sigma
        steps = []
        with torch.no_grad():
            for t in s.timesteps:
                inp = s.scale_model_input(torch.cat([lat] * 2), t)
                pred = unet(inp, t, encoder_hidden_states=ref["loop.prompt_embeds"]).sample
                u, c = pred.chunk(2)
                pred = u + 7.5 * (c - u)
                lat = s.step(pred, t, lat).prev_sample
                steps.append(lat)
            image = (vae.decode(lat / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        ref[f"{name}.step_latents"] = torch.stack(steps)
        ref[f"{name}.final_latents"] = lat
        ref[f"{name}.image"] = image.permute(0, 2, 3, 1)  # NHWC in [0, 1]
        cases[name] = {"scheduler": cls.__name__, "timesteps": [float(t) for t in s.timesteps], "init_noise_sigma": float(s.init_noise_sigma)}
    write_safetensors(os.path.join(out, "reference.safetensors"), {k: v.float() for k, v in ref.items()}, "F32")

    manifest = {
        "description": "tiny SD-2-style UNet (32 channels at 3 levels, linear projections, upcast_attention, heads [2, 4, 8]) and an OpenCLIP-layout text encoder (names only); v-prediction DDIM/Euler loops with guidance 7.5 on injected prompt embeddings, decoded with sd1_tiny's VAE",
        "generator": "scripts/sd2_fixture.py",
        "provenance": {"diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__,
                       "convert_script": "scripts/convert_diffusers_to_original_stable_diffusion.py (v0.24.0)"},
        "unet": {"inputs": ["unet.sample", "unet.timestep", "unet.encoder_hidden_states"], "output": "unet.out", "timesteps": [999, 1]},
        "loops": {"guidance_scale": 7.5, "num_inference_steps": 10, "height": 16, "width": 16, "prompt_embeds": "loop.prompt_embeds (rows [uncond, cond])",
                  "latents": "loop.latents (before init_noise_sigma)", "vae": "sd1_tiny model/vae", "cases": cases},
        "tensors": {k: list(v.shape) for k, v in ref.items()},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
