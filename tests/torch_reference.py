"""The PyTorch side of the reverse-mode tests: a diffusers UNet whose
self-attention layers expose their probabilities (explicit softmax, all
heads) and whose modules can be hooked for their outputs, and the guidance
energies written plainly with torch.autograd."""
from __future__ import annotations

import torch


class Recorder:
    """Self-attention (attn1) probabilities in call order, block outputs by name."""

    def __init__(self, unet, features=()):
        self.maps: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.features: dict[str, torch.Tensor] = {}
        procs = {}
        for key in unet.attn_processors:
            procs[key] = _Processor(self, key.replace(".processor", ".probs") if ".attn1." in key else None)
        unet.set_attn_processor(procs)
        self.hooks = [unet.get_submodule(name).register_forward_hook(self._hook(name)) for name in features]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.features[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def clear(self):
        self.maps, self.order, self.features = {}, [], {}

    def parts(self):
        """Recorded map names split into down / mid / up, in forward order."""
        return tuple([n for n in self.order if n.startswith(p)] for p in ("down_blocks", "mid_block", "up_blocks"))


class _Processor:
    def __init__(self, rec: Recorder, name: str | None):
        self.rec, self.name = rec, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # explicit softmax(scale Q K^T), (heads, Lq, Lk)
        if self.name is not None:
            self.rec.maps[self.name] = probs
            self.rec.order.append(self.name)
        h = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](h))


def energy_and_grads(unet, rec: Recorder, z, t, c, z_ref, c_ref, terms, wrt=("latent",)):
    """terms: dicts as gnr's energy_grad takes, with features named exactly
    (no negative indices) and layer ranges as three [a, b] pairs."""
    rec.clear()
    with torch.no_grad():
        unet(torch.from_numpy(z_ref), t, encoder_hidden_states=torch.from_numpy(c_ref)).sample
    ref_maps = {k: v.detach() for k, v in rec.maps.items()}
    ref_feats = {k: v.detach() for k, v in rec.features.items()}
    parts = rec.parts()
    rec.clear()
    zt = torch.from_numpy(z).clone().requires_grad_("latent" in wrt)
    ct = torch.from_numpy(c).clone().requires_grad_("context" in wrt)
    with torch.enable_grad():
        unet(zt, t, encoder_hidden_states=ct).sample
        E = torch.zeros((), dtype=torch.float32)
        for term in terms:
            if term["kind"] == "attn_map_l2":
                for (a, b), names in zip(term["layers"], parts):
                    for n in names[a:b]:
                        E = E + term["scale"] * torch.mean((rec.maps[n] - ref_maps[n]) ** 2)
            elif term["kind"] == "feature_l2":
                n = term["at"]
                E = E + term["scale"] * torch.mean((rec.features[n] - ref_feats[n]) ** 2)
            else:
                n = term["at"]
                E = E + term["scale"] * torch.mean(torch.abs(rec.features[n] - ref_feats[n]))
        inputs = [x for x, w in ((zt, "latent"), (ct, "context")) if w in wrt]
        grads = torch.autograd.grad(E, inputs, allow_unused=True)
    out = {}
    for g, w in zip(grads, [w for w in ("latent", "context") if w in wrt]):
        out[w] = (g if g is not None else torch.zeros_like(inputs[0])).numpy()
    return float(E), out
