"""BrainMLP, DiffusionPrior, LowLevelModel, MindEyeHighLevel and the variant registry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mindeye_core.errors import CheckpointError, ConfigMismatchError, DataFormatError
from mindeye_core.models import (
    NSD_VOXELS,
    BrainMLP,
    DiffusionPrior,
    LowLevelModel,
    MindEyeHighLevel,
    cosine_beta_schedule,
    create_model,
    load_official_brain_checkpoint,
    list_models,
    model_config,
)

# ------------------------------------------------------------------ parameter counts


def test_nsd_brain_mlp_parameter_count_on_meta_device() -> None:
    with torch.device("meta"):
        model = BrainMLP(n_voxels=15724, hidden=4096, n_tokens=257, dim=768)
    # 947,579,904 is the official count_params(BrainNetwork): backbone *and* projector.
    assert model.num_parameters() == 947_579_904
    assert model.num_parameters("backbone") == 940_225_280  # the paper's "940 million"
    assert model.num_parameters("projector") == 7_354_624
    # closed form of the architecture
    v, h, out, d, p = 15724, 4096, 257 * 768, 768, 2048
    backbone = (v * h + h) + 2 * h + 4 * (h * h + h + 2 * h) + (h * out + out)
    projector = 2 * d + (d * p + p) + 2 * p + (p * p + p) + 2 * p + (p * d + d)
    assert (backbone, projector) == (940_225_280, 7_354_624)
    with torch.device("meta"):
        assert create_model("nsd-257x768").brain.num_parameters() == 947_579_904


def test_brain_mlp_matches_the_written_formula() -> None:
    torch.manual_seed(0)
    model = BrainMLP(n_voxels=20, hidden=12, n_blocks=3, n_tokens=3, dim=8, proj_hidden=10).eval()
    x = torch.randn(4, 20)
    tokens, proj = model(x)
    bb = model.backbone
    h = F.gelu(bb.lin0[1](bb.lin0[0](x)))
    for block in bb.blocks:
        h = F.gelu(block[1](block[0](h))) + h
    expected = model.lin1(h).reshape(4, 3, 8)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(proj, model.projector(expected))
    # the projector acts per token
    torch.testing.assert_close(proj[:, 1], model.projector(expected[:, 1]))


# ------------------------------------------------------------------ shapes per variant


@pytest.mark.parametrize("name", list_models("test-*") + list_models("demo-*"))
def test_small_variants_forward_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    cfg = model.config
    if isinstance(model, DiffusionPrior):
        brain = torch.randn(2, cfg["num_tokens"], cfg["dim"])
        loss, pred = model(brain, torch.randn_like(brain))
        assert loss.ndim == 0 and pred.shape == brain.shape
        assert model.sample(brain, generator=torch.Generator().manual_seed(0)).shape == brain.shape
        return
    x = torch.randn(2, cfg["n_voxels"])
    out = model(x)
    if isinstance(model, LowLevelModel):
        latents, feats = out
        side = cfg["latent_size"] * 2 ** (len(cfg["block_out_channels"]) - 1)
        assert latents.shape == (2, cfg["out_channels"], side, side) and model.output_size == side
        assert feats.shape == (2, cfg["latent_size"] ** 2, cfg["proj_dim"])
    else:
        tokens, proj = out
        assert tokens.shape == proj.shape == (2, cfg["n_tokens"], cfg["dim"])
        if isinstance(model, MindEyeHighLevel):
            loss, pred = model.prior_loss(tokens, torch.randn_like(tokens))
            assert torch.isfinite(loss) and pred.shape == tokens.shape


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("nsd-257x768", [(2, 257, 768), (2, 257, 768)]),
        ("nsd-1x768", [(2, 1, 768), (2, 1, 768)]),
        ("nsd-lowlevel", [(2, 4, 64, 64), (2, 256, 512)]),
    ],
)
def test_nsd_variant_shapes_on_meta_device(name: str, shapes: list[tuple[int, ...]]) -> None:
    with torch.device("meta"):
        model = create_model(name).eval()
        out = model(torch.empty(2, NSD_VOXELS["subj01"]))
        assert [tuple(o.shape) for o in out] == shapes
        if name != "nsd-lowlevel":
            assert model.prior is not None
            assert model.prior.timesteps == (100 if name == "nsd-257x768" else 1000)
            loss, pred = model.prior_loss(out[0], torch.empty(shapes[0]))
            assert pred.shape == shapes[0]


def test_nsd_prior_and_lowlevel_match_the_paper_configuration() -> None:
    cfg = model_config("nsd-257x768")
    assert (cfg["prior_depth"], cfg["prior_heads"], cfg["prior_dim_head"], cfg["prior_timesteps"]) == (6, 12, 64, 100)
    assert cfg["cond_drop_prob"] == 0.2
    low = model_config("nsd-lowlevel")
    assert (low["latent_channels"], low["latent_size"], low["block_out_channels"], low["proj_dim"]) == (64, 16, [64, 128, 256], 512)
    with torch.device("meta"):
        prior = create_model("nsd-257x768").prior
    assert prior.image_embed_scale == pytest.approx(math.sqrt(768))


# ------------------------------------------------------------------ save / load / errors


@pytest.mark.parametrize("name", ["test-highlevel", "test-lowlevel", "test-brain", "test-prior"])
def test_save_load_round_trip_is_bit_identical(tmp_path, name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name).eval()
    folder = model.save_pretrained(tmp_path / name)
    assert json.loads((folder / "config.json").read_text())["_class"] == type(model).__name__
    loaded = type(model).from_pretrained(folder).eval()
    assert loaded.config == model.config
    own, other = model.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys()
    for k in own:
        assert torch.equal(own[k], other[k]), k
    if isinstance(model, DiffusionPrior):
        brain = torch.randn(2, 5, 16)
        a = model.sample(brain, generator=torch.Generator().manual_seed(3))
        b = loaded.sample(brain, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
    else:
        x = torch.randn(3, model.config["n_voxels"])
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_wrong_voxel_count_is_a_clear_error() -> None:
    for name in ("test-brain", "test-highlevel", "test-lowlevel"):
        model = create_model(name)
        with pytest.raises(ValueError, match=r"expected 50 voxels \(n_voxels\), got 49"):
            model(torch.randn(2, 49))
    with pytest.raises(DataFormatError, match=r"must be \(batch, 50\)"):
        create_model("test-brain")(torch.randn(50))
    with pytest.raises(DataFormatError, match=r"must be \(batch, 5, 16\)"):
        create_model("test-prior")(torch.randn(2, 4, 16), torch.randn(2, 4, 16))


def test_config_mismatch_on_load(tmp_path) -> None:
    folder = create_model("test-brain").save_pretrained(tmp_path / "brain")
    with pytest.raises(ConfigMismatchError, match="n_voxels: saved 50, expected 15724"):
        BrainMLP.from_pretrained(folder, expected_config={"n_voxels": 15724})
    with pytest.raises(ConfigMismatchError, match="holds a 'BrainMLP' config file, not a 'LowLevelModel' one"):
        LowLevelModel.from_pretrained(folder)


def test_registry() -> None:
    names = list_models()
    for required in ("nsd-257x768", "nsd-1x768", "nsd-lowlevel", "demo-highlevel", "demo-lowlevel", "test-highlevel"):
        assert required in names
    assert all(n.startswith("nsd-") for n in list_models("nsd-*"))
    with pytest.raises(KeyError, match="unknown model variant 'nsd-9000'.*nsd-257x768"):
        create_model("nsd-9000")
    with pytest.raises(TypeError, match=r"no config keys \['n_voxel'\]"):
        create_model("test-brain", n_voxel=3)
    model = create_model("test-brain", n_voxels=NSD_VOXELS["subj07"] // 100)
    assert model.config["n_voxels"] == 126 and model.config["hidden"] == 32


# ------------------------------------------------------------------ diffusion prior


def test_cosine_schedule_matches_formula() -> None:
    betas = cosine_beta_schedule(100)
    abar = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 50, 98):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert (betas > 0).all() and (betas <= 0.999).all() and (abar[1:] < abar[:-1]).all()


def test_noise_schedule_posterior() -> None:
    prior = create_model("test-prior")
    sched = prior.schedule
    x0, xt = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    mean, _ = sched.posterior(x0, xt, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)  # at t = 0 the posterior mean is x0 itself
    # the posterior mean is the Gaussian product: check one step against the closed form
    t = 4
    abar, abar_prev, beta = sched.alphas_cumprod[t], sched.alphas_cumprod_prev[t], sched.betas[t]
    expected = beta * abar_prev.sqrt() / (1 - abar) * x0 + (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar) * xt
    torch.testing.assert_close(sched.posterior(x0, xt, torch.full((3,), t))[0], expected)
    noise = torch.randn(3, 5, 16)
    torch.testing.assert_close(
        sched.q_sample(x0, torch.full((3,), t), noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    )


def test_prior_sampling_is_seeded_and_guidance_changes_it() -> None:
    torch.manual_seed(0)
    prior = create_model("test-prior").eval()
    brain = torch.randn(2, 5, 16)
    a = prior.sample(brain, generator=torch.Generator().manual_seed(7))
    b = prior.sample(brain, generator=torch.Generator().manual_seed(7))
    c = prior.sample(brain, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g = prior.sample(brain, generator=torch.Generator().manual_seed(7), cond_scale=3.0)
    assert not torch.allclose(a, g)
    out, traj = prior.sample(brain, generator=torch.Generator().manual_seed(7), return_trajectory=True)
    assert torch.equal(out, a) and len(traj) == prior.timesteps
    torch.testing.assert_close(traj[-1], a)  # last step returns the x0 prediction itself


def test_sampling_loop_matches_explicit_ddpm_recursion(monkeypatch) -> None:
    """With an analytic denoiser the sampler must follow the DDPM posterior recursion exactly."""
    prior = create_model("test-prior").eval()
    brain = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(prior, "denoise", lambda x_t, t, b, bk=None, ik=None: 0.5 * x_t + b)
    out = prior.sample(brain, generator=torch.Generator().manual_seed(1))

    betas = cosine_beta_schedule(prior.timesteps)
    abar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(brain.shape, generator=g).double()
    for i in reversed(range(prior.timesteps)):
        x0 = 0.5 * x + brain.double()
        abar_prev = abar[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        mean = (betas[i] * abar_prev.sqrt() * x0 + (1 - abar_prev) * (1 - betas[i]).sqrt() * x) / (1 - abar[i])
        if i > 0:
            var = betas[i] * (1 - abar_prev) / (1 - abar[i])
            x = mean + var.sqrt() * torch.randn(brain.shape, generator=g).double()
        else:
            x = mean
    torch.testing.assert_close(out.double(), x / math.sqrt(16), rtol=1e-4, atol=1e-5)


def test_prior_condition_dropout_uses_null_embeddings() -> None:
    torch.manual_seed(0)
    prior = create_model("test-prior")
    xt, t = torch.randn(2, 5, 16), torch.tensor([3, 3])
    brain = torch.randn(2, 5, 16)
    dropped = prior.denoise(xt, t, brain, brain_keep=torch.tensor([False, False]))
    other = prior.denoise(xt, t, torch.randn(2, 5, 16), brain_keep=torch.tensor([False, False]))
    torch.testing.assert_close(dropped, other)  # the brain input is ignored when dropped
    kept = prior.denoise(xt, t, brain, brain_keep=torch.tensor([True, True]))
    assert not torch.allclose(kept, dropped)


def test_prior_training_decreases_loss_on_toy_problem() -> None:
    """The prior learns a fixed linear map brain -> target; held-out MSE drops clearly."""
    torch.manual_seed(0)
    prior = DiffusionPrior(dim=16, num_tokens=4, depth=2, heads=2, dim_head=8, timesteps=20, cond_drop_prob=0.1, image_drop_prob=0.1)
    mix = torch.randn(16, 16) / 4
    make = lambda n, g: (lambda b: (b, torch.tanh(b @ mix)))(torch.randn(n, 4, 16, generator=g))  # noqa: E731
    eval_brain, eval_target = make(64, torch.Generator().manual_seed(1))
    eval_t = torch.randint(0, 20, (64,), generator=torch.Generator().manual_seed(2))
    eval_noise = torch.randn(64, 4, 16, generator=torch.Generator().manual_seed(3))

    def held_out() -> float:
        prior.eval()
        with torch.no_grad():
            loss, _ = prior(eval_brain, eval_target, t=eval_t, noise=eval_noise)
        prior.train()
        return loss.item()

    before = held_out()
    opt = torch.optim.AdamW(prior.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(4)
    for _ in range(150):
        brain, target = make(32, g)
        loss, _ = prior(brain, target, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------ checkpointing / low-level


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("test-highlevel", dropout_in=0.0, dropout_block=0.0).train()
    x = torch.randn(4, 50)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        tokens, proj = model(x)
        (tokens.square().mean() + proj.square().mean()).backward()
        return [p.grad.clone() for p in model.brain.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.brain.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_lowlevel_rejects_bad_group_count() -> None:
    with pytest.raises(ValueError, match="norm_num_groups=32 must divide every block width"):
        LowLevelModel(n_voxels=10, hidden=8, block_out_channels=(8, 16))


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_cuda_bf16_training_step_and_cross_device_sampling() -> None:
    from mindeye_core.schedule import TrainingSchedule, autocast, highlevel_loss

    torch.manual_seed(0)
    model = create_model("test-highlevel").cuda()
    s = TrainingSchedule(steps_per_epoch=1, num_epochs=3, warmup_epochs=1)
    x, t = torch.randn(8, 50, device="cuda"), torch.randn(8, 5, 16, device="cuda") / 4
    with autocast("cuda", "bf16"):
        out = highlevel_loss(model, x, t, s.at(0), schedule=s, generator=torch.Generator("cuda").manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    # a CPU generator gives (numerically) the same prior samples on both devices
    model.eval()
    brain = torch.randn(2, 5, 16)
    cpu = model.prior.cpu().sample(brain, generator=torch.Generator().manual_seed(5))
    gpu = model.prior.cuda().sample(brain.cuda(), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


def _official_layout(model: BrainMLP) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the official training checkpoint layout (inverse mapping, by hand)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("backbone.lin0.", "lin0.").replace("backbone.blocks.", "mlp.")
        out["voxel2clip." + k] = v.clone()
    out["net.null_brain_embeds"] = torch.zeros(3)  # prior tensors are ignored
    return out


def test_load_official_brain_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    ours = BrainMLP(n_voxels=30, hidden=16, n_blocks=3, n_tokens=4, dim=8, proj_hidden=12).eval()
    path = tmp_path / "last.pth"
    torch.save({"epoch": 7, "model_state_dict": _official_layout(ours)}, path)
    loaded = load_official_brain_checkpoint(path, dim=8).eval()
    assert loaded.config == ours.config
    x = torch.randn(2, 30)
    for a, b in zip(ours(x), loaded(x)):
        assert torch.equal(a, b)
    with pytest.raises(ConfigMismatchError, match="n_voxels: checkpoint has 30, expected 15724"):
        load_official_brain_checkpoint(path, dim=8, n_voxels=15724)
    with pytest.raises(ConfigMismatchError, match="not a multiple of dim=768"):
        load_official_brain_checkpoint(path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_official_brain_checkpoint(bad)
    torch.save({"model_state_dict": {"net.x": torch.zeros(1)}}, tmp_path / "prior_only.pth")
    with pytest.raises(CheckpointError, match="no MindEye BrainNetwork tensors"):
        load_official_brain_checkpoint(tmp_path / "prior_only.pth")


def test_demo_variants_match_the_demo_world_and_shipped_tiny_models() -> None:
    from mindeye_core.demo_models import DEMO_CLIP_FINAL_SHAPE, DEMO_CLIP_HIDDEN_SHAPE, DEMO_VAE_LATENT_SHAPE
    from mindeye_core.data.demo import DemoWorldConfig

    n_vox = DemoWorldConfig().voxels[0]
    voxels = torch.zeros(2, n_vox)
    high = create_model("demo-highlevel").eval()
    assert tuple(high(voxels)[0].shape[1:]) == DEMO_CLIP_HIDDEN_SHAPE
    final = create_model("demo-1x").eval()
    assert tuple(final(voxels)[0].shape[2:]) == DEMO_CLIP_FINAL_SHAPE
    low = create_model("demo-lowlevel").eval()
    assert tuple(low(voxels)[0].shape[1:]) == DEMO_VAE_LATENT_SHAPE
