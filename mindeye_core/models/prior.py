"""MindEye's diffusion prior: backbone tokens -> aligned CLIP tokens, written out explicitly.

Reimplements the prior MindEye trained (a modified DALL-E 2 prior, ``VersatileDiffusionPriorNetwork``
+ ``BrainDiffusionPrior`` on top of dalle2-pytorch) without depending on dalle2-pytorch.

**Diffusion.** ``T = 100`` steps, cosine schedule (Nichol & Dhariwal, ``s = 0.008``)::

    abar(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ) / cos^2( s / (1 + s) * pi/2 ),   t = 0..T
    beta_t  = clip(1 - abar(t+1) / abar(t), 0, 0.999),   alphabar_t = prod_{k<=t} (1 - beta_k),  t = 0..T-1
    q(x_t | x_0) = N( sqrt(alphabar_t) x_0, (1 - alphabar_t) I )

The network predicts ``x_0`` directly. Targets are scaled by ``image_embed_scale = sqrt(dim)`` before
noising (DALL-E 2's convention); :meth:`DiffusionPrior.forward` and :meth:`DiffusionPrior.sample`
return embeddings divided back to target units. Loss: ``MSE(net(x_t, t, cond), scale * x_0)``. The
division is out of place: the official training loop's in-place ``aligned /= scale`` on the network
output breaks the backward pass in float32 (it only survived under fp16 autocast) and is not inherited.

**Network (standard structure, the defaults).** A non-causal (bidirectional) pre-norm transformer over
the sequence ``[brain tokens (N) | time token (1) | noised target tokens (N)]``; the output is the last
``N`` tokens after a final LayerNorm and a bias-free linear layer. A learned absolute positional
embedding ``(N, dim)`` is added to the noised tokens only (official ``learned_query_mode="pos_emb"``: no
learned queries). The time token comes from a learned ``(T, dim)`` table (our choice; the official 257
x 768 prior uses a continuous embedding, below). Attention is standard multi-head attention (separate
K/V per head, scores ``q.k / sqrt(64)``), the feed-forward dalle2's SwiGLU with ``ff_mult = 4`` and
bias-free linear layers, LayerNorms with a bias. Width/depth/heads: 768 / 6 / 12, dim_head 64 for NSD.

**Official structure (config options, defaults off).** Built as the official training script builds
it (``VersatileDiffusionPriorNetwork(dim=768, depth=6, dim_head=64, heads=12, causal=False,
num_tokens=257, learned_query_mode="pos_emb")``, no ``num_timesteps``), the released 257 x 768 prior
differs from the standard structure in every point below; :data:`OFFICIAL_257X768_STRUCTURE` turns
all of them on, and then a converted checkpoint computes exactly what the official network computes
(float32; tested against a reference written from the raw state dict):

- ``time_embedding="sinusoidal_mlp"``: the number of timesteps is never passed to the network, so
  dalle2 uses its continuous embedding, ``SinusoidalPosEmb(dim)`` of ``t`` followed by
  ``MLP(dim, dim)`` (two SiLU hidden layers of width ``2 dim``), not a learned table;
- ``kv_heads=1``, ``null_kv=True``: one key/value head (``to_kv: dim -> 2 x 64``) shared by all 12
  query heads, plus a learned null key/value prepended to the keys;
- ``cosine_sim_scale=16``: scores are ``16 cos(q, k)`` (q, k and the null key l2-normalised);
- ``rotary_dim=32``: rotary embeddings (interleaved pairs, base 10000) on the first 32 features of
  every query and key head (not on the null key), positions ``0..n-1``;
- ``rel_pos_bias=True``: a T5 relative position bias (32 buckets, max distance 128, a learned
  ``(32, heads)`` table) on top of the learned position embedding; as in dalle2 it is built for
  ``n + 1`` keys with the null key at position 0, so a real token ``m`` sits at key position
  ``m + 1`` and only keys behind the query get a distance (bucket of ``max(i - m - 1, 0)``);
- ``norm_bias=False``: every LayerNorm is bias-free (dalle2's ``LayerNorm``, eps ``1e-5``; ``1e-3``
  in half precision);
- ``attn_out_norm=True``: an extra LayerNorm after each attention's output projection;
- ``final_norm="stable"``: the final norm divides each token by its (detached) maximum first.

The released 1 x 768 prior (final-layer CLIP; dalle2's ``DiffusionPriorNetwork`` fine-tuned from a
LAION prior) also needs ``time_embedding="table"`` (1000 steps), ``learned_pos_emb=False``,
``causal=True`` (null key always visible), ``num_prefix_tokens`` learned null text encodings before the
brain token, ``learned_query=True`` and possibly ``ff_post_norm`` (dalle2 ``normformer``); the
converter (:mod:`mindeye_core.official`) reads these from the checkpoint's shapes.

**Condition dropout.** During training each sample's brain tokens are replaced with a learned null
embedding ``(N, dim)`` with probability ``cond_drop_prob = 0.2``. The official code (dalle2-pytorch's
``DiffusionPrior``) also passes the same probability as ``image_cond_drop_prob``, replacing the noised
tokens by a learned null embedding: ``image_drop_prob`` reproduces that (default 0.2, as trained).

**Sampling.** DDPM ancestral sampling from ``x_T ~ N(0, I)``: at each step the posterior
``q(x_{t-1} | x_t, x0_hat)`` has mean ``c1_t x0_hat + c2_t x_t`` with ``c1_t = beta_t sqrt(alphabar_{t-1}) / (1 - alphabar_t)``,
``c2_t = (1 - alphabar_{t-1}) sqrt(1 - beta_t) / (1 - alphabar_t)`` and variance
``beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)`` (log clipped at 1e-20); no noise is added at ``t = 0``.
Classifier-free guidance ``x0 = x0_null + s (x0_cond - x0_null)`` drops only the brain condition
in the null branch (the noised tokens are kept); the official ``forward_with_cond_scale`` also replaces
the noised tokens by the null image embedding there. Both are identical at ``cond_scale = 1``, which
is what MindEye's reconstructions use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataFormatError
from ..io import ConfigModule

__all__ = [
    "DiffusionPrior",
    "NoiseSchedule",
    "OFFICIAL_257X768_STRUCTURE",
    "PriorTransformer",
    "apply_rotary",
    "cosine_beta_schedule",
    "rotary_frequencies",
    "rotary_tables",
    "t5_relative_buckets",
]


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Betas ``(timesteps,)`` float64 of the cosine schedule (see module docstring)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    abar = torch.cos((t / timesteps + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return torch.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """DDPM's linear betas, rescaled to ``timesteps`` (float64)."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


class NoiseSchedule(nn.Module):
    """Precomputed DDPM quantities, all ``(T,)`` non-persistent float32 buffers (not saved).

    Attributes: ``betas``, ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``posterior_variance``, ``posterior_log_variance``,
    ``posterior_mean_coef1``, ``posterior_mean_coef2``.
    """

    def __init__(self, timesteps: int = 100, kind: str = "cosine") -> None:
        super().__init__()
        if kind == "cosine":
            betas = cosine_beta_schedule(timesteps)
        elif kind == "linear":
            betas = linear_beta_schedule(timesteps)
        else:
            raise ValueError(f"noise schedule must be 'cosine' or 'linear', got {kind!r}")
        self.timesteps = timesteps
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
        post_var = betas * (1 - abar_prev) / (1 - abar)
        values = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_coef2": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
        }
        for name, v in values.items():
            self.register_buffer(name, v.float(), persistent=False)

    @staticmethod
    def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        # ``.to(t.device)`` is a no-op once the module sits on t's device; it guards against buffers
        # left on the CPU when the module was built under a ``torch.device`` context whose factory-
        # function table another library had patched (transformers 5 patches ``torch.linspace``).
        return values.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise`` for per-sample ``t (B,)``."""
        a = self._gather(self.sqrt_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        return a * x0 + b * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(x_{t-1} | x_t, x0)``, shapes ``(B, ...)`` and ``(B, 1, ...)``."""
        c1 = self._gather(self.posterior_mean_coef1, t, xt.ndim).to(xt.dtype)
        c2 = self._gather(self.posterior_mean_coef2, t, xt.ndim).to(xt.dtype)
        logvar = self._gather(self.posterior_log_variance, t, xt.ndim).to(xt.dtype)
        return c1 * x0 + c2 * xt, logvar


REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 128


def _check_structure(heads: int, dim_head: int, time_embedding: str, kv_heads: int | None,
                     cosine_sim_scale: float | None, rotary_dim: int, final_norm: str, num_prefix_tokens: int) -> None:
    """Raise ``ValueError`` naming the first invalid official-structure option."""
    if time_embedding not in ("table", "sinusoidal_mlp"):
        raise ValueError(f"DiffusionPrior: time_embedding must be 'table' or 'sinusoidal_mlp', got {time_embedding!r}")
    if kv_heads is not None and (kv_heads < 1 or heads % kv_heads):
        raise ValueError(f"DiffusionPrior: kv_heads must divide heads={heads}, got {kv_heads}")
    if cosine_sim_scale is not None and not cosine_sim_scale > 0:
        raise ValueError(f"DiffusionPrior: cosine_sim_scale must be > 0 (or None), got {cosine_sim_scale}")
    if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > dim_head:
        raise ValueError(f"DiffusionPrior: rotary_dim must be even and in [0, dim_head={dim_head}], got {rotary_dim}")
    if final_norm not in ("layernorm", "stable"):
        raise ValueError(f"DiffusionPrior: final_norm must be 'layernorm' or 'stable', got {final_norm!r}")
    if num_prefix_tokens < 0:
        raise ValueError(f"DiffusionPrior: num_prefix_tokens must be >= 0, got {num_prefix_tokens}")


class _LayerNorm(nn.Module):
    """dalle2-pytorch's ``LayerNorm`` (the official prior's): optional bias, optional "stable" input scaling.

    ``y = (x' - mean(x')) / sqrt(var(x') + eps) * weight (+ bias)`` with ``x' = x / amax(x)`` (detached,
    per token) when ``stable`` and ``x' = x`` otherwise; ``eps = 1e-5`` in float32 and ``1e-3`` in
    half precision, as in dalle2. Input ``(..., dim)``.
    """

    def __init__(self, dim: int, *, bias: bool, stable: bool = False) -> None:
        super().__init__()
        self.stable = stable
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        return F.layer_norm(x, x.shape[-1:], self.weight.to(x.dtype),
                            None if self.bias is None else self.bias.to(x.dtype), eps)


def _norm(dim: int, *, bias: bool, stable: bool = False) -> nn.Module:
    """``nn.LayerNorm`` for the standard structure (bit-identical to before), else :class:`_LayerNorm`."""
    return nn.LayerNorm(dim) if bias and not stable else _LayerNorm(dim, bias=bias, stable=stable)


def rotary_tables(n: int, rotary_dim: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(n, rotary_dim)`` float32, of rotary embeddings at positions ``0..n-1``.

    Frequencies ``f_k = 10000^(-2k / rotary_dim)``, ``k < rotary_dim / 2``, each repeated for the two
    features of its (interleaved) pair, as in ``rotary_embedding_torch.RotaryEmbedding(rotary_dim)``.
    """
    inv = rotary_frequencies(rotary_dim, device)
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def rotary_frequencies(rotary_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(rotary_dim / 2,)`` float32 inverse frequencies ``10000^(-2k / rotary_dim)``."""
    return 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2, device=device)[: rotary_dim // 2].float() / rotary_dim))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``r = cos.shape[-1]`` features of ``x (..., n, d)`` in interleaved pairs.

    Pair ``(x_{2k}, x_{2k+1})`` at position ``p`` becomes ``(x_{2k} c - x_{2k+1} s, x_{2k+1} c + x_{2k} s)``
    with ``c, s = cos, sin(p f_k)``; features ``r..d-1`` pass unchanged.
    """
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr.reshape(*xr.shape[:-1], r // 2, 2).unbind(-1)
    rotated = torch.stack((-x2, x1), dim=-1).reshape(xr.shape)
    out = xr * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat([out, rest], dim=-1)


def t5_relative_buckets(n_queries: int, n_keys: int, num_buckets: int = 32, max_distance: int = 128,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """``(n_queries, n_keys)`` long T5 buckets of ``d = max(i - j, 0)`` for query ``i``, key ``j``.

    ``d < num_buckets / 2`` is its own bucket; larger ``d`` fall in log-spaced buckets up to
    ``max_distance`` (dalle2-pytorch's ``RelPosBias``: keys at or after the query share bucket 0).
    """
    q = torch.arange(n_queries, dtype=torch.long, device=device)
    k = torch.arange(n_keys, dtype=torch.long, device=device)
    d = (q[:, None] - k[None, :]).clamp(min=0)
    exact = num_buckets // 2
    # the log is taken of max(d, exact): for d < exact the bucket is d itself, so nothing changes
    large = exact + (torch.log(d.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
                     * (num_buckets - exact)).long()
    return torch.where(d < exact, d, large.clamp(max=num_buckets - 1))


class _Attention(nn.Module):
    """Pre-norm self-attention over ``(B, n, dim)`` tokens.

    Standard (defaults): ``heads`` query/key/value heads from one fused ``to_qkv``, scores
    ``q.k / sqrt(dim_head)``. Official-structure options (dalle2-pytorch ``Attention``):
    ``kv_heads`` key/value heads shared by groups of query heads (``to_q`` + ``to_kv``; 1 = one K/V
    head for all), ``null_kv`` (a learned key/value prepended to the keys, ``(2, kv_heads, dim_head)``),
    ``cosine_sim_scale`` (scores ``s cos(q, k)`` with l2-normalised q, k, null key included),
    rotary embeddings and an additive bias (given to :meth:`forward`), ``out_norm`` (a LayerNorm after
    the output projection).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dropout: float,
        causal: bool,
        *,
        kv_heads: int | None = None,
        null_kv: bool = False,
        cosine_sim_scale: float | None = None,
        out_norm: bool = False,
        norm_bias: bool = True,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.causal, self.dropout = heads, dim_head, causal, dropout
        self.kv_heads = heads if kv_heads is None else kv_heads
        self.cosine_sim_scale = cosine_sim_scale
        self.norm = _norm(dim, bias=norm_bias)
        if self.kv_heads == heads:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        else:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(dim, 2 * self.kv_heads * dim_head, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, self.kv_heads, dim_head)) if null_kv else None
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.out_norm = _norm(dim, bias=norm_bias) if out_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (B, n, dim)``; ``rotary`` = :func:`rotary_tables` ``(n, r)``; ``attn_mask`` an additive
        float ``(heads, n, n_keys)`` (bias and causal ``-inf``; ``n_keys = n + 1`` with ``null_kv``)."""
        b, n, _ = x.shape
        h = self.norm(x)
        if self.kv_heads == self.heads:
            q, k, v = self.to_qkv(h).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        else:
            q = self.to_q(h).reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
            k, v = self.to_kv(h).reshape(b, n, 2, self.kv_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if self.null_kv is not None:
            null = self.null_kv.to(k.dtype)[:, None, :, None, :].expand(2, b, self.kv_heads, 1, self.dim_head)
            k, v = torch.cat([null[0], k], dim=2), torch.cat([null[1], v], dim=2)
        scale = None
        if self.cosine_sim_scale is not None:
            q, k, scale = F.normalize(q, dim=-1), F.normalize(k, dim=-1), float(self.cosine_sim_scale)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None if attn_mask is None else attn_mask.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
            scale=scale,
            enable_gqa=self.kv_heads != self.heads,
        )  # (b, heads, n, dim_head)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
        return out if self.out_norm is None else self.out_norm(out)


class _FeedForward(nn.Module):
    """Pre-norm SwiGLU feed-forward: ``W2 (N(silu(g) * a))`` with ``[a, g] = W1 LN(x)``.

    ``N`` is the identity, or with ``post_norm`` a LayerNorm over the inner width (dalle2's
    ``normformer`` option).
    """

    def __init__(self, dim: int, mult: int, dropout: float, *, post_norm: bool = False, norm_bias: bool = True) -> None:
        super().__init__()
        inner = dim * mult
        self.norm = _norm(dim, bias=norm_bias)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.post_norm = _norm(inner, bias=norm_bias) if post_norm else None
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        h = F.silu(g) * a
        if self.post_norm is not None:
            h = self.post_norm(h)
        return self.proj_out(self.drop(h))


class PriorTransformer(nn.Module):
    """``depth`` pre-norm blocks ``x += attn(x); x += ff(x)``, then a final norm and a bias-free Linear.

    The keyword options select the official structure (see :class:`DiffusionPrior`); the defaults are
    the standard pre-norm transformer. The rotary tables and the attention mask (T5 relative position
    bias ``(heads, n, n_keys)`` from a learned ``(32, heads)`` table, plus the causal mask) are computed
    once per call and shared by all layers, as in dalle2's ``CausalTransformer``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
        dropout: float,
        causal: bool,
        *,
        kv_heads: int | None = None,
        null_kv: bool = False,
        cosine_sim_scale: float | None = None,
        rotary_dim: int = 0,
        rel_pos_bias: bool = False,
        norm_bias: bool = True,
        attn_out_norm: bool = False,
        ff_post_norm: bool = False,
        final_norm: str = "layernorm",
    ) -> None:
        super().__init__()
        self.causal, self.null_kv, self.rotary_dim = causal, null_kv, rotary_dim
        self.layers = nn.ModuleList(
            nn.ModuleList([
                _Attention(dim, heads, dim_head, dropout, causal, kv_heads=kv_heads, null_kv=null_kv,
                           cosine_sim_scale=cosine_sim_scale, out_norm=attn_out_norm, norm_bias=norm_bias),
                _FeedForward(dim, ff_mult, dropout, post_norm=ff_post_norm, norm_bias=norm_bias),
            ])
            for _ in range(depth)
        )
        self.rel_pos_bias = nn.Embedding(REL_POS_BUCKETS, heads) if rel_pos_bias else None
        self.norm = _norm(dim, bias=norm_bias, stable=final_norm == "stable")
        self.project_out = nn.Linear(dim, dim, bias=False)

    def attention_mask(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Additive float32 mask ``(heads or 1, n, n_keys)`` shared by all layers, or ``None`` when plain
        (causal) SDPA suffices. Key 0 is the null key when ``null_kv``; real token ``m`` is key
        ``m + 1`` then, and the causal mask hides real tokens ``m > i`` from query ``i``."""
        offset = 1 if self.null_kv else 0
        if self.rel_pos_bias is None and not (self.causal and offset):
            return None
        n_keys = n + offset
        mask = torch.zeros(1, n, n_keys, device=device)
        if self.rel_pos_bias is not None:
            buckets = t5_relative_buckets(n, n_keys, REL_POS_BUCKETS, REL_POS_MAX_DISTANCE, device=device)
            mask = self.rel_pos_bias(buckets).permute(2, 0, 1).float()
        if self.causal:
            key_token = torch.arange(n_keys, device=device) - offset
            hidden = key_token[None, :] > torch.arange(n, device=device)[:, None]
            mask = mask.masked_fill(hidden, float("-inf"))
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        rotary = rotary_tables(n, self.rotary_dim, x.device) if self.rotary_dim else None
        mask = self.attention_mask(n, x.device)
        for attn, ff in self.layers:
            x = attn(x, rotary, mask) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))


def _draw_device(generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device) -> torch.device:
    """Random numbers are drawn where the generator lives (or directly on ``device`` without one).

    For a sequence of per-row generators (:meth:`DiffusionPrior.sample`) all must live on one device.
    """
    if generator is None:
        return device
    if isinstance(generator, torch.Generator):
        return generator.device
    devices = {g.device for g in generator}
    if len(devices) != 1:
        raise ValueError(f"per-row generators must all live on one device, got {sorted(map(str, devices))}")
    return devices.pop()


class _SinusoidalTimeMLP(nn.Module):
    """Continuous time embedding (official 257x768 prior): sinusoid of ``t`` then a 2-hidden-layer MLP.

    ``e(t) = [sin(t w), cos(t w)]`` with ``w_k = exp(-k ln(10000) / (dim/2 - 1))``, ``k < dim/2``
    (dalle2's ``SinusoidalPosEmb``), then ``Linear(dim, 2dim) -> SiLU -> Linear(2dim, 2dim) -> SiLU ->
    Linear(2dim, dim)`` (dalle2's ``MLP(dim, dim)``). ``t (B,)`` -> ``(B, dim)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"DiffusionPrior: the sinusoidal time embedding needs an even dim >= 4, got {dim}")
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim), nn.SiLU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        return self.net(emb.to(self.net[0].weight.dtype))


OFFICIAL_257X768_STRUCTURE: Mapping[str, Any] = MappingProxyType({
    "time_embedding": "sinusoidal_mlp",
    "kv_heads": 1,
    "null_kv": True,
    "cosine_sim_scale": 16.0,
    "rotary_dim": 32,
    "rel_pos_bias": True,
    "norm_bias": False,
    "attn_out_norm": True,
    "final_norm": "stable",
})
"""The :class:`DiffusionPrior` options under which it computes what MindEye's released 257 x 768 prior
(``VersatileDiffusionPriorNetwork`` + dalle2-pytorch ``FlaggedCausalTransformer``, built as
``Train_MindEye.py`` builds it) computes. ``rotary_dim`` is ``min(32, dim_head)``."""


class DiffusionPrior(ConfigModule):
    """Brain-conditioned diffusion prior over ``(num_tokens, dim)`` target embeddings.

    Args:
        dim: token width (768).
        num_tokens: tokens per sample (257; 1 for the final-layer CLIP variant).
        depth, heads, dim_head, ff_mult: transformer size (6, 12, 64, 4).
        timesteps: diffusion steps (100).
        noise_schedule: ``"cosine"`` (MindEye) or ``"linear"``.
        cond_drop_prob: probability of replacing a sample's brain tokens by the null embedding (0.2).
        image_drop_prob: probability of replacing the noised tokens by a learned null embedding
            (0.2 in the official code; see module docstring).
        image_embed_scale: target scale; ``None`` -> ``sqrt(dim)``.
        learned_pos_emb: add a learned positional embedding to the noised tokens (True).
        causal: causal attention (False in MindEye's final model).
        dropout: attention and feed-forward dropout (0).

    Official-structure options (defaults = our standard structure; :data:`OFFICIAL_257X768_STRUCTURE`
    sets the official 257 x 768 values, see the module docstring):

    Args:
        time_embedding: ``"table"`` (a learned ``(timesteps, dim)`` table) or ``"sinusoidal_mlp"``
            (continuous sinusoid + MLP; the official 257 x 768 prior).
        kv_heads: key/value heads (``None`` = ``heads``; 1 = one K/V head shared by all query heads).
        null_kv: prepend a learned null key/value to every attention's keys.
        cosine_sim_scale: ``None`` (scores ``q.k / sqrt(dim_head)``) or ``s`` (scores ``s cos(q, k)``; 16).
        rotary_dim: rotary embedding on the first ``rotary_dim`` features of each query/key head (0 = none; 32).
        rel_pos_bias: add a T5 relative position bias (32 buckets, max distance 128) to the scores.
        norm_bias: LayerNorms with a bias (False: bias-free, dalle2).
        attn_out_norm: a LayerNorm after each attention's output projection.
        ff_post_norm: a LayerNorm after the SwiGLU activation (dalle2 ``normformer``).
        final_norm: ``"layernorm"`` or ``"stable"`` (tokens divided by their max before the norm).
        num_prefix_tokens: learned tokens placed before the brain tokens (the official 1 x 768 prior's
            256 null text encodings).
        learned_query: append ``num_tokens`` learned query tokens and predict from them (the official
            1 x 768 prior) instead of from the noised tokens.
    """

    def __init__(
        self,
        dim: int = 768,
        num_tokens: int = 257,
        depth: int = 6,
        heads: int = 12,
        dim_head: int = 64,
        ff_mult: int = 4,
        timesteps: int = 100,
        noise_schedule: str = "cosine",
        cond_drop_prob: float = 0.2,
        image_drop_prob: float = 0.2,
        image_embed_scale: float | None = None,
        learned_pos_emb: bool = True,
        causal: bool = False,
        dropout: float = 0.0,
        time_embedding: str = "table",
        kv_heads: int | None = None,
        null_kv: bool = False,
        cosine_sim_scale: float | None = None,
        rotary_dim: int = 0,
        rel_pos_bias: bool = False,
        norm_bias: bool = True,
        attn_out_norm: bool = False,
        ff_post_norm: bool = False,
        final_norm: str = "layernorm",
        num_prefix_tokens: int = 0,
        learned_query: bool = False,
    ) -> None:
        super().__init__()
        for name, p in (("cond_drop_prob", cond_drop_prob), ("image_drop_prob", image_drop_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"DiffusionPrior: {name} must be in [0, 1], got {p}")
        _check_structure(heads, dim_head, time_embedding, kv_heads, cosine_sim_scale, rotary_dim, final_norm,
                         num_prefix_tokens)
        self.dim, self.num_tokens = dim, num_tokens
        self.cond_drop_prob, self.image_drop_prob = cond_drop_prob, image_drop_prob
        self.image_embed_scale = float(image_embed_scale) if image_embed_scale is not None else math.sqrt(dim)
        self.schedule = NoiseSchedule(timesteps, noise_schedule)
        self.time_embed: nn.Module = (
            nn.Embedding(timesteps, dim) if time_embedding == "table" else _SinusoidalTimeMLP(dim)
        )
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5) if learned_pos_emb else None
        self.null_brain_embed = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(num_tokens, dim))
        self.prefix_tokens = nn.Parameter(torch.randn(num_prefix_tokens, dim)) if num_prefix_tokens else None
        self.learned_query = nn.Parameter(torch.randn(num_tokens, dim)) if learned_query else None
        self.transformer = PriorTransformer(
            dim, depth, heads, dim_head, ff_mult, dropout, causal, kv_heads=kv_heads, null_kv=null_kv,
            cosine_sim_scale=cosine_sim_scale, rotary_dim=rotary_dim, rel_pos_bias=rel_pos_bias,
            norm_bias=norm_bias, attn_out_norm=attn_out_norm, ff_post_norm=ff_post_norm, final_norm=final_norm,
        )

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.num_tokens, self.dim):
            raise DataFormatError(
                f"DiffusionPrior: {name} must be (batch, {self.num_tokens}, {self.dim}), got {tuple(x.shape)}"
            )

    # ----------------------------------------------------------------- network
    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        brain: torch.Tensor,
        brain_keep: torch.Tensor | None = None,
        image_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the scaled ``x0`` from noised tokens.

        The transformer reads ``[prefix (P) | brain (N) | time (1) | noised (+ pos. emb.) (N) | queries (N)]``
        (prefix and queries only with ``num_prefix_tokens`` / ``learned_query``) and the prediction is
        its last ``N`` outputs.

        Args:
            x_t: ``(B, N, dim)`` noised scaled targets.
            t: ``(B,)`` long timesteps in ``[0, T)``.
            brain: ``(B, N, dim)`` backbone tokens (condition).
            brain_keep / image_keep: optional ``(B,)`` bool masks; False replaces the brain tokens /
                noised tokens of that sample by their learned null embeddings.

        Returns:
            ``(B, N, dim)`` prediction of ``image_embed_scale * x0``.
        """
        b = x_t.shape[0]
        if brain_keep is not None:
            brain = torch.where(brain_keep.view(b, 1, 1), brain, self.null_brain_embed.to(brain.dtype)[None])
        if image_keep is not None:
            x_t = torch.where(image_keep.view(b, 1, 1), x_t, self.null_image_embed.to(x_t.dtype)[None])
        if self.pos_emb is not None:
            x_t = x_t + self.pos_emb.to(x_t.dtype)
        time_tok = self.time_embed(t).unsqueeze(1).to(x_t.dtype)
        parts = [brain.to(x_t.dtype), time_tok, x_t]
        if self.prefix_tokens is not None:
            parts.insert(0, self.prefix_tokens.to(x_t.dtype)[None].expand(b, -1, -1))
        if self.learned_query is not None:
            parts.append(self.learned_query.to(x_t.dtype)[None].expand(b, -1, -1))
        return self.transformer(torch.cat(parts, dim=1))[:, -self.num_tokens :]

    # ---------------------------------------------------------------- training
    def forward(
        self,
        brain: torch.Tensor,
        target: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training step: noise ``target``, predict it back, return ``(mse_loss, prediction)``.

        Args:
            brain: ``(B, N, dim)`` backbone tokens.
            target: ``(B, N, dim)`` target embeddings in target units (e.g. normalised CLIP tokens).
            t: optional ``(B,)`` timesteps (default uniform in ``[0, T)``).
            noise: optional ``(B, N, dim)`` Gaussian noise.
            generator: optional generator for ``t``, ``noise`` and the condition-dropout masks; numbers
                are drawn on the generator's device (pass a CUDA generator when training on a GPU:
                drawing the noise on the CPU and copying it costs more than the step itself).

        Returns:
            ``loss`` (scalar, MSE in scaled units as in the official code) and the ``x0`` prediction
            ``(B, N, dim)`` divided back to target units.
        """
        self._check(brain, "brain tokens")
        self._check(target, "target")
        if brain.shape[0] != target.shape[0]:
            raise DataFormatError(f"DiffusionPrior: brain batch {brain.shape[0]} != target batch {target.shape[0]}")
        b, device = target.shape[0], target.device
        rng = _draw_device(generator, device)
        x0 = target * self.image_embed_scale
        if t is None:
            t = torch.randint(0, self.timesteps, (b,), generator=generator, device=rng).to(device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=rng).to(device)
        x_t = self.schedule.q_sample(x0, t, noise)
        brain_keep = image_keep = None
        if self.training:
            brain_keep = (torch.rand(b, generator=generator, device=rng) >= self.cond_drop_prob).to(device)
            image_keep = (torch.rand(b, generator=generator, device=rng) >= self.image_drop_prob).to(device)
        pred = self.denoise(x_t, t, brain, brain_keep, image_keep)
        loss = F.mse_loss(pred.float(), x0.float())
        return loss, pred / self.image_embed_scale

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        brain: torch.Tensor,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        cond_scale: float = 1.0,
        return_trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """DDPM ancestral sampling conditioned on backbone tokens.

        Args:
            brain: ``(B, N, dim)`` backbone tokens.
            generator: ``torch.Generator`` for the initial noise and every step's noise, drawn on the
                generator's device (a CPU generator gives the same samples on every device); or a
                sequence of ``B`` generators, one per row: row ``i`` draws its initial ``(N, dim)`` noise
                and then each step's ``(N, dim)`` noise from ``generator[i]``, so its sample equals that
                of row ``i`` run alone (up to float rounding of the batched network).
            cond_scale: classifier-free guidance scale (1 = no guidance).
            return_trajectory: also return the list of ``x0`` predictions per step (target units).

        Returns:
            ``(B, N, dim)`` sampled embeddings in target units (divided by ``image_embed_scale``).
        """
        self._check(brain, "brain tokens")
        b, device, dtype = brain.shape[0], brain.device, brain.dtype if brain.is_floating_point() else torch.float32
        rows = None if generator is None or isinstance(generator, torch.Generator) else list(generator)
        if rows is not None and len(rows) != b:
            raise DataFormatError(f"DiffusionPrior.sample: {len(rows)} generators for {b} rows (need one per row)")
        rng = _draw_device(generator if rows is None else rows, device)

        def randn() -> torch.Tensor:
            if rows is not None:  # one generator per row, each drawing its own (N, dim)
                noise = torch.cat([torch.randn((1, *brain.shape[1:]), generator=g, dtype=torch.float32, device=rng)
                                   for g in rows])
            else:
                noise = torch.randn(brain.shape, generator=generator, dtype=torch.float32, device=rng)
            return noise.to(device=device, dtype=dtype)

        x = randn()
        trajectory: list[torch.Tensor] = []
        keep_all = torch.ones(b, dtype=torch.bool, device=device)
        drop_all = torch.zeros(b, dtype=torch.bool, device=device)
        for i in reversed(range(self.timesteps)):
            t = torch.full((b,), i, dtype=torch.long, device=device)
            x0 = self.denoise(x, t, brain, keep_all, keep_all)
            if cond_scale != 1.0:
                x0_null = self.denoise(x, t, brain, drop_all, keep_all)
                x0 = x0_null + cond_scale * (x0 - x0_null)
            if return_trajectory:
                trajectory.append(x0 / self.image_embed_scale)
            mean, logvar = self.schedule.posterior(x0, x, t)
            if i > 0:
                noise = randn()
                x = mean + (0.5 * logvar).exp() * noise
            else:
                x = mean
        out = x / self.image_embed_scale
        return (out, trajectory) if return_trajectory else out
