"""Guide-and-Rescale in plain PyTorch: the oracle of the end-to-end tests.

An independent implementation of GNR_SPEC.md, written for clarity, not speed:
diffusers' UNet2DConditionModel and AutoencoderKL and transformers' CLIP text
model loaded from a model folder, self-attention probabilities taken from an
explicit softmax, energies differentiated by torch.autograd. It reads the RAW
config dicts (the reference implementation's keys) itself and does not use
gnr at all, so a mistake in gnr's config handling cannot hide in both.

Prediction type: the folder's scheduler/scheduler_config.json says whether
the UNet predicts the noise ("epsilon", also when the file is absent) or the
velocity ("v_prediction", SD 2.x 768-v). A velocity is turned into noise
right after every UNet call, with abar of the timestep of that call, as
diffusers' DDIMScheduler converts it (eps = sqrt(abar_t) v + sqrt(1 - abar_t) z),
so DDIM steps, inversion, null-text inversion, classifier-free guidance,
every guider and the rescaler work in noise space unchanged.

State of the attention path: every attention layer uses the explicit softmax
(the state the reference implementation is in from its second edit on; its
first edit uses fused attention in the layers it does not record, which
differs only by rounding).

    ref = Reference(folder)                      # float32; dtype=torch.float64 to check rounding
    latents, uncond = ref.invert(image, "a cat", config)   # N+1 latents z*_0..z*_N; ntinv: N contexts u_k
    z, img = ref.edit(image, "a cat", "a dog", config)      # final latent (1, 4, h, w), uint8 image
    eps_hat, z_next, info = ref.guided_step(k, z, z_inv, c_uncond, c_src, c_trg, config)

Arrays come back as NumPy in the compute dtype (float32 unless float64 was
asked); inputs may be NumPy arrays or tensors.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

TRAIN_STEPS = 1000
# Literal values of the reference, whatever the model (GNR_SPEC.md section 9).
DEFAULT_LAYERS = [[0, 6], [0, 1], [0, 9]]
FEATURE_MODULES = {"up": "up_blocks.1.resnets.1", "down": "down_blocks.1.resnets.1", "mid": "mid_block"}
GRAD_FREE = ("cfg", "latents_diff")
ENERGIES = ("features_map_l2", "self_attn_map_l2", "self_attn_map_l2_appearance")
PARTS = ("down", "mid", "up")


# ------------------------------------------------------------------ schedule --

def alphas_cumprod() -> torch.Tensor:
    """abar[0..999]: sqrt of the ends in double, linspace / square / cumprod in float32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


ABAR = alphas_cumprod()


def timesteps(n: int) -> list[int]:
    """Leading spacing: tau_k = (N - 1 - k) * (1000 // N), k = 0..N-1."""
    step = TRAIN_STEPS // n
    return [(n - 1 - k) * step for k in range(n)]


def v_to_eps(v: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
    """The noise a velocity prediction v of the UNet call on z at t stands
    for, written as DDIMScheduler.step writes it."""
    alpha_prod_t = ABAR.to(device=z.device, dtype=z.dtype)[t]
    beta_prod_t = 1 - alpha_prod_t
    return (alpha_prod_t ** 0.5) * v + (beta_prod_t ** 0.5) * z


def read_prediction_type(folder) -> str:
    """prediction_type of the folder's scheduler config ("epsilon" when the
    folder has none)."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    kind = json.loads(path.read_text()).get("prediction_type", "epsilon") if path.is_file() else "epsilon"
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(f"{path}: unknown prediction_type {kind!r}")
    return kind


def _ddim(e, z, a_t, a_s):
    x0 = (z - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
    return a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * e


def denoise_step(e: torch.Tensor, t: int, z: torch.Tensor, n: int) -> torch.Tensor:
    """z at t -> z at s = t - 1000 // N (abar[0] below 0)."""
    abar = ABAR.to(device=z.device, dtype=z.dtype)
    s = t - TRAIN_STEPS // n
    return _ddim(e, z, abar[t], abar[s] if s >= 0 else abar[0])


def inversion_step(e: torch.Tensor, t: int, z: torch.Tensor, n: int) -> torch.Tensor:
    """z at t -> z at s = t + 1000 // N (abar[999] past the end)."""
    abar = ABAR.to(device=z.device, dtype=z.dtype)
    s = t + TRAIN_STEPS // n
    return _ddim(e, z, abar[t], abar[s] if s < TRAIN_STEPS else abar[TRAIN_STEPS - 1])


# ---------------------------------------------------------- raw config reading --

def _num_steps(config) -> int:
    return int(config.get("num_steps", 50))


def _layers(config) -> list[list[int]]:
    layers = config.get("self_attn_layers_num", DEFAULT_LAYERS)
    if all(isinstance(x, int) for x in layers):
        return [[0, int(x)] for x in layers]
    return [[int(a), int(b)] for a, b in layers]


def _at(g_scale, k: int) -> float:
    """g_scale is a number or a per-step list indexed by k."""
    if isinstance(g_scale, (list, tuple, np.ndarray)):
        return float(g_scale[k])
    return float(g_scale)


def _appearance_scales(kwargs: dict, n: int, k: int) -> tuple[float, float]:
    """sa(k), ap(k): total_last_steps wins over total_first_steps; neither: constant."""
    sa, ap = kwargs["self_attn_gs"], kwargs["app_gs"]
    last, first = kwargs.get("total_last_steps"), kwargs.get("total_first_steps")
    if last is not None:
        on = k >= n - last
    elif first is not None:
        on = k < first
    else:
        return _at(sa, k), _at(ap, k)
    return (float(sa), float(ap)) if on else (0.0, 0.0)


def _rescaler(config) -> tuple[str, float, float]:
    setup = config.get("noise_rescaling_setup") or {"type": "identity_rescaler"}
    if setup["type"] == "identity_rescaler":
        return "identity_rescaler", 1.0, 1.0
    if setup["type"] != "range_other_on_cfg_norm":
        raise ValueError(f"unknown rescaler {setup['type']!r}")
    lo, hi = setup["init_setup"]
    return "range_other_on_cfg_norm", float(lo), float(hi)


# --------------------------------------------------------- recording the UNet --

class _AttnProcessor:
    """Explicit-softmax attention; self-attention probabilities (all heads)
    are recorded as (part, module index within the part, probs)."""

    def __init__(self, owner: "Reference", part: str | None, index: int):
        self.owner, self.part, self.index = owner, part, index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        residual = hidden_states
        assert hidden_states.ndim == 3 and attention_mask is None and attn.spatial_norm is None
        assert attn.group_norm is None
        is_self = encoder_hidden_states is None
        ctx = hidden_states if is_self else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # softmax(Q K^T / sqrt(dim_head)): (heads, HW, L)
        rec = self.owner._rec
        if is_self and rec is not None and self.part is not None:
            rec["maps"][self.part].append((self.index, probs))
        h = attn.batch_to_head_dim(torch.bmm(probs, v))
        h = attn.to_out[1](attn.to_out[0](h))
        if attn.residual_connection:
            h = h + residual
        return h / attn.rescale_output_factor


class _Timesteps64(torch.nn.Module):
    """diffusers' sinusoidal timestep embedding computed in float64 (diffusers
    always computes it in float32), for the float64 mode."""

    def __init__(self, base):
        super().__init__()
        self.n, self.flip, self.shift, self.scale = (base.num_channels, base.flip_sin_to_cos,
                                                     base.downscale_freq_shift, base.scale)

    def forward(self, t):
        half = self.n // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - self.shift)
        emb = self.scale * t[:, None].to(torch.float64) * torch.exp(exponent)[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        if self.n % 2:
            emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
        return emb


def _as_tensor(x, dtype, device="cpu") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().copy()


class Reference:
    """The whole method on diffusers/transformers modules of a model folder."""

    def __init__(self, folder, dtype=torch.float32, device="cpu"):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}[dtype]
        folder = Path(folder)
        self.dtype = dtype
        self.device = torch.device(device)  # a GPU baseline for the benchmarks; tests use the CPU
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval().to(dtype)
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).eval()
        self.vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).eval()
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
            m.to(self.device)
        if dtype == torch.float64:
            self.unet.time_proj = _Timesteps64(self.unet.time_proj)
        self.prediction_type = read_prediction_type(folder)
        self.context_len = self.text_encoder.config.max_position_embeddings
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.size_multiple = (2 ** (len(self.vae.config.block_out_channels) - 1)
                              * 2 ** (len(self.unet.config.block_out_channels) - 1))
        self._rec = None
        self.ntinv_inner_steps = 10  # the reference's limit; tests may lower it
        self._install()

    # ---- hooks
    def _install(self):
        """Explicit attention processors in every layer; attention modules are
        counted per part (down / mid / up) in module order, attn1 and attn2
        alike, as the reference counts them. Feature hooks on every module a
        guider may read."""
        from diffusers.models.attention_processor import Attention

        procs = {}
        for child_name, child in self.unet.named_children():
            part = "down" if "down" in child_name else "mid" if "mid" in child_name else \
                "up" if "up" in child_name else None
            i = 0
            for name, module in child.named_modules():
                if isinstance(module, Attention):
                    procs[f"{child_name}.{name}"] = _AttnProcessor(self, part, i)
                    i += 1
        for name, module in self.unet.named_modules():
            if isinstance(module, Attention):
                module.set_processor(procs[name])
        feature_names = dict(FEATURE_MODULES)
        feature_names["new"] = f"up_blocks.{len(self.unet.up_blocks) - 1}"
        feature_names["conv_norm_out"] = "conv_norm_out"
        self.feature_modules = {}
        for key, name in feature_names.items():
            try:
                module = self.unet.get_submodule(name)
            except AttributeError:
                continue
            self.feature_modules[key] = name
            module.register_forward_hook(self._feature_hook(key))

    def _feature_hook(self, key):
        def hook(module, inputs, output):
            if self._rec is not None:
                self._rec["features"][key] = output[0] if isinstance(output, tuple) else output
        return hook

    def eps(self, z, t: int, c, record: bool = False):
        """UNet noise prediction (a velocity prediction converted at t); with
        record, also (maps, features) of the pass."""
        self._rec = {"maps": {p: [] for p in PARTS}, "features": {}} if record else None
        try:
            out = self.unet(z, torch.tensor(t, dtype=torch.int64), encoder_hidden_states=c).sample
            rec = self._rec
        finally:
            self._rec = None
        if self.prediction_type == "v_prediction":
            out = v_to_eps(out, t, z)
        return (out, rec) if record else out

    # ---- text, image
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """E(prompt): (1, 77, D), last hidden state after the final LayerNorm."""
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.context_len, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 H x W x 3, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"image size {h} x {w} is not a multiple of {self.size_multiple}")
        x = torch.from_numpy(image).to(device=self.device, dtype=self.dtype) / 127.5 - 1
        x = x.permute(2, 0, 1).unsqueeze(0)
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode_latent(self, z) -> np.ndarray:
        z = _as_tensor(z, self.dtype, self.device)
        y = self.vae.decode(z / self.scaling_factor).sample
        y = (y / 2 + 0.5).clamp(0, 1)
        return (_np(y[0].permute(1, 2, 0)) * 255).astype(np.uint8)

    # ---- inversion
    def _invert(self, image, source: str, config):
        n = _num_steps(config)
        kind = config.get("inversion_type", "dummy")
        if kind not in ("dummy", "npinv", "ntinv"):
            raise ValueError(f"unknown inversion_type {kind!r}")
        if config.get("start_latent", "inversion") != "inversion":
            raise ValueError("the reference implements start_latent 'inversion' only")
        c_src = self.encode_prompt(source)
        ts = timesteps(n)
        latents = [self.encode_image(image)]
        with torch.no_grad():
            for k in range(n):
                t = ts[n - 1 - k]
                z = latents[-1]
                latents.append(inversion_step(self.eps(z, t, c_src), t, z, n))
        uncond = None
        if kind == "ntinv":
            uncond = self._null_text(latents, c_src, config)
        return latents, uncond

    def _null_text(self, latents, c_src, config):
        """Null-text inversion (GNR_SPEC.md section 4): one optimised
        unconditional context per step, a fresh Adam each step."""
        n = _num_steps(config)
        w = config["guiders"][0]["g_scale"]
        if isinstance(w, (list, tuple, np.ndarray)):
            raise ValueError("ntinv needs the first guider's g_scale to be a number")
        w = float(w)
        ts = timesteps(n)
        u = self.encode_prompt("")
        z = latents[n]
        out = []
        for k in range(n):
            t = ts[k]
            u = u.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=1e-2 * (1.0 - k / 100.0), betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=0)
            with torch.no_grad():
                e_c = self.eps(z, t, c_src)
            target = latents[n - k - 1]
            for _ in range(self.ntinv_inner_steps):
                with torch.enable_grad():
                    e_u = self.eps(z, t, u)
                    e = e_u + w * (e_c - e_u)
                    loss = torch.mean((denoise_step(e, t, z, n) - target) ** 2)
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                if loss.item() < 1e-5 + k * 2e-5:
                    break
            u = u.detach()
            out.append(u.clone())
            with torch.no_grad():
                e_u = self.eps(z, t, u)
                z = denoise_step(e_u + w * (e_c - e_u), t, z, n)
        return out

    def invert(self, image, source: str, config):
        """(latents, uncond): z*_0..z*_N as (1, 4, h, w) arrays, and for ntinv
        the N optimised unconditional contexts u_k (1, 77, D), else None."""
        latents, uncond = self._invert(image, source, config)
        return [_np(z) for z in latents], (None if uncond is None else [_np(u) for u in uncond])

    # ---- one editing step
    def _step(self, k, z, z_inv, c_uncond, c_src, c_trg, config):
        n = _num_steps(config)
        t = timesteps(n)[k]
        layers = _layers(config)
        guiders = config["guiders"]
        for g in guiders:
            if g["name"] not in GRAD_FREE + ENERGIES:
                raise ValueError(f"unknown guider {g['name']!r}")

        # The four passes, in order; nothing carries from one to the next.
        with torch.no_grad():
            eps_uncond = self.eps(z, t, c_uncond)
            _, inv_inv = self.eps(z_inv, t, c_src, record=True)
        zl = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            eps_src, cur_inv = self.eps(zl, t, c_src, record=True)
            eps_trg, cur_trg = self.eps(zl, t, c_trg, record=True)

            terms, energies, kept = {}, {}, []
            total = None
            for g in guiders:
                name, kwargs = g["name"], g.get("kwargs") or {}
                s = _at(g["g_scale"], k)
                if name == "cfg":
                    other = eps_src if kwargs.get("is_source_guidance", False) else eps_trg
                    terms[name] = (s * (other - eps_uncond)).detach()
                    continue
                if name == "latents_diff":
                    terms[name] = s * (2 * (z - z_inv))
                    continue
                if name == "features_map_l2":
                    key = kwargs.get("block", "up")
                    if key not in self.feature_modules:
                        raise ValueError(f"features_map_l2 block {key!r}: this UNet has no "
                                         f"{FEATURE_MODULES.get(key, key)}")
                    e = torch.mean((cur_trg["features"][key] - inv_inv["features"][key]) ** 2)
                elif name == "self_attn_map_l2":
                    e = self._maps_energy(cur_inv, inv_inv, layers, ("down", "mid", "up"), zl.dtype)
                else:  # self_attn_map_l2_appearance
                    sa, ap = _appearance_scales(kwargs, n, k)
                    key = "new" if kwargs.get("new_features", False) else "conv_norm_out"
                    app = torch.mean(torch.abs(cur_inv["features"][key] - inv_inv["features"][key]))
                    # the reference sums its places in this order
                    e = sa * self._maps_energy(cur_inv, inv_inv, layers, ("down", "up", "mid"), zl.dtype) + ap * app
                energy = s * e
                energies[name] = float(energy.detach())
                # torch.allclose(energy, 0): |energy| <= 1e-8 drops the term
                if not bool(torch.abs(energy) <= 1e-8):
                    kept.append(name)
                    total = energy if total is None else total + energy
            grad = torch.autograd.grad(total, zl)[0] if total is not None else None

        kind, lo, hi = _rescaler(config)
        r, scale_other = None, 1.0
        if grad is not None and kind == "range_other_on_cfg_norm":
            if "cfg" not in terms:
                raise ValueError("range_other_on_cfg_norm needs a cfg guider")
            cfg_norm = torch.norm(terms["cfg"]).item()
            other_norm = torch.norm(grad).item()
            r = other_norm / cfg_norm if cfg_norm != 0 else 1.0
            scale_other = min(max(r, lo), hi) / r if other_norm != 0 else 1.0

        with torch.no_grad():
            eps_hat = eps_uncond
            for name in terms:
                eps_hat = eps_hat + terms[name]
            if grad is not None:
                eps_hat = eps_hat + scale_other * grad
            z_next = denoise_step(eps_hat, t, z, n)
        info = {"t": t, "eps_uncond": eps_uncond, "eps_src": eps_src.detach(), "eps_trg": eps_trg.detach(),
                "terms": terms, "energies": energies, "kept": kept, "grad": grad, "r": r,
                "scale_other": scale_other}
        return eps_hat, z_next, info

    @staticmethod
    def _maps_energy(cur, ref, layers, order, dtype):
        """Sum over selected self-attention maps of mean((A_cur - A_ref)^2). A
        part's range [a, b) selects attention-module indices 2a <= i < 2b
        (attn1 and attn2 counted alike); maps pair up by call order."""
        total = 0.0
        for part in order:
            a, b = layers[PARTS.index(part)]
            cur_sel = [p for i, p in cur["maps"][part] if 2 * a <= i < 2 * b]
            ref_sel = [p for i, p in ref["maps"][part] if 2 * a <= i < 2 * b]
            assert len(cur_sel) == len(ref_sel)
            for x, y in zip(cur_sel, ref_sel):
                total = total + torch.mean((x - y) ** 2)
        if not isinstance(total, torch.Tensor):
            total = torch.zeros((), dtype=dtype)
        return total

    def guided_step(self, k: int, z, z_inv, c_uncond, c_src, c_trg, config):
        """One editing step k in isolation. Returns (eps_hat, z_next, info);
        info: t, eps_uncond, eps_src, eps_trg, terms (scaled gradient-free terms
        by guider name), energies (s_g(k) * E_g by name, every energy guider),
        kept (names whose term passed the 1e-8 test), grad (dE/dz of the kept
        sum, before rescaling, or None), r (||grad|| / ||cfg term||, or None),
        scale_other. Arrays are NumPy."""
        d = self.dtype
        z, z_inv = _as_tensor(z, d, self.device), _as_tensor(z_inv, d, self.device)
        ctx = [_as_tensor(c, d, self.device).reshape(1, self.context_len, -1) for c in (c_uncond, c_src, c_trg)]
        eps_hat, z_next, info = self._step(k, z, z_inv, *ctx, config)
        for key in ("eps_uncond", "eps_src", "eps_trg", "grad"):
            if info[key] is not None:
                info[key] = _np(info[key])
        info["terms"] = {name: _np(v) for name, v in info["terms"].items()}
        return _np(eps_hat), _np(z_next), info

    # ---- the whole edit
    def edit(self, image, source: str, target: str, config, inversion=None):
        """Invert (or take `inversion` = (latents, uncond) from invert()) and
        edit. Returns (final latent (1, 4, h, w), decoded uint8 image).
        self.trajectory holds z after every step, self.infos each step's info."""
        n = _num_steps(config)
        kind = config.get("inversion_type", "dummy")
        if inversion is None:
            latents, uncond = self._invert(image, source, config)
        else:
            latents = [_as_tensor(z, self.dtype, self.device) for z in inversion[0]]
            uncond = None if inversion[1] is None else [_as_tensor(u, self.dtype, self.device) for u in inversion[1]]
        if len(latents) != n + 1:
            raise ValueError(f"inversion has {len(latents)} latents, config needs {n + 1}")
        c_null, c_src, c_trg = self.encode_prompt(""), self.encode_prompt(source), self.encode_prompt(target)
        z = latents[n]
        self.trajectory, self.infos = [], []
        for k in range(n):
            if kind == "ntinv":
                c_uncond = uncond[k]
            elif kind == "npinv":
                c_uncond = c_src
            else:
                c_uncond = c_null
            _, z, info = self._step(k, z, latents[n - k], c_uncond, c_src, c_trg, config)
            self.trajectory.append(_np(z))
            self.infos.append({key: info[key] for key in ("t", "energies", "kept", "r", "scale_other")})
        return _np(z), self.decode_latent(z)
