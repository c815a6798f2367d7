"""The config.json files of a model folder, checked against what the engine
implements and resolved into the flat configs the engine takes.

Every rule the engine relies on is checked here, before the engine sees a
config: a violation is a ValueError naming the file, the key, the value and
what is allowed. The engine checks the same rules again only as internal
consistency checks (a failure there is a bug in gnr, not a bad file).

This sits below gnr.sizes and gnr.model: both read a folder's configs
through `read_model_configs`, the first without loading any weights. A
single-file checkpoint's configs, inferred by gnr.single_file, pass the
same checks (`resolve_configs`).
"""
from __future__ import annotations

import math
from pathlib import Path

from .files import check_model_dir, read_json
from .single_file import PREDICTION_TYPES, is_single_file, open_single_file

__all__ = ["read_model_configs", "resolve_configs", "read_scheduler_config", "prediction_type", "model_family",
           "PREDICTION_TYPES", "FAMILIES", "MAX_BLOCKS"]

# The engine's limits. The extension does not export them, so each is the
# value of the C constant named beside it; tests/test_bad_inputs.py reads
# the C sources and fails when the two disagree.
MAX_BLOCKS = 8                  # GNR_MAX_BLOCKS (csrc/gnr.h): UNet and VAE levels, len(block_out_channels)
MAX_UNET_LAYERS_PER_BLOCK = 3   # GNR_MAX_LAYERS - 1 (csrc/models/unet.h): an up block has one resnet more
MAX_VAE_LAYERS_PER_BLOCK = 3    # GNR_VAE_MAX_LAYERS - 1 (csrc/models/vae.h): a decoder block has one more
MAX_TRANSFORMER_LAYERS = 4      # GNR_MAX_TBLOCKS (csrc/models/layers.h): transformer blocks per attention
MAX_TEXT_LAYERS = 48            # GNR_MAX_TEXT_LAYERS (csrc/models/clip_text.h)
MAX_TIME_CHANNELS = 1280        # check_config (csrc/model.c): block_out_channels[0] is the width of the
                                # timestep sinusoid, built in a host buffer of fixed size (csrc/models/unet.c)
MAX_SIZE = 1_000_000_000        # any count or channel number: the binding's range for a config integer
                                # (csrc/python/model_binding.c), which also keeps sums of channels in a C int


# Config values the engine implements. A key absent from config.json takes
# diffusers' default, which is always the supported value; any other value is
# rejected by name rather than silently ignored.
_UNET_FIXED = {
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(cfg: dict, key: str, default, where: str, lo: int = 1, hi: int = MAX_SIZE) -> int:
    """cfg[key] (or `default` when absent): an integer in [lo, hi]."""
    v = cfg.get(key, default)
    if not _is_int(v) or not lo <= v <= hi:
        raise ValueError(f"{where}: {key} = {v!r} is not supported (supported: an integer from {lo} to {hi})")
    return v


def _real(cfg: dict, key: str, default, where: str, positive: bool = False) -> float:
    """cfg[key] (or `default`): a finite real number, > 0 when `positive`."""
    v = cfg.get(key, default)
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            or (positive and not v > 0)):
        raise ValueError(f"{where}: {key} = {v!r} is not supported "
                         f"(supported: a finite number{' > 0' if positive else ''})")
    return float(v)


def _flag(cfg: dict, key: str, default: bool, where: str) -> int:
    """cfg[key] (or `default`) as 0 or 1: true, false, 1 or 0 (never a
    string such as "false", which would read as true)."""
    v = cfg.get(key, default)
    if not (isinstance(v, bool) or (_is_int(v) and v in (0, 1))):
        raise ValueError(f"{where}: {key} = {v!r} is not supported (supported: true or false)")
    return int(bool(v))


def _channels(cfg: dict, default, groups: int, where: str) -> list[int]:
    """block_out_channels: 1 to MAX_BLOCKS levels, each a positive multiple
    of norm_num_groups (GroupNorm splits a level's channels into equal groups)."""
    boc = cfg.get("block_out_channels", default)
    if not isinstance(boc, (list, tuple)) or not 1 <= len(boc) <= MAX_BLOCKS:
        raise ValueError(f"{where}: block_out_channels = {boc!r} is not supported "
                         f"(supported: a list of 1 to {MAX_BLOCKS} positive integers, one per level)")
    for i, c in enumerate(boc):
        if not _is_int(c) or not 1 <= c <= MAX_SIZE:
            raise ValueError(f"{where}: block_out_channels[{i}] = {c!r} is not supported "
                             f"(supported: an integer from 1 to {MAX_SIZE})")
        if c % groups:
            raise ValueError(f"{where}: block_out_channels[{i}] = {c} is not a multiple of norm_num_groups = "
                             f"{groups} (supported: positive multiples of norm_num_groups)")
    return list(boc)


def _per_block(key: str, value, n: int, where: str) -> list[int]:
    """An integer, or a list of n integers: one value per level, each >= 1."""
    if _is_int(value):
        value = [value] * n
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or not all(_is_int(x) and 1 <= x <= MAX_SIZE for x in value)):
        raise ValueError(f"{where}: {key} = {value!r} is not supported "
                         f"(supported: a positive integer or a list of {n} positive integers)")
    return list(value)


def _unet_config(cfg: dict, where: str) -> dict:
    _check_fixed(cfg, _UNET_FIXED, where)
    groups = _int(cfg, "norm_num_groups", 32, where)
    boc = _channels(cfg, (320, 640, 1280, 1280), groups, where)
    n = len(boc)
    if boc[0] > MAX_TIME_CHANNELS:
        raise ValueError(f"{where}: block_out_channels[0] = {boc[0]} is larger than gnr supports (supported: at "
                         f"most {MAX_TIME_CHANNELS}, the width of the timestep embedding's sinusoid)")
    down = cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    up = cfg.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    for key, types, table in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
        if not isinstance(types, (list, tuple)):
            raise ValueError(f"{where}: {key} = {types!r} is not supported (supported: a list of {n} block types)")
        if len(types) != n:
            raise ValueError(f"{where}: {key} has {len(types)} entries but block_out_channels has {n}")
        for t in types:
            if not isinstance(t, str) or t not in table:
                raise ValueError(f"{where}: {key} entry {t!r} is not supported (supported: {sorted(table)})")
    down_attn, up_attn = [_DOWN[t] for t in down], [_UP[t] for t in up]
    for i in range(n):
        # The up path runs the down path backwards through its skip connections.
        if up_attn[i] != down_attn[n - 1 - i]:
            raise ValueError(f"{where}: up_block_types[{i}] = {up[i]!r} does not mirror down_block_types"
                             f"[{n - 1 - i}] = {down[n - 1 - i]!r} (supported: symmetric SD 1.x and 2.x layouts, "
                             f"where an up block has cross-attention exactly when its mirrored down block has)")
    lpb = cfg.get("layers_per_block", 2)
    if isinstance(lpb, (list, tuple)) and len(lpb) == n and all(x == lpb[0] and _is_int(x) for x in lpb):
        lpb = lpb[0]  # one count per level, all equal: the only per-level form the engine runs
    if not _is_int(lpb) or not 1 <= lpb <= MAX_UNET_LAYERS_PER_BLOCK:
        raise ValueError(f"{where}: layers_per_block = {lpb!r} is not supported (supported: an integer from 1 to "
                         f"{MAX_UNET_LAYERS_PER_BLOCK}, or a list of {n} equal ones)")
    # diffusers reads attention_head_dim as the number of heads of each down
    # block when num_attention_heads is unset (SD 1.x: 8 for every level;
    # SD 2.x: [5, 10, 20, 20], heads of 64 channels); the mid block takes
    # the last level's, up block i the mirrored down block's (unet.c).
    heads_key = "num_attention_heads" if cfg.get("num_attention_heads") else "attention_head_dim"
    heads = _per_block(heads_key, cfg.get(heads_key, 8), n, where)
    tl = _per_block("transformer_layers_per_block", cfg.get("transformer_layers_per_block", 1), n, where)
    # The levels with attention, and the mid block (which has it always and
    # takes the last level's heads and layers).
    for i in sorted({i for i in range(n) if down_attn[i]} | {n - 1}):
        if boc[i] % heads[i]:
            raise ValueError(f"{where}: {heads_key} = {heads[i]} heads for level {i} do not divide its "
                             f"block_out_channels[{i}] = {boc[i]} (supported: a divisor of the level's channels)")
        if tl[i] > MAX_TRANSFORMER_LAYERS:
            raise ValueError(f"{where}: transformer_layers_per_block = {tl[i]} for level {i} is not supported "
                             f"(supported: 1 to {MAX_TRANSFORMER_LAYERS})")
    return {
        "in_channels": _int(cfg, "in_channels", 4, where),
        "out_channels": _int(cfg, "out_channels", 4, where),
        "num_blocks": n,
        "block_out_channels": boc,
        "layers_per_block": lpb,
        "down_has_attn": down_attn,
        "up_has_attn": up_attn,
        "heads": heads,
        "transformer_layers": tl,
        "mid_heads": heads[-1],
        "mid_transformer_layers": tl[-1],
        "cross_attention_dim": _int(cfg, "cross_attention_dim", 1280, where),
        "norm_num_groups": groups,
        "norm_eps": _real(cfg, "norm_eps", 1e-5, where, positive=True),
        "flip_sin_to_cos": _flag(cfg, "flip_sin_to_cos", True, where),
        "freq_shift": _real(cfg, "freq_shift", 0, where),
        # SD 2.x: Linear proj_in/proj_out instead of 1x1 convolutions.
        "linear_projection": _flag(cfg, "use_linear_projection", False, where),
        # Attention scores and softmax in fp32 under 16-bit autocast. gnr
        # computes both in fp32 in every mode (README, "On a GPU"), so the
        # flag changes nothing; it is carried for the model's identity.
        "upcast_attention": _flag(cfg, "upcast_attention", False, where),
    }


def _vae_config(cfg: dict, where: str) -> dict:
    _check_fixed(cfg, _VAE_FIXED, where)
    groups = _int(cfg, "norm_num_groups", 32, where)
    boc = _channels(cfg, (64,), groups, where)
    n = len(boc)
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = cfg.get(key, (allowed,) * n)
        if not isinstance(types, (list, tuple)) or len(types) != n or any(t != allowed for t in types):
            raise ValueError(f"{where}: {key} = {types!r} is not supported (supported: {n} x {allowed!r})")
    return {
        "in_channels": _int(cfg, "in_channels", 3, where),
        "out_channels": _int(cfg, "out_channels", 3, where),
        "latent_channels": _int(cfg, "latent_channels", 4, where),
        "num_blocks": n,
        "block_out_channels": boc,
        "layers_per_block": _int(cfg, "layers_per_block", 1, where, hi=MAX_VAE_LAYERS_PER_BLOCK),
        "norm_num_groups": groups,
        "mid_block_add_attention": _flag(cfg, "mid_block_add_attention", True, where),
        "use_quant_conv": _flag(cfg, "use_quant_conv", True, where),
        "use_post_quant_conv": _flag(cfg, "use_post_quant_conv", True, where),
        "scaling_factor": _real(cfg, "scaling_factor", 0.18215, where, positive=True),
    }


def _text_config(cfg: dict, where: str) -> dict:
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"{where}: hidden_act = {act!r} is not supported (supported: 'quick_gelu', 'gelu')")
    hidden = _int(cfg, "hidden_size", 512, where)
    heads = _int(cfg, "num_attention_heads", 8, where)
    if hidden % heads:
        raise ValueError(f"{where}: num_attention_heads = {heads} does not divide hidden_size = {hidden} "
                         f"(supported: a divisor of hidden_size)")
    return {
        "vocab_size": _int(cfg, "vocab_size", 49408, where),
        "hidden_size": hidden,
        "intermediate_size": _int(cfg, "intermediate_size", 2048, where),
        "num_layers": _int(cfg, "num_hidden_layers", 12, where, hi=MAX_TEXT_LAYERS),
        "num_heads": heads,
        # The tokenizer's length: room for the start and end tokens at least.
        "max_positions": _int(cfg, "max_position_embeddings", 77, where, lo=2),
        "act": 0 if act == "quick_gelu" else 1,
        "layer_norm_eps": _real(cfg, "layer_norm_eps", 1e-5, where, positive=True),
    }


def prediction_type(scheduler_config: dict, where: str) -> str:
    """The UNet's output kind from a parsed scheduler config:
    "epsilon" (the default when the key is absent) or "v_prediction"."""
    v = scheduler_config.get("prediction_type", "epsilon")
    if v not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type = {v!r} is not supported (supported: "
                         f"{', '.join(repr(p) for p in PREDICTION_TYPES)})")
    return v


def read_scheduler_config(root: Path) -> dict:
    """scheduler/scheduler_config.json of the folder `root`, parsed, or {}
    when the folder has none (the model then predicts the noise). gnr reads
    only its prediction_type: the noise schedule is fixed (GNR_SPEC.md
    section 2)."""
    f = root / "scheduler" / "scheduler_config.json"
    if not f.exists():
        return {}
    cfg = read_json(f)
    prediction_type(cfg, str(f))
    return cfg


def resolve_configs(configs: dict, files: dict | None = None) -> dict:
    """The engine's resolved configs {"text", "unet", "vae"} from the parsed
    configs {"text_encoder", "unet", "vae", "scheduler"} of one model (a
    missing "scheduler" entry: an eps-predicting model). `files` names the
    source of each in messages (default: the diffusers paths
    "<component>/config.json"). Any model source (a diffusers folder, a
    single checkpoint file whose configs were inferred) goes through this."""
    names = {"text_encoder": "text_encoder/config.json", "unet": "unet/config.json", "vae": "vae/config.json",
             "scheduler": "scheduler/scheduler_config.json"}
    names.update({k: str(v) for k, v in (files or {}).items()})
    resolved = {"text": _text_config(configs["text_encoder"], names["text_encoder"]),
                "unet": _unet_config(configs["unet"], names["unet"]),
                "vae": _vae_config(configs["vae"], names["vae"])}
    kind = prediction_type(configs.get("scheduler") or {}, names["scheduler"])
    resolved["unet"]["prediction"] = PREDICTION_TYPES.index(kind)
    # The components meet at the latent (VAE -> UNet) and at the context
    # (text encoder -> the UNet's cross-attention).
    u, v, t = resolved["unet"], resolved["vae"], resolved["text"]
    if v["latent_channels"] != u["in_channels"]:
        raise ValueError(f"{names['vae']}: latent_channels = {v['latent_channels']} differs from in_channels = "
                         f"{u['in_channels']} in {names['unet']} (supported: equal: the UNet denoises the VAE's "
                         f"latents)")
    if t["hidden_size"] != u["cross_attention_dim"]:
        raise ValueError(f"{names['text_encoder']}: hidden_size = {t['hidden_size']} differs from "
                         f"cross_attention_dim = {u['cross_attention_dim']} in {names['unet']} (supported: equal: "
                         f"the UNet attends to the text encoder's output)")
    return resolved


FAMILIES = ("SD 1.x", "SD 2.x")


def model_family(configs: dict) -> str:
    """"SD 2.x" for a model with a trait of Stable Diffusion 2.x in its
    parsed configs {"text_encoder", "unet", ...} (an OpenCLIP text encoder,
    whose activation is the exact "gelu", or Linear transformer projections
    in the UNet), else "SD 1.x" (CLIP ViT-L's "quick_gelu" and 1x1-conv
    projections; the bundled default model is of this family)."""
    text, unet = configs["text_encoder"], configs["unet"]
    sd2 = text.get("hidden_act", "quick_gelu") == "gelu" or bool(unet.get("use_linear_projection", False))
    return FAMILIES[1] if sd2 else FAMILIES[0]


def read_model_configs(path, **single_file_options) -> tuple[dict, dict]:
    """(parsed configs, the engine's resolved configs) of the model folder
    `path`, without reading any weights: every check of the folder's layout
    and config values that loading makes first. The parsed configs are the
    config.json of "text_encoder", "unet" and "vae", and under "scheduler"
    scheduler/scheduler_config.json ({} when the folder has none). A file
    `path` is a single-file checkpoint: its configs, in the same form, are
    inferred from its header by gnr.single_file (`single_file_options` are
    open_single_file's) and checked by the same rules."""
    if is_single_file(path):
        single = open_single_file(path, **single_file_options)
        return single.configs, resolve_configs(single.configs, single.config_files)
    if single_file_options:
        raise ValueError(f"{path}: {', '.join(sorted(single_file_options))} apply to single-file checkpoints only; "
                         f"a model folder brings its own components and configs")
    root = Path(path)
    check_model_dir(root)
    files = {comp: root / comp / "config.json" for comp in ("text_encoder", "unet", "vae")}
    configs = {comp: read_json(f) for comp, f in files.items()}
    configs["scheduler"] = read_scheduler_config(root)
    files["scheduler"] = root / "scheduler" / "scheduler_config.json"
    return configs, resolve_configs(configs, files)
