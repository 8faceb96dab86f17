"""Train MindEye's low-level pipeline: voxels -> VAE latents (the blurry reconstruction).

    python -m training.train_lowlevel --config training/configs/demo_lowlevel.yaml --subject subj01 --out runs/l1
    accelerate launch --multi_gpu -m training.train_lowlevel --config training/configs/nsd_lowlevel.yaml

Objective (official code, :func:`mindeye_core.schedule.lowlevel_loss`): ``L1(pred, 0.18215 * VAE.encode(img))
+ 0.1 * soft_cont_loss(projector features, teacher(img), teacher(aug(img)))`` at temperature 0.075, AdamW +
OneCycle stepped per optimizer step.

Teachers (``teacher:`` in the config):

- ``vicregl-hub`` / ``vicregl-checkpoint``: the paper's VICRegL ConvNeXt per-location features (NSD);
  the augmented view is computed on the fly from a random crop/flip/colour jitter of each batch.
- ``demo-clip-patches`` (the demo world's documented stand-in): the shipped tiny CLIP's 8 x 8 patch tokens
  (hidden target tokens 1..64, width 128), average-pooled 2 x 2 onto the low-level model's 4 x 4 map;
  the augmented view is the same encoder on the image shifted by 2 pixels right and down (reflect padding)
  with brightness x 0.95, a fixed augmentation so that both views are cached once. Chosen because it is
  the demo world's only trained network with spatial features at that grid (the tiny VAE encoder is what
  the L1 target already uses); its effect is measured against ``teacher: none`` in ``docs/demo_brain.md``.
- ``none``: L1 only.

Each epoch logs the losses and lr; test PixCorr of the decoded blurry images (64 px, 3-trial averages) is
logged every ``eval_every`` epochs. The run ends by exporting ``OUT/model/`` (a :class:`LowLevelModel`) and
``OUT/summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mindeye_core.encoders import ImageEncoder

from training.data import load_subject, resolve_dataset
from training.engine import RunState, check_run_options, main_for, start_run

TEACHERS = ("demo-clip-patches", "vicregl-hub", "vicregl-checkpoint", "none")


class PatchPoolTeacher(ImageEncoder):
    """Per-location features from a CLIP hidden encoder's patch tokens, average-pooled to ``grid x grid``.

    ``encode((B, 3, H, W)) -> (B, grid * grid, D)``; with ``shift`` the image is first translated by
    ``shift`` pixels right and down (reflect padding) and scaled by ``brightness`` (a fixed augmented view).
    """

    def __init__(self, clip_hidden: ImageEncoder, grid: int, *, shift: int = 0, brightness: float = 1.0) -> None:
        super().__init__()
        t, d = clip_hidden.target_shape
        side = int(round((t - 1) ** 0.5))
        if side * side != t - 1 or side % grid:
            raise ValueError(f"PatchPoolTeacher: {t - 1} patch tokens do not pool onto a {grid} x {grid} grid")
        self.clip = clip_hidden
        self.side, self.grid = side, int(grid)
        self.shift, self.brightness = int(shift), float(brightness)
        self.target_shape = (self.grid * self.grid, d)
        suffix = f"-shift{self.shift}-b{self.brightness:g}" if self.shift or self.brightness != 1.0 else ""
        self.name = f"{clip_hidden.name}-patches{self.grid}x{self.grid}{suffix}"

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.shift:
            s = self.shift
            images = F.pad(images, (s, 0, s, 0), mode="reflect")[..., : images.shape[-2], : images.shape[-1]]
        if self.brightness != 1.0:
            images = (images * self.brightness).clamp(0, 1)
        tokens = self.clip.encode(images)[:, 1:]  # (B, side*side, D)
        b, _, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, self.side, self.side)
        pooled = F.adaptive_avg_pool2d(grid, self.grid)
        return pooled.flatten(2).transpose(1, 2)


@dataclasses.dataclass(frozen=True)
class LowLevelConfig:
    """Every option of a low-level run (the YAML keys of ``--config``)."""

    dataset: str = dataclasses.field(default="demo", metadata={"help": "canonical dataset folder, or 'demo'"})
    subject: str = "subj01"
    model: str = dataclasses.field(default="demo-lowlevel", metadata={"help": "model variant (LowLevelModel)"})
    model_overrides: dict = dataclasses.field(default_factory=dict)
    vae: str = dataclasses.field(default="demo", metadata={"help": "'demo' (tiny VAE) or a VAE source (hub id / folder)"})
    teacher: str = dataclasses.field(default="demo-clip-patches", metadata={"help": f"one of {TEACHERS}"})
    teacher_source: str = ""
    epochs: int = 240
    batch_size: int = 32
    grad_accum: int = 1
    max_lr: float = 3e-4
    warmup_epochs: float = 2.0
    cont_weight: float = 0.1
    cont_temperature: float = 0.075
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: int = 0
    ckpt_every: int = 500
    eval_every: int = 5
    max_minutes: float = 0.0
    max_train_images: int = 0
    out: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        check_run_options(self)
        if self.cont_weight < 0 or not self.cont_temperature > 0:
            raise ValueError("cont_weight must be >= 0 and cont_temperature > 0")


def load_vae(source: str, device: Any = "cpu") -> Any:
    """``"demo"`` -> the shipped tiny VAE; else :class:`VaeLatentEncoder.from_pretrained(source)`."""
    from mindeye_core.demo_models import load_demo_vae
    from mindeye_core.encoders import VaeLatentEncoder

    if source == "demo":
        return load_demo_vae(device=device)
    return VaeLatentEncoder.from_pretrained(source).to(device)


def load_teachers(cfg: LowLevelConfig, grid: int, device: Any) -> dict[str, ImageEncoder]:
    """``{"teacher": ..., "teacher_aug": ...}`` cached encoders (empty for ``none`` and on-the-fly VICRegL)."""
    from mindeye_core.demo_models import load_demo_clip

    if cfg.teacher == "demo-clip-patches":
        clip = load_demo_clip("hidden", root=cfg.teacher_source or None, device=device)
        return {"teacher": PatchPoolTeacher(clip, grid), "teacher_aug": PatchPoolTeacher(clip, grid, shift=2, brightness=0.95)}
    return {}


@torch.no_grad()
def decode_blurry(model: Any, vae: Any, voxels: torch.Tensor, device: Any, batch_size: int = 128) -> torch.Tensor:
    """``(N, V)`` voxels -> ``(N, 3, H, W)`` blurry images in [0, 1] (CPU), eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, voxels.shape[0], batch_size):
        lat, _ = model(voxels[i:i + batch_size].to(device))
        out.append(vae.decode(lat.float()).float().cpu())
    model.train(was)
    return torch.cat(out)


def test_pixcorr(blurry: torch.Tensor, gt_uint8: np.ndarray) -> float:
    """Mean PixCorr at the images' own resolution (64 px demo; the paper's 425 px resizing is in the bundle metrics)."""
    a = blurry.flatten(1).double()
    b = torch.from_numpy(gt_uint8).permute(0, 3, 1, 2).double().div(255).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


class LowLevelObjective(torch.nn.Module):
    """One ``forward`` computes the whole loss (DDP sees every parameter used)."""

    def __init__(self, model: torch.nn.Module, cont_weight: float, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.cont_weight, self.temperature = cont_weight, temperature

    def forward(self, voxels: torch.Tensor, latents: torch.Tensor, teacher: torch.Tensor | None,
                teacher_aug: torch.Tensor | None) -> dict[str, torch.Tensor]:
        from mindeye_core.schedule import lowlevel_loss

        return lowlevel_loss(self.model, voxels, latents, teacher, teacher_aug,
                             cont_weight=self.cont_weight, temperature=self.temperature)


def train(cfg: LowLevelConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run (or continue) one low-level training run; returns the summary written to ``OUT/summary.json``."""
    from mindeye_core.data import open_dataset
    from mindeye_core.models import create_model
    from mindeye_core.schedule import TrainingSchedule, build_lr_scheduler, build_optimizer

    from training.targets import dataset_fingerprint, weight_hash

    if cfg.teacher.startswith("vicregl"):
        raise NotImplementedError("on-the-fly VICRegL teachers need a GPU box with the VICRegL weights: "
                                  "not wired into this script yet; use teacher: none or demo-clip-patches")
    trainer = start_run(cfg, "lowlevel", resume)
    out = trainer.out
    root = resolve_dataset(cfg.dataset, progress=cfg.progress)
    ds = open_dataset(root)
    vae = load_vae(cfg.vae, device=trainer.device)
    probe = create_model(cfg.model, **{**cfg.model_overrides, "n_voxels": 1})
    teachers = load_teachers(cfg, probe.latent_size, trainer.device) if cfg.cont_weight > 0 else {}
    data = load_subject(ds, cfg.subject, {"latents": vae, **teachers}, max_train_images=cfg.max_train_images,
                        progress=cfg.progress and trainer.is_main)
    n_voxels = int(data.train_voxels.shape[1])
    model = create_model(cfg.model, **{**cfg.model_overrides, "n_voxels": n_voxels,
                                       "use_projector": bool(teachers)})
    out_shape = (model.config["out_channels"], model.output_size, model.output_size)
    vae.check_target_shape(out_shape, consumer=f"low-level model {cfg.model} (latents {out_shape})")
    if teachers:
        want = (model.latent_size ** 2, model.config["proj_dim"])
        teachers["teacher"].check_target_shape(want, consumer=f"the low-level projector {want}")
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    n_images = len(data.image_trials)
    steps_per_epoch = trainer.steps_per_epoch(n_images, cfg.batch_size, cfg.grad_accum)
    schedule = TrainingSchedule(steps_per_epoch=steps_per_epoch, num_epochs=cfg.epochs, mixup_pct=0.0,
                                max_lr=cfg.max_lr, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs * 0.5))
    optimizer = build_optimizer(model, schedule)
    scheduler = build_lr_scheduler(optimizer, schedule)
    objective = LowLevelObjective(model, cfg.cont_weight, cfg.cont_temperature)
    objective, optimizer = trainer.accelerator.prepare(objective, optimizer)
    trainer.accelerator.register_for_checkpointing(scheduler)
    start = trainer.resume() if resume else 0
    acc = trainer.accelerator
    gt_test = np.asarray(ds.images(data.test_images))

    def batches(epoch: int, skip: int):
        for rows in trainer.epoch_rows(data.image_trials, epoch, skip, batch_size=cfg.batch_size,
                                       grad_accum=cfg.grad_accum, steps_per_epoch=steps_per_epoch):
            img = torch.from_numpy(data.trial_image[rows])
            yield {"voxels": data.train_voxels[torch.from_numpy(rows)].to(acc.device),
                   **{k: v[img].float().to(acc.device) for k, v in data.train_targets.items()}}

    def step_fn(batch: dict[str, torch.Tensor], state: RunState) -> dict[str, torch.Tensor]:
        losses = trainer.optimize(objective, optimizer, scheduler, lambda: objective(
            batch["voxels"], batch["latents"], batch.get("teacher"), batch.get("teacher_aug")))
        out_ = {k: losses[k].detach().float() for k in ("loss", "l1", "contrastive")}
        out_["lr"] = torch.tensor(scheduler.get_last_lr()[0])
        return out_

    def end_of_epoch(epoch: int, means: dict[str, float]) -> dict[str, Any]:
        if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
            return {}
        blurry = decode_blurry(acc.unwrap_model(objective).model, vae, data.test_voxels, acc.device)
        return {"test_pixcorr": round(test_pixcorr(blurry, gt_test), 4)}

    if trainer.is_main:
        trainer.print(f"{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {n_voxels} voxels, "
                      f"teacher {cfg.teacher}; {steps_per_epoch} steps/epoch x {cfg.epochs} epochs; device {acc.device}")
    summary = trainer.run(steps_per_epoch=steps_per_epoch, num_epochs=cfg.epochs, batches=batches, step_fn=step_fn,
                          end_of_epoch=end_of_epoch if trainer.is_main else None, start_step=start,
                          desc=f"lowlevel {cfg.subject}")
    acc.wait_for_everyone()
    if trainer.is_main and summary["finished"]:
        final = acc.unwrap_model(objective).model
        folder = final.save_pretrained(out / "model")
        blurry = decode_blurry(final, vae, data.test_voxels, acc.device)
        summary["metrics"] = {"test_pixcorr_64px": round(test_pixcorr(blurry, gt_test), 4)}
        summary["provenance"] = {"dataset": ds.name, "dataset_manifest_sha256": dataset_fingerprint(root),
                                 "subject": cfg.subject, "vae": vae.name, "vae_weights_sha256": weight_hash(vae),
                                 "teacher": cfg.teacher, "model_folder": str(folder), "config": dataclasses.asdict(cfg)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        trainer.print(f"exported {folder}: test PixCorr (64 px) {summary['metrics']['test_pixcorr_64px']:.3f}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(LowLevelConfig, train, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
