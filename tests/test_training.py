"""The brain-model training package on a tiny demo world: configs, target cache, high-level / low-level /
ridge runs end to end, bit-identical resume (in process and after ``kill -9`` of a real run), NaN guard."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye_core.errors import CheckpointError
from training import engine, targets
from training.train_highlevel import HighLevelConfig, train as train_highlevel
from training.train_lowlevel import LowLevelConfig, train as train_lowlevel
from training.train_ridge import RidgeConfig, fit as fit_ridge

ROOT = Path(__file__).resolve().parents[1]
TINY_HIGH = {"hidden": 32, "n_blocks": 1, "proj_hidden": 32, "prior_depth": 1, "prior_heads": 2, "prior_dim_head": 8,
             "prior_timesteps": 10}
TINY_LOW = {"hidden": 32, "n_blocks": 1, "latent_channels": 8, "block_out_channels": [8, 8, 8], "norm_num_groups": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world

    root = tmp_path_factory.mktemp("world") / "demo"
    generate_demo_world(root, DemoWorldConfig.small(voxels=(320,)), progress=False)
    return root


@pytest.fixture(autouse=True)
def _shared_target_cache(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One MINDEYE_CACHE for the module: targets are encoded once, not in every test."""
    monkeypatch.setenv("MINDEYE_CACHE", str(world.parent / "cache"))


def high_cfg(world: Path, out: Path, **kw: object) -> HighLevelConfig:
    base = dict(dataset=str(world), subject="subj01", model="demo-highlevel", model_overrides=TINY_HIGH, epochs=2,
                batch_size=16, max_lr=1e-3, device="cpu", precision="fp32", threads=1, ckpt_every=0, eval_every=1,
                out=str(out), progress=False)
    base.update(kw)
    return HighLevelConfig(**base)  # type: ignore[arg-type]


def state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------------------- configs
def test_config_yaml_flags_and_round_trip(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\nbatch-size: 5\nmodel_overrides: {hidden: 64}\n")
    cfg, ns = engine.config_from_argv(HighLevelConfig, ["--config", str(cfg_file), "--epochs", "9", "--use-prior", "false"],
                                      extra=[("--resume", {"action": "store_true"})])
    assert (cfg.epochs, cfg.batch_size, cfg.use_prior, cfg.model_overrides) == (9, 5, False, {"hidden": 64})
    assert ns.resume is False
    engine.save_config(cfg, tmp_path / "back.yaml")
    again, _ = engine.config_from_argv(HighLevelConfig, ["--config", str(tmp_path / "back.yaml")])
    assert again == cfg
    cfg_file.write_text("epoch: 7\n")
    with pytest.raises(ValueError, match="unknown option 'epoch'.*known: .*epochs"):
        engine.config_from_argv(HighLevelConfig, ["--config", str(cfg_file)])
    cfg_file.write_text("epochs: seven\n")
    with pytest.raises(ValueError, match="epochs must be an integer"):
        engine.config_from_argv(HighLevelConfig, ["--config", str(cfg_file)])
    with pytest.raises(ValueError, match="loss must be one of"):
        HighLevelConfig(loss="l2")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        HighLevelConfig(epochs=0)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    trials = [np.array([3 * i, 3 * i + 1, 3 * i + 2]) for i in range(50)]
    a, b = engine.epoch_order(trials, 0, 3), engine.epoch_order(trials, 0, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, engine.epoch_order(trials, 0, 4))
    assert not np.array_equal(a, engine.epoch_order(trials, 1, 3))
    assert sorted(a // 3) == list(range(50))  # every image once, one of its repetitions


def test_the_schedule_never_reads_the_clock(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same config -> same weights, even when the clock runs 1000x faster (a loaded machine)."""
    train_highlevel(high_cfg(world, tmp_path / "a", epochs=1))
    real = time.perf_counter
    t0 = real()
    monkeypatch.setattr(time, "perf_counter", lambda: t0 + 1000 * (real() - t0))
    train_highlevel(high_cfg(world, tmp_path / "b", epochs=1))
    a, b = state(tmp_path / "a" / "model"), state(tmp_path / "b" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- targets
def test_target_cache_fills_once_and_refuses_another_encoder(world: Path, tmp_path: Path) -> None:
    from mindeye_core.data import open_dataset
    from mindeye_core.demo_models import load_demo_clip

    ds = open_dataset(world)
    enc = load_demo_clip("final")
    cache = targets.TargetCache.for_encoder(ds, enc, root=tmp_path)
    rows = np.array([0, 5, 7])
    got = cache.get(rows, progress=False)
    imgs = torch.from_numpy(ds.images(rows)).permute(0, 3, 1, 2).float() / 255
    want = enc.encode(imgs).detach().numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)  # stored as float16
    assert cache.missing(np.arange(10)).tolist() == [1, 2, 3, 4, 6, 8, 9]
    reopened = targets.TargetCache.for_encoder(ds, enc, root=tmp_path)
    assert reopened.missing(rows).size == 0
    meta = json.loads(reopened.meta_path.read_text())
    meta["encoder_weights_sha256"] = "0" * 64
    reopened.meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="computed for another encoder.*encoder_weights_sha256"):
        targets.TargetCache.for_encoder(ds, enc, root=tmp_path)
    other = load_demo_clip("final")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert targets.weight_hash(other) != targets.weight_hash(enc)


# --------------------------------------------------------------------------------------- high level
def test_highlevel_trains_logs_exports_and_reloads(world: Path, tmp_path: Path) -> None:
    from mindeye_core.models import MindEyeHighLevel

    out = tmp_path / "run"
    summary = train_highlevel(high_cfg(world, out))
    assert summary["finished"] and summary["final_step"] == summary["total_steps"] == 2 * (300 // 16)
    rows = engine.read_log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("loss", "contrastive", "prior", "lr", "temperature", "samples_per_s", "test_brain_to_image",
                "test_image_to_brain"):
        assert np.isfinite(rows[-1][key]), key
    assert rows[-1]["test_candidates"] == 150  # all 150 test images (fewer than 300)
    model = MindEyeHighLevel.from_pretrained(out / "model")
    from mindeye_core.data import open_dataset

    assert model.n_voxels == open_dataset(world).subject("subj01").n_voxels
    assert summary["provenance"]["encoder"].startswith("openclip-hidden-65x128")
    assert len(summary["provenance"]["encoder_weights_sha256"]) == 64
    cfg, _ = engine.config_from_argv(HighLevelConfig, ["--config", str(out / "config.yaml")])
    assert cfg == high_cfg(world, out)
    with pytest.raises(FileExistsError, match="--resume"):
        train_highlevel(high_cfg(world, out, ckpt_every=5))


def test_ablation_losses_run(world: Path, tmp_path: Path) -> None:
    for kw in ({"loss": "mse"}, {"loss": "softclip"}, {"use_prior": False}):
        s = train_highlevel(high_cfg(world, tmp_path / str(kw), epochs=1, **kw))
        assert s["finished"] and np.isfinite(s["last_epoch"]["loss"])
    assert s["last_epoch"]["prior"] == 0.0


def test_resume_after_a_crash_is_bit_identical(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = tmp_path / "full"
    train_highlevel(high_cfg(world, full, epochs=3, ckpt_every=10))
    crashed = tmp_path / "crashed"
    real = engine.Trainer.save_checkpoint

    def save_then_crash(self: engine.Trainer, step: int, extra: dict | None = None) -> Path:
        path = real(self, step, extra)
        if step == 30:
            raise RuntimeError("simulated crash after the checkpoint at step 30")
        return path

    monkeypatch.setattr(engine.Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_highlevel(high_cfg(world, crashed, epochs=3, ckpt_every=10))
    monkeypatch.setattr(engine.Trainer, "save_checkpoint", real)
    assert [p.name for p in engine.Trainer.checkpoints_in(crashed)] == ["step_00000020", "step_00000030"]
    s = train_highlevel(high_cfg(world, crashed, epochs=3, ckpt_every=10), resume=True)
    assert s["steps_run"] == 3 * 18 - 30
    a, b = state(full / "model"), state(crashed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = engine.read_log(crashed / "log.csv")
    assert [int(r["epoch"]) for r in log] == [0, 1, 2]
    with pytest.raises(ValueError, match="another config.*max_lr"):
        train_highlevel(high_cfg(world, crashed, epochs=3, ckpt_every=10, max_lr=1e-2), resume=True)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(world: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from training import train_highlevel as th

    real = th.HighLevelObjective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(th.HighLevelObjective, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(engine.TrainingDiverged, match=r"non-finite loss .* step 6; the last good checkpoint .*step_00000005"):
        train_highlevel(high_cfg(world, out, ckpt_every=5))
    ckpts = engine.Trainer.checkpoints_in(out)
    assert [p.name for p in ckpts] == ["step_00000005"] and not (out / "model").exists()


def test_kill_minus_9_then_resume_loses_at_most_one_interval(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cfg = high_cfg(world, out, epochs=40, ckpt_every=4, eval_every=40)  # evaluate once: a fast resumed run
    engine.save_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training.train_highlevel", "--config", str(tmp_path / "cfg.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(engine.Trainer.checkpoints_in(out)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "run ended early"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    newest = int(engine.Trainer.checkpoints_in(out)[-1].name.split("_")[1])
    done = subprocess.run(cmd + ["--resume", "--epochs", "3"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "another config" in done.stderr  # epochs changes the schedule: refused
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {newest}" in done.stdout + done.stderr
    assert (out / "model" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------- low level
def test_lowlevel_trains_with_the_demo_teacher(world: Path, tmp_path: Path) -> None:
    from mindeye_core.models import LowLevelModel

    out = tmp_path / "low"
    cfg = LowLevelConfig(dataset=str(world), model_overrides={**TINY_LOW, "proj_dim": 128}, epochs=2, batch_size=16,
                         max_lr=1e-3, device="cpu", precision="fp32", threads=1, ckpt_every=0, eval_every=1,
                         out=str(out), progress=False)
    s = train_lowlevel(cfg)
    assert s["finished"] and -1 <= s["metrics"]["test_pixcorr_64px"] <= 1
    rows = engine.read_log(out / "log.csv")
    assert rows[-1]["contrastive"] > 0 and np.isfinite(rows[-1]["test_pixcorr"])
    model = LowLevelModel.from_pretrained(out / "model")
    lat, feats = model.eval()(torch.zeros(2, model.n_voxels))
    assert lat.shape == (2, 4, 16, 16) and feats.shape == (2, 16, 128)
    with pytest.raises(Exception, match="latents|shape"):
        train_lowlevel(dataclasses.replace(cfg, out=str(tmp_path / "bad"), model_overrides={**TINY_LOW, "block_out_channels": [8, 8]}))


def test_patch_teacher_pools_the_patch_grid() -> None:
    from mindeye_core.demo_models import load_demo_clip
    from training.train_lowlevel import PatchPoolTeacher

    clip = load_demo_clip("hidden")
    x = torch.rand(2, 3, 64, 64)
    t = PatchPoolTeacher(clip, 4).encode(x)
    tokens = clip.encode(x)[:, 1:].reshape(2, 8, 8, 128)
    want = tokens.reshape(2, 4, 2, 4, 2, 128).mean(dim=(2, 4)).reshape(2, 16, 128)
    torch.testing.assert_close(t, want, atol=1e-5, rtol=1e-5)
    assert PatchPoolTeacher(clip, 4, shift=2, brightness=0.95).name != PatchPoolTeacher(clip, 4).name
    with pytest.raises(ValueError, match="3 x 3 grid"):
        PatchPoolTeacher(clip, 3)


# -------------------------------------------------------------------------------------------- ridge
def test_ridge_fits_every_space(world: Path, tmp_path: Path) -> None:
    from mindeye_core.models import RidgeBaseline

    s = fit_ridge(RidgeConfig(dataset=str(world), out=str(tmp_path / "ridge"), alphas=[1e2, 1e4], cv=2, progress=False))
    assert set(s["spaces"]) == {"final", "hidden", "latents"}
    assert 0 <= s["spaces"]["final"]["test_brain_to_image"] <= 1
    r = RidgeBaseline.load(tmp_path / "ridge" / "hidden")
    assert r.predict(np.zeros((3, s["n_voxels"]), np.float32)).shape == (3, 65, 128)
