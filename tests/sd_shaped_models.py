"""Tiny random models shaped like Stable Diffusion 1.x and 2.x in everything a
single-file checkpoint does not record (for the tests).

A single file holds tensors, not configs: gnr.single_file takes from the
family what shapes cannot say (32 GroupNorm groups; SD 1.x: 8 heads per UNet
level; SD 2.x: 64-wide UNet heads and linear attention projections; text
encoders with 64-wide heads; SD 2.x's OpenCLIP with its gelu and 23 layers
read of 24). These models follow those rules at a small size, so that the
folder diffusers writes and the single file made from it describe the same
model. Built with diffusers/transformers and saved with save_pretrained.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from clip_vocab import write_clip_tokenizer_files
from tiny_models import sharpen

TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_attention_heads=1,
            max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
            projection_dim=64)
FAMILIES = {
    # Three levels, two layers per block, a plain down block last: the SD 1.x layout in small.
    "sd1": dict(text=dict(TEXT, num_hidden_layers=2, hidden_act="quick_gelu", pad_token_id=49407),
                unet=dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                          block_out_channels=(32, 32, 64), layers_per_block=2, attention_head_dim=8)),
    # SD 2.x: 23 OpenCLIP layers in use (the file holds 24), heads of 64 channels per level.
    "sd2": dict(text=dict(TEXT, num_hidden_layers=23, hidden_act="gelu", pad_token_id=0),
                unet=dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                          block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=[1, 2],
                          use_linear_projection=True)),
}
IMAGE_SIZE = 64  # native size: the UNet's sample_size 8 times the VAE factor 8
UNET = dict(sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=64, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
           norm_num_groups=32, scaling_factor=0.18215, sample_size=IMAGE_SIZE)


def build(folder, family: str, seed: int = 0) -> Path:
    """Writes the `family` ("sd1" or "sd2") model into `folder` in diffusers layout; returns folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = FAMILIES[family]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    folder = Path(folder)
    models = {"text_encoder": CLIPTextModel(CLIPTextConfig(**spec["text"])),
              "unet": UNet2DConditionModel(**UNET, **spec["unet"]), "vae": AutoencoderKL(**VAE)}
    for name, model in models.items():
        # qk_gain 2: attention maps far from uniform, whole edits not chaotic (tiny_models.build).
        sharpen(model.eval(), gen, qk_gain=2.0)
        model.save_pretrained(folder / name, safe_serialization=True)
    write_clip_tokenizer_files(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return folder
