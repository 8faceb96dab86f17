"""Image encoders: tiny random-weight components saved to tmp folders and loaded back through the
real loading code (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindeye_core.encoders import (
    ClipVisionEncoder,
    ConvStem,
    ImageEncoder,
    OpenClipEncoder,
    VaeLatentEncoder,
    check_images,
    build_open_clip_model,
    clip_preprocess,
    convnext_standin,
    load_open_clip_folder,
    load_vicregl_checkpoint,
    load_vicregl_hub,
    normalize_by_first_token,
    save_open_clip_folder,
)
from mindeye_core.encoders.vicregl import MapsProjector, _timm_convnext
from mindeye_core.errors import CheckpointError, ConfigMismatchError, DataFormatError
from tiny_parts import tiny_open_clip_cfg, tiny_vae

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- fixtures
def tiny_clip_vision(image_size: int = 32, patch: int = 8, proj: int = 24):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch, projection_dim=proj)
    return CLIPVisionModelWithProjection(cfg).eval()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "clip-tiny"
    tiny_clip_vision().save_pretrained(folder)
    return folder


def images(b: int = 2, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(2, 3, 8, 8) * 255, r"\[0, 1\].*255"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, r"\[0, 1\].*\[-1, 1\]"),
        (torch.rand(3, 8, 8), r"shape \(B, 3, H, W\)"),
        (torch.rand(2, 1, 8, 8), r"shape \(B, 3, H, W\)"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), "floating point"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ],
)
def test_check_images_rejects(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        check_images(bad)


def test_check_images_size_and_accepts_valid() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert check_images(x, size=8) is x
    with pytest.raises(DataFormatError, match="must be 16x16 pixels, got 8x8"):
        check_images(x, size=16)


# -------------------------------------------------------------------------------------- CLIP
def test_clip_hidden_target_matches_manual_computation(clip_folder: Path) -> None:
    enc = ClipVisionEncoder.from_pretrained(clip_folder, target="hidden")
    assert enc.target_shape == (17, 24)  # (32 / 8)**2 + 1 tokens, projection 24
    x = images()
    out = enc.encode(x)
    assert out.shape == (2, 17, 24)
    # token 0 has unit norm after the division
    torch.testing.assert_close(out[:, 0].norm(dim=-1), torch.ones(2))
    # manual reference: resize 32 bicubic (shorter side) -> centre crop -> CLIP mean/std -> model
    ref_model = tiny_clip_vision()
    import torchvision.transforms as T

    pre = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC, antialias=False), T.CenterCrop(32),
                     T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    with torch.no_grad():
        last = ref_model(pixel_values=pre(x)).last_hidden_state
        h = ref_model.visual_projection(ref_model.vision_model.post_layernorm(last))
        expected = h / torch.linalg.vector_norm(h[:, 0], dim=-1)[:, None, None]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_clip_final_target_is_token0_of_unnormalised_hidden(clip_folder: Path) -> None:
    x = images(3, size=32)
    raw = ClipVisionEncoder.from_pretrained(clip_folder, target="hidden", normalize=False).encode(x)
    final = ClipVisionEncoder.from_pretrained(clip_folder, target="final", normalize=False)
    assert final.target_shape == (24,)
    torch.testing.assert_close(final.encode(x), raw[:, 0], atol=1e-5, rtol=1e-5)
    normed = ClipVisionEncoder.from_pretrained(clip_folder, target="final").encode(x)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))


def test_clip_preprocess_shapes_and_gradient() -> None:
    x = torch.rand(2, 3, 48, 64, requires_grad=True)
    y = clip_preprocess(x, 32)
    assert y.shape == (2, 3, 32, 32)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_normalize_by_first_token() -> None:
    t = torch.randn(4, 5, 6)
    n = normalize_by_first_token(t)
    torch.testing.assert_close(n[:, 0].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(n * t[:, :1].norm(dim=-1, keepdim=True), t)
    with pytest.raises(DataFormatError, match=r"\(B, T, D\)"):
        normalize_by_first_token(torch.randn(4, 6))


def test_clip_expected_shape_mismatch(clip_folder: Path) -> None:
    with pytest.raises(ConfigMismatchError, match=r"produces targets of shape \(17, 24\).*expects \(257, 768\)"):
        ClipVisionEncoder.from_pretrained(clip_folder, expected_target_shape=(257, 768))
    enc = ClipVisionEncoder.from_pretrained(clip_folder, target="final")
    with pytest.raises(ConfigMismatchError, match="the brain model expects"):
        enc.check_target_shape((768,))
    enc.check_target_shape((24,))


def test_clip_missing_folder_and_weights(tmp_path: Path, clip_folder: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=f"expected a folder at {missing}"):
        ClipVisionEncoder.from_pretrained(missing)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((clip_folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match=str(partial / "model.safetensors")):
        ClipVisionEncoder.from_pretrained(partial)


def test_clip_subfolder_layout(tmp_path: Path) -> None:
    """MindEye loads CLIP from Versatile Diffusion's ``image_encoder`` subfolder."""
    tiny_clip_vision().save_pretrained(tmp_path / "vd" / "image_encoder")
    enc = ClipVisionEncoder.from_pretrained(tmp_path / "vd", subfolder="image_encoder")
    assert enc.encode(images(1, 32)).shape == (1, 17, 24)
    with pytest.raises(CheckpointError, match=str(tmp_path / "vd" / "vae")):
        ClipVisionEncoder.from_pretrained(tmp_path / "vd", subfolder="vae")


def test_clip_rejects_bad_images(clip_folder: Path) -> None:
    enc = ClipVisionEncoder.from_pretrained(clip_folder)
    with pytest.raises(DataFormatError, match=r"values in \[0, 1\]"):
        enc.encode(images() * 255)
    with pytest.raises(DataFormatError, match=r"shape \(B, 3, H, W\)"):
        enc.encode(torch.rand(3, 32, 32))


def test_hub_id_offline_is_a_checkpoint_error() -> None:
    # conftest sets HF_HUB_OFFLINE and an empty HF_HOME: a hub id must fail cleanly, without network
    with pytest.raises(CheckpointError, match="openai/clip-vit-large-patch14"):
        ClipVisionEncoder.from_pretrained("openai/clip-vit-large-patch14")


# --------------------------------------------------------------------------------- open_clip
def test_open_clip_round_trip_and_hidden_target(tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(0)
    cfg = tiny_open_clip_cfg()
    model = open_clip.CLIP(**cfg).eval()
    folder = save_open_clip_folder(model, tmp_path / "tiny-clip", cfg)
    enc = OpenClipEncoder.from_pretrained(folder, target="hidden")
    assert enc.target_shape == (17, 16)
    x = images(2, 32)
    out = enc.encode(x)
    torch.testing.assert_close(out[:, 0].norm(dim=-1), torch.ones(2))
    # the un-normalised token 0 equals open_clip's own image embedding
    raw = OpenClipEncoder(model, target="hidden", normalize=False).encode(x)
    with torch.no_grad():
        ref = model.encode_image(clip_preprocess(x, 32))
    torch.testing.assert_close(raw[:, 0], ref, atol=1e-5, rtol=1e-5)
    final = OpenClipEncoder.from_pretrained(folder, target="final", normalize=False)
    torch.testing.assert_close(final.encode(x), ref, atol=1e-5, rtol=1e-5)


def test_open_clip_missing_weights(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_open_clip_cfg()}))
    with pytest.raises(CheckpointError, match=str(folder / "open_clip_model.safetensors")):
        OpenClipEncoder.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=str(tmp_path / "absent")):
        OpenClipEncoder.from_pretrained(tmp_path / "absent")


def test_conv_stem_open_clip_round_trip(tmp_path: Path) -> None:
    """A conv-stem image tower keeps the token grid, is saved with its stem channels and loads back
    bit-exactly (encoder and full model + tokenizer) through load_open_clip_folder."""
    import json

    torch.manual_seed(0)
    cfg = tiny_open_clip_cfg()
    model = build_open_clip_model(cfg, conv_stem=[8, 16, 16]).eval()
    assert isinstance(model.visual.conv1, ConvStem)
    x = images(2, 32)
    assert model.visual.conv1(clip_preprocess(x, 32)).shape == (2, 32, 4, 4)  # same grid as patch 8
    folder = save_open_clip_folder(model, tmp_path / "stem-clip", cfg, conv_stem=[8, 16, 16])
    saved = json.loads((folder / "open_clip_config.json").read_text())
    assert saved["conv_stem"] == [8, 16, 16] and len(saved["preprocess_cfg"]["mean"]) == 3
    enc = OpenClipEncoder.from_pretrained(folder, target="hidden", normalize=False)
    assert enc.target_shape == (17, 16)
    with torch.no_grad():
        ref = model.encode_image(clip_preprocess(x, 32))
    torch.testing.assert_close(enc.encode(x)[:, 0], ref, atol=1e-5, rtol=1e-5)
    loaded, tok = load_open_clip_folder(folder)
    assert not loaded.training
    assert tok(["a red star"]).shape == (1, 16)  # the text config's context length
    with torch.no_grad():
        t = torch.randint(0, 100, (2, 16))  # the tiny config's vocabulary has 100 ids
        torch.testing.assert_close(loaded.encode_text(t), model.encode_text(t), atol=0, rtol=0)
    # float16 files (the shipped --fp16 format) load as float32 modules, with and without a conv stem
    for stem in ([8, 16, 16], None):
        half = save_open_clip_folder(build_open_clip_model(cfg, stem).half(), tmp_path / f"half-{stem}", cfg,
                                     conv_stem=stem)
        assert {p.dtype for p in load_open_clip_folder(half)[0].parameters()} == {torch.float32}
    # weights of a linear-patch model do not fit a conv-stem config: a clear error, not a silent mismatch
    plain = tmp_path / "plain"
    save_open_clip_folder(build_open_clip_model(cfg), plain, cfg)
    (plain / "open_clip_config.json").write_text(json.dumps({**saved, "conv_stem": [8, 16, 16]}))
    with pytest.raises(CheckpointError, match="conv1"):
        load_open_clip_folder(plain)


def test_conv_stem_rejects_a_stage_count_that_misses_the_patch_size() -> None:
    with pytest.raises(ConfigMismatchError, match="log2"):
        ConvStem([8, 16], width=32, patch_size=8)
    with pytest.raises(ConfigMismatchError, match="multiples of 8"):
        ConvStem([8, 12, 16], width=32, patch_size=8)


# -------------------------------------------------------------------------------------- VAE
def test_vae_round_trip_shapes_and_scaling(tmp_path: Path) -> None:
    tiny_vae().save_pretrained(tmp_path / "vd" / "vae")
    enc = VaeLatentEncoder.from_pretrained(tmp_path / "vd", image_size=32)  # finds the vae/ subfolder
    assert enc.scaling_factor == pytest.approx(0.18215)
    assert enc.target_shape == (4, 16, 16)
    x = images(2, 32)
    z = enc.encode(x)
    assert z.shape == (2, 4, 16, 16)
    ref = tiny_vae()
    with torch.no_grad():
        expected = ref.encode(2 * x - 1).latent_dist.mode() * 0.18215
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        img = enc.decode(z)
        ref_img = (ref.decode(expected / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    # other sizes are resized to image_size
    assert enc.encode(images(1, 40)).shape == (1, 4, 16, 16)
    # a plain VAE folder (no vae/ subfolder) also loads
    assert VaeLatentEncoder.from_pretrained(tmp_path / "vd" / "vae", image_size=32).target_shape == (4, 16, 16)


def test_vae_errors(tmp_path: Path) -> None:
    tiny_vae().save_pretrained(tmp_path / "vae")
    enc = VaeLatentEncoder.from_pretrained(tmp_path / "vae", image_size=32)
    with pytest.raises(DataFormatError, match=r"latents must have shape \(B, 4, h, w\)"):
        enc.decode(torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigMismatchError, match=r"\(4, 64, 64\)"):
        enc.check_target_shape((4, 64, 64))
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")):
        VaeLatentEncoder.from_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="multiple of the VAE downsampling factor"):
        VaeLatentEncoder(tiny_vae(), image_size=33)


# ---------------------------------------------------------------------------------- VICRegL
def test_vicregl_hub_not_cached_names_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=str(tmp_path / "facebookresearch_VICRegL_main" / "hubconf.py")):
        load_vicregl_hub("convnext_small_alpha0p75", hub_dir=tmp_path)
    (tmp_path / "facebookresearch_VICRegL_main").mkdir()
    (tmp_path / "facebookresearch_VICRegL_main" / "hubconf.py").write_text("")
    with pytest.raises(CheckpointError, match=str(tmp_path / "checkpoints" / "convnext_small_alpha0.75.pth")):
        load_vicregl_hub("convnext_small_alpha0p75", hub_dir=tmp_path)


def test_standin_teacher_shapes() -> None:
    enc = convnext_standin("convnext_atto", image_size=64)
    assert enc.name.startswith("standin-")
    out = enc.encode(images(2, 64))
    assert out.shape == (2, 4, 320) == (2, *enc.target_shape)


def test_vicregl_checkpoint_round_trip(tmp_path: Path) -> None:
    """A full-checkpoint layout (module.backbone.* in timm layout + module.maps_projector.*) loads."""
    torch.manual_seed(0)
    backbone = _timm_convnext("convnext_small")
    proj = MapsProjector(768, 32, 16)
    state = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.maps_projector.{k}": v for k, v in proj.state_dict().items()})
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")
    enc = load_vicregl_checkpoint(tmp_path / "ckpt.pth", arch="convnext_small", image_size=64)
    assert enc.target_shape == (4, 16)
    x = images(1, 64)
    out = enc.encode(x)
    with torch.no_grad():
        xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1)
        ref = proj(backbone.forward_features(xn).flatten(2).transpose(1, 2))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(CheckpointError, match=str(tmp_path / "missing.pth")):
        load_vicregl_checkpoint(tmp_path / "missing.pth")


def test_encoder_output_shape_is_checked() -> None:
    class Broken(ImageEncoder):
        target_shape = (5,)
        name = "broken"

        def _encode(self, images: torch.Tensor) -> torch.Tensor:
            return torch.zeros(images.shape[0], 4)

    with pytest.raises(DataFormatError, match=r"produced targets of shape \(2, 4\), expected \(2, 5\)"):
        Broken().encode(images(2, 8))


def test_load_image_encoder_factory(clip_folder: Path, tmp_path: Path) -> None:
    from mindeye_core.encoders import load_image_encoder

    assert load_image_encoder("clip-hidden", str(clip_folder)).target_shape == (17, 24)
    assert load_image_encoder("clip-final", str(clip_folder)).target_shape == (24,)
    tiny_vae().save_pretrained(tmp_path / "vae")
    assert load_image_encoder("vae", str(tmp_path / "vae"), image_size=32).target_shape == (4, 16, 16)
    assert load_image_encoder("vicregl-standin", image_size=64).target_shape == (4, 320)
    with pytest.raises(ValueError, match="unknown encoder kind 'clip'"):
        load_image_encoder("clip")
    with pytest.raises(ConfigMismatchError, match=r"expects \(257, 768\)"):
        load_image_encoder("clip-hidden", str(clip_folder), expected_target_shape=(257, 768))


def _timm_to_fb_convnext_keys(state: dict) -> dict:
    """Inverse of timm's FB->timm ConvNeXt key mapping (the layout of VICRegL's released files)."""
    import re

    out = {}
    for k, v in state.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("norm_pre.", "norm.")
        out[k] = v
    return out


def test_vicregl_checkpoint_in_released_fb_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    backbone = _timm_convnext("convnext_atto")
    fb = _timm_to_fb_convnext_keys(backbone.state_dict())
    assert any(k.startswith("downsample_layers.3.") for k in fb) and "norm.weight" in fb
    torch.save(fb, tmp_path / "convnext_atto_alpha0.75.pth")
    enc = load_vicregl_checkpoint(tmp_path / "convnext_atto_alpha0.75.pth", arch="convnext_atto", image_size=64)
    assert enc.target_shape == (4, 320)
    x = images(2, 64)
    with torch.no_grad():
        xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1)
        ref = backbone.forward_features(xn).flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc.encode(x), ref, atol=1e-4, rtol=1e-4)
    bad = dict(fb)
    bad.pop("norm.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="does not match timm convnext_atto"):
        load_vicregl_checkpoint(tmp_path / "bad.pth", arch="convnext_atto", image_size=64)


def test_encode_batches_equals_one_pass(clip_folder: Path) -> None:
    enc = ClipVisionEncoder.from_pretrained(clip_folder)
    x = images(5, 32)
    torch.testing.assert_close(enc.encode_batches(x, batch_size=2), enc.encode(x).detach(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        enc.encode_batches(x, batch_size=0)
