"""Single-file checkpoints with the original latent-diffusion key names, made
from a diffusers model folder (for the tests).

The writer walks the diffusers modules level by level and names each tensor
where the original code (ldm's openaimodel.UNetModel, the autoencoder's
Encoder/Decoder, FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder) keeps it:

  UNet  model.diffusion_model.  input_blocks.0.0 = conv_in; per level, per
        layer, input_blocks.k.0 a ResBlock (in_layers.0/2, emb_layers.1,
        out_layers.0/3, skip_connection) and input_blocks.k.1 a
        SpatialTransformer; input_blocks.k.0.op the downsampler;
        middle_block.0/1/2; output_blocks.k.0/1 and the upsampler's conv
        after them; time_embed.0/2; out.0/2.
  VAE   first_stage_model.  encoder.down.b.block.j / .downsample.conv;
        decoder.up.b counted from the lowest resolution; mid.block_1/2,
        mid.attn_1 with 1x1 convs q, k, v, proj_out; norm_out.
  text  SD 1.x: cond_stage_model.transformer.text_model.* (transformers'
        names); SD 2.x: cond_stage_model.model.* (OpenCLIP: fused in_proj,
        ln_1/ln_2, mlp.c_fc/c_proj, one resblock more than diffusers keeps,
        text_projection, logit_scale).

It adds what real files carry beside the weights (LDM's schedule buffers,
CLIP's position_ids) and, on request, an EMA copy of the UNet under
model_ema.* with the dots of the key removed (the UNet of another folder,
so that the two sets differ). diffusers' own single-file
loader reading the result back to the folder's weights is what tests that
this writer is right (tests/test_single_file.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return load_file(str(folder / component / name))


def _move(src: dict, dst: dict, old: str, new: str) -> None:
    """Every tensor of src under module `old` goes to dst under `new`."""
    for key in [k for k in src if k.startswith(old + ".")]:
        dst[new + key[len(old):]] = src.pop(key)


def _move_resnet(src: dict, dst: dict, old: str, new: str, parts: dict) -> None:
    for diffusers_part, ldm_part in parts.items():
        _move(src, dst, f"{old}.{diffusers_part}", f"{new}.{ldm_part}")


def unet_to_ldm(cfg: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers UNet's config and state dict -> LDM-named tensors."""
    src = dict(state)
    out: dict[str, torch.Tensor] = {}
    levels, layers = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    for old, new in (("conv_in", "input_blocks.0.0"), ("time_embedding.linear_1", "time_embed.0"),
                     ("time_embedding.linear_2", "time_embed.2"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")):
        _move(src, out, old, new)
    k = 1
    for b in range(levels):
        for j in range(layers):
            _move_resnet(src, out, f"down_blocks.{b}.resnets.{j}", f"input_blocks.{k}.0", UNET_RESNET)
            _move(src, out, f"down_blocks.{b}.attentions.{j}", f"input_blocks.{k}.1")
            k += 1
        if b < levels - 1:
            _move(src, out, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{k}.0.op")
            k += 1
    _move_resnet(src, out, "mid_block.resnets.0", "middle_block.0", UNET_RESNET)
    _move(src, out, "mid_block.attentions.0", "middle_block.1")
    _move_resnet(src, out, "mid_block.resnets.1", "middle_block.2", UNET_RESNET)
    k = 0
    for b in range(levels):
        has_attention = cfg["up_block_types"][b].startswith("CrossAttn")
        for j in range(layers + 1):
            _move_resnet(src, out, f"up_blocks.{b}.resnets.{j}", f"output_blocks.{k}.0", UNET_RESNET)
            _move(src, out, f"up_blocks.{b}.attentions.{j}", f"output_blocks.{k}.1")
            if j == layers:
                after = 2 if has_attention else 1  # the upsampler follows the resnet and attention of its layer
                _move(src, out, f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{k}.{after}.conv")
            k += 1
    assert not src, f"unet tensors left unnamed: {sorted(src)}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(cfg: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VAE's config and state dict -> LDM-named tensors."""
    src = dict(state)
    out: dict[str, torch.Tensor] = {}
    levels, layers = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    resnet = {p: p for p in ("norm1", "conv1", "norm2", "conv2")} | {"conv_shortcut": "nin_shortcut"}
    for name in ("quant_conv", "post_quant_conv"):
        _move(src, out, name, name)
    for side in ("encoder", "decoder"):
        for old, new in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out")):
            _move(src, out, f"{side}.{old}", f"{side}.{new}")
        for i in range(2):
            _move_resnet(src, out, f"{side}.mid_block.resnets.{i}", f"{side}.mid.block_{i + 1}", resnet)
        for old, new in VAE_ATTENTION.items():
            for param in ("weight", "bias"):
                t = src.pop(f"{side}.mid_block.attentions.0.{old}.{param}")
                # ldm's AttnBlock uses 1x1 convolutions where diffusers has linear layers.
                out[f"{side}.mid.attn_1.{new}.{param}"] = t[:, :, None, None] if t.ndim == 2 else t
    for b in range(levels):
        for j in range(layers):
            _move_resnet(src, out, f"encoder.down_blocks.{b}.resnets.{j}", f"encoder.down.{b}.block.{j}", resnet)
        _move(src, out, f"encoder.down_blocks.{b}.downsamplers.0.conv", f"encoder.down.{b}.downsample.conv")
        up = levels - 1 - b  # ldm counts decoder levels from the lowest resolution
        for j in range(layers + 1):
            _move_resnet(src, out, f"decoder.up_blocks.{b}.resnets.{j}", f"decoder.up.{up}.block.{j}", resnet)
        _move(src, out, f"decoder.up_blocks.{b}.upsamplers.0.conv", f"decoder.up.{up}.upsample.conv")
    assert not src, f"vae tensors left unnamed: {sorted(src)}"
    return {"first_stage_model." + k: v for k, v in out.items()}


def clip_to_ldm(cfg: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD 1.x: FrozenCLIPEmbedder holds transformers' CLIPTextModel as `transformer`."""
    out = {}
    for k, v in state.items():
        name = k if k.startswith("text_model.") else "text_model." + k
        out["cond_stage_model.transformer." + name] = v
    positions = cfg["max_position_embeddings"]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def openclip_to_ldm(cfg: dict, state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """SD 2.x: FrozenOpenCLIPEmbedder holds open_clip's text tower as `model`; it
    has one resblock more than SD 2.x reads, which diffusers' folders leave out."""
    src = {k.removeprefix("text_model."): v for k, v in state.items()}
    src.pop("embeddings.position_ids", None)
    width, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    out = {"token_embedding.weight": src.pop("embeddings.token_embedding.weight"),
           "positional_embedding": src.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": src.pop("final_layer_norm.weight"), "ln_final.bias": src.pop("final_layer_norm.bias")}
    gen = torch.Generator().manual_seed(seed)
    like0 = {k[len("encoder.layers.0."):]: v for k, v in src.items() if k.startswith("encoder.layers.0.")}
    for i in range(n + 1):
        layer = f"encoder.layers.{i}."
        if i == n:  # the layer SD 2.x skips: random values, which must not matter
            like = {k: torch.randn(v.shape, generator=gen) if v.device.type != "meta" else torch.empty_like(v)
                    for k, v in like0.items()}
        else:
            like = {k[len(layer):]: src.pop(k) for k in [k for k in src if k.startswith(layer)]}
        block = f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[block + f"attn.in_proj_{param}"] = torch.cat([like.pop(f"self_attn.{p}_proj.{param}") for p in "qkv"])
            for old, new in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[block + f"{new}.{param}"] = like.pop(f"{old}.{param}")
        assert not like, sorted(like)
    assert not src, f"text encoder tensors left unnamed: {sorted(src)}"
    device = out["token_embedding.weight"].device
    out["text_projection"] = torch.randn((width, width), generator=gen) if device.type != "meta" else \
        torch.empty((width, width), device=device)
    out["logit_scale"] = torch.tensor(4.6, device=device)
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def schedule_buffers() -> dict[str, torch.Tensor]:
    """LDM's DDPM buffers (SD's scaled_linear schedule), which files carry beside the weights."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
            "alphas_cumprod_prev": torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float()}


def ema_copy(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`unet` (LDM names) as an EMA copy under ldm's LitEma names: the key
    after "model." with its dots removed; with LitEma's counters."""
    out = {"model_ema." + "".join(k.split(".")[1:]): v for k, v in unet.items()}
    out["model_ema.decay"] = torch.tensor(0.9999)
    out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return out


def write_single_file(folder, path, family: str = "sd1", dtype=torch.float32, ema=None,
                      parts=("unet", "vae", "text_encoder"), extra: dict | None = None) -> Path:
    """Write the diffusers model `folder` as one LDM-named .safetensors at `path`.

    family: "sd1" (CLIP text encoder) or "sd2" (OpenCLIP names).
    dtype: the stored float dtype (torch.float32, float16 or bfloat16).
    ema: None, or another model folder of the same shape whose UNet is stored
    as the EMA copy (so that the EMA weights differ from the others).
    parts: the components to include; extra: more tensors to add as they are."""
    folder, path = Path(folder), Path(path)
    tensors: dict[str, torch.Tensor] = {}
    if "unet" in parts:
        tensors.update(unet_to_ldm(_config(folder, "unet"), _weights(folder, "unet")))
        if ema is not None:
            tensors.update(ema_copy(unet_to_ldm(_config(Path(ema), "unet"), _weights(Path(ema), "unet"))))
    if "vae" in parts:
        tensors.update(vae_to_ldm(_config(folder, "vae"), _weights(folder, "vae")))
    if "text_encoder" in parts:
        to_ldm = clip_to_ldm if family == "sd1" else openclip_to_ldm
        tensors.update(to_ldm(_config(folder, "text_encoder"), _weights(folder, "text_encoder")))
    tensors.update(schedule_buffers())
    tensors.update(extra or {})
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def folder_tensors(folder: Path, component: str) -> dict[str, np.ndarray]:
    """The folder's tensors of one component as float32 NumPy arrays, with the
    text encoder's names carrying the "text_model." prefix."""
    out = {}
    for k, v in _weights(Path(folder), component).items():
        if component == "text_encoder" and not k.startswith("text_model."):
            k = "text_model." + k
        out[k] = v.float().numpy()
    return out
