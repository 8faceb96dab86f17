"""Generators: tiny random UNet2DConditionModel + AutoencoderKL + UniPC, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mindeye_core.errors import CheckpointError, ConfigMismatchError, DataFormatError
from mindeye_core.generators import (
    UNetVariationGenerator,
    VersatileDiffusionGenerator,
    img2img_steps,
    load_versatile_pipeline,
)
from tiny_parts import tiny_unet, tiny_vae, unipc

torch.set_num_threads(1)

T, D = 17, 24  # tiny stand-in for VD's 257 x 768 image context


@pytest.fixture(scope="module")
def gen() -> UNetVariationGenerator:
    return UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T)


def emb(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, T, D, generator=torch.Generator().manual_seed(seed))


def imgs(b: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


class CallCounter:
    """Counts UNet forward calls and records their batch sizes."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = unet.register_forward_hook(lambda m, args, kwargs_out: self.batches.append(args[0].shape[0]))

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------- conventions
def test_img2img_steps_paper_convention() -> None:
    assert img2img_steps(0.15, 20) == 17  # MindEye default == official int(20 * 0.85)
    assert img2img_steps(0.0, 20) == 20
    assert img2img_steps(1.0, 20) == 0
    assert img2img_steps(0.5, 5) == 2  # round half to even
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        img2img_steps(1.5, 20)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        img2img_steps(0.1, 0)


# ---------------------------------------------------------------------------------- sampling
def test_generate_shapes_range_and_determinism(gen: UNetVariationGenerator) -> None:
    assert gen.image_size == 16 and gen.latent_shape == (4, 8, 8) and gen.embedding_shape == (T, D)
    out = gen.generate(emb(), n_samples=3, steps=3, seed=1)
    assert out.shape == (2, 3, 3, 16, 16)
    assert out.min() >= 0 and out.max() <= 1
    again = gen.generate(emb(), n_samples=3, steps=3, seed=1)
    torch.testing.assert_close(out, again, atol=0, rtol=0)
    other = gen.generate(emb(), n_samples=3, steps=3, seed=2)
    assert (out - other).abs().max() > 1e-3
    # different samples of the same input differ
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3


def test_strength_one_returns_vae_round_trip(gen: UNetVariationGenerator) -> None:
    init = imgs()
    with CallCounter(gen.unet) as calls:
        out = gen.generate(emb(), init_images=init, strength=1.0, n_samples=2, steps=5, seed=0)
    assert calls.batches == []  # no denoising step at all
    vae = tiny_vae()
    with torch.no_grad():
        ref = (vae.decode(vae.encode(2 * init - 1).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
    for k in range(2):
        torch.testing.assert_close(out[:, k], ref, atol=1e-5, rtol=1e-5)


def test_strength_zero_ignores_init_image(gen: UNetVariationGenerator) -> None:
    a = gen.generate(emb(), init_images=imgs(seed=1), strength=0.0, steps=3, seed=4)
    b = gen.generate(emb(), init_images=imgs(seed=2), strength=0.0, steps=3, seed=4)
    c = gen.generate(emb(), steps=3, seed=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_intermediate_strength_runs_the_last_steps_and_uses_init(gen: UNetVariationGenerator) -> None:
    with CallCounter(gen.unet) as calls:
        a = gen.generate(emb(), init_images=imgs(seed=1), strength=0.5, steps=4, seed=4, n_samples=2)
    assert calls.batches == [8, 8]  # 2 of 4 steps; batch 2 inputs x 2 samples x 2 (CFG)
    b = gen.generate(emb(), init_images=imgs(seed=2), strength=0.5, steps=4, seed=4, n_samples=2)
    assert (a - b).abs().max() > 1e-3
    # init images of another size are resized to the generator's size
    c = gen.generate(emb(), init_images=imgs(seed=1, size=24), strength=0.5, steps=4, seed=4)
    assert c.shape == (2, 1, 3, 16, 16)


def test_high_strength_stays_close_to_init(gen: UNetVariationGenerator) -> None:
    init = imgs(seed=3)
    with torch.no_grad():
        vae = gen.vae
        rt = (vae.decode(vae.encode(2 * init - 1).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
    near = gen.generate(emb(), init_images=init, strength=0.9, steps=10, seed=0)[:, 0]
    far = gen.generate(emb(), init_images=init, strength=0.1, steps=10, seed=0)[:, 0]
    assert (near - rt).abs().mean() < (far - rt).abs().mean()


def test_guidance_one_disables_cfg(gen: UNetVariationGenerator) -> None:
    with CallCounter(gen.unet) as calls:
        gen.generate(emb(1), steps=2, guidance=1.0)
    assert calls.batches == [1, 1]
    with CallCounter(gen.unet) as calls:
        gen.generate(emb(1), steps=2, guidance=3.5)
    assert calls.batches == [2, 2]


def test_cfg_matches_manual_combination() -> None:
    """Guidance g gives e_u + g (e_c - e_u): check with a fake UNet recording its inputs."""
    g = UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T,
                               uncond_embedding=torch.full((T, D), 0.5))
    seen: list[torch.Tensor] = []
    h = g.unet.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["encoder_hidden_states"].clone()),
                                         with_kwargs=True)
    try:
        e = emb(1)
        g.generate(e, steps=1, guidance=2.0)
    finally:
        h.remove()
    ctx = seen[0]
    assert ctx.shape == (2, T, D)
    torch.testing.assert_close(ctx[0], torch.full((T, D), 0.5))
    torch.testing.assert_close(ctx[1], e[0])


# ------------------------------------------------------------------------------------ errors
def test_generate_errors(gen: UNetVariationGenerator) -> None:
    with pytest.raises(ValueError, match="needs init_images"):
        gen.generate(emb(), strength=0.3)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        gen.generate(emb(), init_images=imgs(), strength=-0.1)
    with pytest.raises(DataFormatError, match=rf"expected embeddings of shape \(B, {T}, {D}\), got \(2, 5, {D}\)"):
        gen.generate(torch.randn(2, 5, D))
    with pytest.raises(DataFormatError, match=r"shape \(B, T, D\)"):
        gen.generate(torch.randn(2, D))
    with pytest.raises(DataFormatError, match=r"init_images must have values in \[0, 1\]"):
        gen.generate(emb(), init_images=imgs() * 255, strength=0.5, steps=2)
    with pytest.raises(DataFormatError, match="1 init images for 2 embeddings"):
        gen.generate(emb(), init_images=imgs(1), strength=0.5, steps=2)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        gen.generate(emb(), n_samples=0)
    free = UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc())
    with pytest.raises(DataFormatError, match=f"width 7, the UNet's cross_attention_dim is {D}"):
        free.generate(torch.randn(1, 3, 7))


# ------------------------------------------------------------------------------- token grid
def test_token_grid_lays_patches_out_row_major() -> None:
    from mindeye_core.generators import token_grid

    tokens = emb(2)  # CLS + 4 x 4 patches
    grid = token_grid(tokens, 8)
    assert grid.shape == (2, D, 8, 8)
    for r in range(4):
        for c in range(4):
            cell = grid[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2]  # each patch covers 2 x 2 latent pixels
            torch.testing.assert_close(cell, tokens[:, 1 + 4 * r + c, :, None, None].expand_as(cell))
    torch.testing.assert_close(token_grid(tokens, 4), tokens[:, 1:].transpose(1, 2).reshape(2, D, 4, 4))
    with pytest.raises(DataFormatError, match="square grid of patch tokens, got 16 tokens"):
        token_grid(tokens[:, :16], 8)
    with pytest.raises(DataFormatError, match="latent side 6 is not a multiple of the patch grid 4"):
        token_grid(tokens, 6)


def test_token_grid_generator_feeds_the_grid_and_round_trips(tmp_path: Path) -> None:
    from mindeye_core.generators import token_grid

    g = UNetVariationGenerator(tiny_unet(in_channels=4 + D), tiny_vae(), unipc(), n_tokens=T, token_grid=True)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    h = g.unet.register_forward_pre_hook(
        lambda m, args, kw: seen.append((args[0].clone(), kw["encoder_hidden_states"].clone())), with_kwargs=True)
    try:
        e = emb(1)
        a = g.generate(e, steps=2, guidance=2.0, seed=3)
    finally:
        h.remove()
    x, ctx = seen[0]
    assert x.shape == (2, 4 + D, 8, 8)  # [uncond; cond] latents + D token-grid channels
    torch.testing.assert_close(x[:, 4:], token_grid(ctx, 8))
    assert x[0, 4:].abs().max() == 0 and x[1, 4:].abs().max() > 0  # zero tokens -> zero grid for CFG's uncond
    g.save_pretrained(tmp_path / "grid-gen")
    assert json.loads((tmp_path / "grid-gen" / "generator_config.json").read_text())["token_grid"] is True
    loaded = UNetVariationGenerator.from_pretrained(tmp_path / "grid-gen")
    assert loaded.token_grid and loaded.latent_shape == (4, 8, 8)
    torch.testing.assert_close(loaded.generate(e, steps=2, guidance=2.0, seed=3), a)
    with pytest.raises(DataFormatError, match=rf"UNet in_channels \(4\) != VAE latent channels \(4\) \+ "
                                              rf"token-grid channels \({D}\)"):
        UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T, token_grid=True)
    with pytest.raises(DataFormatError, match=rf"UNet in_channels \({4 + D}\) != VAE latent channels \(4\)$"):
        UNetVariationGenerator(tiny_unet(in_channels=4 + D), tiny_vae(), unipc(), n_tokens=T)


# ------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path: Path, gen: UNetVariationGenerator) -> None:
    gen.save_pretrained(tmp_path / "demo-gen")
    loaded = UNetVariationGenerator.from_pretrained(tmp_path / "demo-gen", expected_embedding_shape=(T, D))
    a = gen.generate(emb(), init_images=imgs(), strength=0.3, steps=3, seed=7)
    b = loaded.generate(emb(), init_images=imgs(), strength=0.3, steps=3, seed=7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigMismatchError, match=r"takes embeddings \(17, 24\), expected \(257, 768\)"):
        UNetVariationGenerator.from_pretrained(tmp_path / "demo-gen", expected_embedding_shape=(257, 768))
    (tmp_path / "demo-gen" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=str(tmp_path / "demo-gen" / "unet" / "diffusion_pytorch_model")):
        UNetVariationGenerator.from_pretrained(tmp_path / "demo-gen")
    with pytest.raises(CheckpointError, match=str(tmp_path / "absent")):
        UNetVariationGenerator.from_pretrained(tmp_path / "absent")


# ---------------------------------------------------------------------- Versatile Diffusion
def _tiny_vd_pipeline():
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionImageVariationPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=D)).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return VersatileDiffusionImageVariationPipeline(image_feature_extractor=proc, image_encoder=enc,
                                                    image_unet=tiny_unet(), vae=tiny_vae(), scheduler=sched)


@pytest.fixture(scope="module")
def vd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vd") / "versatile-diffusion"
    _tiny_vd_pipeline().save_pretrained(folder)
    return folder


def test_vd_folder_layout_loads(vd_folder: Path) -> None:
    assert json.loads((vd_folder / "model_index.json").read_text())["image_unet"][1] == "UNet2DConditionModel"
    g = VersatileDiffusionGenerator.from_pretrained(vd_folder, n_tokens=T, expected_embedding_shape=(T, D))
    assert type(g.scheduler).__name__ == "UniPCMultistepScheduler"
    assert g.default_steps == 20 and g.default_guidance == 3.5
    out = g.generate(emb(), init_images=imgs(), strength=0.15, n_samples=2, steps=4, seed=0)
    assert out.shape == (2, 2, 3, 16, 16)
    with pytest.raises(ConfigMismatchError, match=r"expected \(257, 768\)"):
        VersatileDiffusionGenerator.from_pretrained(vd_folder, n_tokens=T, expected_embedding_shape=(257, 768))


def test_vd_renormalises_by_first_token(vd_folder: Path) -> None:
    g = VersatileDiffusionGenerator.from_pretrained(vd_folder, n_tokens=T)
    e = emb(1)
    a = g.generate(e, steps=2, seed=3)
    b = g.generate(5.0 * e, steps=2, seed=3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    raw = VersatileDiffusionGenerator.from_pretrained(vd_folder, n_tokens=T, renormalize=False)
    assert (raw.generate(5.0 * e, steps=2, seed=3) - a).abs().max() > 1e-4


def test_vd_matches_diffusers_pipeline(vd_folder: Path) -> None:
    """Our explicit loop == diffusers' VersatileDiffusionImageVariationPipeline, same inputs."""
    from diffusers import UniPCMultistepScheduler

    pipe = load_versatile_pipeline(vd_folder)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = imgs(1, size=32)
    with torch.no_grad():
        ctx = pipe._encode_prompt(image, torch.device("cpu"), 1, True, None)  # [grey-image uncond ; cond]
    uncond = ctx.chunk(2)[0]
    # a conditioning far from the grey-image one, so that guidance matters (tiny random CLIPs map all
    # images to nearly the same tokens); fed to the pipeline in place of its own image encoding
    cond = emb(1, seed=9)
    cond = cond / cond[:, :1].norm(dim=-1, keepdim=True)
    pipe._encode_prompt = lambda *args, **kwargs: torch.cat([uncond, cond])
    g = VersatileDiffusionGenerator.from_pipeline(pipe, n_tokens=T, uncond_embedding=uncond[0])
    out = g.generate(cond, steps=3, guidance=3.5, seed=11)
    assert (g.generate(cond, steps=3, guidance=1.0, seed=11) - out).abs().max() > 1e-2
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = pipe(image, num_inference_steps=3, guidance_scale=3.5, latents=latents, output_type="pt").images
    torch.testing.assert_close(out[:, 0], ref, atol=1e-4, rtol=1e-4)


def test_vd_missing_files_and_offline_hub(tmp_path: Path, vd_folder: Path) -> None:
    import shutil

    broken = tmp_path / "vd"
    shutil.copytree(vd_folder, broken)
    shutil.rmtree(broken / "image_unet")
    with pytest.raises(CheckpointError, match=f"expected a folder at {broken / 'image_unet'}"):
        VersatileDiffusionGenerator.from_pretrained(broken, n_tokens=T)
    (broken / "model_index.json").unlink()
    with pytest.raises(CheckpointError, match=str(broken / "model_index.json")):
        VersatileDiffusionGenerator.from_pretrained(broken, n_tokens=T)
    with pytest.raises(CheckpointError, match="shi-labs/versatile-diffusion"):
        VersatileDiffusionGenerator.from_pretrained("shi-labs/versatile-diffusion", local_files_only=True)
    with pytest.raises(TypeError, match="expected a Versatile Diffusion pipeline"):
        VersatileDiffusionGenerator.from_pipeline(object())


def test_clip_hidden_target_equals_vd_image_context(vd_folder: Path) -> None:
    """ClipVisionEncoder's hidden target == VD's own normalize_embeddings, on VD's image_encoder."""
    from mindeye_core.encoders import ClipVisionEncoder, normalize_by_first_token

    pipe = load_versatile_pipeline(vd_folder)
    enc = ClipVisionEncoder.from_pretrained(vd_folder, subfolder="image_encoder", target="hidden")
    assert enc.target_shape == (T, D)
    image = imgs(2, size=32)
    with torch.no_grad():
        vd_ctx = pipe._encode_prompt(list(image), torch.device("cpu"), 1, False, None)
        pixels = pipe.image_feature_extractor(images=list(image), return_tensors="pt").pixel_values
        ours = normalize_by_first_token(enc.hidden_tokens(pixels))
    torch.testing.assert_close(ours, vd_ctx, atol=1e-5, rtol=1e-5)


def test_from_pipeline_reverts_dual_attention_to_image_only() -> None:
    """A dual-guided UNet (image + text transformers) is reduced to its image transformers."""
    import copy

    from diffusers.models import DualTransformer2DModel
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    reference = VersatileDiffusionGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T)
    expected = reference.generate(emb(1), steps=2, seed=5)

    pipe = _tiny_vd_pipeline()
    unet = pipe.image_unet
    n_dual = 0
    for name, module in list(unet.named_modules()):
        if isinstance(module, Transformer2DModel):
            parent, index = name.rsplit(".", 1)
            text = copy.deepcopy(module)
            for p in text.parameters():
                p.data.add_(0.5)
            dual = DualTransformer2DModel(num_attention_heads=module.config.num_attention_heads,
                                          attention_head_dim=module.config.attention_head_dim,
                                          in_channels=module.config.in_channels, norm_num_groups=8,
                                          cross_attention_dim=D)
            dual.transformers[0], dual.transformers[1] = module, text
            unet.get_submodule(parent)[int(index)] = dual
            n_dual += 1
    assert n_dual > 0
    g = VersatileDiffusionGenerator.from_pipeline(pipe, n_tokens=T)
    assert not any(isinstance(m, DualTransformer2DModel) for m in g.unet.modules())
    torch.testing.assert_close(g.generate(emb(1), steps=2, seed=5), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_cpu(gen: UNetVariationGenerator) -> None:
    """Noise is drawn on the CPU, so a seed gives the same images on a GPU (up to float error)."""
    import copy

    cpu = gen.generate(emb(), init_images=imgs(), strength=0.3, n_samples=2, steps=4, seed=3)
    cuda_gen = copy.deepcopy(gen).to("cuda")
    out = cuda_gen.generate(emb(), init_images=imgs(), strength=0.3, n_samples=2, steps=4, seed=3)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu, atol=2e-3, rtol=0)
    half = copy.deepcopy(gen).to("cuda", torch.float16).generate(emb(), n_samples=2, steps=4, seed=3)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_vd_generator_save_load_round_trip(tmp_path: Path, vd_folder: Path) -> None:
    g = VersatileDiffusionGenerator.from_pretrained(vd_folder, n_tokens=T, uncond_embedding=torch.ones(T, D))
    g.save_pretrained(tmp_path / "saved")
    loaded = VersatileDiffusionGenerator.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded, VersatileDiffusionGenerator) and loaded.renormalize and loaded.embedding_shape == (T, D)
    torch.testing.assert_close(loaded.generate(emb(), steps=2, seed=1), g.generate(emb(), steps=2, seed=1),
                               atol=1e-5, rtol=1e-5)


def test_max_batch_chunking_gives_the_same_images() -> None:
    whole = UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T)
    chunked = UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), n_tokens=T, max_batch=3)
    for init, s in ((None, 0.0), (imgs(), 0.4)):
        a = whole.generate(emb(), init_images=init, strength=s, n_samples=4, steps=3, seed=2)
        with CallCounter(chunked.unet) as calls:
            b = chunked.generate(emb(), init_images=init, strength=s, n_samples=4, steps=3, seed=2)
        assert max(calls.batches) == 6  # 3 latents x 2 (CFG)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        UNetVariationGenerator(tiny_unet(), tiny_vae(), unipc(), max_batch=0)
