"""Fit the Ozcelik-style ridge baseline (:class:`~mindeye_core.models.RidgeBaseline`) on MindEye's data.

    python -m training.train_ridge --dataset demo --subject subj01 --out runs/ridge-subj01
    python -m training.train_ridge --config training/configs/demo_ridge.yaml

The same training trials (every repetition its own sample; cross-validation folds grouped by image so
that the repetitions of one image never straddle a fold) and the same target spaces as MindEye, so that
every table carries a baseline computed here rather than quoted:

- ``final``: the final CLIP embedding (demo: tiny CLIP, 128-d; NSD: CLIP ViT-L/14, 768-d), used for the
  baseline's retrieval numbers (as the published ridge rows);
- ``hidden``: the CLIP hidden tokens the generator takes (demo 65 x 128, NSD 257 x 768), fed to the same
  generator for the baseline's reconstructions;
- ``latents``: the VAE latents, decoded to the baseline's blurry images (its low-level row).

Writes ``OUT/<space>/`` (``config.json`` + ``model.safetensors``) per space and ``OUT/summary.json``
(chosen alpha, CV error, test retrieval top-1 among 300 for ``final``, wall time per space).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from training.data import load_encoder, load_subject, resolve_dataset
from training.engine import config_from_argv, save_config

SPACES = ("final", "hidden", "latents")


@dataclasses.dataclass(frozen=True)
class RidgeConfig:
    """Options of a ridge run (the YAML keys of ``--config``)."""

    dataset: str = "demo"
    subject: str = "subj01"
    spaces: list = dataclasses.field(default_factory=lambda: list(SPACES), metadata={"help": f"subset of {SPACES}"})
    hidden_encoder: str = dataclasses.field(default="demo", metadata={"help": "encoder of the hidden space ('demo' or a kind)"})
    final_encoder: str = dataclasses.field(default="demo-final", metadata={"help": "encoder of the final space"})
    encoder_source: str = ""
    vae: str = dataclasses.field(default="demo", metadata={"help": "'demo' or a VAE source"})
    alphas: list = dataclasses.field(default_factory=lambda: [10.0 ** p for p in range(0, 7)])
    cv: int = 5
    dtype: str = "float32"
    seed: int = 0
    threads: int = 0
    out: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.spaces if s not in SPACES]
        if bad or not self.spaces:
            raise ValueError(f"spaces must be a non-empty subset of {SPACES}, got {self.spaces}")
        if any(not float(a) > 0 for a in self.alphas):
            raise ValueError(f"alphas must be positive, got {self.alphas}")


def space_encoder(cfg: RidgeConfig, space: str) -> Any:
    from training.train_lowlevel import load_vae

    if space == "latents":
        return load_vae(cfg.vae)
    return load_encoder(cfg.hidden_encoder if space == "hidden" else cfg.final_encoder, cfg.encoder_source)


def fit(cfg: RidgeConfig) -> dict[str, Any]:
    """Fit one ridge model per space; returns the summary written to ``OUT/summary.json``."""
    from mindeye_core.data import open_dataset
    from mindeye_core.metrics.retrieval import retrieval_metrics
    from mindeye_core.models import RidgeBaseline

    from training.data import default_out
    from training.targets import dataset_fingerprint, weight_hash

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out) if cfg.out else default_out("ridge", cfg.subject)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    root = resolve_dataset(cfg.dataset, progress=cfg.progress)
    ds = open_dataset(root)
    encoders = {s: space_encoder(cfg, s) for s in cfg.spaces}
    data = load_subject(ds, cfg.subject, encoders, progress=cfg.progress)
    groups = data.trial_image
    summary: dict[str, Any] = {"subject": cfg.subject, "n_train_trials": int(data.train_voxels.shape[0]),
                               "n_voxels": int(data.train_voxels.shape[1]), "spaces": {}}
    for space in cfg.spaces:
        t0 = time.perf_counter()
        y = data.train_targets[space][torch.from_numpy(groups)].float()
        ridge = RidgeBaseline(alphas=tuple(float(a) for a in cfg.alphas), cv=cfg.cv, dtype=cfg.dtype)
        ridge.fit(data.train_voxels, y, groups=groups)
        ridge.save(out / space)
        entry: dict[str, Any] = {"alpha": float(ridge.alpha_), "cv_mse": [float(v) for v in ridge.cv_mse_],
                                 "seconds": round(time.perf_counter() - t0, 1), "encoder": encoders[space].name,
                                 "encoder_weights_sha256": weight_hash(encoders[space])}
        if space in ("final", "hidden"):
            pred = torch.as_tensor(ridge.predict(data.test_voxels))
            r = retrieval_metrics(pred, data.test_targets[space], seed=cfg.seed)
            entry["test_brain_to_image"] = round(r.brain_to_image, 4)
            entry["test_image_to_brain"] = round(r.image_to_brain, 4)
        summary["spaces"][space] = entry
        print(f"ridge {cfg.subject} {space}: alpha {ridge.alpha_:g}, {entry['seconds']} s"
              + (f", test top-1 among 300 b->i {entry['test_brain_to_image']:.3f} i->b {entry['test_image_to_brain']:.3f}"
                 if "test_brain_to_image" in entry else ""))
    summary["provenance"] = {"dataset": ds.name, "dataset_manifest_sha256": dataset_fingerprint(root),
                             "config": dataclasses.asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    cfg, _ = config_from_argv(RidgeConfig, argv, description=__doc__.splitlines()[0])
    fit(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
