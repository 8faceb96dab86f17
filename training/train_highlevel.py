"""Train MindEye's high-level pipeline: BrainMLP backbone + projector + diffusion prior.

    python -m training.train_highlevel --config training/configs/demo.yaml --subject subj01 --out runs/s1
    accelerate launch --multi_gpu -m training.train_highlevel --config training/configs/nsd_257x768.yaml
    python -m training.train_highlevel --config runs/s1/config.yaml --resume      # continue a run

Objective (:func:`mindeye_core.schedule.highlevel_loss`, official code): BiMixCo for the first
``mixup_pct`` of the epochs (temperature 0.006), then SoftCLIP with the temperature cosine-annealed per
epoch from 0.004 to 0.0075; ``loss = contrastive(projector, target) + prior_weight * prior_mse(backbone,
target)``, prior weight 30 (the paper text says 0.3). AdamW (weight decay 0.01, no decay on biases and
norms) with a OneCycle learning rate stepped once per optimizer step. Ablations (paper Table 4) by config:
``loss: softclip`` (SoftCLIP only, ``mixup_pct`` forced to 0), ``loss: mse`` (MSE on the projector instead
of a contrastive loss), ``use_prior: false`` (no prior), ``use_projector: false``.

Data (official loader): each epoch visits every training image once with one of its repetitions drawn
at random (:func:`training.engine.epoch_order`); test samples are the 3-trial averages. Targets
(the encoder's embeddings of every image) are computed once and cached (:mod:`training.targets`).

Each epoch logs losses, lr, temperature, samples/s and the test retrieval top-1 among 300 (30 draws,
both directions named as in :mod:`mindeye_core.metrics.retrieval`) to ``OUT/log.csv``. The run ends by
exporting ``OUT/model/`` (``config.json`` + ``model.safetensors`` of a :class:`MindEyeHighLevel`) and
``OUT/summary.json`` (final metrics and provenance).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import load_encoder, load_subject, resolve_dataset
from training.engine import RunState, check_run_options, main_for, start_run

LOSSES = ("bimixco_softclip", "softclip", "mse")


@dataclasses.dataclass(frozen=True)
class HighLevelConfig:
    """Every option of a high-level run (the YAML keys of ``--config``)."""

    dataset: str = dataclasses.field(default="demo", metadata={"help": "canonical dataset folder, or 'demo' ($MINDEYE_DATA/demo, generated if missing)"})
    subject: str = "subj01"
    model: str = dataclasses.field(default="demo-highlevel", metadata={"help": "model variant (mindeye_core.models.list_models())"})
    model_overrides: dict = dataclasses.field(default_factory=dict, metadata={"help": "config values of the variant to change"})
    encoder: str = dataclasses.field(default="demo", metadata={"help": "'demo' (tiny CLIP hidden), 'demo-final', or an encoder kind (clip-hidden, clip-final, openclip-*)"})
    encoder_source: str = dataclasses.field(default="", metadata={"help": "hub id / folder of the encoder (kind's default when empty)"})
    epochs: int = 240
    batch_size: int = dataclasses.field(default=32, metadata={"help": "per-process batch"})
    grad_accum: int = 1
    max_lr: float = 3e-4
    warmup_epochs: float = 2.0
    mixup_pct: float = 0.33
    prior_weight: float = 30.0
    loss: str = dataclasses.field(default="bimixco_softclip", metadata={"help": f"one of {LOSSES}"})
    use_prior: bool = True
    use_projector: bool = True
    precision: str = dataclasses.field(default="auto", metadata={"help": "fp32 | bf16 | fp16 | auto"})
    device: str = dataclasses.field(default="auto", metadata={"help": "'cpu' or 'auto' (accelerate's choice)"})
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    ckpt_every: int = dataclasses.field(default=500, metadata={"help": "optimizer steps between checkpoints"})
    eval_every: int = dataclasses.field(default=1, metadata={"help": "epochs between test evaluations (the last epoch always)"})
    max_minutes: float = dataclasses.field(default=0.0, metadata={"help": "wall-clock budget: checkpoint and stop (never changes the schedule); 0 = none"})
    max_train_images: int = dataclasses.field(default=0, metadata={"help": "use only the first N training images (0 = all)"})
    out: str = dataclasses.field(default="", metadata={"help": "run folder (default $MINDEYE_CACHE/runs/highlevel-<subject>)"})
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        check_run_options(self)
        if not 0 <= self.mixup_pct <= 1:
            raise ValueError(f"mixup_pct must be in [0, 1], got {self.mixup_pct}")
        if self.prior_weight < 0 or not np.isfinite(self.prior_weight):
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")


def as_tokens(t: torch.Tensor, n_tokens: int, dim: int) -> torch.Tensor:
    """Targets ``(B, dim)`` (final embedding) or ``(B, n_tokens, dim)`` -> ``(B, n_tokens, dim)``."""
    if t.ndim == 2 and n_tokens == 1:
        return t.unsqueeze(1)
    return t


# ------------------------------------------------------------------------------------------ objective
class HighLevelObjective(nn.Module):
    """Wraps the model so that one ``forward`` computes the whole loss (DDP sees every parameter used)."""

    def __init__(self, model: nn.Module, schedule: Any, loss: str) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.loss = loss

    def forward(self, voxels: torch.Tensor, targets: torch.Tensor, plan: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        from mindeye_core.schedule import highlevel_loss

        if self.loss != "mse":
            return highlevel_loss(self.model, voxels, targets, plan, schedule=self.schedule, generator=generator)
        backbone, projector = self.model(voxels)
        contrastive = F.mse_loss(projector.float(), targets.float())
        prior = torch.zeros((), device=voxels.device)
        if getattr(self.model, "prior", None) is not None:
            prior, _ = self.model.prior_loss(backbone, targets, generator=generator)
        return {"loss": contrastive + plan.prior_weight * prior, "contrastive": contrastive, "prior": prior}


@torch.no_grad()
def embed_test(model: Any, voxels: torch.Tensor, device: torch.device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, V)`` -> (backbone, projector) tokens ``(N, T, D)`` on the CPU, float32, eval mode."""
    was = model.training
    model.eval()
    b, p = [], []
    for i in range(0, voxels.shape[0], batch_size):
        bb, pp = model(voxels[i:i + batch_size].to(device))
        b.append(bb.float().cpu())
        p.append(pp.float().cpu())
    model.train(was)
    return torch.cat(b), torch.cat(p)


def test_retrieval(projector: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Top-1 among 300 (30 draws) in both named directions, as fractions."""
    from mindeye_core.metrics.retrieval import retrieval_metrics

    r = retrieval_metrics(projector, targets, seed=seed)
    return {"test_brain_to_image": round(r.brain_to_image, 4), "test_image_to_brain": round(r.image_to_brain, 4),
            "test_candidates": r.n_candidates}


# ------------------------------------------------------------------------------------------------ main
def train(cfg: HighLevelConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run (or continue) one high-level training run; returns the summary written to ``OUT/summary.json``."""
    from mindeye_core.data import open_dataset
    from mindeye_core.models import create_model
    from mindeye_core.schedule import TrainingSchedule, build_optimizer, build_lr_scheduler

    from training.targets import dataset_fingerprint, weight_hash

    trainer = start_run(cfg, "highlevel", resume)
    out = trainer.out
    root = resolve_dataset(cfg.dataset, progress=cfg.progress)
    ds = open_dataset(root)
    encoder = load_encoder(cfg.encoder, cfg.encoder_source, device=trainer.device)
    data = load_subject(ds, cfg.subject, {"target": encoder}, max_train_images=cfg.max_train_images,
                        progress=cfg.progress and trainer.is_main)
    train_targets, test_targets = data.train_targets["target"], data.test_targets["target"]
    n_voxels = int(data.train_voxels.shape[1])
    model = create_model(cfg.model, **{**cfg.model_overrides, "n_voxels": n_voxels,
                                       "use_prior": cfg.use_prior, "use_projector": cfg.use_projector})
    n_tokens, dim = model.brain.n_tokens, model.brain.dim
    expected = (dim,) if n_tokens == 1 and len(encoder.target_shape) == 1 else (n_tokens, dim)
    encoder.check_target_shape(expected, consumer=f"model {cfg.model} ({n_tokens} x {dim} tokens)")
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    n_images = len(data.image_trials)
    steps_per_epoch = trainer.steps_per_epoch(n_images, cfg.batch_size, cfg.grad_accum)
    world = trainer.accelerator.num_processes
    schedule = TrainingSchedule(steps_per_epoch=steps_per_epoch, num_epochs=cfg.epochs,
                                mixup_pct=0.0 if cfg.loss != "bimixco_softclip" else cfg.mixup_pct,
                                prior_weight=cfg.prior_weight, max_lr=cfg.max_lr,
                                warmup_epochs=min(cfg.warmup_epochs, cfg.epochs * 0.5))
    optimizer = build_optimizer(model, schedule)
    scheduler = build_lr_scheduler(optimizer, schedule)
    objective = HighLevelObjective(model, schedule, cfg.loss)
    objective, optimizer = trainer.accelerator.prepare(objective, optimizer)
    trainer.accelerator.register_for_checkpointing(scheduler)
    start = trainer.resume() if resume else 0
    acc = trainer.accelerator

    def batches(epoch: int, skip: int):
        for rows in trainer.epoch_rows(data.image_trials, epoch, skip, batch_size=cfg.batch_size,
                                       grad_accum=cfg.grad_accum, steps_per_epoch=steps_per_epoch):
            targets = train_targets[torch.from_numpy(data.trial_image[rows])].float()
            yield data.train_voxels[torch.from_numpy(rows)].to(acc.device), as_tokens(targets, n_tokens, dim).to(acc.device)

    def step_fn(batch: Any, state: RunState) -> dict[str, torch.Tensor]:
        voxels, targets = batch
        plan = schedule.at(state.epoch, min(state.step_in_epoch, steps_per_epoch - 1))
        losses = trainer.optimize(objective, optimizer, scheduler,
                                  lambda: objective(voxels, targets, plan, trainer.generator))
        scalars = {k: v.detach().float() for k, v in losses.items() if k in ("loss", "contrastive", "prior")}
        scalars["lr"] = torch.tensor(scheduler.get_last_lr()[0])
        scalars["temperature"] = torch.tensor(plan.temperature)
        return scalars

    def end_of_epoch(epoch: int, means: dict[str, float]) -> dict[str, Any]:
        if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
            return {}
        _, proj = embed_test(acc.unwrap_model(objective).model, data.test_voxels, acc.device)
        return test_retrieval(proj, as_tokens(test_targets, n_tokens, dim), seed=cfg.seed)

    if trainer.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        trainer.print(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {n_voxels} voxels, {n_images} training images, "
                      f"{len(data.test_images)} test; {steps_per_epoch} steps/epoch x {cfg.epochs} epochs; "
                      f"device {acc.device}, precision {trainer.precision}, {world} process(es)")
    summary = trainer.run(steps_per_epoch=steps_per_epoch, num_epochs=cfg.epochs, batches=batches, step_fn=step_fn,
                          end_of_epoch=end_of_epoch if trainer.is_main else None, start_step=start,
                          desc=f"highlevel {cfg.subject}")
    acc.wait_for_everyone()
    if trainer.is_main and summary["finished"]:
        final = acc.unwrap_model(objective).model
        folder = final.save_pretrained(out / "model")
        summary["metrics"] = test_retrieval(embed_test(final, data.test_voxels, acc.device)[1],
                                            as_tokens(test_targets, n_tokens, dim), seed=cfg.seed)
        summary["provenance"] = {"dataset": ds.name, "dataset_manifest_sha256": dataset_fingerprint(root),
                                 "subject": cfg.subject, "encoder": encoder.name,
                                 "encoder_weights_sha256": weight_hash(encoder), "model_folder": str(folder),
                                 "config": dataclasses.asdict(cfg)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        trainer.print(f"exported {folder}: test top-1 among {summary['metrics']['test_candidates']}: "
                      f"brain->image {summary['metrics']['test_brain_to_image']:.3f}, "
                      f"image->brain {summary['metrics']['test_image_to_brain']:.3f}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(HighLevelConfig, train, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
