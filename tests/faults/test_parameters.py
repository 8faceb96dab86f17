"""Degenerate parameters are refused at the API boundary with a message naming the parameter, instead of
returning garbage images or silently cast values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mindeye_core.data.format import DatasetWriter
from mindeye_core.errors import DataFormatError
from mindeye_core.metrics.retrieval import retrieval_metrics_from_similarity
from mindeye_core.models import BrainMLP
from mindeye_core.recon import demo_spec


@pytest.fixture(scope="module")
def generator() -> Any:
    from tiny_parts import tiny_unet, tiny_vae, unipc

    from mindeye_core.generators import UNetVariationGenerator

    return UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=17)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
    ({"steps": 2.5}, r"steps must be an integer >= 1, got 2\.5"),
    ({"guidance": float("nan")}, r"guidance must be a finite number, got nan"),
    ({"guidance": float("inf")}, r"guidance must be a finite number, got inf"),
    ({"n_samples": 0}, r"n_samples must be an integer >= 1, got 0"),
    ({"strength": float("nan")}, r"img2img strength must be a finite number"),
], ids=["steps0", "steps_fraction", "guidance_nan", "guidance_inf", "n_samples0", "strength_nan"])
def test_generator_refuses_degenerate_sampling(generator: Any, kwargs: dict, message: str) -> None:
    emb = torch.zeros(1, 17, 24)
    with pytest.raises(ValueError, match=message):
        generator.generate(emb, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, "n_samples must be an integer >= 1"),
    ({"guidance": float("nan")}, "guidance must be a finite number"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"prior_cond_scale": float("inf")}, "prior_cond_scale must be a finite number"),
], ids=["n_samples0", "guidance_nan", "steps0", "prior_scale_inf"])
def test_reconstruction_spec_refuses_degenerate_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        demo_spec(tmp_path / "brain", **kwargs)


def test_model_refuses_nan_voxels() -> None:
    model = BrainMLP(n_voxels=6, hidden=8, n_blocks=1, n_tokens=2, dim=4, proj_hidden=4).eval()
    voxels = torch.zeros(3, 6)
    voxels[1, 2] = float("nan")
    with pytest.raises(DataFormatError, match=r"BrainMLP: voxels contain NaN or infinite values \(rows \[1\]\)"):
        model(voxels)


@pytest.mark.parametrize("column, values, message", [
    ("split", [0.0, float("nan")], r"split contains NaN/inf \(first in trial 1\)"),
    ("split", [0, 2], r"split codes must be 0 \(train\) or 1 \(test\), got 2 in trial 1"),
    ("repetition", [0, 40000], r"repetition must be in \[0, 32767\], got 40000 in trial 1"),
    ("repetition", [0, 1.5], r"repetition must hold integers, got 1\.5 in trial 1"),
    ("image_index", [0, -1], r"negative image index\), got -1 in trial 1"),
    ("session", [0, float("inf")], r"session contains NaN/inf"),
], ids=["split_nan", "split_2", "repetition_overflow", "repetition_fraction", "index_negative", "session_inf"])
def test_dataset_append_never_casts_silently(tmp_path: Path, column: str, values: list, message: str) -> None:
    cols: dict[str, Any] = {"image_index": [0, 1], "split": [0, 0], "repetition": [0, 0], "session": [0, 0]}
    cols[column] = np.asarray(values)
    with DatasetWriter(tmp_path / "ds", name="d", world="t") as w:
        s = w.subject("s1", n_voxels=2)
        with pytest.raises(DataFormatError, match=message):
            s.append(np.zeros((2, 2)), **cols)
        assert s.n_trials == 0 and w._subjects["s1"][0]["betas"].shape == (0, 2)  # nothing was written
        w.abort()


def test_retrieval_metric_refuses_nan_similarity() -> None:
    sim = np.eye(4, dtype=np.float32)
    sim[0, 1] = np.nan
    with pytest.raises(DataFormatError, match="similarity matrix contains NaN/inf"):
        retrieval_metrics_from_similarity(sim)
