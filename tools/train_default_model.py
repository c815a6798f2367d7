"""Train the small Stable Diffusion 1.x-family model bundled with gnr.

    python tools/train_default_model.py                 # writes gnr/data/default_model/

Development-only: needs PyTorch, diffusers, transformers and the clip-anytorch
wheel (for the real CLIP BPE vocabulary), as in requirements-test.txt. Runs on
the CPU (--threads, default 1) or a GPU (--device cuda); on the CPU it is
deterministic for a given PyTorch build: every random draw comes from a fixed
seed. Stages (times on this project's 2-core CPU):

- stage 1 (about 40 minutes, one thread): VAE, then text encoder + UNet from
  scratch; its weights are rounded to fp16 as a saved model holds them;
- stage 2, decoder (3500 steps, 6.2 minutes on 2 threads): the VAE decoder
  alone (encoder, hence every latent, frozen) on whole images with L1;
- stage 2, diffusion (1400 steps, about 20 minutes on one busy thread): more
  text encoder + UNet steps from the stage-1 weights, fresh AdamW, cosine
  learning-rate decay and a fresh EMA, 20 % of captions dropped;
- stage 3 (rounds of 5000, 3000, 2500 and 2500 steps at batch 64, about
  0.7 s a step on 2 threads or 1.2 s on one busy thread: 67, 42, 51 and 34
  minutes): the stage-2 recipe again, warm-restarted each round; rounds 2, 3
  and 4 train on latents scaled by 3, 8 and then 11 (see
  UNET3_LATENT_SCALES), and the saved scaling_factor carries that scale;
- stage 4, decoder (3000 steps at batch 16, 24 minutes on one busy
  thread): the decoder again, on latents given a random offset per image
  and channel, so that it decodes the slowly drifting latents of an edit
  to the colours it was shown (see DECODER4_OFFSET).

The decoder parts are independent of the diffusion part (own seed, frozen
encoder), and every stage can start from a saved model, so the work can be
split and run side by side:

    python tools/train_default_model.py --out s2 --unet3-steps 0,0,0,0 --decoder2-steps 0 --decoder4-steps 0
    python tools/train_default_model.py --init s2 --init-stage 2 --only decoder --decoder2-steps 3500 \\
        --decoder4-steps 0 --out dec
    python tools/train_default_model.py --init s2 --init-stage 2 --only unet --unet3-steps 5000,0,0,0 --out r1
    python tools/train_default_model.py --init r1 --init-stage 2 --only unet --unet3-steps 0,3000,0,0 --out r2
    python tools/train_default_model.py --init r2 --init-stage 2 --only unet --unet3-steps 0,0,2500,0 --out r3
    python tools/train_default_model.py --init r3 --init-stage 2 --only unet --unet3-steps 0,0,0,2500 --out r4
    # r4 with dec's VAE weights (and r4's vae/config.json: the scaling_factor) is r4dec
    python tools/train_default_model.py --init r4dec --init-stage 2 --only decoder --decoder2-steps 0
    # (stage 4 on r4dec: it needs the final scaling_factor) writes the same model as one full run

The model is SD 1.x in miniature, on synthetic 64 x 64 scenes from
tools/scenes.py ("a red circle on a blue background"; training seeds
0 .. --scenes - 1, the evaluation uses seeds from scenes.EVAL_SEED_BASE):

- AutoencoderKL, 3 levels (factor 4: 64 x 64 x 3 <-> 16 x 16 x 4), trained
  first on L1 + L2 reconstruction with a small KL term; its scaling_factor is
  1 / std of the latent means, so latents have unit variance.
- CLIPTextModel (real CLIP tokenizer, vocab 49408, 77 positions, width 64,
  2 layers) and UNet2DConditionModel (CrossAttnDownBlock2D x 2 + DownBlock2D,
  UpBlock2D + CrossAttnUpBlock2D x 2, channels 32/64/128, cross-attention
  width 64), trained jointly from scratch on epsilon prediction with the
  SD 1.x schedule (scaled_linear betas 0.00085 .. 0.012, 1000 steps); 15 %
  (stage 1) and 20 % (stage 2) of captions are dropped to "" so
  classifier-free guidance has an unconditional model. The saved weights are
  the exponential moving averages.

Everything is written in diffusers layout with fp16 safetensors.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import scenes  # noqa: E402
from clip_vocab import write_clip_tokenizer_files  # noqa: E402

VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, sample_size=scenes.SIZE)
TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=64)
UNET = dict(sample_size=scenes.SIZE // 4, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 128), layers_per_block=1, attention_head_dim=4,
            cross_attention_dim=64, norm_num_groups=16, use_linear_projection=False)
SCHEDULER = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}
SEED = 1234
DECODER2_STEPS = 3500
UNET2_STEPS = 1400
# Stage 4: a denoised latent drifts slowly from the inverted one even where
# the edit should keep the image: over the background of an edit the drift is
# about 1/8 of the latents' std (rms 1 in the UNet's units at latent scale 8,
# 2 at 16), nearly the same at every pixel, and mostly along the target
# colour. The stage-2 decoder turned that into background changes of up to
# 14/255. Training it on with a random offset per image and channel makes it
# decode colours robustly (it snaps to the colour the latent is nearest to).
# On 60 validation scenes, with the round-3 (x8) UNet: background within
# 10/255 in 55 edits before, 58 with offsets of 0.7 (x8 units), 59 with 1.5;
# successful edits 49, 51, 52. Plain further training without offsets went
# the other way (better reconstructions, worse edits: background 42 of 60).
# Independent noise at every latent pixel as well (--decoder4-noise 0.5 or
# 1.0, 120 validation scenes) changed nothing: 96 and 97 successful edits
# against 97 without. The edits that fail move the object; no decoder undoes that.
# (All three with the x8 model.) The offset is given in the final latent
# units: 2.0625 at x11 is the 1.5 at x8 above (the same offset in raw latent
# units; the bundled decoder was trained on the x8 model, and the decoder
# does not depend on the UNet).
DECODER4_STEPS = 3000
DECODER4_OFFSET = 2.0625
DECODER4_NOISE = 0.0
UNET3_STEPS = "5000,3000,2500,2500"
# A 16 x 16 latent loses its layout to the noise at much lower timesteps than
# SD's 64 x 64 one (fewer pixels carry each structure): with unit-variance
# latents the signal-to-noise ratio of the SD schedule is 0.005 at t = 981 and
# 0.05 at t = 800. Scaling the latents by 3 multiplies it by 9 everywhere, so
# the inverted latent still fixes where the object is in the first (guided)
# steps of an edit. A third round at 8 (64 times the ratio) held the layout
# better again: on 60 validation scenes 49 successful edits, against 46 for a
# round at 5 and 47 for one more at 6.5 after it (the round at 3 alone: 18 of
# the first 30; one more round at 3: 17). A fourth round at 16 (2500 steps)
# moved objects less again (centroid within 2 px in 57 of 60 against 53) but
# kept more of the old colour (55 right against 58) and left the guidance
# little to do: inversion + CFG alone made 53 of 60 with it (41 with the x8
# UNet), Guide-and-Rescale 54 (52); not used. A fourth round at 11 instead
# (2500 steps), on 120 validation scenes: 101 successful edits against 97
# after round 3 (inversion + CFG alone 84 against 76): used.
UNET3_LATENT_SCALES = "1,3,8,11"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(n: int):
    imgs = np.empty((n, scenes.SIZE, scenes.SIZE, 3), np.uint8)
    caps = []
    for i in range(n):
        s = scenes.make_scene(i)
        imgs[i] = s.image
        caps.append(s.caption)
    return imgs, caps


# Where the models train (--device). Every random draw comes from a CPU
# generator and is then moved here, so the draws do not depend on the device.
DEV = torch.device("cpu")


def on_dev(x: torch.Tensor) -> torch.Tensor:
    return x.to(DEV)


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return on_dev(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1)


def warmup_cosine(lr0: float, step: int, steps: int, warm: int) -> float:
    """The learning rate of the fine-tuning stages: linear warmup over `warm`
    steps, then cosine decay to 0 at `steps`."""
    return lr0 * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))


def vae_loss(vae, x: torch.Tensor, gen: torch.Generator):
    """Stage 1's VAE loss on images x: L1 + L2 reconstruction of a posterior
    sample plus a small KL term. Returns (loss, reconstruction, KL per element, decoded)."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * on_dev(torch.randn(post.mean.shape, generator=gen))
    y = vae.decode(z).sample
    rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
    kl = post.kl().mean() / z[0].numel()
    return rec + 1e-4 * kl, rec, kl, y


def train_vae(imgs: np.ndarray, steps: int, batch: int, gen: torch.Generator):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE).to(DEV)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    full_from = int(steps * 0.8)     # random 32 x 32 crops first (cheap), whole images last
    n = len(imgs)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        x = to_tensor(imgs[idx.numpy()])
        if step < full_from:
            oy, ox = (int(v) * 4 for v in torch.randint(0, 9, (2,), generator=gen))
            x = x[:, :, oy:oy + 32, ox:ox + 32]
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, rec, kl, _ = vae_loss(vae, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} rec {rec.item():.4f} kl/elem {kl.item():.3f} ({time.time() - t0:.0f} s)")
    return vae.eval()


@torch.no_grad()
def encode_all(vae, imgs: np.ndarray, batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(imgs), batch):
        out.append(vae.encode(to_tensor(imgs[i:i + batch])).latent_dist.mean)
    return torch.cat(out)


def sd_alphas_cumprod() -> torch.Tensor:
    """GNR_SPEC.md section 2: scaled_linear betas, sqrt in double, the rest float32."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, 0)


def _caption_ids(caps: list, tokenizer):
    """Token ids of every distinct caption plus "" (last), and each sample's index into them."""
    uniq = sorted(set(caps)) + [""]
    ids = tokenizer(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return ids, torch.tensor([uniq.index(c) for c in caps]), len(uniq) - 1


def _denoise(text, unet, latents: torch.Tensor, caps: list, tokenizer, steps: int, batch: int,
             gen: torch.Generator, drop: float, lr_at, decay_at, tag: str, snapshot=None):
    """The joint text encoder + UNet loop on epsilon prediction: AdamW with
    the learning rate lr_at(step), captions dropped to "" with probability
    `drop`, gradient clipping at 1, an EMA with decay decay_at(step) whose
    weights are returned in the models. snapshot, if given, is
    (every, fn): fn(step) is called every `every` steps with the EMA
    weights swapped into the models (for evaluating a long run midway)."""
    ids, cap_index, empty = _caption_ids(caps, tokenizer)
    ids = on_dev(ids)
    text.train()
    unet.train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr_at(0), weight_decay=0.01, betas=(0.9, 0.99))
    ema = [p.detach().clone() for p in params]
    abar = on_dev(sd_alphas_cumprod())
    n = len(latents)
    t0 = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        z0 = latents[on_dev(idx)]
        ci = cap_index[idx].clone()
        ci[torch.rand(batch, generator=gen) < drop] = empty
        t = on_dev(torch.randint(0, 1000, (batch,), generator=gen))
        eps = on_dev(torch.randn(z0.shape, generator=gen))
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        ctx = text(ids[on_dev(ci)]).last_hidden_state
        pred = unet(zt, t, ctx).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = decay_at(step)
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"{tag} step {step}/{steps} loss {running:.4f} lr {lr:.2e} ({el:.0f} s, "
                f"eta {el / (step + 1) * (steps - step - 1) / 60:.1f} min)")
        if snapshot and (step + 1) % snapshot[0] == 0 and step + 1 < steps:
            with torch.no_grad():
                live = [p.detach().clone() for p in params]
                for e, p in zip(ema, params):
                    p.copy_(e)
                snapshot[1](step + 1)
                for v, p in zip(live, params):
                    p.copy_(v)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return text.eval(), unet.eval()


def train_diffusion(latents: torch.Tensor, caps: list, tokenizer, steps: int, batch: int, gen: torch.Generator,
                    drop: float = 0.15):
    """Stage 1 of the text encoder + UNet, from scratch: warmup over 200
    steps, constant, linear decay over the last 30 %; EMA decay ramping to
    0.999; 15 % of captions dropped."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(**TEXT)).to(DEV)
    unet = UNet2DConditionModel(**UNET).to(DEV)
    warm = 200

    def lr_at(step):
        return 1e-3 * min(1.0, (step + 1) / warm) * min(1.0, (steps - step) / (0.3 * steps))

    return _denoise(text, unet, latents, caps, tokenizer, steps, batch, gen, drop, lr_at,
                    lambda step: min(0.999, (1 + step) / (10 + step)), "unet")


def round_fp16(*models) -> None:
    """Round weights to fp16 and back, as saving and reloading does."""
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.copy_(p.to(torch.float16).to(torch.float32))


def load_init(init: Path):
    """The stage-1 model saved in `init` (fp16 weights), in float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(init / "vae", torch_dtype=torch.float32).to(DEV).eval()
    text = CLIPTextModel.from_pretrained(init / "text_encoder", torch_dtype=torch.float32).to(DEV).eval()
    unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32).to(DEV).eval()
    return vae, text, unet, float(vae.config.scaling_factor)


def finetune_decoder(vae, imgs: np.ndarray, steps: int, batch: int, gen: torch.Generator, lr0: float = 5e-4,
                     offset: float = 0.0, noise: float = 0.0, tag: str = "decoder"):
    """Stages 2 and 4 of the VAE: the encoder (hence every latent) is frozen;
    the decoder is trained further on whole images with a plain L1 loss,
    which is median-seeking and so reproduces flat colours sharply.

    `offset` (stage 4) adds to each latent one N(0, offset^2) draw per image
    and channel, the same at every pixel: in raw latent units (the UNet's
    units divided by the scaling factor). `noise` adds independent N(0, noise^2)
    at every latent pixel, in the same units."""
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr0, weight_decay=0.0)
    vae.train()
    n = len(imgs)
    t0 = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        x = to_tensor(imgs[idx.numpy()])
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * on_dev(torch.randn(post.mean.shape, generator=gen))
            if offset:
                z = z + offset * on_dev(torch.randn(z.shape[:2] + (1, 1), generator=gen))
            if noise:
                z = z + noise * on_dev(torch.randn(z.shape, generator=gen))
        lr = warmup_cosine(lr0, step, steps, warm=50)
        for g in opt.param_groups:
            g["lr"] = lr
        y = vae.decode(z).sample
        loss = (y - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"{tag} step {step}/{steps} L1 {running:.4f} ({running * 127.5:.2f}/255) ({el:.0f} s, "
                f"eta {el / (step + 1) * (steps - step - 1) / 60:.1f} min)")
    for p in vae.parameters():
        p.requires_grad_(True)
    return vae.eval()


def finetune_diffusion(text, unet, latents: torch.Tensor, caps: list, tokenizer, steps: int, batch: int,
                       gen: torch.Generator, drop: float = 0.2, lr0: float = 5e-4, tag: str = "unet2",
                       snapshot=None):
    """Stage 2 (and each round of stage 3) of the text encoder + UNet: more
    steps from the previous weights, fresh AdamW, warmup then cosine decay to
    0, EMA (decay 0.999) started at those weights; 20 % of captions dropped."""
    def lr_at(step):
        return warmup_cosine(lr0, step, steps, warm=100)

    return _denoise(text, unet, latents, caps, tokenizer, steps, batch, gen, drop, lr_at, lambda step: 0.999, tag,
                    snapshot)


def save(out: Path, vae, text, unet, scaling_factor: float) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    vae.register_to_config(scaling_factor=scaling_factor)
    for name, model in (("vae", vae), ("text_encoder", text), ("unet", unet)):
        model.to(torch.float16).save_pretrained(out / name, safe_serialization=True)
        model.to(torch.float32)
        cfg_path = out / name / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if cfg.pop("_name_or_path", None) is not None:    # set when loaded with --init; a local path
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_clip_tokenizer_files(out / "tokenizer")
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote {out} ({total / 1e6:.2f} MB)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "gnr" / "data" / "default_model"))
    ap.add_argument("--scenes", type=int, default=16000, help="training scenes (seeds 0 .. n-1)")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=3600)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--decoder2-steps", type=int, default=DECODER2_STEPS, help="stage 2: decoder-only steps")
    ap.add_argument("--decoder2-batch", type=int, default=8)
    ap.add_argument("--decoder4-steps", type=int, default=DECODER4_STEPS,
                    help="stage 4: decoder-only steps with latent offsets (after the UNet rounds)")
    ap.add_argument("--decoder4-batch", type=int, default=16)
    ap.add_argument("--decoder4-offset", type=float, default=DECODER4_OFFSET,
                    help="stage 4: std of the per-image, per-channel latent offset, in the UNet's units "
                         "(latent times the final scaling_factor)")
    ap.add_argument("--decoder4-noise", type=float, default=DECODER4_NOISE,
                    help="stage 4: std of independent latent noise at every pixel, in the UNet's units")
    ap.add_argument("--unet2-steps", type=int, default=UNET2_STEPS, help="stage 2: text encoder + UNet steps")
    ap.add_argument("--unet3-steps", default=UNET3_STEPS,
                    help="stage 3: text encoder + UNet steps of each round, comma-separated (each round: fresh "
                         "AdamW, warmup, cosine decay, from the previous round's fp16-rounded weights); a round of "
                         "0 steps before the last round with steps is one the --init model has had (so "
                         "'0,3000,0,0' with --init-stage 2 runs round 2 on a model saved after round 1); trailing "
                         "0s are not run")
    ap.add_argument("--unet3-batch", type=int, default=64)
    ap.add_argument("--unet3-latent-scales", default=UNET3_LATENT_SCALES,
                    help="per round of stage 3, comma-separated: the latents are multiplied by this (and the saved "
                         "scaling_factor with it), which multiplies the signal-to-noise ratio at every timestep by "
                         "its square")
    ap.add_argument("--init", default=None,
                    help="skip stage 1 and start from this saved model (fp16 weights; see --init-stage)")
    ap.add_argument("--init-stage", type=int, choices=(1, 2), default=1,
                    help="the stage whose text encoder + UNet --init holds: 2 skips the stage-2 UNet steps "
                         "(the decoder stages are independent of it)")
    ap.add_argument("--only", choices=("decoder", "unet"), default=None,
                    help="run only the decoder stages (2 and 4) or only the text encoder + UNet stages (2 and 3); "
                         "the other part is copied unchanged; the two are independent (own seeds, frozen "
                         "encoder), see the split commands at the top")
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="stage 3: also save the EMA model every N steps of round R to OUT.rR.stepN (0: never)")
    ap.add_argument("--device", default="cpu",
                    help="torch device to train on (cpu, cuda); the random draws are the same on every device, "
                         "the arithmetic is not bit-identical across devices")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for these small ops on a busy machine)")
    args = ap.parse_args(argv)

    from transformers import CLIPTokenizer

    global DEV
    DEV = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    t_start = time.time()
    imgs, caps = make_data(args.scenes)
    log(f"{args.scenes} scenes, {len(set(caps))} captions ({time.time() - t_start:.0f} s)")
    with tempfile.TemporaryDirectory() as tok_dir:
        write_clip_tokenizer_files(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    # ---- stage 1: VAE, then text encoder + UNet from scratch
    if args.init:
        vae, text, unet, sf = load_init(Path(args.init))
        log(f"stage 1 loaded from {args.init} (scaling_factor {sf:.5f})")
    else:
        t0 = time.time()
        vae = train_vae(imgs, args.vae_steps, args.vae_batch, gen)
        log(f"stage 1 vae {(time.time() - t0) / 60:.1f} min")
        t0 = time.time()
        mean = encode_all(vae, imgs)
        sf = float(1.0 / mean[:4096].std())
        latents = mean * sf
        log(f"latents {tuple(latents.shape)}, scaling_factor {sf:.5f}, std after scaling {latents.std():.3f} "
            f"({time.time() - t0:.0f} s)")
        t0 = time.time()
        text, unet = train_diffusion(latents, caps, tokenizer, args.unet_steps, args.unet_batch, gen)
        log(f"stage 1 text encoder + unet {(time.time() - t0) / 60:.1f} min")
        round_fp16(vae, text, unet)      # stage 2 starts from exactly what a saved stage 1 holds

    # ---- stage 2: decoder only (L1), then more text encoder + UNet steps
    if args.only != "unet" and args.decoder2_steps > 0:
        t0 = time.time()
        vae = finetune_decoder(vae, imgs, args.decoder2_steps, args.decoder2_batch,
                               torch.Generator().manual_seed(SEED + 1))
        log(f"stage 2 decoder {(time.time() - t0) / 60:.1f} min")
    latents = None
    if args.only != "decoder" and args.unet2_steps > 0 and args.init_stage < 2:
        t0 = time.time()
        latents = encode_all(vae, imgs) * sf     # the encoder is frozen from here on
        text, unet = finetune_diffusion(text, unet, latents, caps, tokenizer, args.unet2_steps, args.unet_batch,
                                        torch.Generator().manual_seed(SEED + 2))
        log(f"stage 2 text encoder + unet {(time.time() - t0) / 60:.1f} min")
        round_fp16(text, unet)           # stage 3 starts from exactly what a saved stage 2 holds
    # ---- stage 3: rounds of more text encoder + UNet steps at a larger batch
    rounds = [int(v) for v in str(args.unet3_steps).split(",") if v.strip()]
    scales = [float(v) for v in str(args.unet3_latent_scales).split(",") if v.strip()]
    if len(scales) != len(rounds):
        ap.error(f"--unet3-latent-scales has {len(scales)} values for {len(rounds)} rounds of --unet3-steps")
    applied = 1.0                        # the latent scale already in sf (and in latents)
    last = max([r for r, steps in enumerate(rounds) if steps > 0], default=-1)
    if args.only == "decoder":
        last = -1
    for r, steps in enumerate(rounds[:last + 1]):    # trailing rounds of 0 steps: not run yet
        if steps <= 0:                   # a round the --init model has had: its scale is in sf
            applied = scales[r]
            continue
        t0 = time.time()
        if latents is None:
            latents = encode_all(vae, imgs) * sf
        if scales[r] != applied:
            latents = latents * (scales[r] / applied)
            sf = sf * scales[r] / applied
            applied = scales[r]
            log(f"latents scaled by {applied:g}: scaling_factor {sf:.5f}, std {latents.std():.3f}")
        snapshot = None
        if args.snapshot_every:
            def write_snapshot(step, r=r):
                save(Path(args.out + f".r{r + 1}.step{step}"), vae, text, unet, sf)
            snapshot = (args.snapshot_every, write_snapshot)
        # the stage-2 recipe again from the previous weights, with twice the
        # batch (less gradient noise, which CFG at 7.5 amplifies) and a lower peak rate
        text, unet = finetune_diffusion(text, unet, latents, caps, tokenizer, steps, args.unet3_batch,
                                        torch.Generator().manual_seed(SEED + 3 + r), lr0=3e-4,
                                        tag=f"unet3.{r + 1}", snapshot=snapshot)
        log(f"stage 3 round {r + 1} text encoder + unet {(time.time() - t0) / 60:.1f} min")
        if r < last:
            round_fp16(text, unet)       # the next round starts from exactly what a saved round holds
    # ---- stage 4: decoder only again, robust to the drift of denoised latents
    # (after the UNet rounds: its offsets are in the final latent units)
    if args.only != "unet" and args.decoder4_steps > 0:
        t0 = time.time()
        round_fp16(vae)                  # exactly what a saved model holds, as in a split run
        # a fresh generator with stage 2's seed and a lower peak rate than
        # stage 2's (it starts from a trained decoder): the bundled weights' recipe
        vae = finetune_decoder(vae, imgs, args.decoder4_steps, args.decoder4_batch,
                               torch.Generator().manual_seed(SEED + 1), lr0=2e-4,
                               offset=args.decoder4_offset / sf, noise=args.decoder4_noise / sf, tag="decoder4")
        log(f"stage 4 decoder {(time.time() - t0) / 60:.1f} min")
    save(Path(args.out), vae, text, unet, sf)
    log(f"total {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
