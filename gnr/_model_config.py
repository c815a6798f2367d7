"""The config.json files of a model folder, checked against what the engine
implements and resolved into the flat configs the engine takes.

Every rule the engine relies on is checked here, before the engine sees a
config: a violation is a ValueError naming the file, the key, the value and
what is allowed. The engine checks the same rules again only as internal
consistency checks (a failure there is a bug in gnr, not a bad file).

This sits below gnr.sizes and gnr.model: both read a folder's configs
through `read_model_configs`, the first without loading any weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import check_model_dir, read_json

__all__ = ["read_model_configs"]

# Config values the engine implements. A key absent from config.json takes
# diffusers' default, which is always the supported value; any other value is
# rejected by name rather than silently ignored.
_UNET_FIXED = {
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
    "use_linear_projection": False,
    "upcast_attention": False,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "time_embedding_type": "positional",
    "time_cond_proj_dim": None,
    "resnet_time_scale_shift": "default",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "timestep_post_act": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "cross_attention_norm": None,
    "attention_type": "default",
    "projection_class_embeddings_input_dim": None,
    "addition_time_embed_dim": None,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "reverse_transformer_layers_per_block": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}
_VAE_FIXED = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}
_DOWN = {"CrossAttnDownBlock2D": 1, "DownBlock2D": 0}
_UP = {"CrossAttnUpBlock2D": 1, "UpBlock2D": 0}


def _check_fixed(cfg: dict, fixed: dict, where: str) -> None:
    for key, allowed in fixed.items():
        if key not in cfg:
            continue
        v = cfg[key]
        same = v == allowed or (allowed is False and v is None) or (
            isinstance(allowed, (int, float)) and not isinstance(allowed, bool) and isinstance(v, (int, float))
            and not isinstance(v, bool) and float(v) == float(allowed))
        if not same:
            raise ValueError(f"{where}: {key} = {v!r} is not supported by gnr (supported: {allowed!r})")


def _per_block(cfg: dict, key: str, value: Any, n: int, where: str) -> list[int]:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: {key} = {value!r} must be an integer or a list of {n} integers")
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return list(value)
    raise ValueError(f"{where}: {key} = {value!r} must be an integer or a list of {n} integers")


def _unet_config(cfg: dict) -> dict:
    where = "unet/config.json"
    _check_fixed(cfg, _UNET_FIXED, where)
    boc = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(boc)
    down = list(cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    up = list(cfg.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    for key, types, table in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
        if len(types) != n:
            raise ValueError(f"{where}: {key} has {len(types)} entries but block_out_channels has {n}")
        for t in types:
            if t not in table:
                raise ValueError(f"{where}: {key} entry {t!r} is not supported (supported: {sorted(table)})")
    lpb = cfg.get("layers_per_block", 2)
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise ValueError(f"{where}: layers_per_block = {lpb!r}: different counts per block are not supported")
        lpb = lpb[0]
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    heads = _per_block(cfg, "num_attention_heads/attention_head_dim", heads, n, where)
    tl = _per_block(cfg, "transformer_layers_per_block", cfg.get("transformer_layers_per_block", 1), n, where)
    cad = cfg.get("cross_attention_dim", 1280)
    if not isinstance(cad, int) or isinstance(cad, bool):
        raise ValueError(f"{where}: cross_attention_dim = {cad!r} must be one integer")
    return {
        "in_channels": cfg.get("in_channels", 4),
        "out_channels": cfg.get("out_channels", 4),
        "num_blocks": n,
        "block_out_channels": boc,
        "layers_per_block": lpb,
        "down_has_attn": [_DOWN[t] for t in down],
        "up_has_attn": [_UP[t] for t in up],
        "heads": heads,
        "transformer_layers": tl,
        "mid_heads": heads[-1],
        "mid_transformer_layers": tl[-1],
        "cross_attention_dim": cad,
        "norm_num_groups": cfg.get("norm_num_groups", 32),
        "norm_eps": float(cfg.get("norm_eps", 1e-5)),
        "flip_sin_to_cos": int(bool(cfg.get("flip_sin_to_cos", True))),
        "freq_shift": float(cfg.get("freq_shift", 0)),
    }


def _vae_config(cfg: dict) -> dict:
    where = "vae/config.json"
    _check_fixed(cfg, _VAE_FIXED, where)
    boc = list(cfg.get("block_out_channels", (64,)))
    n = len(boc)
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(cfg.get(key, (allowed,) * n))
        if len(types) != n or any(t != allowed for t in types):
            raise ValueError(f"{where}: {key} = {types!r} is not supported (supported: {n} x {allowed!r})")
    return {
        "in_channels": cfg.get("in_channels", 3),
        "out_channels": cfg.get("out_channels", 3),
        "latent_channels": cfg.get("latent_channels", 4),
        "num_blocks": n,
        "block_out_channels": boc,
        "layers_per_block": cfg.get("layers_per_block", 1),
        "norm_num_groups": cfg.get("norm_num_groups", 32),
        "mid_block_add_attention": int(bool(cfg.get("mid_block_add_attention", True))),
        "use_quant_conv": int(bool(cfg.get("use_quant_conv", True))),
        "use_post_quant_conv": int(bool(cfg.get("use_post_quant_conv", True))),
        "scaling_factor": float(cfg.get("scaling_factor", 0.18215)),
    }


def _text_config(cfg: dict) -> dict:
    where = "text_encoder/config.json"
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"{where}: hidden_act = {act!r} is not supported (supported: 'quick_gelu', 'gelu')")
    return {
        "vocab_size": cfg.get("vocab_size", 49408),
        "hidden_size": cfg.get("hidden_size", 512),
        "intermediate_size": cfg.get("intermediate_size", 2048),
        "num_layers": cfg.get("num_hidden_layers", 12),
        "num_heads": cfg.get("num_attention_heads", 8),
        "max_positions": cfg.get("max_position_embeddings", 77),
        "act": 0 if act == "quick_gelu" else 1,
        "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-5)),
    }


def read_model_configs(path) -> tuple[dict, dict]:
    """(parsed config.json of each component, the engine's resolved configs)
    of the model folder `path`, without reading any weights: every check of the
    folder's layout and config values that loading makes first."""
    root = Path(path)
    check_model_dir(root)
    configs = {comp: read_json(root / comp / "config.json") for comp in ("text_encoder", "unet", "vae")}
    resolved = {"text": _text_config(configs["text_encoder"]), "unet": _unet_config(configs["unet"]),
                "vae": _vae_config(configs["vae"])}
    return configs, resolved
