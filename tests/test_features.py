"""Feature extractors: tiny random networks exercise every path offline; pretrained loading never hits the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from mindeye_core.metrics.evaluate import RECON_METRICS, evaluate_reconstructions
from mindeye_core.metrics.features import (
    CLIP_MEAN,
    CLIP_STD,
    EXTRACTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    FeatureUnavailable,
    build_extractor,
    load_extractors,
    weights_url,
)


@pytest.fixture(autouse=True)
def _torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def tiny() -> dict[str, FeatureExtractor]:
    ex, unavailable = load_extractors(None, "tiny")
    assert unavailable == {}
    return ex


def _imgs(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3)).astype(np.float32)


def test_registry_matches_the_official_protocol() -> None:
    assert EXTRACTORS["alexnet"].outputs == {"alexnet2": "features.4", "alexnet5": "features.11"}
    assert {k: v.resize for k, v in EXTRACTORS.items()} == {"alexnet": 256, "inception": 342, "clip": 224, "effnet": 255, "swav": 224}
    assert EXTRACTORS["clip"].mean == CLIP_MEAN and EXTRACTORS["clip"].std == CLIP_STD
    assert all(EXTRACTORS[k].mean == IMAGENET_MEAN for k in ("alexnet", "inception", "effnet", "swav"))
    assert EXTRACTORS["inception"].outputs == {"inception": "avgpool"}


def test_every_tiny_extractor_runs(tiny: dict[str, FeatureExtractor]) -> None:
    imgs = _imgs(3)
    for name, ex in tiny.items():
        feats = ex(imgs, batch_size=2)
        assert set(feats) == set(EXTRACTORS[name].outputs)
        for f in feats.values():
            assert f.ndim == 2 and f.shape[0] == 3 and np.isfinite(f).all()
        again = ex(torch.from_numpy(imgs).permute(0, 3, 1, 2))
        for k in feats:
            np.testing.assert_allclose(feats[k], again[k], rtol=1e-5, atol=1e-6)


def test_preprocess_resizes_and_normalises(tiny: dict[str, FeatureExtractor]) -> None:
    ex = tiny["inception"]
    x = torch.rand(2, 3, 100, 100)
    out = ex.preprocess(x)
    assert out.shape == (2, 3, 342, 342)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    back = out * std + mean
    ref = torch.nn.functional.interpolate(x, size=(342, 342), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(back, ref, atol=1e-5, rtol=1e-5)
    # non-square: shorter side then centre crop
    assert ex.preprocess(torch.rand(1, 3, 80, 120)).shape == (1, 3, 342, 342)
    # paper parity: 256 x 256 first, no antialias
    parity = ex.preprocess(x, antialias=False, pre_resize=256)
    assert not torch.allclose(parity, out)


def test_tiny_alexnet_node_names_match_real_alexnet() -> None:
    real = models.alexnet(weights=None)
    assert isinstance(real.features[4], torch.nn.ReLU) and isinstance(real.features[11], torch.nn.ReLU)
    assert isinstance(real.features[3], torch.nn.Conv2d) and isinstance(real.features[10], torch.nn.Conv2d)
    ex = build_extractor("alexnet", "random")  # the real architecture, random weights
    feats = ex(_imgs(2))
    assert feats["alexnet2"].shape == (2, 192 * 31 * 31)
    assert feats["alexnet5"].shape == (2, 256 * 15 * 15)


def test_pretrained_missing_weights_are_unavailable_without_network(_torch_home: Path) -> None:
    with pytest.raises(FeatureUnavailable, match=r"weights not cached: expected .*alexnet-owt-7be5be79\.pth"):
        build_extractor("alexnet", "pretrained")
    # even when downloads are allowed, the sandbox's blocked network gives "unavailable", not a crash
    with pytest.raises(FeatureUnavailable, match="could not download https://download.pytorch.org/models/alexnet"):
        build_extractor("alexnet", "pretrained", allow_download=True)
    with pytest.raises(FeatureUnavailable, match="CLIP ViT-L/14 weights not available"):
        build_extractor("clip", "pretrained", allow_download=True)
    available, unavailable = load_extractors(["alexnet", "clip"], "pretrained")
    assert available == {}
    assert set(unavailable) == {"alexnet2", "alexnet5", "clip"}
    assert "allow_download" in unavailable["clip"]


def test_pretrained_weights_load_from_torch_cache(_torch_home: Path) -> None:
    torch.manual_seed(0)
    net = models.efficientnet_b1(weights=None).eval()
    ckpt = _torch_home / "hub" / "checkpoints" / Path(weights_url("effnet")).name
    ckpt.parent.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt)
    ex = build_extractor("effnet", "pretrained")
    assert "EfficientNet-B1" in ex.source
    imgs = _imgs(2, 32)
    got = ex(imgs)["effnet"]
    ref_model = create_feature_extractor(net, return_nodes=["avgpool"])
    with torch.no_grad():
        ref = ref_model(ex.preprocess(torch.from_numpy(imgs).permute(0, 3, 1, 2)))["avgpool"].flatten(1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert got.shape == (2, 1280)


def test_plugged_in_extractor_and_evaluation(tiny: dict[str, FeatureExtractor]) -> None:
    rng = np.random.default_rng(1)
    gts = _imgs(12, 48, 2)
    proj = torch.from_numpy(rng.standard_normal((3 * 8 * 8, 16)).astype(np.float32))

    def tiny_clip(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ proj

    clip = FeatureExtractor.from_callable("clip", tiny_clip, resize=32)
    extractors = {**tiny, "clip": clip}
    perfect = evaluate_reconstructions(gts, gts, extractors=extractors)
    assert set(perfect.metrics) == set(RECON_METRICS)
    for m in ("alexnet2", "alexnet5", "inception", "clip"):
        assert perfect.metrics[m] == 1.0
    for m in ("effnet", "swav"):
        assert perfect.metrics[m] == pytest.approx(0.0, abs=1e-5)
    assert perfect.metrics["pixcorr"] == pytest.approx(1.0) and perfect.metrics["ssim"] == pytest.approx(1.0)
    assert perfect.protocol["sources"]["clip"] == "user-supplied"
    noisy = evaluate_reconstructions(np.clip(gts + 0.3 * rng.standard_normal(gts.shape), 0, 1).astype(np.float32), gts,
                                     extractors=extractors, metrics=("pixcorr", "clip"))
    assert noisy.metrics["pixcorr"] < 0.99
    assert set(noisy.metrics) == {"pixcorr", "clip"}
    # no extractor given -> reported as unavailable with the reason, never a number
    partial = evaluate_reconstructions(gts, gts, extractors={}, unavailable={"swav": "weights not cached"})
    assert set(partial.metrics) == {"pixcorr", "ssim"}
    assert partial.unavailable["swav"] == "weights not cached"
    assert "no 'alexnet' feature extractor" in partial.unavailable["alexnet2"]


@pytest.mark.slow
def test_full_size_random_architectures() -> None:
    for name in EXTRACTORS:
        ex = build_extractor(name, "random")
        feats = ex(_imgs(2, 64))
        dims = {k: v.shape[1] for k, v in feats.items()}
        expected = {"alexnet": {"alexnet2": 184512, "alexnet5": 57600}, "inception": {"inception": 2048},
                    "clip": {"clip": 768}, "effnet": {"effnet": 1280}, "swav": {"swav": 2048}}[name]
        assert dims == expected


def test_tiny_extractors_are_deterministic() -> None:
    imgs = _imgs(2, 40, 3)
    state = torch.get_rng_state()
    a = build_extractor("inception", "tiny")(imgs)["inception"]
    b = build_extractor("inception", "tiny")(imgs)["inception"]
    np.testing.assert_array_equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched


def test_swav_checkpoint_with_module_prefix(_torch_home: Path) -> None:
    torch.manual_seed(1)
    net = models.resnet50(weights=None).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2, 2)  # SwAV head: ignored like torch.hub's loader
    ckpt = _torch_home / "hub" / "checkpoints" / "swav_800ep_pretrain.pth.tar"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)
    ex = build_extractor("swav", "pretrained")
    imgs = _imgs(2, 32, 4)
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        ref = net(ex.preprocess(torch.from_numpy(imgs).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ex(imgs)["swav"], ref, rtol=1e-4, atol=1e-5)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureUnavailable, match="cannot read cached weights"):
        build_extractor("swav", "pretrained")


def test_demo_clip_extractor_from_local_folder(tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file

    from mindeye_core.errors import CheckpointError
    from mindeye_core.metrics.features import demo_clip_extractor, tiny_open_clip

    with pytest.raises(CheckpointError, match="missing demo model 'tiny-clip'"):
        demo_clip_extractor(root=tmp_path / "none")
    folder = tmp_path / "models" / "tiny-clip"
    folder.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = tiny_open_clip(image_size=56).eval()
    cfg = {"model_cfg": {"embed_dim": 32, "quick_gelu": True,
                         "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 14, "image_size": 56},
                         "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    ex = demo_clip_extractor(root=tmp_path / "models")
    assert ex.resize == 56 and ex.outputs == {"clip": None}
    imgs = _imgs(2, 64, 5)
    with torch.no_grad():
        ref = net.encode_image(ex.preprocess(torch.from_numpy(imgs).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ex(imgs)["clip"], ref, rtol=1e-4, atol=1e-5)
