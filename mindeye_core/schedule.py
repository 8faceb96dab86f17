"""MindEye's training recipe as reusable objects: loss schedule, optimizer, LR schedule, precision.

:class:`TrainingSchedule` answers "what happens at (epoch, step)":

- epochs ``[0, int(mixup_pct * num_epochs))``: **BiMixCo** (voxels mixed with :func:`~mindeye_core.losses.mixco`,
  loss :func:`~mindeye_core.losses.mixco_nce`) at temperature 0.006;
- remaining epochs: **SoftCLIP** (:func:`~mindeye_core.losses.soft_clip_loss`) with the temperature
  cosine-annealed per epoch from 0.004 up to 0.0075::

      tau_k = end + (start - end) / 2 * (1 + cos(pi * k / (K - 1))),   k = 0..K-1,  K = soft epochs

- total loss ``contrastive + prior_weight * prior_mse`` with ``prior_weight = 30`` (official code for the
  257 x 768 model; the paper text says 0.3; 0.03 for the 1 x 768 model).

Optimisation (official ``Train_MindEye``): AdamW with weight decay 0.01, OneCycle LR with
``max_lr = 3e-4``, ``pct_start = 2 / num_epochs`` (two warm-up epochs), ``div_factor = 25``,
``final_div_factor = 1000``, stepped once per batch, ``total_steps = num_epochs * steps_per_epoch``.

Deviation: the official parameter groups meant to exclude biases *and* LayerNorm parameters from weight
decay, but matched names like ``LayerNorm.weight`` that ``nn.Sequential`` never produces, so only
biases were excluded. :func:`param_groups` excludes biases and every normalisation layer's parameters
(the intent, and the usual practice).

In the BiMixCo phase the prior is trained on the backbone tokens of the *mixed* voxels against the
unmixed targets, exactly as the official loop does (:func:`highlevel_loss`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .losses import mixco, mixco_nce, soft_clip_loss, soft_cont_loss

__all__ = [
    "LOWLEVEL_CONT_TEMP",
    "LOWLEVEL_CONT_WEIGHT",
    "StepPlan",
    "TrainingSchedule",
    "autocast",
    "autocast_dtype",
    "build_lr_scheduler",
    "build_optimizer",
    "highlevel_loss",
    "lowlevel_loss",
    "param_groups",
]

LOWLEVEL_CONT_WEIGHT = 0.1
"""Weight of soft_cont_loss next to the L1 latent loss in the low-level pipeline (official code)."""
LOWLEVEL_CONT_TEMP = 0.075
"""Temperature of the low-level soft_cont_loss (official code)."""

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class StepPlan:
    """What to do at one (epoch, step): ``mode`` is ``"bimixco"`` or ``"softclip"``."""

    epoch: int
    step: int
    mode: str
    temperature: float
    use_mixco: bool
    prior_weight: float


@dataclass(frozen=True)
class TrainingSchedule:
    """MindEye's loss/LR schedule. All fields have the official defaults except ``steps_per_epoch``.

    Attributes:
        steps_per_epoch: optimizer steps per epoch (``num_train // batch_size``).
        num_epochs: 240.
        mixup_pct: fraction of epochs using BiMixCo (0.33).
        bimixco_temp: 0.006.
        soft_temp_start / soft_temp_end: SoftCLIP temperature range (0.004 -> 0.0075).
        prior_weight: 30.
        max_lr: 3e-4; warmup_epochs: 2; div_factor: 25; final_div_factor: 1000; weight_decay: 0.01.
        mixco_beta / mixco_prob: Beta(0.15, 0.15) mixing, each sample mixed with probability 0.5.
    """

    steps_per_epoch: int
    num_epochs: int = 240
    mixup_pct: float = 0.33
    bimixco_temp: float = 0.006
    soft_temp_start: float = 0.004
    soft_temp_end: float = 0.0075
    prior_weight: float = 30.0
    max_lr: float = 3e-4
    warmup_epochs: float = 2.0
    div_factor: float = 25.0
    final_div_factor: float = 1000.0
    weight_decay: float = 0.01
    mixco_beta: float = 0.15
    mixco_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1 or self.num_epochs < 1:
            raise ValueError(
                f"steps_per_epoch and num_epochs must be >= 1, got {self.steps_per_epoch} and {self.num_epochs}"
            )
        if not 0 <= self.mixup_pct <= 1:
            raise ValueError(f"mixup_pct must be in [0, 1], got {self.mixup_pct}")
        if not 0 < self.warmup_epochs < self.num_epochs:
            raise ValueError(f"warmup_epochs must be in (0, num_epochs={self.num_epochs}), got {self.warmup_epochs}")

    @property
    def mixup_epochs(self) -> int:
        """Number of BiMixCo epochs: ``int(mixup_pct * num_epochs)`` (79 of 240)."""
        return int(self.mixup_pct * self.num_epochs)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def soft_temperatures(self) -> list[float]:
        """SoftCLIP temperature for each soft epoch (cosine from start to end, both included)."""
        k = self.num_epochs - self.mixup_epochs
        if k == 1:
            return [self.soft_temp_start]
        s, e = self.soft_temp_start, self.soft_temp_end
        return [e + (s - e) / 2 * (1 + math.cos(math.pi * i / (k - 1))) for i in range(k)]

    def at(self, epoch: int, step: int = 0) -> StepPlan:
        """The plan for ``epoch`` (0-based) and ``step`` within it. Temperature changes per epoch."""
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch must be in [0, {self.num_epochs}), got {epoch}")
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}), got {step}")
        if epoch < self.mixup_epochs:
            return StepPlan(epoch, step, "bimixco", self.bimixco_temp, True, self.prior_weight)
        temp = self.soft_temperatures()[epoch - self.mixup_epochs]
        return StepPlan(epoch, step, "softclip", temp, False, self.prior_weight)

    def loss_mode(self, epoch: int) -> str:
        return self.at(epoch).mode

    def temperature(self, epoch: int) -> float:
        return self.at(epoch).temperature


# ---------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """AdamW groups: ``[{params: decayed, weight_decay}, {params: no_decay, weight_decay: 0}]``.

    No decay for parameters named ``bias`` and all parameters of normalisation layers (LayerNorm,
    GroupNorm, BatchNorm, InstanceNorm). Frozen parameters (``requires_grad=False``) are left out;
    shared parameters appear once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORM_TYPES) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, schedule: TrainingSchedule, **adamw_kwargs: Any) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` at ``schedule.max_lr``."""
    return torch.optim.AdamW(param_groups(model, schedule.weight_decay), lr=schedule.max_lr, **adamw_kwargs)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: TrainingSchedule) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle (cosine) over ``schedule.total_steps`` with ``pct_start = warmup_epochs / num_epochs``."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=schedule.max_lr,
        total_steps=schedule.total_steps,
        pct_start=schedule.warmup_epochs / schedule.num_epochs,
        div_factor=schedule.div_factor,
        final_div_factor=schedule.final_div_factor,
    )


# ---------------------------------------------------------------- precision

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype for ``precision`` in ``{"auto", "fp32", "bf16", "fp16"}`` (None = full fp32).

    ``"auto"``: bf16 on a CUDA device that supports it, else fp16 on CUDA, and fp32 on CPU (CPU bf16
    matmuls are only fast on recent CPUs; ask for ``"bf16"`` explicitly). fp16 on CUDA needs a
    ``torch.amp.GradScaler``.
    """
    dev = torch.device(device)
    if precision == "auto":
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {['auto', *_PRECISIONS]}, got {precision!r}")
    return _PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str = "auto") -> Iterator[torch.dtype | None]:
    """``with autocast("cuda", "bf16") as dtype:`` mixed precision (a no-op for fp32); yields the dtype."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        yield None
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield dtype


# ---------------------------------------------------------------- objectives


def highlevel_loss(
    model: nn.Module,
    voxels: torch.Tensor,
    targets: torch.Tensor,
    plan: StepPlan,
    *,
    schedule: TrainingSchedule | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One batch of MindEye's high-level objective for a :class:`~mindeye_core.models.MindEyeHighLevel`.

    ``loss = contrastive(projector(x'), t) + prior_weight * prior_mse(backbone(x'), t)`` where ``x'``
    are the MixCo-mixed voxels in the BiMixCo phase (else ``x``) and ``t`` the (unmixed) targets.

    Args:
        model: a MindEyeHighLevel (its ``prior`` may be None: then the prior term is 0).
        voxels: ``(B, n_voxels)``; targets: ``(B, n_tokens, dim)``.
        plan: ``schedule.at(epoch, step)``.
        schedule: for the MixCo parameters (defaults: Beta(0.15, 0.15), probability 0.5).
        generator: optional generator for MixCo and the prior's noise.

    Returns:
        dict with ``loss``, ``contrastive``, ``prior`` (scalars) and ``backbone``/``projector`` tokens.
    """
    beta = schedule.mixco_beta if schedule is not None else 0.15
    prob = schedule.mixco_prob if schedule is not None else 0.5
    perm = betas = None
    if plan.use_mixco:
        voxels, perm, betas, _ = mixco(voxels, beta=beta, s_thresh=prob, generator=generator)
    backbone, projector = model(voxels)
    if plan.mode == "bimixco":
        contrastive = mixco_nce(projector, targets, plan.temperature, perm=perm, betas=betas)
    else:
        contrastive = soft_clip_loss(projector, targets, plan.temperature)
    prior_mse = torch.zeros((), device=contrastive.device)
    if getattr(model, "prior", None) is not None:
        prior_mse, _ = model.prior_loss(backbone, targets, generator=generator)
    return {
        "loss": contrastive + plan.prior_weight * prior_mse,
        "contrastive": contrastive,
        "prior": prior_mse,
        "backbone": backbone,
        "projector": projector,
    }


def lowlevel_loss(
    model: nn.Module,
    voxels: torch.Tensor,
    latents: torch.Tensor,
    teacher: torch.Tensor | None = None,
    teacher_aug: torch.Tensor | None = None,
    *,
    cont_weight: float = LOWLEVEL_CONT_WEIGHT,
    temperature: float = LOWLEVEL_CONT_TEMP,
) -> dict[str, torch.Tensor]:
    """Low-level objective: ``L1(pred_latents, latents) + cont_weight * soft_cont_loss(feats, teacher, teacher_aug)``.

    Args:
        model: a :class:`~mindeye_core.models.LowLevelModel`.
        voxels: ``(B, n_voxels)``; latents: ``(B, 4, 64, 64)`` scaled VAE latents.
        teacher / teacher_aug: ``(B, S*S, proj_dim)`` per-location teacher features of the image and of
            an augmented view (omit both to train with L1 only).
    """
    pred, feats = model(voxels)
    if pred.shape != latents.shape:
        raise ValueError(f"latent target shape {tuple(latents.shape)} does not match the model output {tuple(pred.shape)}")
    l1 = (pred - latents).abs().mean()
    cont = torch.zeros((), device=l1.device)
    if teacher is not None:
        if feats is None or teacher_aug is None:
            raise ValueError("soft_cont_loss needs the model's projector and both teacher and teacher_aug features")
        cont = soft_cont_loss(feats, teacher, teacher_aug, temperature)
    return {"loss": l1 + cont_weight * cont, "l1": l1, "contrastive": cont, "latents": pred}
