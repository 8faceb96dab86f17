"""MindEye's diffusion prior: backbone tokens -> aligned CLIP tokens, written out explicitly.

Reimplements the prior MindEye trained (a modified DALL-E 2 prior, ``VersatileDiffusionPriorNetwork``
+ ``BrainDiffusionPrior`` on top of dalle2-pytorch) without depending on dalle2-pytorch.

**Diffusion.** ``T = 100`` steps, cosine schedule (Nichol & Dhariwal, ``s = 0.008``)::

    abar(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ) / cos^2( s / (1 + s) * pi/2 ),   t = 0..T
    beta_t  = clip(1 - abar(t+1) / abar(t), 0, 0.999),   alphabar_t = prod_{k<=t} (1 - beta_k),  t = 0..T-1
    q(x_t | x_0) = N( sqrt(alphabar_t) x_0, (1 - alphabar_t) I )

The network predicts ``x_0`` directly. Targets are scaled by ``image_embed_scale = sqrt(dim)`` before
noising (DALL-E 2's convention); :meth:`DiffusionPrior.forward` and :meth:`DiffusionPrior.sample`
return embeddings divided back to target units. Loss: ``MSE(net(x_t, t, cond), scale * x_0)``.

**Network.** A non-causal (bidirectional) pre-norm transformer over the sequence
``[brain tokens (N) | time token (1) | noised target tokens (N)]``; the output is the last ``N``
tokens after a final LayerNorm and a bias-free linear layer. A learned absolute positional embedding
``(N, dim)`` is added to the noised tokens only (official ``learned_query_mode="pos_emb"``: no learned
queries). The time token is a learned embedding per step. Width/depth/heads: 768 / 6 / 12, dim_head 64
for NSD.

**Condition dropout.** During training each sample's brain tokens are replaced with a learned null
embedding ``(N, dim)`` with probability ``cond_drop_prob = 0.2``. The official code (dalle2-pytorch's
``DiffusionPrior``) also passes the same probability as ``image_cond_drop_prob``, replacing the noised
tokens by a learned null embedding: ``image_drop_prob`` reproduces that (default 0.2, as trained).

**Sampling.** DDPM ancestral sampling from ``x_T ~ N(0, I)``: at each step the posterior
``q(x_{t-1} | x_t, x0_hat)`` has mean ``c1_t x0_hat + c2_t x_t`` with ``c1_t = beta_t sqrt(alphabar_{t-1}) / (1 - alphabar_t)``,
``c2_t = (1 - alphabar_{t-1}) sqrt(1 - beta_t) / (1 - alphabar_t)`` and variance
``beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)`` (log clipped at 1e-20); no noise is added at ``t = 0``.
Classifier-free guidance ``x0 = x0_null + s (x0_cond - x0_null)`` drops only the brain condition
in the null branch (the noised tokens are kept). MindEye's reconstructions use ``cond_scale = 1``.

Deviations from the official network, by design (clarity): standard multi-head attention (separate
K/V per head, no learned null key/value) with no rotary embedding or T5 relative position bias; the
feed-forward is dalle2's SwiGLU with ``ff_mult = 4`` and bias-free layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataFormatError
from ..io import ConfigModule

__all__ = ["DiffusionPrior", "NoiseSchedule", "PriorTransformer", "cosine_beta_schedule"]


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


class _Attention(nn.Module):
    """Pre-norm multi-head self-attention (bidirectional unless ``causal``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, causal: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.causal, self.dropout = heads, dim_head, causal, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )  # (b, heads, n, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class _FeedForward(nn.Module):
    """Pre-norm SwiGLU feed-forward: ``W2 (silu(a) * g)`` with ``[a, g] = W1 LN(x)``."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        inner = dim * mult
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(self.drop(F.silu(g) * a))


class PriorTransformer(nn.Module):
    """``depth`` pre-norm blocks ``x += attn(x); x += ff(x)``, then LayerNorm and a bias-free Linear."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([_Attention(dim, heads, dim_head, dropout, causal), _FeedForward(dim, ff_mult, dropout)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.project_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
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
    ) -> None:
        super().__init__()
        for name, p in (("cond_drop_prob", cond_drop_prob), ("image_drop_prob", image_drop_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"DiffusionPrior: {name} must be in [0, 1], got {p}")
        self.dim, self.num_tokens = dim, num_tokens
        self.cond_drop_prob, self.image_drop_prob = cond_drop_prob, image_drop_prob
        self.image_embed_scale = float(image_embed_scale) if image_embed_scale is not None else math.sqrt(dim)
        self.schedule = NoiseSchedule(timesteps, noise_schedule)
        self.time_embed = nn.Embedding(timesteps, dim)
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5) if learned_pos_emb else None
        self.null_brain_embed = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(num_tokens, dim))
        self.transformer = PriorTransformer(dim, depth, heads, dim_head, ff_mult, dropout, causal)

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
        tokens = torch.cat([brain.to(x_t.dtype), time_tok, x_t], dim=1)
        return self.transformer(tokens)[:, -self.num_tokens :]

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
