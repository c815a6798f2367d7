"""Tiny random Stable Diffusion 1.x- and 2.x-family models for the reference tests.

Each is built with diffusers/transformers and written with save_pretrained in
the exact diffusers folder layout gnr loads. Weights are re-drawn so the tests
are not weak: norm affines away from (1, 0), and self-attention query/key
projections scaled up so the attention maps are peaky rather than uniform.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from clip_vocab import write_clip_tokenizer_files

TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=32)

# Two cross-attention down blocks, one resnet per level, 2 heads, 8 groups.
UNET_A = dict(sample_size=16, in_channels=4, out_channels=4,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=2,
              cross_attention_dim=32, norm_num_groups=8)
# Three cross-attention down blocks and a plain one, two resnets per level,
# 4 heads, 4 groups: the SD 1.x layout in miniature.
UNET_B = dict(sample_size=16, in_channels=4, out_channels=4,
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
              block_out_channels=(16, 32, 48, 48), layers_per_block=2, attention_head_dim=4,
              cross_attention_dim=32, norm_num_groups=4)

# Three downsamplings (factor 8), as SD's VAE.
VAE_A = dict(in_channels=3, out_channels=3, latent_channels=4,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, scaling_factor=0.18215)
VAE_B = dict(VAE_A, block_out_channels=(16, 16, 32, 32), layers_per_block=2, norm_num_groups=8,
             scaling_factor=0.2)

# The SD 2.x traits in miniature: an OpenCLIP-style text encoder (exact GELU),
# Linear transformer projections, upcast attention, and a different head
# count at every level ([2, 4, 8] heads of 8 channels, as SD 2.x has
# [5, 10, 20, 20] of 64), so that the mid block (the last level's heads,
# here a level without attention) and the mirrored up blocks are told apart.
TEXT_SD2 = dict(TEXT, hidden_act="gelu", num_attention_heads=2)
UNET_SD2 = dict(sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(16, 32, 64), layers_per_block=1, attention_head_dim=[2, 4, 8],
                use_linear_projection=True, upcast_attention=True, cross_attention_dim=32, norm_num_groups=8)

CONFIGS = {"a": (UNET_A, VAE_A), "b": (UNET_B, VAE_B), "sd2": (UNET_SD2, VAE_A)}
TEXTS = {"a": TEXT, "b": TEXT, "sd2": TEXT_SD2}
# SD 2.x's tokenizer pads with "!" (id 0): its special_tokens_map.json says
# so over tokenizer_config.json's end token.
PAD_TOKENS = {"a": None, "b": None, "sd2": "!"}


@torch.no_grad()
def sharpen(model: torch.nn.Module, gen: torch.Generator, qk_gain: float = 4.0) -> None:
    """Perturb the default initialisation into something a test can trust."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)
        if p.ndim == 1 and ("norm" in name or "layer_norm" in name):
            if leaf[-1] == "weight":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif leaf[-1] == "bias":
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        if ("attn1.to_q" in name or "attn1.to_k" in name) and leaf[-1] == "weight":
            p.mul_(qk_gain)


def build(folder: Path, which: str = "a", seed: int = 0, variant: str | None = None, qk_gain: float = 4.0,
          prediction_type: str | None = None, sample_size: int | None = None) -> Path:
    """Writes model `which` ("a", "b" or "sd2") into folder; returns folder.

    qk_gain sharpens self-attention. At 4 a whole 50-step edit is chaotic:
    float32 rounding alone (the PyTorch reference on 1 vs 2 threads) moves
    the final latent by ~10 %, so whole edits are compared on a model built
    with qk_gain 2, where that spread is ~1e-5.
    prediction_type ("epsilon" or "v_prediction") writes a
    scheduler/scheduler_config.json that says it, as SD 2.x folders do
    (None: no scheduler folder, as the SD 1.x tiny models have).
    sample_size overrides the UNet's (its native size is 8x that)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg = CONFIGS[which]
    if sample_size is not None:
        unet_cfg = dict(unet_cfg, sample_size=sample_size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXTS[which])),
        "unet": UNet2DConditionModel(**unet_cfg),
        "vae": AutoencoderKL(**vae_cfg),
    }
    for name, model in models.items():
        sharpen(model.eval(), gen, qk_gain)
        model.save_pretrained(folder / name, safe_serialization=True)
        if variant:
            model.to(torch.float16).save_pretrained(folder / name, safe_serialization=True, variant=variant)
    write_clip_tokenizer_files(folder / "tokenizer")
    if PAD_TOKENS[which]:
        specials = folder / "tokenizer" / "special_tokens_map.json"
        specials.write_text(json.dumps(dict(json.loads(specials.read_text()), pad_token=PAD_TOKENS[which])))
    if prediction_type is not None:
        write_scheduler_config(folder, prediction_type)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if prediction_type is not None:
        index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_scheduler_config(folder: Path, prediction_type: str) -> None:
    """scheduler/scheduler_config.json as SD 2.x folders carry it (DDIM,
    scaled_linear betas 0.00085 to 0.012, the given prediction type)."""
    from diffusers import DDIMScheduler

    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1,
                  prediction_type=prediction_type).save_pretrained(Path(folder) / "scheduler")


def load_reference(folder: Path):
    """The diffusers/transformers modules of a folder, float32, eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    return {
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(folder / "vae").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
    }
