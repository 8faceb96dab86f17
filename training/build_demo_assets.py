"""Regenerate everything the app ships for the demo world: per subject the trained high-level, low-level and
ridge models, and one results bundle of all four subjects.

    python -m training.build_demo_assets                          # all subjects, all stages, into assets/
    mindeye build-demo --subjects subj01 --stages highlevel       # one piece (resumable, idempotent)
    mindeye build-demo --status                                   # what is done, with times

Stages, per subject (each resumable and skipped when done; a training stage killed mid-way continues from
its last checkpoint):

1. ``highlevel``: :mod:`training.train_highlevel` with ``training/configs/demo.yaml``;
2. ``highlevel-1x``: the same with ``training/configs/demo_1x128.yaml`` (the 1 x 128 final-embedding model whose
   prior output is the stage-1 query of the two-stage pool retrieval, :mod:`mindeye_core.retrieval.demo`; not
   used by the reconstructions);
3. ``lowlevel``: :mod:`training.train_lowlevel` with ``training/configs/demo_lowlevel.yaml``;
4. ``ridge``: :mod:`training.train_ridge` with ``training/configs/demo_ridge.yaml`` (final, hidden, latents);
5. ``recon``: the :class:`~mindeye_core.recon.Reconstructor` on the 600 shared test images (3-trial
   averages): blurry images, best of ``n_samples`` (4) candidates at the default strength 0.15 with 10 UniPC
   steps, the finals at the other grid strengths regenerated from the picked candidate alone (its own prior
   sample and noise: a CPU-cost simplification, the paper picks best-of-N at every strength), the ridge
   baseline's retrieval, blurry and final reconstructions,
   the joint UMAP, and every offline metric per strength (:func:`evaluate_subject`);

then once: ``ceiling`` (the generator on the ground-truth embeddings: the reconstructions' upper bound) and
``bundle`` (a light results bundle of every subject whose ``recon`` is done, see ``docs/results_bundle.md``).

Work folders (checkpoints, logs, intermediate arrays) live in ``--work`` (default
``$MINDEYE_CACHE/build_demo``); only the shipped files go to ``--out`` (default ``assets/``):
``demo_brain/<subject>/{highlevel,highlevel-1x,lowlevel,ridge-final}/`` (float16 weights) and ``demo_results/``.
Everything is deterministic given the configs and seeds: the same commands give the same weights and
pixels on the same machine. Times per stage are recorded in ``demo_brain/build_report.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mindeye_core.cli import folder_arg, output_folder_arg, positive_int
from mindeye_core.paths import ASSETS_DIR, cache_dir

CONFIGS = Path(__file__).resolve().parent / "configs"
SUBJECTS = ("subj01", "subj02", "subj03", "subj04")
SUBJECT_STAGES = ("highlevel", "highlevel-1x", "lowlevel", "ridge", "recon")
STAGES = SUBJECT_STAGES + ("ceiling", "bundle")
STRENGTHS = (0.0, 0.15, 0.3, 0.5, 0.7, 1.0)
DEFAULT_STRENGTH = 0.15
SEED_BASE = 1_000_000
"""Trial ``i`` of subject ``subjNN`` uses seed ``NN * SEED_BASE + i``."""


# ------------------------------------------------------------------------------------------ bookkeeping
@dataclasses.dataclass
class Build:
    """Paths and options of one build."""

    out: Path
    work: Path
    world: Path
    threads: int = 2
    progress: bool = True
    recon_batch: int = 16
    steps: int = 10
    n_samples: int = 4
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per training stage (``highlevel``, ``highlevel-1x``, ``lowlevel``, ``ridge``), config values replacing the YAML's."""

    @property
    def brain_dir(self) -> Path:
        return self.out / "demo_brain"

    @property
    def results_dir(self) -> Path:
        return self.out / "demo_results"

    def subject_work(self, subject: str) -> Path:
        return self.work / subject

    def done_marker(self, subject: str | None, stage: str) -> Path:
        base = self.subject_work(subject) if subject else self.work
        return base / f"{stage}.done.json"

    def is_done(self, subject: str | None, stage: str) -> bool:
        return self.done_marker(subject, stage).is_file()

    def mark_done(self, subject: str | None, stage: str, info: dict[str, Any]) -> None:
        path = self.done_marker(subject, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(path)
        self._report_update(subject, stage, info)

    def _report_update(self, subject: str | None, stage: str, info: dict[str, Any]) -> None:
        """Rewrite ``demo_brain/build_report.json`` from every done marker (safe with builds running in parallel)."""
        self.brain_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"stages": {}, "machine": {"torch": torch.__version__}}
        for marker in sorted(self.work.glob("**/*.done.json")):
            rel = marker.relative_to(self.work)
            key = f"{rel.parent.as_posix()}/{marker.name[:-len('.done.json')]}" if rel.parent != Path(".") \
                else marker.name[:-len(".done.json")]
            data = json.loads(marker.read_text())
            report["stages"][key] = {k: v for k, v in data.items() if k in ("seconds", "threads", "metrics", "summary")}
        path = self.brain_dir / "build_report.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(path)


def _subject_number(subject: str) -> int:
    digits = "".join(c for c in subject if c.isdigit())
    if not digits:
        raise ValueError(f"subject names must end in a number, got {subject!r}")
    return int(digits)


def _load_yaml_config(b: Build, stage: str, cls: type, name: str, **fixed: Any) -> Any:
    from training.engine import load_config_file

    return cls(**{**load_config_file(cls, CONFIGS / name), **b.overrides.get(stage, {}), **fixed})


def _ship_model(model_cls: Any, src: Path, dst: Path) -> None:
    """Re-save an exported model folder with float16 weights (``ConfigModule.save_pretrained(dtype=...)``, with its
    ``.sha256`` sidecar), staged in ``<dst>.partial`` and swapped in by :func:`mindeye_core.staging.swap_into_place`,
    so a crash leaves the old or the new shipped folder, never a half-written one and never none."""
    from mindeye_core.staging import swap_into_place

    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model_cls.from_pretrained(src).save_pretrained(tmp, dtype=torch.float16)
    swap_into_place(tmp, dst)


# ------------------------------------------------------------------------------------------------ stages
def _train_highlevel(b: Build, subject: str, stage: str, config: str) -> dict[str, Any]:
    from training.engine import Trainer
    from training.train_highlevel import HighLevelConfig, train

    run = b.subject_work(subject) / stage
    cfg = _load_yaml_config(b, stage, HighLevelConfig, config, dataset=str(b.world), subject=subject, out=str(run),
                            threads=b.threads, progress=b.progress)
    summary = train(cfg, resume=bool(Trainer.checkpoints_in(run)))
    if not summary.get("finished"):
        raise RuntimeError(f"{subject} {stage} stopped before the end (step {summary['final_step']}); run again to resume")
    from mindeye_core.models import MindEyeHighLevel

    _ship_model(MindEyeHighLevel, run / "model", b.brain_dir / subject / stage)
    return {"metrics": summary.get("metrics", {}), "summary": {"final_step": summary["final_step"]}}


def stage_highlevel(b: Build, subject: str) -> dict[str, Any]:
    return _train_highlevel(b, subject, "highlevel", "demo.yaml")


def stage_highlevel_1x(b: Build, subject: str) -> dict[str, Any]:
    return _train_highlevel(b, subject, "highlevel-1x", "demo_1x128.yaml")


def stage_lowlevel(b: Build, subject: str) -> dict[str, Any]:
    from training.engine import Trainer
    from training.train_lowlevel import LowLevelConfig, train

    run = b.subject_work(subject) / "lowlevel"
    cfg = _load_yaml_config(b, "lowlevel", LowLevelConfig, "demo_lowlevel.yaml", dataset=str(b.world), subject=subject,
                            out=str(run), threads=b.threads, progress=b.progress)
    summary = train(cfg, resume=bool(Trainer.checkpoints_in(run)))
    if not summary.get("finished"):
        raise RuntimeError(f"{subject} lowlevel stopped before the end; run again to resume")
    from mindeye_core.models import LowLevelModel

    _ship_model(LowLevelModel, run / "model", b.brain_dir / subject / "lowlevel")
    return {"metrics": summary.get("metrics", {})}


def stage_ridge(b: Build, subject: str) -> dict[str, Any]:
    from training.train_ridge import RidgeConfig, fit

    run = b.subject_work(subject) / "ridge"
    cfg = _load_yaml_config(b, "ridge", RidgeConfig, "demo_ridge.yaml", dataset=str(b.world), subject=subject, out=str(run),
                            threads=b.threads, progress=b.progress)
    summary = fit(cfg)
    dst = b.brain_dir / subject / "ridge-final"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(run / "final", dst)
    return {"metrics": {s: {k: v for k, v in e.items() if k.startswith("test_") or k == "alpha"}
                        for s, e in summary["spaces"].items()}}


def _encoders() -> tuple[Any, Any]:
    from mindeye_core.demo_models import load_demo_clip

    return load_demo_clip("hidden"), load_demo_clip("final")


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` uint8 (the results writer's rounding)."""
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0)


def image_metrics(recon: np.ndarray, gt: np.ndarray, gt_final: torch.Tensor, clip_final: Any) -> dict[str, float]:
    """PixCorr and SSIM (paper protocol, 425 px) and tiny-CLIP 2-way identification (final embedding)."""
    from mindeye_core.metrics.evaluate import evaluate_reconstructions
    from mindeye_core.metrics.identification import two_way_identification

    res = evaluate_reconstructions(recon, gt, metrics=("pixcorr", "ssim"))
    with torch.no_grad():
        feats = clip_final.encode_batches(_float(recon), batch_size=100)
    out = dict(res.metrics)
    out["tinyclip_2way"] = float(two_way_identification(gt_final, feats))
    return {k: round(float(v), 4) for k, v in out.items()}


def stage_ceiling(b: Build) -> dict[str, Any]:
    """The generator on the ground-truth hidden embeddings of the test images (strength 0, one sample)."""
    from mindeye_core.data import open_dataset
    from mindeye_core.demo_models import load_demo_generator

    ds = open_dataset(b.world)
    test_rows = ds.subject(ds.subjects[0]).averaged("test")[1]
    gt = np.asarray(ds.images(test_rows))
    hidden, final = _encoders()
    gen = load_demo_generator()
    with torch.no_grad():
        emb = hidden.encode_batches(_float(gt), batch_size=100)
        gt_final = final.encode_batches(_float(gt), batch_size=100)
    seeds = [int(r) for r in test_rows]
    images = []
    from tqdm.auto import tqdm

    for lo in tqdm(range(0, len(seeds), b.recon_batch), desc="ceiling", disable=not b.progress):
        sl = slice(lo, lo + b.recon_batch)
        images.append(gen.generate(emb[sl], n_samples=1, steps=b.steps, seed=seeds[sl])[:, 0])
    recon = _to_uint8(torch.cat(images))
    np.save(b.work / "ceiling_images.npy", recon)
    return {"metrics": image_metrics(recon, gt, gt_final, final), "n": int(len(seeds))}


def regenerate_batched(rec: Any, prior_samples: torch.Tensor, blurry: torch.Tensor | None, seeds: Sequence[int],
                       strength: float, *, batch: int, sample_ids: torch.Tensor | None = None,
                       desc: str | None = None) -> np.ndarray:
    """``Reconstructor.regenerate`` over ``batch`` trials at a time, first candidate of each trial:
    ``prior_samples`` ``(N, 1, T, D)`` -> ``(N, H, W, 3)`` uint8 (``desc``: a tqdm bar with that label)."""
    from tqdm.auto import tqdm

    n = prior_samples.shape[0]
    parts = []
    for lo in tqdm(range(0, n, batch), desc=desc, disable=desc is None):
        sl = slice(lo, lo + batch)
        parts.append(rec.regenerate(prior_samples[sl], None if blurry is None else blurry[sl], seeds[sl], strength,
                                    sample_ids=None if sample_ids is None else sample_ids[sl]).candidates[:, 0])
    return _to_uint8(torch.cat(parts))


def evaluate_subject(rec: dict[str, np.ndarray], gt: np.ndarray, gt_final: torch.Tensor, clip_final: Any) -> dict[str, Any]:
    """Per-strength reconstruction metrics, blurry metrics, retrieval for MindEye and the ridge baseline."""
    from mindeye_core.metrics.retrieval import retrieval_metrics

    strengths = {f"{s:g}": image_metrics(rec[f"finals_{s:g}"], gt, gt_final, clip_final) for s in STRENGTHS}
    blurry = image_metrics(rec["blurry"], gt, gt_final, clip_final)
    unavailable = {m: "feature network weights are not shipped (offline demo world); the tiny-CLIP 2-way stands in for CLIP"
                   for m in ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")}
    retrieval = retrieval_metrics(rec["projector"], rec["clip_image"], seed=0).to_dict()
    ridge = {
        "strengths": {f"{DEFAULT_STRENGTH:g}": image_metrics(rec["ridge_finals"], gt, gt_final, clip_final)},
        "blurry": image_metrics(rec["ridge_blurry"], gt, gt_final, clip_final),
        "retrieval": retrieval_metrics(rec["ridge_final_pred"], rec["clip_final"], seed=0).to_dict(),
        "protocol": {"space": "final tiny-CLIP embedding (128) for retrieval; hidden tokens -> generator; latents -> VAE"},
    }
    return {"strengths": strengths, "blurry": blurry, "retrieval": retrieval, "unavailable": unavailable,
            "protocol": {"n": int(gt.shape[0]), "test_mode": "average", "tinyclip_2way": "two-way identification with "
                         "the shipped tiny CLIP's final embedding (stand-in for the paper's CLIP ViT-L/14 column)",
                         "non_default_strengths": "generated from the prior sample picked at 0.15 (one candidate)"},
            "ridge": ridge}


def stage_recon(b: Build, subject: str) -> dict[str, Any]:
    from mindeye_core.data import open_dataset
    from mindeye_core.models import RidgeBaseline
    from mindeye_core.projection import bundle_umap
    from mindeye_core.recon import Reconstructor, demo_spec

    ds = open_dataset(b.world)
    voxels16, test_rows = ds.subject(subject).averaged("test")
    # stored in the bundle as float16 (the app recomputes prior samples from them): reconstruct from exactly that
    voxels16 = voxels16.astype(np.float16)
    voxels = voxels16.astype(np.float32)
    gt = np.asarray(ds.images(test_rows))
    n = len(test_rows)
    seeds = [_subject_number(subject) * SEED_BASE + i for i in range(n)]
    brain = b.brain_dir / subject
    rec = Reconstructor.from_spec(demo_spec(brain / "highlevel", brain / "lowlevel", steps=b.steps, n_samples=b.n_samples))
    # one trial per call: the brain model, the low-level model and the prior then run on exactly the shapes the
    # app uses when it recomputes a single trial live, so the stored pixels are what the app regenerates, bit for bit
    out = rec.reconstruct_dataset(torch.from_numpy(voxels), seeds, batch_size=1,
                                  strengths=[DEFAULT_STRENGTH], progress=b.progress, return_candidates=False)
    picked = out.picked[DEFAULT_STRENGTH]
    best = out.prior_samples[torch.arange(n), picked].unsqueeze(1)  # (N, 1, T, D): the picked sample
    only_picked = picked.unsqueeze(1)  # (N, 1): regenerate the picked candidate with its own noise
    arrays: dict[str, np.ndarray] = {
        "seeds": np.asarray(seeds, np.int64), "image_index": test_rows.astype(np.int64), "voxels": voxels16,
        "blurry": _to_uint8(out.blurry), "candidate_scores": out.scores[DEFAULT_STRENGTH].numpy().astype(np.float32),
        "picked": picked.numpy().astype(np.int64), f"finals_{DEFAULT_STRENGTH:g}": _to_uint8(out.finals[DEFAULT_STRENGTH]),
        "backbone": out.backbone.reshape(n, -1).numpy(), "projector": out.projector.reshape(n, -1).numpy(),
        "prior": best[:, 0].float().reshape(n, -1).numpy(),
    }
    from tqdm.auto import tqdm

    blurry_t = torch.from_numpy(arrays["blurry"]).permute(0, 3, 1, 2)
    for s in tqdm([s for s in STRENGTHS if s != DEFAULT_STRENGTH], desc=f"{subject} strengths", disable=not b.progress):
        arrays[f"finals_{s:g}"] = regenerate_batched(rec, best, blurry_t, seeds, s, batch=b.recon_batch,
                                                     sample_ids=only_picked)
    hidden, final = _encoders()
    with torch.no_grad():
        clip_image = hidden.encode_batches(_float(gt), batch_size=100)
        gt_final = final.encode_batches(_float(gt), batch_size=100)
    arrays["clip_image"] = clip_image.reshape(n, -1).numpy()
    arrays["clip_final"] = gt_final.numpy()
    # ridge baseline: final embedding (retrieval), latents -> blurry, hidden tokens -> generator from that blurry
    ridge_dir = b.subject_work(subject) / "ridge"
    arrays["ridge_final_pred"] = np.asarray(RidgeBaseline.load(ridge_dir / "final").predict(voxels), np.float32)
    lat = torch.as_tensor(np.asarray(RidgeBaseline.load(ridge_dir / "latents").predict(voxels), np.float32))
    with torch.no_grad():
        ridge_blurry = torch.cat([rec.vae.decode(lat[i:i + 100]).float().clamp(0, 1) for i in range(0, n, 100)])
    arrays["ridge_blurry"] = _to_uint8(ridge_blurry)
    ridge_hidden = torch.as_tensor(np.asarray(RidgeBaseline.load(ridge_dir / "hidden").predict(voxels), np.float32))
    ridge_blurry_t = torch.from_numpy(arrays["ridge_blurry"]).permute(0, 3, 1, 2)
    arrays["ridge_finals"] = regenerate_batched(rec, ridge_hidden.unsqueeze(1), ridge_blurry_t, seeds, DEFAULT_STRENGTH,
                                                batch=b.recon_batch, desc=f"{subject} ridge" if b.progress else None)
    arrays["umap"] = bundle_umap({"clip_image": arrays["clip_image"], "backbone": arrays["backbone"],
                                  "projector": arrays["projector"], "prior": arrays["prior"]})
    metrics = evaluate_subject(arrays, gt, gt_final, final)
    tmp = b.subject_work(subject) / "recon.partial.npz"
    np.savez(tmp, **arrays)
    tmp.replace(b.subject_work(subject) / "recon.npz")
    (b.subject_work(subject) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"metrics": {"retrieval": {k: metrics["retrieval"][k] for k in ("brain_to_image", "image_to_brain")},
                        "default_strength": metrics["strengths"][f"{DEFAULT_STRENGTH:g}"], "blurry": metrics["blurry"],
                        "ridge_retrieval": {k: metrics["ridge"]["retrieval"][k] for k in ("brain_to_image", "image_to_brain")}}}


def stage_bundle(b: Build, subjects: Sequence[str]) -> dict[str, Any]:
    """Write the light results bundle of every subject whose ``recon`` stage is done."""
    from mindeye_core.data import open_dataset
    from mindeye_core.results import ResultsWriter, RidgeArrays

    from training.targets import dataset_fingerprint, weight_hash

    done = [s for s in subjects if b.is_done(s, "recon")]
    if not done:
        raise RuntimeError("no subject has finished its recon stage: nothing to bundle")
    ds = open_dataset(b.world)
    ceiling = json.loads(b.done_marker(None, "ceiling").read_text())["metrics"] if b.is_done(None, "ceiling") else None
    first = np.load(b.subject_work(done[0]) / "recon.npz")
    rows = first["image_index"]
    hidden, _ = _encoders()
    from mindeye_core.demo_models import load_demo_generator

    gen = load_demo_generator()
    # the stored pixels are reproducible live only at the thread count a subject's recon stage ran with
    recon_threads = {s: int(json.loads(b.done_marker(s, "recon").read_text()).get("threads", b.threads)) for s in done}
    provenance = {"seed": 0, "seed_rule": f"trial i of subjNN: NN * {SEED_BASE} + i",
                  "encoder": {"name": hidden.name, "sha256": weight_hash(hidden)},
                  "generator": {"name": "tiny-generator", "sha256": weight_hash(gen.unet)},
                  "generation": {"steps": b.steps, "guidance": gen.default_guidance, "n_candidates": b.n_samples,
                                 "torch_threads": recon_threads,
                                 "exactness": "live regeneration of one trial reproduces the stored pixels bit for bit "
                                              "with the subject's torch thread count (torch_threads) on the same kind "
                                              "of CPU"},
                  "dataset_manifest_sha256": dataset_fingerprint(b.world)}
    with ResultsWriter(b.results_dir, strengths=STRENGTHS, default_strength=DEFAULT_STRENGTH, world="demo",
                       dataset=ds.name, overwrite=True) as w:
        w.add_stimuli(rows, np.asarray(ds.images(rows)))
        for s in done:
            a = np.load(b.subject_work(s) / "recon.npz")
            metrics = json.loads((b.subject_work(s) / "metrics.json").read_text())
            if ceiling is not None:
                metrics["ceiling"] = {"strengths": {"0": ceiling}}
            models = {}
            for part in ("highlevel", "highlevel-1x", "lowlevel", "ridge-final"):
                folder = b.brain_dir / s / part
                if part == "highlevel-1x" and not (folder / "model.safetensors").is_file():
                    continue  # optional: only the pool retrieval's stage-1 query uses it
                cfg = json.loads((folder / "config.json").read_text())
                import hashlib

                models[part] = {"config": cfg, "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                                "folder": str(folder.relative_to(b.out))}
            w.add_subject(
                s, image_index=a["image_index"], seeds=a["seeds"], finals=a[f"finals_{DEFAULT_STRENGTH:g}"][None],
                stored_strengths=[DEFAULT_STRENGTH], candidates=None, candidate_scores=a["candidate_scores"],
                picked=a["picked"], prior_samples=None, brain_embeddings=a["projector"], image_embeddings=a["clip_image"],
                embedding_shape=tuple(hidden.target_shape), blurry=a["blurry"], store_embeddings=False, voxels=a["voxels"],
                # the ridge's blurry images are an intermediate (their metrics are kept): not stored, to fit the size budget
                umap=a["umap"], ridge=RidgeArrays(brain_embeddings=a["ridge_final_pred"], finals=a["ridge_finals"],
                                                  image_embeddings=a["clip_final"], space="clip_final"),
                metrics=metrics, provenance={"models": models, "torch_threads": recon_threads[s]})
        w.finalize(metadata={"built_by": "training.build_demo_assets", "subjects": done}, provenance=provenance)
    size = sum(p.stat().st_size for p in b.results_dir.rglob("*") if p.is_file())
    return {"subjects": done, "bytes": size}


# ---------------------------------------------------------------------------------------------- driver
def run(b: Build, subjects: Sequence[str], stages: Sequence[str], *, force: bool = False) -> dict[str, Any]:
    """Run the requested stages in order, skipping finished ones (unless ``force``)."""
    torch.set_num_threads(b.threads)
    b.work.mkdir(parents=True, exist_ok=True)
    fns = {"highlevel": stage_highlevel, "highlevel-1x": stage_highlevel_1x, "lowlevel": stage_lowlevel,
           "ridge": stage_ridge, "recon": stage_recon}
    done: dict[str, Any] = {}
    for subject in subjects:
        for stage in SUBJECT_STAGES:
            if stage not in stages:
                continue
            if b.is_done(subject, stage) and not force:
                print(f"[build-demo] {subject} {stage}: done (skip)")
                continue
            print(f"[build-demo] {subject} {stage} ...")
            t0 = time.perf_counter()
            info = fns[stage](b, subject)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            info["threads"] = b.threads
            b.mark_done(subject, stage, info)
            done[f"{subject}/{stage}"] = info
            print(f"[build-demo] {subject} {stage}: {info['seconds']} s {json.dumps(info.get('metrics', {}))[:300]}")
    for stage in ("ceiling", "bundle"):
        if stage not in stages or (stage == "ceiling" and b.is_done(None, stage) and not force):
            continue
        t0 = time.perf_counter()
        info = stage_ceiling(b) if stage == "ceiling" else stage_bundle(b, SUBJECTS)
        info["seconds"] = round(time.perf_counter() - t0, 1)
        info["threads"] = b.threads
        b.mark_done(None, stage, info)
        done[stage] = info
        print(f"[build-demo] {stage}: {info['seconds']} s")
    return done


def status(b: Build, subjects: Sequence[str]) -> str:
    """A Markdown table of the stages done, with seconds."""
    lines = ["| subject | " + " | ".join(SUBJECT_STAGES) + " |", "|---|" + "---:|" * len(SUBJECT_STAGES)]
    for s in subjects:
        cells = []
        for st in SUBJECT_STAGES:
            m = b.done_marker(s, st)
            cells.append(f"{json.loads(m.read_text())['seconds']:.0f} s" if m.is_file() else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for st in ("ceiling", "bundle"):
        m = b.done_marker(None, st)
        lines.append(f"\n{st}: " + (f"{json.loads(m.read_text())['seconds']:.0f} s" if m.is_file() else "not done"))
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    # folders and counts are checked when parsed (one-line errors before hours of training: mindeye_core.cli)
    ap.add_argument("--out", type=output_folder_arg, default=ASSETS_DIR, help="where the shipped files go (default: assets/)")
    ap.add_argument("--work", type=output_folder_arg, default=None, help="work folder (default $MINDEYE_CACHE/build_demo)")
    ap.add_argument("--world", type=folder_arg, default=None, help="demo world (default $MINDEYE_DATA/demo, generated if missing)")
    ap.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=list(SUBJECTS))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--recon-batch", type=positive_int, default=16, help="trials per reconstruction batch")
    ap.add_argument("--steps", type=positive_int, default=10,
                    help="generator denoising steps (default 10: keeps the 4-subject build within 3 h on 2 CPU cores; "
                         "the generator's own default is 20)")
    ap.add_argument("--n-samples", type=positive_int, default=4, help="best-of-N candidates per trial")
    ap.add_argument("--override", action="append", default=[], metavar="STAGE.KEY=VALUE",
                    help="change a training config value, e.g. highlevel.epochs=2 (YAML value; repeatable)")
    ap.add_argument("--force", action="store_true", help="redo finished stages")
    ap.add_argument("--status", action="store_true", help="print what is done and exit")
    ap.add_argument("--no-progress", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    from training.data import resolve_dataset

    import yaml

    if min(args.threads, args.recon_batch, args.steps, args.n_samples) < 1:
        raise ValueError("--threads, --recon-batch, --steps and --n-samples must be >= 1")
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not sep or not dot or stage not in ("highlevel", "highlevel-1x", "lowlevel", "ridge"):
            raise ValueError(f"--override {item!r}: expected STAGE.KEY=VALUE with STAGE highlevel, highlevel-1x, "
                             "lowlevel or ridge")
        overrides.setdefault(stage, {})[name.replace("-", "_")] = yaml.safe_load(value)
    work = args.work or cache_dir() / "build_demo"
    world = Path(args.world) if args.world else None
    b = Build(out=Path(args.out), work=Path(work), world=world or Path("."), threads=args.threads,
              progress=not args.no_progress, recon_batch=args.recon_batch, steps=args.steps,
              n_samples=args.n_samples, overrides=overrides)
    if args.status:
        print(status(b, args.subjects))
        return 0
    b.world = world if world is not None else resolve_dataset("demo", progress=b.progress)
    run(b, args.subjects, args.stages, force=args.force)
    print(status(b, args.subjects))
    return 0


def register(subparsers: Any) -> None:
    """``mindeye build-demo``."""
    p = subparsers.add_parser("build-demo", help="train the demo subjects' brain models and write the app's bundle",
                              description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
