"""Single-file Stable Diffusion checkpoints: one `.safetensors` file with the
original latent-diffusion key names, as most fine-tuned models are shared.

    model.diffusion_model.*             the UNet (model_ema.* : its EMA copy)
    first_stage_model.*                 the VAE
    cond_stage_model.transformer.*      SD 1.x: the CLIP text encoder (transformers layout)
    cond_stage_model.model.*            SD 2.x: the OpenCLIP text encoder

`open_single_file` reads the header only (no tensor data), infers the
architecture from the tensors' shapes, and returns a `SingleFile`: the three
components' configs in diffusers form (the configs a diffusers model folder
would hold, checked afterwards by the same rules as a folder's) and a plan
mapping every tensor it uses to the engine's (diffusers') name.
`SingleFile.weights()` then streams (component, name, float32 array) one
tensor at a time.

What the shapes say: the family (SD 1.x: 1x1 conv proj_in/proj_out and the
CLIP text encoder; SD 2.x: linear proj_in/proj_out and OpenCLIP), channels
per level, layers per block, which levels have attention, transformer
blocks, the context width, the VAE's and the text encoder's sizes.
What they cannot say comes from the family or from arguments:
  - attention heads: SD 1.x 8 per level; SD 2.x one per 64 channels; the
    text encoder one per 64 channels (CLIP ViT-L/14 and OpenCLIP ViT-H/14);
  - GroupNorm groups 32, LayerNorm eps 1e-5, text activation quick_gelu
    (SD 1.x) or gelu (SD 2.x, which reads the penultimate OpenCLIP layer:
    the last one in the file is dropped, as diffusers' converted folders do);
  - `image_size` (default 512; 768 for SD 2.x 768-v models): the UNet's
    sample_size is image_size / the VAE factor;
  - `prediction_type` (default "epsilon"; "v_prediction" for 768-v models)
    and the rest of the scheduler: SD's 1000 training steps, scaled_linear
    betas 0.00085 .. 0.012, as the model folders hold it;
  - upcast_attention: true for SD 2.x with v-prediction, as SD 2.1 (768)
    has it;
  - the VAE's scaling factor 0.18215.
diffusers' `from_single_file` without a config takes SD 2.1 768-v's settings
for every SD 2.x file; gnr takes the defaults above, so a 768-v file needs
image_size=768, prediction_type="v_prediction".

Files with EMA weights (`model_ema.*`) give the non-EMA UNet unless
`ema=True`, as diffusers' `from_single_file` does. F16 and BF16 files are
widened to float32 exactly. A file without a VAE or text encoder needs
`vae=` / `text_encoder=`: a diffusers component folder (config.json and
safetensors weights), or for the VAE a VAE file with the original names.
The tokenizer is the one bundled with gnr for the family (the CLIP BPE
vocabulary; SD 2.x pads with "!"), unless `tokenizer=` names a folder.

Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused: loading
them can run code. The error says how to convert one to safetensors.
"""
from __future__ import annotations

import re
from pathlib import Path

from .files import PICKLE_SUFFIXES, WEIGHT_NAMES, find_weights_file, iter_safetensors, iter_weights_folder, \
    read_json, read_safetensors_header, safetensors_dtypes
from .tokenizer import read_pad_token

__all__ = ["SingleFile", "open_single_file", "plan_single_file", "is_single_file", "PREDICTION_TYPES",
           "DEFAULT_IMAGE_SIZE", "BUNDLED_TOKENIZER", "SCHEDULER_CONFIG"]

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

# The scheduler's prediction_type values the engine implements, in the order
# of the engine's codes (gnr_prediction, csrc/gnr.h); model folders are
# checked against the same list (_model_config.py).
PREDICTION_TYPES = ("epsilon", "v_prediction")
DEFAULT_IMAGE_SIZE = 512
SCALING_FACTOR = 0.18215
NORM_GROUPS = 32
HEAD_SIZE = 64  # SD 2.x's UNet heads and both text encoders' heads
SD1_HEADS = 8
# SD's training schedule, as the scheduler_config.json of SD 1.x/2.x folders holds it.
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                    "steps_offset": 1, "prediction_type": "epsilon"}
# The CLIP BPE vocabulary, shared by SD 1.x (pads with the end token) and SD 2.x (pads with "!").
BUNDLED_TOKENIZER = Path(__file__).resolve().parent / "data" / "clip_tokenizer"
_PAD = {"sd1": None, "sd2": "!"}
_FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x"}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

# Tensors under a component's prefix that the engine does not use: CLIP's
# position ids, OpenCLIP's projection, temperature and mask (SD reads the
# hidden states). Keys outside the components (LDM's schedule buffers,
# LitEma's counters) are skipped without a list.
_IGNORED = re.compile(r"^cond_stage_model\.(transformer\.(text_model\.)?embeddings\.position_ids"
                      r"|model\.(text_projection|logit_scale|attn_mask))$")

_CONVERT_HINT = ("convert it to safetensors first, from a source you trust: in Python, sd = torch.load(path, "
                 "weights_only=True)['state_dict']; safetensors.torch.save_file({k: v.contiguous() for k, v in "
                 "sd.items()}, 'model.safetensors'); or with diffusers' scripts/convert_original_stable_diffusion_"
                 "to_diffusers.py --checkpoint_path <file> --to_safetensors --dump_path <folder>, a folder gnr loads")


def is_single_file(path) -> bool:
    """Whether `path` names a file (a single-file checkpoint) rather than a model folder."""
    p = Path(path)
    return p.is_file() or (not p.exists() and p.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES)


# ------------------------------------------------------------------ key mapping (LDM -> diffusers) --

# UNet resnet (ResBlock) and VAE resnet (ResnetBlock) parts.
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_UNET_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_VAE_LINEAR = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
_OPENCLIP_TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
                 "positional_embedding": "embeddings.position_embedding.weight",
                 "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
_OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _split_param(rest: str) -> tuple[str, str]:
    module, _, param = rest.rpartition(".")
    return module, param


def _unet_name(key: str, layers: int) -> str | None:
    """The diffusers name of a UNet key (prefix removed), or None when the
    key fits no part of the layout. `layers` is layers_per_block."""
    module, param = _split_param(key)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    m = re.match(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$", key) or re.match(
        r"(middle_block)\.(\d+)\.(.+)$", key)
    if m is None:
        return None
    if m.group(1) == "middle_block":
        index, rest = int(m.group(2)), m.group(3)
        if index == 1:
            return f"mid_block.attentions.0.{rest}"
        return _resnet(f"mid_block.resnets.{index // 2}", rest) if index in (0, 2) else None
    kind, index, part, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if kind == "input_blocks":
        # input_blocks.0 is conv_in; then per level `layers` (resnet, attention) pairs and a downsampler.
        level, j = divmod(index - 1, layers + 1)
        if j == layers:
            return f"down_blocks.{level}.downsamplers.0.conv.{param}" if part == 0 and rest in (
                "op.weight", "op.bias") else None
        block = f"down_blocks.{level}"
    else:
        # per level `layers + 1` (resnet, attention, upsampler) triples; the upsampler
        # sits after the resnet (part 1) or after the attention (part 2).
        level, j = divmod(index, layers + 1)
        block = f"up_blocks.{level}"
        if rest in ("conv.weight", "conv.bias") and part in (1, 2) and j == layers:
            return f"{block}.upsamplers.0.{rest}"
    if part == 0:
        return _resnet(f"{block}.resnets.{j}", rest)
    if part == 1:
        return f"{block}.attentions.{j}.{rest}"
    return None


def _resnet(block: str, rest: str) -> str | None:
    module, param = _split_param(rest)
    return f"{block}.{_UNET_RESNET[module]}.{param}" if module in _UNET_RESNET else None


def _vae_name(key: str, levels: int) -> str | None:
    """The diffusers name of a VAE key (prefix removed), or None."""
    module, param = _split_param(key)
    if module in ("quant_conv", "post_quant_conv"):
        return key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    module, param = _split_param(rest)
    if module in _VAE_TOP:
        return f"{side}.{_VAE_TOP[module]}.{param}"
    m = re.match(r"mid\.block_([12])\.(\w+)$", module)
    if m and m.group(2) in _VAE_RESNET:
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_VAE_RESNET[m.group(2)]}.{param}"
    m = re.match(r"mid\.attn_1\.(\w+)$", module)
    if m and m.group(1) in _VAE_ATTN:
        return f"{side}.mid_block.attentions.0.{_VAE_ATTN[m.group(1)]}.{param}"
    # The decoder's LDM levels count from the lowest resolution up; diffusers' from the top.
    m = re.match(r"(down|up)\.(\d+)\.(block\.(\d+)\.(\w+)|(down|up)sample\.conv)$", module)
    if m is None or (side == "encoder") != (m.group(1) == "down") or m.group(6) not in (None, m.group(1)):
        return None
    level = int(m.group(2)) if side == "encoder" else levels - 1 - int(m.group(2))
    block = f"{side}.{m.group(1)}_blocks.{level}"
    if m.group(4) is not None:
        return f"{block}.resnets.{m.group(4)}.{_VAE_RESNET[m.group(5)]}.{param}" if m.group(5) in _VAE_RESNET \
            else None
    return f"{block}.{m.group(1)}samplers.0.conv.{param}"


def _openclip_names(key: str, layers: int) -> list[str] | None:
    """The diffusers name(s) of an OpenCLIP key (prefix removed): three for a
    fused q/k/v projection, [] for the dropped last layer, None when unknown."""
    if key in _OPENCLIP_TOP:
        return [f"text_model.{_OPENCLIP_TOP[key]}"]
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
    if m is None:
        return None
    i, rest = int(m.group(1)), m.group(2)
    if i >= layers:  # SD 2.x reads the penultimate layer's output: the file's last layer is not used
        return [] if i == layers else None
    layer = f"text_model.encoder.layers.{i}"
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        param = rest.rpartition("_")[2]
        return [f"{layer}.self_attn.{p}_proj.{param}" for p in "qkv"]
    module, param = _split_param(rest)
    return [f"{layer}.{_OPENCLIP_LAYER[module]}.{param}"] if module in _OPENCLIP_LAYER else None


# ------------------------------------------------------------------------ shapes -> configs --


class _Header:
    """A file's {key: shape} with the error context of that file."""

    def __init__(self, path: Path, shapes: dict[str, tuple]):
        self.path = path
        self.shapes = shapes

    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: {what}")

    def shape(self, key: str, ndim: tuple[int, ...] = ()) -> tuple:
        if key not in self.shapes:
            raise self.error(f"tensor {key!r} is missing (the file is incomplete or not a Stable Diffusion "
                             f"1.x/2.x checkpoint)")
        shape = self.shapes[key]
        if ndim and len(shape) not in ndim:
            raise self.error(f"tensor {key!r} has shape {list(shape)}; expected {' or '.join(map(str, ndim))} "
                             f"dimensions")
        return shape

    def indices(self, pattern: str) -> list[int]:
        """Sorted distinct integers captured by `pattern` (one group) over the keys."""
        rx = re.compile(pattern)
        return sorted({int(m.group(1)) for k in self.shapes if (m := rx.match(k))})


def _unet_config(h: _Header, p: str, image_size: int, vae_factor: int, prediction_type: str) -> tuple[dict, str]:
    """(diffusers UNet config, family) from the shapes of the keys under prefix p."""
    n_in = len(h.indices(re.escape(p) + r"input_blocks\.(\d+)\."))
    downs = h.indices(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight$")
    levels = len(downs) + 1
    if n_in < 2 or n_in % levels:
        raise h.error(f"the UNet has {n_in} input blocks and {levels - 1} downsamplers, which is no Stable "
                      f"Diffusion layout (expected conv_in, then per level the same number of layers)")
    layers = n_in // levels - 1
    if layers < 1 or downs != [(b + 1) * (layers + 1) for b in range(levels - 1)]:
        raise h.error(f"the UNet's downsamplers sit at input blocks {downs}, which is no Stable Diffusion layout")
    channels, down_attn, tlayers, proj_ndim = [], [], [], set()
    for b in range(levels):
        k = 1 + b * (layers + 1)
        channels.append(h.shape(f"{p}input_blocks.{k}.0.in_layers.2.weight", (4,))[0])
        attn = f"{p}input_blocks.{k}.1."
        down_attn.append(f"{attn}proj_in.weight" in h.shapes)
        if down_attn[-1]:
            tlayers.append(len(h.indices(re.escape(attn) + r"transformer_blocks\.(\d+)\.")))
            proj_ndim.add(len(h.shape(f"{attn}proj_in.weight", (2, 4))))
    n_out = len(h.indices(re.escape(p) + r"output_blocks\.(\d+)\."))
    if n_out != levels * (layers + 1):
        raise h.error(f"the UNet has {n_out} output blocks; its {levels} levels of {layers} layers need "
                      f"{levels * (layers + 1)}")
    up_attn = [f"{p}output_blocks.{b * (layers + 1)}.1.proj_in.weight" in h.shapes for b in range(levels)]
    if f"{p}middle_block.1.proj_in.weight" not in h.shapes:
        raise h.error(f"tensor '{p}middle_block.1.proj_in.weight' is missing: gnr runs Stable Diffusion's UNet, "
                      f"whose middle block has attention")
    proj_ndim.add(len(h.shape(f"{p}middle_block.1.proj_in.weight", (2, 4))))
    if len(proj_ndim) != 1:
        raise h.error("the UNet mixes 1x1-conv and linear attention projections (proj_in); SD 1.x has convs "
                      "everywhere, SD 2.x linear layers everywhere")
    family = "sd1" if proj_ndim.pop() == 4 else "sd2"
    context = h.shape(f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight", (2,))[1]
    if family == "sd1":
        heads = SD1_HEADS
    else:
        for b, c in enumerate(channels):
            if c % HEAD_SIZE:
                raise h.error(f"UNet level {b} has {c} channels, not a multiple of SD 2.x's head size {HEAD_SIZE}")
        heads = [c // HEAD_SIZE for c in channels]
    tl = [tlayers.pop(0) if a else 1 for a in down_attn]
    tl = tl[0] if all(t == tl[0] for t in tl) else tl
    conv_in = h.shape(f"{p}input_blocks.0.0.weight", (4,))
    conv_out = h.shape(f"{p}out.2.weight", (4,))
    if image_size % vae_factor:
        raise h.error(f"image_size = {image_size} is not a multiple of the VAE factor {vae_factor} "
                      f"(allowed: a positive multiple of {vae_factor}, e.g. 512 or 768)")
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": image_size // vae_factor,
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "attention_head_dim": heads,
        "transformer_layers_per_block": tl,
        "cross_attention_dim": context,
        "use_linear_projection": family == "sd2",
        # SD 2.1 768-v computes attention scores in float32 (no change in float32 math).
        "upcast_attention": family == "sd2" and prediction_type == "v_prediction",
        "norm_num_groups": NORM_GROUPS,
    }, family


def _vae_config(h: _Header, p: str, image_size: int) -> dict:
    levels = len(h.indices(re.escape(p) + r"encoder\.down\.(\d+)\."))
    if levels < 1:
        raise h.error(f"the VAE has no {p}encoder.down.* blocks")
    channels = [h.shape(f"{p}encoder.down.{b}.block.0.conv1.weight", (4,))[0] for b in range(levels)]
    layers = len(h.indices(re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    quant = h.shape(f"{p}quant_conv.weight", (4,))
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": h.shape(f"{p}encoder.conv_in.weight", (4,))[1],
        "out_channels": h.shape(f"{p}decoder.conv_out.weight", (4,))[0],
        "latent_channels": quant[0] // 2,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": image_size,
        "scaling_factor": SCALING_FACTOR,
    }


def _text_config(h: _Header, family: str) -> dict:
    """The diffusers CLIPTextModel config of the file's text encoder."""
    if family == "sd1":
        # transformers' CLIPTextModel, with or without its "text_model." level (older files)
        p = CLIP_PREFIX + ("text_model." if any(k.startswith(CLIP_PREFIX + "text_model.") for k in h.shapes) else "")
        vocab, width = h.shape(p + "embeddings.token_embedding.weight", (2,))
        positions = h.shape(p + "embeddings.position_embedding.weight", (2,))[0]
        in_file = len(h.indices(re.escape(p) + r"encoder\.layers\.(\d+)\."))
        ff = h.shape(p + "encoder.layers.0.mlp.fc1.weight", (2,))[0]
        layers, act = in_file, "quick_gelu"
    else:
        p = OPENCLIP_PREFIX
        vocab, width = h.shape(p + "token_embedding.weight", (2,))
        positions = h.shape(p + "positional_embedding", (2,))[0]
        in_file = len(h.indices(re.escape(p) + r"transformer\.resblocks\.(\d+)\."))
        ff = h.shape(p + "transformer.resblocks.0.mlp.c_fc.weight", (2,))[0]
        layers, act = in_file - 1, "gelu"
        if layers < 1:
            raise h.error(f"the OpenCLIP text encoder has {in_file} layer(s); SD 2.x reads the penultimate one, "
                          f"so at least 2 are needed")
    if width % HEAD_SIZE:
        raise h.error(f"the text encoder is {width} wide, not a multiple of CLIP's head size {HEAD_SIZE}")
    return {
        "architectures": ["CLIPTextModel"],
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": width // HEAD_SIZE,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }


# --------------------------------------------------------------------------------- the file --


class SingleFile:
    """A single-file checkpoint ready to load: made by `open_single_file`.

    Attributes:
      path: the file.
      family: "sd1" or "sd2".
      configs: {"text_encoder", "unet", "vae", "scheduler"}, diffusers form.
      config_files: {component: where its config came from}, for messages.
      tokenizer_dir, pad_token: the tokenizer folder and the token to pad
        with (None: the one the folder names, by default the end token; "!"
        for SD 2.x with the bundled vocabulary).
      plan: {file key: (component, [diffusers names])}, the tensors of the
        file to read and the engine's names for them.
    `weights` streams the plan's tensors, then those of `more_files`
    ((file, plan) pairs: a VAE file given by argument) and of `folders`
    ({component: folder given by argument}).
    """

    def __init__(self, path: Path, family: str, configs: dict, config_files: dict, plan: dict,
                 folders: dict, tokenizer_dir: Path, pad_token, more_files: tuple = ()):
        self.path = path
        self.family = family
        self.configs = configs
        self.config_files = config_files
        self.tokenizer_dir = tokenizer_dir
        self.pad_token = pad_token
        self.plan = plan
        self._folders = folders        # component -> diffusers component folder given by argument
        self._more_files = more_files  # (file, plan) of single files given by argument (a VAE file)

    def weights(self):
        """(component, diffusers name, float32 array, origin) for every weight, one tensor
        read at a time: the file's tensors in file order (a fused OpenCLIP q/k/v
        projection yields three views of the one tensor read), then the weights of
        any component folder given by argument. `origin` names the file and tensor
        for error messages. Peak host memory: the largest tensor of the file in
        float32 plus the bytes it was stored in, never a second copy of the model."""
        for path, plan in ((self.path, self.plan), *self._more_files):
            yield from _stream(path, plan)
        for comp, folder in self._folders.items():
            for name, array in iter_weights_folder(folder, WEIGHT_NAMES[comp]):
                yield comp, name, array, str(folder)

    def stored_dtypes(self) -> dict[str, list[str]]:
        """{component: the sorted dtypes its weights are stored in ("float32",
        "float16", "bfloat16")}, from the headers of the file, of a VAE file
        and of the folders given (no tensor data is read)."""
        out: dict[str, set] = {}
        for path, plan in ((self.path, self.plan), *self._more_files):
            header = read_safetensors_header(path)
            for key, (comp, _) in plan.items():
                out.setdefault(comp, set()).add(_DTYPE_NAMES.get(header[key][0], header[key][0]))
        for comp, folder in self._folders.items():
            for file in find_weights_file(folder, base_name=WEIGHT_NAMES[comp]):
                out.setdefault(comp, set()).update(safetensors_dtypes(file))
        return {comp: sorted(out.get(comp, ())) for comp in ("text_encoder", "unet", "vae")}


def _stream(path: Path, plan: dict):
    """(component, diffusers name, float32 array, origin) for the tensors of
    `plan` in the file `path`, one read at a time."""
    for key, array in iter_safetensors(path, only=plan):
        comp, names = plan[key]
        origin = f"{path}: tensor {key!r}"
        if comp == "vae" and _VAE_LINEAR.search(names[0]) and array.ndim == 4 and array.shape[2:] == (1, 1):
            array = array.reshape(array.shape[:2])  # LDM's 1x1 conv is diffusers' linear layer
        if len(names) == 1:
            yield comp, names[0], array, origin
            continue
        if array.shape[0] % len(names):
            raise ValueError(f"{origin}: shape {list(array.shape)} does not split into "
                             f"{len(names)} equal q/k/v parts along its first dimension")
        for name, part in zip(names, array.reshape(len(names), -1, *array.shape[1:])):
            yield comp, name, part, origin


def _vae_file(value, image_size: int, path: Path) -> tuple[dict, dict, Path]:
    """(diffusers VAE config, plan, file) of a VAE given as a single file: LDM
    names with the first_stage_model. prefix (a whole checkpoint) or without
    it (a VAE file such as SD's fine-tuned VAEs: encoder.*, decoder.*)."""
    file = Path(value)
    _check_suffix(file)
    hv = _Header(file, {k: shape for k, (_, shape) in read_safetensors_header(file).items()})
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in hv.shapes) else ""
    if not any(k.startswith(prefix + "encoder.") for k in hv.shapes):
        raise hv.error(f"vae= names a file without VAE tensors (expected {VAE_PREFIX}encoder.* or encoder.*, "
                       f"decoder.*, quant_conv.*, post_quant_conv.*; given as the VAE of {path})")
    config = _vae_config(hv, prefix, image_size)
    levels = len(config["block_out_channels"])
    plan = {}
    for key in hv.shapes:
        rest = key[len(prefix):]
        if not key.startswith(prefix) or rest.partition(".")[0] not in ("encoder", "decoder", "quant_conv",
                                                                         "post_quant_conv"):
            continue  # another component of a whole checkpoint, or an EMA counter
        name = _vae_name(rest, levels)
        if name is None:
            raise hv.error(f"tensor {key!r} fits no part of a Stable Diffusion VAE with the layout inferred from "
                           f"the file")
        plan[key] = ("vae", [name])
    return config, plan, file


def _check_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: {suffix} checkpoints are pickle files, which gnr never loads (loading one can "
                         f"run code); {_CONVERT_HINT}")
    if suffix != ".safetensors":
        raise ValueError(f"{path}: not a model gnr can load (allowed: a model folder in diffusers layout, or a "
                         f"single-file .safetensors checkpoint)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")


def _component_folder(value, comp: str, path: Path) -> Path:
    folder = Path(value)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{comp}={str(value)!r}: expected a diffusers {comp} folder with config.json and "
                                f"safetensors weights (the {comp} to use with {path}), e.g. the {comp}/ folder of "
                                f"a model in diffusers layout")
    find_weights_file(folder, base_name=WEIGHT_NAMES[comp])  # a missing or pickle-only folder fails now
    return folder


def open_single_file(path, *, vae=None, text_encoder=None, tokenizer=None, image_size=None,
                     prediction_type=None, ema: bool = False) -> SingleFile:
    """Read the header of the single-file checkpoint `path` and plan its loading.

    vae, text_encoder: None (take the component from the file), or a diffusers
      component folder (config.json + safetensors) for a file without one (or
      to replace the file's); `vae` may also be a VAE .safetensors file with
      the original names (with or without the first_stage_model. prefix, as
      SD's fine-tuned VAEs are shared). A component neither in the file nor
      given is a ValueError naming the argument.
    tokenizer: None (gnr's bundled CLIP vocabulary, padded as the family
      pads) or a tokenizer folder (vocab.json + merges.txt, or
      tokenizer.json), padded with the pad_token its special_tokens_map.json
      or tokenizer_config.json names (else as the family pads).
    image_size: the model's native image size in pixels (default 512).
    prediction_type: "epsilon" (default) or "v_prediction".
    ema: False (default, as diffusers): the UNet's non-EMA weights; True: the
      EMA copy (`model_ema.*`, a ValueError when the file has none).
    No tensor data is read here; a malformed or truncated header is a
    ValueError naming the file."""
    path = Path(path)
    _check_suffix(path)
    shapes = {k: shape for k, (_, shape) in read_safetensors_header(path).items()}
    return plan_single_file(path, shapes, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            image_size=image_size, prediction_type=prediction_type, ema=ema)


def plan_single_file(path, shapes: dict, *, vae=None, text_encoder=None, tokenizer=None, image_size=None,
                     prediction_type=None, ema: bool = False) -> SingleFile:
    """What `open_single_file` makes of a header: `shapes` is the file's
    {key: shape} (tuples of ints), `path` the file named in messages and read
    by `SingleFile.weights()`; the options (vae, text_encoder, tokenizer,
    image_size, prediction_type, ema) are open_single_file's. Lets the
    inference run on the shapes of a full-size model without its weights."""
    path = Path(path)
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{path}: image_size = {image_size!r} is not allowed (allowed: None for "
                         f"{DEFAULT_IMAGE_SIZE}, or a positive integer number of pixels)")
    if prediction_type is None:
        prediction_type = "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{path}: prediction_type = {prediction_type!r} is not allowed (allowed: None for "
                         f"'epsilon', {', '.join(map(repr, PREDICTION_TYPES))})")
    if not isinstance(ema, bool):
        raise TypeError(f"{path}: ema must be True or False, got {ema!r}")
    h = _Header(path, dict(shapes))

    has = {pre: any(k.startswith(pre) for k in h.shapes)
           for pre in (UNET_PREFIX, EMA_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPENCLIP_PREFIX)}
    if not (has[UNET_PREFIX] or has[VAE_PREFIX] or has[CLIP_PREFIX] or has[OPENCLIP_PREFIX]):
        some = ", ".join(repr(k) for k in list(h.shapes)[:3]) or "none"
        raise h.error(f"no tensor has the key names of a Stable Diffusion 1.x/2.x checkpoint (found e.g. {some}; "
                      f"expected {UNET_PREFIX}*, {VAE_PREFIX}* and cond_stage_model.*); a model in diffusers "
                      f"layout is a folder: pass the folder")
    if any(k.startswith("conditioner.embedders.") or k.startswith(UNET_PREFIX + "label_emb.") for k in h.shapes):
        raise h.error("this is a Stable Diffusion XL checkpoint (conditioner.embedders.*, label_emb.*); gnr runs "
                      "Stable Diffusion 1.x and 2.x models")
    if not has[UNET_PREFIX]:
        raise h.error(f"the UNet is missing (no {UNET_PREFIX}* tensors); gnr needs the UNet in the file")
    if ema and not has[EMA_PREFIX]:
        raise h.error("ema=True, but the file has no EMA weights (model_ema.*); allowed here: ema=False")

    vae_file = vae is not None and Path(vae).suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES
    given = {"vae": None if vae_file else vae, "text_encoder": text_encoder}
    folders = {comp: _component_folder(v, comp, path) for comp, v in given.items() if v is not None}
    configs, config_files, more_files = {}, {}, ()
    if vae_file:
        configs["vae"], vae_plan, file = _vae_file(vae, image_size, path)
        config_files["vae"] = f"{file} (VAE, inferred from the shapes)"
        more_files = ((file, vae_plan),)
    elif "vae" in folders:
        configs["vae"] = read_json(folders["vae"] / "config.json")
        config_files["vae"] = str(folders["vae"] / "config.json")
    elif has[VAE_PREFIX]:
        configs["vae"] = _vae_config(h, VAE_PREFIX, image_size)
        config_files["vae"] = f"{path} (VAE, inferred from the shapes)"
    else:
        raise h.error(f"the VAE is missing (no {VAE_PREFIX}* tensors); pass vae= a VAE .safetensors file "
                      f"(original key names) or a diffusers VAE folder (config.json + safetensors weights), e.g. "
                      f"the vae/ folder of a model in diffusers layout")
    vae_factor = 2 ** (len(configs["vae"].get("block_out_channels", (64,))) - 1)
    configs["unet"], family = _unet_config(h, UNET_PREFIX, image_size, vae_factor, prediction_type)
    config_files["unet"] = f"{path} (UNet, inferred from the shapes)"

    text_prefix = CLIP_PREFIX if family == "sd1" else OPENCLIP_PREFIX
    other = OPENCLIP_PREFIX if family == "sd1" else CLIP_PREFIX
    if has[other]:
        raise h.error(f"the UNet is {_FAMILY_NAMES[family]}'s ({'1x1-conv' if family == 'sd1' else 'linear'} "
                      f"attention projections) but the text encoder is under {other}*, which belongs to the other "
                      f"family; expected {text_prefix}*")
    if "text_encoder" in folders:
        configs["text_encoder"] = read_json(folders["text_encoder"] / "config.json")
        config_files["text_encoder"] = str(folders["text_encoder"] / "config.json")
    elif has[text_prefix]:
        configs["text_encoder"] = _text_config(h, family)
        config_files["text_encoder"] = f"{path} (text encoder, inferred from the shapes)"
    else:
        raise h.error(f"the text encoder is missing (no {text_prefix}* tensors); pass text_encoder= a diffusers "
                      f"text encoder folder (config.json + model.safetensors) of the {_FAMILY_NAMES[family]} "
                      f"family, e.g. the text_encoder/ folder of a model in diffusers layout")
    configs["scheduler"] = dict(SCHEDULER_CONFIG, prediction_type=prediction_type)
    config_files["scheduler"] = f"{path} (scheduler: Stable Diffusion's, prediction_type {prediction_type!r})"

    plan = _plan(h, configs, family, set(folders) | ({"vae"} if vae_file else set()), ema)
    if tokenizer is None:
        tokenizer_dir, pad = BUNDLED_TOKENIZER, _PAD[family]
    else:
        tokenizer_dir = Path(tokenizer)
        # the folder's own pad token if it names one, else the family's
        pad = None if read_pad_token(tokenizer_dir)[1] is not None else _PAD[family]
    return SingleFile(path, family, configs, config_files, plan, folders, tokenizer_dir, pad, more_files)


def _plan(h: _Header, configs: dict, family: str, replaced: set, ema: bool) -> dict:
    """{file key: (component, [diffusers names])} for every tensor to read. A key
    under a component's prefix that fits no part of the inferred layout is an
    error naming it; other keys (schedule buffers and the like) are skipped,
    and so are the components `replaced` by a folder."""
    text_prefix = CLIP_PREFIX if family == "sd1" else OPENCLIP_PREFIX
    name_of = {
        "unet": lambda rest: _unet_name(rest, configs["unet"]["layers_per_block"]),
        "vae": lambda rest: _vae_name(rest, len(configs["vae"]["block_out_channels"])),
        "text_encoder": (lambda rest: rest if rest.startswith("text_model.") else "text_model." + rest)
        if family == "sd1" else (lambda rest: _openclip_names(rest, configs["text_encoder"]["num_hidden_layers"])),
    }
    # LitEma's keys are the UNet's keys with the dots after "model." removed.
    ema_of = {EMA_PREFIX + k[len("model."):].replace(".", ""): k for k in h.shapes if k.startswith(UNET_PREFIX)}
    unet_source = EMA_PREFIX if ema else UNET_PREFIX
    plan = {}
    for key in h.shapes:
        if _IGNORED.match(key):
            continue
        if key.startswith(unet_source) and (not ema or key in ema_of):
            comp, rest = "unet", (ema_of[key] if ema else key)[len(UNET_PREFIX):]
        elif key.startswith(VAE_PREFIX):
            comp, rest = "vae", key[len(VAE_PREFIX):]
        elif key.startswith(text_prefix):
            comp, rest = "text_encoder", key[len(text_prefix):]
        else:
            continue
        if comp in replaced:
            continue
        names = name_of[comp](rest)
        if names is None:
            raise h.error(f"tensor {key!r} fits no part of a {_FAMILY_NAMES[family]} {comp} with the layout inferred "
                          f"from the file; the checkpoint is of an architecture gnr does not know")
        if names:  # [] : a tensor the model does not use (OpenCLIP's last layer)
            plan[key] = (comp, [names] if isinstance(names, str) else names)
    if ema and not any(c == "unet" for c, _ in plan.values()):
        raise h.error("ema=True, but no model_ema.* tensor matches a UNet tensor of the file")
    return plan
