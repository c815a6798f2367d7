"""Write a Stable Diffusion 1.4- or 2.1-shaped model folder with random weights.

The folder has the exact diffusers layout and tensor shapes of the family so
that benchmarks measure the real workload; the weights are random (seeded),
so images are noise. The tokenizer files are derived from the real CLIP BPE
vocabulary that ships in the `clip-anytorch` wheel (install it with --no-deps).

- sd14 (default): UNet 860M parameters, VAE 84M, CLIP ViT-L/14 text encoder
  123M (quick GELU, 12 layers of 768), 512 x 512, eps prediction.
- sd21: SD 2.1-v (768 x 768): UNet 866M with heads [5, 10, 20, 20] of 64
  channels, Linear transformer projections, upcast attention and 1024-wide
  cross-attention; the OpenCLIP ViT-H/14 text encoder as diffusers' converted
  checkpoints hold it (exact GELU, 23 layers of 1024: OpenCLIP's 24th is
  dropped so that the last hidden state is the penultimate layer's, then the
  final LayerNorm); a tokenizer that pads with "!"; a DDIM scheduler config
  with prediction_type "v_prediction".

`--tiny` writes the same layout at 1/8 of every width (heads of 8
channels, 8 norm groups) with 2 text layers, to check the script quickly.

    python benchmarks/make_random_sd.py OUT_DIR [--family sd14|sd21] [--fp16-variant] [--seed 0] [--tiny]

Needs torch, diffusers and transformers (test/benchmark-only dependencies).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

UNET_SD14 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)

VAE_SD14 = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

TEXT_SD14 = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)


UNET_SD21 = dict(
    UNET_SD14,
    sample_size=96,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)

VAE_SD21 = dict(VAE_SD14, sample_size=768)

TEXT_SD21 = dict(
    TEXT_SD14,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=512,
)

# family -> (unet, vae, text encoder, tokenizer pad token, scheduler prediction type or None)
FAMILIES = {
    "sd14": (UNET_SD14, VAE_SD14, TEXT_SD14, "<|endoftext|>", None),
    "sd21": (UNET_SD21, VAE_SD21, TEXT_SD21, "!", "v_prediction"),
}


def tiny(unet: dict, vae: dict, text: dict) -> tuple[dict, dict, dict]:
    """The same layout at 1/8 of every width, for a quick check of the script."""
    unet = dict(unet, block_out_channels=tuple(c // 8 for c in unet["block_out_channels"]), norm_num_groups=8,
                cross_attention_dim=unet["cross_attention_dim"] // 8)
    vae = dict(vae, block_out_channels=tuple(c // 8 for c in vae["block_out_channels"]), norm_num_groups=8)
    text = dict(text, hidden_size=text["hidden_size"] // 8, intermediate_size=text["intermediate_size"] // 8,
                num_hidden_layers=2, num_attention_heads=text["num_attention_heads"] // 2,
                projection_dim=text["projection_dim"] // 8)
    return unet, vae, text


def clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the real CLIP vocabulary comes from the clip-anytorch wheel: pip install --no-deps clip-anytorch")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        sys.exit(f"{path} is missing from the clip-anytorch install")
    return path


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """vocab.json + merges.txt derived from CLIP's BPE file, as CLIP builds them;
    the special-token files name `pad_token` as the pad token (as SD 2.x's, the
    map overrides the config's end token)."""
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
                    "unk_token": "<|endoftext|>"})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer",
                    "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>"})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp16-variant", action="store_true", help="also write *.fp16.safetensors files")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="sd14",
                    help="sd14: Stable Diffusion 1.4 (default); sd21: Stable Diffusion 2.1-v, 768 x 768")
    ap.add_argument("--tiny", action="store_true", help="1/8 of every width and 2 text layers (a quick check)")
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg, pad_token, prediction = FAMILIES[args.family]
    if args.tiny:
        unet_cfg, vae_cfg, text_cfg = tiny(unet_cfg, vae_cfg, text_cfg)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for name, make in (
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**text_cfg))),
        ("vae", lambda: AutoencoderKL(**vae_cfg)),
        ("unet", lambda: UNet2DConditionModel(**unet_cfg)),
    ):
        model = make().eval()
        model.save_pretrained(out / name, safe_serialization=True)
        if args.fp16_variant:
            model.half().save_pretrained(out / name, safe_serialization=True, variant="fp16")
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n / 1e6:.1f}M parameters", flush=True)
        del model
    write_clip_tokenizer(out / "tokenizer", pad_token)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if prediction:
        # SD 2.1's scheduler config; gnr reads its prediction_type only.
        DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1,
                      prediction_type=prediction).save_pretrained(out / "scheduler")
        index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**30:.2f} GiB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
