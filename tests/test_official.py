"""Official MindEye checkpoints: synthetic files in the released key layout, converted and checked
against reference forward passes written directly from the raw state dicts with plain torch ops."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mindeye_core.errors import CheckpointError
from mindeye_core.models import LowLevelModel, MindEyeHighLevel, load_official_brain_checkpoint
from mindeye_core.models.prior import OFFICIAL_257X768_STRUCTURE, DiffusionPrior
from mindeye_core.official.checkpoint import load_official_checkpoint
from mindeye_core.official.convert import convert_official_checkpoint, official_filename, write_safetensors
from mindeye_core.official.layout import map_official_state

# ------------------------------------------------------------------------------ synthetic checkpoints
_G = torch.Generator().manual_seed(0)


def _w(*shape: int) -> torch.Tensor:
    """Random weight ~ N(0, 1/fan_in)."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(shape, generator=_G) / math.sqrt(fan_in)


def _g(n: int) -> torch.Tensor:
    """A norm gain near 1."""
    return 1 + 0.1 * torch.randn(n, generator=_G)


def _b(n: int) -> torch.Tensor:
    return 0.1 * torch.randn(n, generator=_G)


def _brain_raw(v: int, h: int, blocks: int, n: int, d: int, ph: int) -> dict[str, torch.Tensor]:
    """``BrainNetwork`` (src/models.py) tensors under ``voxel2clip.``."""
    raw = {"lin0.0.weight": _w(h, v), "lin0.0.bias": _b(h), "lin0.1.weight": _g(h), "lin0.1.bias": _b(h)}
    for k in range(blocks):
        raw |= {f"mlp.{k}.0.weight": _w(h, h), f"mlp.{k}.0.bias": _b(h), f"mlp.{k}.1.weight": _g(h), f"mlp.{k}.1.bias": _b(h)}
    raw |= {"lin1.weight": _w(n * d, h), "lin1.bias": _b(n * d)}
    raw |= {"projector.0.weight": _g(d), "projector.0.bias": _b(d), "projector.2.weight": _w(ph, d), "projector.2.bias": _b(ph),
            "projector.3.weight": _g(ph), "projector.3.bias": _b(ph), "projector.5.weight": _w(ph, ph),
            "projector.5.bias": _b(ph), "projector.6.weight": _g(ph), "projector.6.bias": _b(ph),
            "projector.8.weight": _w(d, ph), "projector.8.bias": _b(d)}
    return {"voxel2clip." + k: t for k, t in raw.items()}


def _dalle2_cosine_betas(steps: int) -> torch.Tensor:
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    ac = torch.cos(((x / steps) + 0.008) / 1.008 * torch.pi * 0.5) ** 2
    ac = ac / ac[0]
    return torch.clip(1 - (ac[1:] / ac[:-1]), 0, 0.999)


def _noise_scheduler_raw(steps: int) -> dict[str, torch.Tensor]:
    """dalle2 ``NoiseScheduler`` buffers (float64 maths, stored float32)."""
    betas = _dalle2_cosine_betas(steps)
    ac = torch.cumprod(1 - betas, 0)
    acp = F.pad(ac[:-1], (1, 0), value=1.0)
    pv = betas * (1 - acp) / (1 - ac)
    raw = {"betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": acp, "sqrt_alphas_cumprod": ac.sqrt(),
           "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "log_one_minus_alphas_cumprod": (1 - ac).log(),
           "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(), "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
           "posterior_variance": pv, "posterior_log_variance_clipped": pv.clamp(min=1e-20).log(),
           "posterior_mean_coef1": betas * acp.sqrt() / (1 - ac),
           "posterior_mean_coef2": (1 - acp) * (1 - betas).sqrt() / (1 - ac), "p2_loss_weight": torch.ones_like(ac)}
    return {"noise_scheduler." + k: t.float() for k, t in raw.items()}


def _transformer_raw(d: int, depth: int, heads: int, dh: int, normformer: bool) -> dict[str, torch.Tensor]:
    """dalle2 ``CausalTransformer`` tensors (rotary freqs as rotary_embedding_torch stores them)."""
    r = min(32, dh)
    freqs = 1.0 / (10000 ** (torch.arange(0, r, 2)[: r // 2].float() / r))
    raw = {"rel_pos_bias.relative_attention_bias.weight": torch.randn(32, heads, generator=_G),
           "norm.g": _g(d), "project_out.weight": _w(d, d)}
    for i in range(depth):
        a, f = f"layers.{i}.0.", f"layers.{i}.1."
        raw |= {a + "norm.g": _g(d), a + "null_kv": torch.randn(2, dh, generator=_G), a + "to_q.weight": _w(heads * dh, d),
                a + "to_kv.weight": _w(2 * dh, d), a + "to_out.0.weight": _w(d, heads * dh), a + "to_out.1.g": _g(d),
                a + "rotary_emb.freqs": freqs.clone(),
                f + "0.g": _g(d), f + "1.weight": _w(8 * d, d), f + "5.weight": _w(d, 4 * d)}
        if normformer:
            raw[f + "3.g"] = _g(4 * d)
    return {"net.causal_transformer." + k: t for k, t in raw.items()}


SIZES = dict(v=40, h=24, blocks=2, d=32, ph=20, depth=2, heads=2, dh=40)


def _raw_257(n: int = 12, steps: int = 100) -> dict[str, torch.Tensor]:
    s = SIZES
    d = s["d"]
    raw = _brain_raw(s["v"], s["h"], s["blocks"], n, d, s["ph"])
    raw |= {"net.learned_query": _w(n, d), "net.null_brain_embeds": torch.randn(n, d, generator=_G),
            "net.null_image_embed": torch.randn(n, d, generator=_G),
            "net.to_time_embeds.0.1.net.0.0.weight": _w(2 * d, d), "net.to_time_embeds.0.1.net.0.0.bias": _b(2 * d),
            "net.to_time_embeds.0.1.net.1.0.weight": _w(2 * d, 2 * d), "net.to_time_embeds.0.1.net.1.0.bias": _b(2 * d),
            "net.to_time_embeds.0.1.net.2.weight": _w(d, 2 * d), "net.to_time_embeds.0.1.net.2.bias": _b(d)}
    raw |= _transformer_raw(d, s["depth"], s["heads"], s["dh"], normformer=False)
    raw |= _noise_scheduler_raw(steps)
    return raw


def _raw_1x768(prefix: int = 20, steps: int = 50) -> dict[str, torch.Tensor]:
    s = SIZES
    d = s["d"]
    raw = _brain_raw(s["v"], s["h"], s["blocks"], 1, d, s["ph"])
    raw |= {"net.learned_query": torch.randn(d, generator=_G), "net.null_text_encodings": torch.randn(1, prefix, d, generator=_G),
            "net.null_text_embeds": torch.randn(1, 1, d, generator=_G), "net.null_image_embed": torch.randn(1, d, generator=_G),
            "net.to_time_embeds.0.weight": torch.randn(steps, d, generator=_G)}
    raw |= _transformer_raw(d, s["depth"], s["heads"], s["dh"], normformer=True)
    raw |= _noise_scheduler_raw(steps)
    return raw


def _decoder_keys(c_in: int, widths: list[int]) -> dict[str, tuple[int, ...]]:
    """A diffusers Decoder's tensor shapes, attention named as in diffusers 0.13 (query/key/value/proj_attn)."""
    from diffusers.models.autoencoders.vae import Decoder

    dec = Decoder(in_channels=c_in, out_channels=4, up_block_types=("UpDecoderBlock2D",) * len(widths),
                  block_out_channels=tuple(widths), layers_per_block=1)
    old = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    out = {}
    for k, t in dec.state_dict().items():
        for new, o in old.items():
            k = k.replace(".attentions.0." + new, ".attentions.0." + o)
        out[k] = tuple(t.shape)
    return out


LOW = dict(v=40, h=24, blocks=2, c=8, s=4, widths=[32, 64], p=16)


def _raw_lowlevel() -> dict[str, torch.Tensor]:
    s = LOW
    h, c = s["h"], s["c"]
    raw = {"lin0.0.weight": _w(h, s["v"]), "lin0.1.weight": _g(h), "lin0.1.bias": _b(h)}
    for k in range(s["blocks"]):
        raw |= {f"mlp.{k}.0.weight": _w(h, h), f"mlp.{k}.1.weight": _g(h), f"mlp.{k}.1.bias": _b(h)}
    raw |= {"lin1.weight": _w(c * s["s"] ** 2, h), "norm.weight": _g(c), "norm.bias": _b(c)}
    for k, shape in _decoder_keys(c, s["widths"]).items():
        is_norm = "norm" in k.split(".")[-2]
        raw["upsampler." + k] = (_g(shape[0]) if is_norm else _w(*shape)) if k.endswith("weight") else _b(shape[0])
    p = s["p"]
    raw |= {"maps_projector.0.weight": _w(p, c, 1, 1), "maps_projector.1.weight": _g(p), "maps_projector.1.bias": _b(p),
            "maps_projector.3.weight": _w(p, p, 1, 1), "maps_projector.4.weight": _g(p), "maps_projector.4.bias": _b(p),
            "maps_projector.6.weight": _w(p, p, 1, 1), "maps_projector.6.bias": _b(p)}
    return raw


def _save_training_checkpoint(path: Path, raw: dict[str, torch.Tensor], *, onecycle: bool = True) -> Path:
    """A file shaped like the released ones: model + optimizer state + a torch-2.0 OneCycleLR state dict
    (whose ``anneal_func`` is a bound method: it pickles the scheduler and its AdamW optimizer)."""
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=4)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    lr_state = sched.state_dict()
    if onecycle:
        lr_state["anneal_func"] = sched._anneal_func
    torch.save({"epoch": 239, "model_state_dict": raw, "optimizer_state_dict": opt.state_dict(), "lr_scheduler": lr_state,
                "train_losses": [1.0, 0.5], "val_losses": [0.7], "lrs": [1e-4]}, path)
    return path


# ------------------------------------------------------------------------------- reference forwards
def _ln(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None = None, stable: bool = False) -> torch.Tensor:
    """dalle2 LayerNorm (eps 1e-5), or nn.LayerNorm with a bias."""
    if stable:
        x = x / x.amax(dim=-1, keepdim=True)
    var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
    y = (x - x.mean(dim=-1, keepdim=True)) * (var + 1e-5).rsqrt() * g
    return y if b is None else y + b


def _ref_brain(raw: dict[str, torch.Tensor], x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    p = lambda k: raw["voxel2clip." + k]  # noqa: E731
    h = F.gelu(_ln(x @ p("lin0.0.weight").T + p("lin0.0.bias"), p("lin0.1.weight"), p("lin0.1.bias")))
    k = 0
    while f"voxel2clip.mlp.{k}.0.weight" in raw:
        h = F.gelu(_ln(h @ p(f"mlp.{k}.0.weight").T + p(f"mlp.{k}.0.bias"), p(f"mlp.{k}.1.weight"), p(f"mlp.{k}.1.bias"))) + h
        k += 1
    tokens = (h @ p("lin1.weight").T + p("lin1.bias")).reshape(len(x), -1, d)
    z = F.gelu(_ln(tokens, p("projector.0.weight"), p("projector.0.bias")))
    z = F.gelu(_ln(z @ p("projector.2.weight").T + p("projector.2.bias"), p("projector.3.weight"), p("projector.3.bias")))
    z = F.gelu(_ln(z @ p("projector.5.weight").T + p("projector.5.bias"), p("projector.6.weight"), p("projector.6.bias")))
    return tokens, z @ p("projector.8.weight").T + p("projector.8.bias")


def _ref_rel_pos_bias(table: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """dalle2 RelPosBias.forward(i, j), literally."""
    q_pos, k_pos = torch.arange(i), torch.arange(j)
    rel_pos = k_pos[None, :] - q_pos[:, None]
    n = torch.max(-rel_pos, torch.zeros_like(rel_pos))
    max_exact = 16
    is_small = n < max_exact
    val_if_large = max_exact + (torch.log(n.float() / max_exact) / math.log(128 / max_exact) * (32 - max_exact)).long()
    val_if_large = torch.min(val_if_large, torch.full_like(val_if_large, 31))
    return table[torch.where(is_small, n, val_if_large)].permute(2, 0, 1)


def _ref_rotate(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """rotary_embedding_torch: rotate_queries_or_keys along dim -2 (positions 0..n-1), interleaved pairs."""
    n = t.shape[-2]
    f = (torch.arange(n).float()[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)
    r = f.shape[-1]
    left, right = t[..., :r], t[..., r:]
    x1, x2 = left.reshape(*left.shape[:-1], r // 2, 2).unbind(-1)
    half = torch.stack((-x2, x1), dim=-1).reshape(left.shape)
    return torch.cat([left * f.cos() + half * f.sin(), right], dim=-1)


def _ref_transformer(raw: dict[str, torch.Tensor], x: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """dalle2 CausalTransformer.forward (cosine-sim Attention, scale 16, null kv, rotary, T5 bias)."""
    p = lambda k: raw["net.causal_transformer." + k]  # noqa: E731
    b, n, _ = x.shape
    bias = _ref_rel_pos_bias(p("rel_pos_bias.relative_attention_bias.weight"), n, n + 1)
    i = 0
    while f"net.causal_transformer.layers.{i}.0.to_q.weight" in raw:
        a, f = f"layers.{i}.0.", f"layers.{i}.1."
        h = _ln(x, p(a + "norm.g"))
        q, (k, v) = h @ p(a + "to_q.weight").T, (h @ p(a + "to_kv.weight").T).chunk(2, dim=-1)
        q = q.reshape(b, n, heads, -1).transpose(1, 2) * 16
        q, k = _ref_rotate(q, p(a + "rotary_emb.freqs")), _ref_rotate(k, p(a + "rotary_emb.freqs"))
        nk, nv = (t.expand(b, 1, -1) for t in p(a + "null_kv").unbind(dim=-2))
        k, v = torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2)
        q, k = F.normalize(q, dim=-1) * 4, F.normalize(k, dim=-1) * 4
        sim = torch.einsum("b h i d, b j d -> b h i j", q, k) + bias
        if causal:
            ii, jj = sim.shape[-2:]
            sim = sim.masked_fill(torch.ones(ii, jj, dtype=torch.bool).triu(jj - ii + 1), -torch.finfo(sim.dtype).max)
        out = torch.einsum("b h i j, b j d -> b h i d", sim.softmax(dim=-1, dtype=torch.float32), v)
        out = out.transpose(1, 2).reshape(b, n, -1) @ p(a + "to_out.0.weight").T
        x = _ln(out, p(a + "to_out.1.g")) + x
        hh, gate = (_ln(x, p(f + "0.g")) @ p(f + "1.weight").T).chunk(2, dim=-1)
        hh = hh * F.silu(gate)
        if "net.causal_transformer." + f + "3.g" in raw:
            hh = _ln(hh, p(f + "3.g"))
        x = hh @ p(f + "5.weight").T + x
        i += 1
    return _ln(x, p("norm.g"), stable=True) @ p("project_out.weight").T


def _ref_prior_257(raw: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """VersatileDiffusionPriorNetwork.forward (continuous time, pos_emb query mode, non-causal)."""
    d, n = x_t.shape[-1], x_t.shape[1]
    half = d // 2
    e = torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1)))
    e = t.float()[:, None] * e[None, :]
    time = torch.cat((e.sin(), e.cos()), dim=-1)
    m = lambda k: raw["net.to_time_embeds.0.1.net." + k]  # noqa: E731
    time = F.silu(time @ m("0.0.weight").T + m("0.0.bias"))
    time = F.silu(time @ m("1.0.weight").T + m("1.0.bias"))
    time = time @ m("2.weight").T + m("2.bias")
    tokens = torch.cat((brain, time[:, None], x_t + raw["net.learned_query"]), dim=-2)
    return _ref_transformer(raw, tokens, SIZES["heads"], causal=False)[..., -n:, :]


def _ref_prior_1x768(raw: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """dalle2 DiffusionPriorNetwork.forward without text encodings (all null), learned time table."""
    b = x_t.shape[0]
    tokens = torch.cat((raw["net.null_text_encodings"].expand(b, -1, -1), text_embed[:, None],
                        raw["net.to_time_embeds.0.weight"][t][:, None], x_t[:, None],
                        raw["net.learned_query"].expand(b, 1, -1)), dim=-2)
    return _ref_transformer(raw, tokens, SIZES["heads"], causal=True)[..., -1, :]


def _ref_resnet(raw: dict[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(F.silu(F.group_norm(x, 32, raw[p + "norm1.weight"], raw[p + "norm1.bias"], 1e-6)),
                 raw[p + "conv1.weight"], raw[p + "conv1.bias"], padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, 32, raw[p + "norm2.weight"], raw[p + "norm2.bias"], 1e-6)),
                 raw[p + "conv2.weight"], raw[p + "conv2.bias"], padding=1)
    if p + "conv_shortcut.weight" in raw:
        x = F.conv2d(x, raw[p + "conv_shortcut.weight"], raw[p + "conv_shortcut.bias"])
    return x + h


def _ref_decoder_attention(raw: dict[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    h = F.group_norm(x, 32, raw[p + "group_norm.weight"], raw[p + "group_norm.bias"], 1e-6).reshape(b, c, -1).transpose(1, 2)
    q, k, v = (F.linear(h, raw[p + n + ".weight"], raw[p + n + ".bias"]) for n in ("query", "key", "value"))
    o = F.linear(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v, raw[p + "proj_attn.weight"], raw[p + "proj_attn.bias"])
    return x + o.transpose(1, 2).reshape(b, c, hh, ww)


def _ref_lowlevel(raw: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel2StableDiffusionModel.forward(x, return_transformer_feats=True), ups_mode 4x, diffusers 0.13 Decoder."""
    h = F.silu(_ln(x @ raw["lin0.0.weight"].T, raw["lin0.1.weight"], raw["lin0.1.bias"]))
    for k in range(LOW["blocks"]):
        h = F.silu(_ln(h @ raw[f"mlp.{k}.0.weight"].T, raw[f"mlp.{k}.1.weight"], raw[f"mlp.{k}.1.bias"])) + h
    z = (h @ raw["lin1.weight"].T).reshape(len(x), LOW["c"], LOW["s"], LOW["s"])
    z = F.group_norm(z, 1, raw["norm.weight"], raw["norm.bias"])
    u = lambda k: raw["upsampler." + k]  # noqa: E731
    y = F.conv2d(z, u("conv_in.weight"), u("conv_in.bias"), padding=1)
    y = _ref_resnet(raw, "upsampler.mid_block.resnets.0.", y)
    y = _ref_decoder_attention(raw, "upsampler.mid_block.attentions.0.", y)
    y = _ref_resnet(raw, "upsampler.mid_block.resnets.1.", y)
    for i in range(len(LOW["widths"])):
        for j in range(2):
            y = _ref_resnet(raw, f"upsampler.up_blocks.{i}.resnets.{j}.", y)
        if f"upsampler.up_blocks.{i}.upsamplers.0.conv.weight" in raw:
            y = F.conv2d(F.interpolate(y, scale_factor=2.0, mode="nearest"), u(f"up_blocks.{i}.upsamplers.0.conv.weight"),
                         u(f"up_blocks.{i}.upsamplers.0.conv.bias"), padding=1)
    y = F.silu(F.group_norm(y, 32, u("conv_norm_out.weight"), u("conv_norm_out.bias"), 1e-6))
    latents = F.conv2d(y, u("conv_out.weight"), u("conv_out.bias"), padding=1)
    m = lambda k: raw["maps_projector." + k]  # noqa: E731
    f = F.relu(F.group_norm(F.conv2d(z, m("0.weight")), 1, m("1.weight"), m("1.bias")))
    f = F.relu(F.group_norm(F.conv2d(f, m("3.weight")), 1, m("4.weight"), m("4.bias")))
    f = F.conv2d(f, m("6.weight"), m("6.bias"))
    return latents, f.flatten(2).permute(0, 2, 1)


# ----------------------------------------------------------------------------------------- tests
CLOSE = dict(rtol=1e-4, atol=1e-5)


def test_converted_257x768_equals_the_official_forward(tmp_path: Path) -> None:
    raw = _raw_257()
    src = _save_training_checkpoint(tmp_path / "last.pth", raw)
    out = convert_official_checkpoint(src, "257x768", tmp_path / "conv", subject=1)
    model = MindEyeHighLevel.from_pretrained(out).eval()
    assert model.prior is not None and model.prior.timesteps == 100
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prior_options"]["time_embedding"] == "sinusoidal_mlp" and cfg["prior_options"]["kv_heads"] == 1
    prov = cfg["_provenance"]
    assert prov["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prov["dropped_entries"] == ["epoch", "lr_scheduler", "lrs", "optimizer_state_dict", "train_losses", "val_losses"]
    assert prov["verified_buffers"] == 13 + SIZES["depth"] and prov["epoch"] == 239
    assert not (tmp_path / "conv.partial").exists()

    d, n = SIZES["d"], 12
    x = torch.randn(3, SIZES["v"], generator=_G)
    with torch.no_grad():
        ref_tokens, ref_proj = _ref_brain(raw, x, d)
        tokens, proj = model(x)
        torch.testing.assert_close(tokens, ref_tokens, **CLOSE)
        torch.testing.assert_close(proj, ref_proj, **CLOSE)
        # the denoiser at fixed timesteps and noise, and the training loss built on it
        target = torch.randn(3, n, d, generator=_G) / math.sqrt(d)
        noise = torch.randn(3, n, d, generator=_G)
        t = torch.tensor([0, 37, 99])
        scale = math.sqrt(d)
        x_t = (raw["noise_scheduler.sqrt_alphas_cumprod"][t].view(-1, 1, 1) * target * scale
               + raw["noise_scheduler.sqrt_one_minus_alphas_cumprod"][t].view(-1, 1, 1) * noise)
        ref_pred = _ref_prior_257(raw, x_t, t, tokens)
        torch.testing.assert_close(model.prior.denoise(x_t, t, tokens), ref_pred, **CLOSE)
        loss, pred = model.prior(tokens, target, t=t, noise=noise)
        torch.testing.assert_close(pred, ref_pred / scale, **CLOSE)
        torch.testing.assert_close(loss, F.mse_loss(ref_pred, target * scale), **CLOSE)


def test_converted_1x768_equals_the_official_forward(tmp_path: Path) -> None:
    raw = _raw_1x768()
    src = _save_training_checkpoint(tmp_path / "last.pth", raw)
    model = MindEyeHighLevel.from_pretrained(convert_official_checkpoint(src, "1x768", tmp_path / "c")).eval()
    assert model.prior.timesteps == 50 and model.prior.config["causal"] and model.prior.config["ff_post_norm"]
    x = torch.randn(2, SIZES["v"], generator=_G)
    with torch.no_grad():
        tokens, proj = model(x)
        torch.testing.assert_close(tokens, _ref_brain(raw, x, SIZES["d"])[0], **CLOSE)
        x_t = torch.randn(2, 1, SIZES["d"], generator=_G)
        t = torch.tensor([3, 49])
        ref = _ref_prior_1x768(raw, x_t[:, 0], t, tokens[:, 0])
        torch.testing.assert_close(model.prior.denoise(x_t, t, tokens)[:, 0], ref, **CLOSE)


def test_converted_lowlevel_equals_the_official_forward(tmp_path: Path) -> None:
    raw = _raw_lowlevel()
    src = tmp_path / "epoch120.pth"
    torch.save({"epoch": 120, "model_state_dict": raw, "optimizer_state_dict": {"state": {}, "param_groups": []}}, src)
    model = LowLevelModel.from_pretrained(convert_official_checkpoint(src, "lowlevel", tmp_path / "low")).eval()
    assert model.config["block_out_channels"] == LOW["widths"] and model.config["latent_size"] == LOW["s"]
    x = torch.randn(2, LOW["v"], generator=_G)
    with torch.no_grad():
        latents, feats = model(x)
        ref_latents, ref_feats = _ref_lowlevel(raw, x)
    torch.testing.assert_close(latents, ref_latents, **CLOSE)
    torch.testing.assert_close(feats, ref_feats, **CLOSE)


def test_missing_extra_and_misshaped_tensors_are_named() -> None:
    raw = _raw_257()
    del raw["net.causal_transformer.layers.1.0.to_out.1.g"]
    raw["net.extra_thing"] = torch.zeros(3)
    raw["voxel2clip.projector.5.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as info:
        map_official_state(raw, "257x768", where="ckpt.pth")
    msg = str(info.value)
    assert "missing 'net.causal_transformer.layers.1.0.to_out.1.g'" in msg
    assert "net.extra_thing" in msg
    assert "brain.projector.5.bias: checkpoint (7,) vs model (20,)" in msg
    low = _raw_lowlevel()
    low["upsampler.mid_block.attentions.0.query.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match=r"upsampler.mid_block.attentions.0.to_q.weight: checkpoint \(5, 5\) vs model \(64, 64\)"):
        map_official_state(low, "lowlevel")


def test_derived_buffers_are_checked_not_trusted() -> None:
    raw = _raw_257()
    raw["net.causal_transformer.layers.0.0.rotary_emb.freqs"] *= 2
    with pytest.raises(CheckpointError, match="rotary_emb.freqs' .*differs from our recomputation"):
        map_official_state(raw, "257x768")
    raw = _raw_257()
    raw["noise_scheduler.betas"] = torch.linspace(0.1, 0.2, 100)
    with pytest.raises(CheckpointError, match="match neither the cosine nor the linear schedule"):
        map_official_state(raw, "257x768")
    with pytest.raises(CheckpointError, match="not a 1x768 prior checkpoint"):
        map_official_state(_raw_257(), "1x768")


class _Payload:
    """An arbitrary object: unpickling it would call os.getcwd (harmless, but code of the file's choosing)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.getcwd, ())


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": _raw_lowlevel(), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*getcwd"):
        convert_official_checkpoint(path, "lowlevel", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    torch.save({"model_state_dict": {}, "extra": torch.optim.SGD}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*torch.optim.sgd.SGD"):
        load_official_checkpoint(path)
    # the torch-2.0 OneCycleLR bound method (scheduler + AdamW objects) is inert training state
    ok = _save_training_checkpoint(tmp_path / "ok.pth", {"x": torch.zeros(1)})
    top = load_official_checkpoint(ok)
    assert top["lr_scheduler"]["anneal_func"] is None and torch.equal(top["model_state_dict"]["x"], torch.zeros(1))


def test_brain_loader_reads_released_prior_checkpoints(tmp_path: Path) -> None:
    raw = _raw_257()
    src = _save_training_checkpoint(tmp_path / "last.pth", raw)
    brain = load_official_brain_checkpoint(src, dim=SIZES["d"]).eval()
    x = torch.randn(2, SIZES["v"], generator=_G)
    with torch.no_grad():
        torch.testing.assert_close(brain(x)[1], _ref_brain(raw, x, SIZES["d"])[1], **CLOSE)


def test_write_safetensors_streams_and_round_trips(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(37, 5, generator=_G), "b": torch.arange(10), "c": torch.randn(4, 6, generator=_G).T,
               "empty": torch.zeros(0, 3), "flag": torch.tensor([True, False])}
    path = write_safetensors(tmp_path / "w.safetensors", tensors, metadata={"k": "v"}, chunk_bytes=24)
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert torch.equal(back[k], t)
    half = load_file(str(write_safetensors(tmp_path / "h.safetensors", tensors, dtype=torch.bfloat16, chunk_bytes=40)))
    assert half["a"].dtype == torch.bfloat16 and half["b"].dtype == torch.int64
    torch.testing.assert_close(half["c"].float(), tensors["c"], rtol=1e-2, atol=1e-2)


def test_official_structure_trains_in_float32() -> None:
    """One fp32 training step (the official loop's in-place ``/=`` on the prediction would break backward)."""
    prior = DiffusionPrior(dim=32, num_tokens=6, depth=1, heads=2, dim_head=16, timesteps=10,
                           **{**OFFICIAL_257X768_STRUCTURE, "rotary_dim": 16}).train()
    brain = torch.randn(4, 6, 32, requires_grad=True)
    loss, pred = prior(brain, torch.randn(4, 6, 32), generator=torch.Generator().manual_seed(1))
    (loss + pred.square().mean()).backward()
    grads = [p.grad for p in prior.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and torch.isfinite(brain.grad).all()
    with pytest.raises(ValueError, match="kv_heads must divide heads=2"):
        DiffusionPrior(dim=32, num_tokens=6, depth=1, heads=2, dim_head=16, kv_heads=3)
    with pytest.raises(ValueError, match="rotary_dim must be even and in"):
        DiffusionPrior(dim=32, num_tokens=6, depth=1, heads=2, dim_head=16, rotary_dim=32)


def test_cli_downloads_the_pinned_file_and_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from mindeye_core.cli import main

    snapshot = tmp_path / "hub" / "snapshots" / ("c0ffee" * 6 + "abcd") / "mindeye_models"
    snapshot.mkdir(parents=True)
    local = snapshot / "epoch120.pth"
    torch.save({"epoch": 120, "model_state_dict": _raw_lowlevel()}, local)
    calls = []

    def fake_download(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = tmp_path / "converted"
    assert main(["convert-official", "--subject", "2", "--model", "lowlevel", "--out", str(out)]) == 0
    assert calls[0]["repo_id"] == "pscotti/naturalscenesdataset" and calls[0]["repo_type"] == "dataset"
    assert calls[0]["filename"] == official_filename("lowlevel", 2) == \
        "mindeye_models/autoencoder_subj02_4x_locont_no_reconst/epoch120.pth"
    source = json.loads((out / "config.json").read_text())["_provenance"]["source"]
    assert source["resolved_commit"] == "c0ffee" * 6 + "abcd" and source["revision"] == calls[0]["revision"]
    assert main(["convert-official", "--subject", "2", "--model", "257x768", "--source", str(local),
                 "--out", str(tmp_path / "x")]) == 1


def test_converted_nsd_spec(tmp_path: Path) -> None:
    pytest.importorskip("mindeye_core.recon")
    from mindeye_core.official.convert import converted_nsd_spec

    with pytest.raises(CheckpointError, match="convert-official --subject 5 --model 257x768"):
        converted_nsd_spec(5, tmp_path)
    for kind in ("257x768", "lowlevel"):
        (tmp_path / "subj05" / kind).mkdir(parents=True)
        (tmp_path / "subj05" / kind / "config.json").write_text("{}")
    spec = converted_nsd_spec(5, tmp_path, device="cpu")
    assert spec.brain == str(tmp_path / "subj05" / "257x768") and spec.lowlevel == str(tmp_path / "subj05" / "lowlevel")
    assert spec.n_samples == 16 and spec.device == "cpu"
    assert converted_nsd_spec(5, tmp_path, with_lowlevel=False).lowlevel is None
