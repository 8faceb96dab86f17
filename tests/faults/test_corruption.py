"""Silent corruption is detected: HDF5 datasets carry fletcher32 checksums (a damaged chunk raises
DataFormatError naming the file and the dataset) and weight files a sha256 sidecar (CheckpointError naming the
file); a missing sidecar (older or foreign files) loads, and trusted fast paths can opt out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import flip_byte, flip_chunk_byte, write_dataset
from test_results import _write as write_bundle

from mindeye_core.data.format import open_dataset
from mindeye_core.errors import CheckpointError, DataFormatError
from mindeye_core.io import file_sha256, sha256_path, verify_checksums
from mindeye_core.models import BrainMLP
from mindeye_core.models.ridge import RidgeBaseline
from mindeye_core.results import open_results


def _brain(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return BrainMLP(n_voxels=20, hidden=12, n_blocks=1, n_tokens=3, dim=8, proj_hidden=10).save_pretrained(tmp_path / "m")


def test_damaged_betas_chunk_names_file_and_dataset(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    flip_chunk_byte(root / "s1.h5", "betas")
    subject = open_dataset(root).subject("s1")
    with pytest.raises(DataFormatError, match=r"corrupt data in .*s1\.h5, dataset '/betas'"):
        subject.betas(slice(None))


def test_damaged_image_chunk_names_file_and_dataset(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    flip_chunk_byte(root / "images.h5", "images")
    with pytest.raises(DataFormatError, match=r"images\.h5, dataset '/images'"):
        open_dataset(root).images(0)


def test_damaged_results_chunk_names_file_and_dataset(tmp_path: Path) -> None:
    root = write_bundle(tmp_path / "bundle")
    flip_chunk_byte(root / "subj01.h5", "candidate_scores")
    subject = open_results(root, validate_arrays=False).subject("subj01")
    with pytest.raises(DataFormatError, match=r"subj01\.h5, dataset 'candidate_scores'"):
        subject.candidate_scores()


def test_damaged_weights_raise_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    folder = _brain(tmp_path)
    weights = folder / "model.safetensors"
    flip_byte(weights, weights.stat().st_size - 5)  # inside the tensor data: safetensors itself would not notice
    with pytest.raises(CheckpointError, match=r"corrupt weights file .*model\.safetensors: its sha256"):
        BrainMLP.from_pretrained(folder)


def test_sidecar_is_sha256sum_format(tmp_path: Path) -> None:
    folder = _brain(tmp_path)
    text = sha256_path(folder / "model.safetensors").read_text()
    assert text == f"{file_sha256(folder / 'model.safetensors')}  model.safetensors\n"
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "model.safetensors.sha256"], cwd=folder, check=True, capture_output=True)


def test_missing_sidecar_loads_and_opt_out_skips_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _brain(tmp_path)
    sha256_path(folder / "model.safetensors").unlink()  # a checkpoint written before sidecars, or by someone else
    BrainMLP.from_pretrained(folder)
    folder2 = _brain(tmp_path / "b")
    w = folder2 / "model.safetensors"
    flip_byte(w, w.stat().st_size - 5)
    BrainMLP.from_pretrained(folder2, verify=False)  # trusted fast path
    monkeypatch.setenv("MINDEYE_VERIFY_WEIGHTS", "0")
    BrainMLP.from_pretrained(folder2)


def test_damaged_ridge_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ridge = RidgeBaseline(alphas=[1.0]).fit(torch.from_numpy(rng.standard_normal((12, 5)).astype(np.float32)),
                                           torch.from_numpy(rng.standard_normal((12, 3)).astype(np.float32)))
    folder = ridge.save(tmp_path / "ridge")
    w = folder / "model.safetensors"
    flip_byte(w, w.stat().st_size - 3)
    with pytest.raises(CheckpointError, match=r"ridge.*model\.safetensors"):
        RidgeBaseline.load(folder)


def test_damaged_generator_unet_weights(tmp_path: Path) -> None:
    from tiny_parts import tiny_unet, tiny_vae, unipc

    from mindeye_core.generators import UNetVariationGenerator

    folder = UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=17).save_pretrained(tmp_path / "gen")
    w = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert sha256_path(w).is_file() and verify_checksums(folder) == 2
    flip_byte(w, w.stat().st_size - 7)
    with pytest.raises(CheckpointError, match=r"unet/diffusion_pytorch_model\.safetensors"):
        UNetVariationGenerator.from_pretrained(folder)
