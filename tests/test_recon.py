"""Reconstruction pipeline: tiny random-weight parts (brain + prior, low-level model, VAE, generator,
open_clip encoder), per-row seeds, best-of-N, bundle-exact regeneration, assembly errors, specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye_core.encoders import OpenClipEncoder, VaeLatentEncoder, build_open_clip_model, save_open_clip_folder
from mindeye_core.errors import ConfigMismatchError, DataFormatError
from mindeye_core.generators import UNetVariationGenerator
from mindeye_core.models import create_model
from mindeye_core.recon import (
    GENERATOR_STREAM,
    PRIOR_STREAM,
    ReconstructionOutput,
    ReconstructionSpec,
    Reconstructor,
    demo_spec,
    nsd_spec,
    quantize_images,
    row_seed,
    row_seeds,
)
from tiny_parts import tiny_open_clip_cfg, tiny_unet, tiny_vae, unipc

torch.set_num_threads(1)

T, D, V = 5, 16, 50  # the test-highlevel variant: 5 tokens x 16, 50 voxels
N, STEPS = 3, 4


# ------------------------------------------------------------------------------------------ parts
def tiny_encoder(image_size: int = 16, patch_size: int = 8) -> OpenClipEncoder:
    """open_clip ViT whose hidden target is (5, 16) at 16 px / patch 8."""
    torch.manual_seed(3)
    cfg = tiny_open_clip_cfg(image_size=image_size, patch_size=patch_size, embed_dim=D)
    return OpenClipEncoder(build_open_clip_model(cfg).eval(), target="hidden")


def tiny_generator(n_tokens: int | None = T, dim: int = D, **kw) -> UNetVariationGenerator:
    return UNetVariationGenerator(tiny_unet(cross_attention_dim=dim), tiny_vae(), unipc(), n_tokens=n_tokens, **kw)


def tiny_brain(**kw):
    torch.manual_seed(4)
    return create_model("test-highlevel", **kw).eval()


def tiny_lowlevel(**kw):
    torch.manual_seed(5)
    return create_model("test-lowlevel", **kw).eval()


def tiny_latent_vae(image_size: int = 16) -> VaeLatentEncoder:
    return VaeLatentEncoder(tiny_vae(seed=2), image_size=image_size)  # (4, 8, 8) latents at 16 px


def voxels(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, V, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def rec() -> Reconstructor:
    return Reconstructor(tiny_brain(), tiny_encoder(), tiny_generator(), tiny_lowlevel(), tiny_latent_vae(),
                         n_samples=N, strength=0.5, steps=STEPS)


@pytest.fixture(scope="module")
def out(rec: Reconstructor) -> ReconstructionOutput:
    return rec.reconstruct(voxels(), [10, 11, 12], strengths=(0.5, 0.0, 1.0))


# ------------------------------------------------------------------------------- per-row seeds
def test_generator_per_row_seeds_equal_rows_run_alone() -> None:
    gen = tiny_generator(sample_init_posterior=True)  # posterior noise is drawn per row too
    emb = torch.randn(3, T, D, generator=torch.Generator().manual_seed(0))
    init = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for kw in ({}, {"init_images": init, "strength": 0.5}):
        batch = gen.generate(emb, n_samples=2, steps=3, seed=[5, 6, 7], **kw)
        for i, s in enumerate((5, 6, 7)):
            alone = gen.generate(emb[i:i + 1], n_samples=2, steps=3, seed=[s],
                                 **{k: (v[i:i + 1] if k == "init_images" else v) for k, v in kw.items()})
            torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=1e-5)
        assert (batch[0] - batch[1]).abs().max() > 1e-3
    # an int seed keeps the one-generator-for-the-batch behaviour (not per-row seeds [s, s, s])
    same = gen.generate(emb, n_samples=2, steps=3, seed=[5, 5, 5])
    one = gen.generate(emb, n_samples=2, steps=3, seed=5)
    assert (one[1] - same[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="2 seeds for 3 input rows"):
        gen.generate(emb, steps=2, seed=[1, 2])
    with pytest.raises(ValueError, match="seeds must be integers"):
        gen.generate(emb, steps=2, seed=[1.5, 2, 3])


def test_prior_per_row_generators_equal_rows_run_alone() -> None:
    torch.manual_seed(0)
    prior = create_model("test-prior").eval()
    brain = torch.randn(3, T, D)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = prior.sample(brain, generator=gens(1, 2, 3))
    for i, s in enumerate((1, 2, 3)):
        torch.testing.assert_close(batch[i:i + 1], prior.sample(brain[i:i + 1], generator=gens(s)), atol=1e-5,
                                   rtol=1e-5)
    # the row's generator draws the initial noise and then every step's noise, in that order
    g = torch.Generator().manual_seed(2)
    torch.testing.assert_close(prior.sample(brain[1:2], generator=[g]),
                               prior.sample(brain[1:2], generator=torch.Generator().manual_seed(2)), atol=0, rtol=0)
    with pytest.raises(DataFormatError, match="2 generators for 3 rows"):
        prior.sample(brain, generator=gens(1, 2))


def test_row_seeds_are_distinct_per_stream_and_candidate() -> None:
    seeds = row_seeds([7, 8], 4, PRIOR_STREAM)
    assert len(set(seeds)) == 8 and seeds[5] == row_seed(8, 1, PRIOR_STREAM)
    assert not set(seeds) & set(row_seeds([7, 8], 4, GENERATOR_STREAM))
    assert all(0 <= s < 2**63 for s in seeds)
    assert row_seed(7, 0, 0) == row_seed(7, 0, 0)  # a pure function of its arguments


# ---------------------------------------------------------------------------------- reconstruct
def test_output_shapes_and_dtypes(out: ReconstructionOutput) -> None:
    assert out.blurry.shape == (3, 3, 16, 16) and out.backbone.shape == out.projector.shape == (3, T, D)
    assert out.prior_samples.shape == (3, N, T, D) and out.prior_samples.dtype == torch.float16
    assert out.strengths == [0.5, 0.0, 1.0] and out.seeds.tolist() == [10, 11, 12] and len(out) == 3
    for s in out.strengths:
        assert out.candidates[s].shape == (3, N, 3, 16, 16)
        assert out.scores[s].shape == (3, N) and out.picked[s].shape == (3,) and out.finals[s].shape == (3, 3, 16, 16)
    # the blurry image lies on the uint8 levels a bundle stores
    torch.testing.assert_close(out.blurry * 255, (out.blurry * 255).round(), atol=1e-4, rtol=0)
    # candidates of one trial differ (different prior samples and noise); prior samples differ per candidate
    assert (out.candidates[0.5][:, 0] - out.candidates[0.5][:, 1]).abs().max() > 1e-3
    assert (out.prior_samples[:, 0].float() - out.prior_samples[:, 1].float()).abs().max() > 1e-3


def test_best_of_n_is_argmax_of_a_hand_computed_cosine(rec: Reconstructor, out: ReconstructionOutput) -> None:
    for s in out.strengths:
        cands = out.candidates[s]
        with torch.no_grad():
            emb = rec.encoder.encode(cands.flatten(0, 1)).reshape(3, N, -1).double()
        ref = out.projector.reshape(3, 1, -1).double()
        cos = (emb * ref).sum(-1) / (emb.norm(dim=-1) * ref.norm(dim=-1))
        torch.testing.assert_close(out.scores[s].double(), cos, atol=1e-5, rtol=1e-5)
        assert torch.equal(out.picked[s], out.scores[s].argmax(dim=1))
        assert torch.equal(out.finals[s], cands[torch.arange(3), out.picked[s]])


def test_strengths_reuse_the_prior_samples_and_start_from_the_blurry(rec: Reconstructor,
                                                                   out: ReconstructionOutput) -> None:
    # strength 1 runs no denoising step: every candidate is the generator-VAE round trip of the blurry image
    c1 = out.candidates[1.0]
    with torch.no_grad():
        ref = rec.generator.decode(rec.generator.encode_init(out.blurry))
    for k in range(N):
        torch.testing.assert_close(c1[:, k], ref, atol=1e-5, rtol=1e-5)
    # strength 0 ignores the blurry image: same pixels as a reconstructor without img2img inputs
    regen = rec.regenerate(out.prior_samples, None, out.seeds.tolist(), 0.0)
    assert torch.equal(regen.candidates, out.candidates[0.0])


def test_trials_do_not_depend_on_their_batch(rec: Reconstructor, out: ReconstructionOutput) -> None:
    alone = rec.reconstruct(voxels()[1:2], [11], strengths=(0.5, 0.0, 1.0))
    torch.testing.assert_close(alone.prior_samples, out.prior_samples[1:2], atol=2e-3, rtol=2e-3)
    for s in out.strengths:
        torch.testing.assert_close(alone.candidates[s], out.candidates[s][1:2], atol=1e-4, rtol=1e-4)
        assert torch.equal(alone.picked[s], out.picked[s][1:2])
    # another seed gives other candidates
    other = rec.reconstruct(voxels()[1:2], [99], strengths=(0.5,))
    assert (other.candidates[0.5] - alone.candidates[0.5]).abs().max() > 1e-3


def test_regenerate_from_bundle_arrays_is_bit_exact(rec: Reconstructor, out: ReconstructionOutput) -> None:
    # what a results bundle keeps: float16 prior samples, uint8 (N, H, W, 3) blurry / finals, float32 projector
    blurry_u8 = (out.blurry.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    for i in range(3):
        stored_blurry = torch.from_numpy(blurry_u8[i:i + 1]).permute(0, 3, 1, 2)
        for s in out.strengths:
            res = rec.regenerate(out.prior_samples[i:i + 1].clone(), stored_blurry, [int(out.seeds[i])], s,
                                 projector=out.projector[i:i + 1].flatten(1))
            assert torch.equal(res.candidates, out.candidates[s][i:i + 1])
            assert torch.equal(res.scores, out.scores[s][i:i + 1])
            assert torch.equal(res.picked, out.picked[s][i:i + 1])
            assert torch.equal(res.finals, out.finals[s][i:i + 1])
    # float blurry on the uint8 levels and float32 prior samples give the same pixels too
    res = rec.regenerate(out.prior_samples.float(), out.blurry, out.seeds.tolist(), 0.5)
    assert torch.equal(res.candidates, out.candidates[0.5]) and res.scores is None
    # only the picked candidate of each trial, with its own noise: the final (a 1-row call instead of N rows,
    # so equal up to the backend's batch-size-dependent rounding)
    picked = out.picked[0.5]
    one = rec.regenerate(out.prior_samples[torch.arange(3), picked][:, None], out.blurry, out.seeds.tolist(), 0.5,
                         sample_ids=picked[:, None])
    torch.testing.assert_close(one.candidates[:, 0], out.finals[0.5], atol=1e-5, rtol=1e-5)
    with pytest.raises(DataFormatError, match="sample_ids must be non-negative ints of shape"):
        rec.regenerate(out.prior_samples, out.blurry, out.seeds.tolist(), 0.5, sample_ids=[[0, 1]])


def test_quantize_images_matches_the_bundle_conversion() -> None:
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    q = quantize_images(x)
    u8 = (x.numpy() * 255.0 + 0.5).astype(np.uint8)
    assert torch.equal(q, torch.from_numpy(u8).float() / 255)
    assert torch.equal(quantize_images(q), q) and torch.equal(quantize_images(torch.from_numpy(u8)), q)
    assert ((q.numpy() * 255.0 + 0.5).astype(np.uint8) == u8).all()


def test_reconstruct_dataset_batches_and_concatenates(rec: Reconstructor, out: ReconstructionOutput) -> None:
    ds = rec.reconstruct_dataset(voxels(), [10, 11, 12], batch_size=2, strengths=(0.5,), progress=True)
    assert len(ds) == 3 and ds.candidates == {} and ds.finals[0.5].shape == (3, 3, 16, 16)
    torch.testing.assert_close(ds.finals[0.5], out.finals[0.5], atol=1e-4, rtol=1e-4)
    assert torch.equal(ds.seeds, out.seeds)
    with pytest.raises(ValueError, match="batch_size"):
        rec.reconstruct_dataset(voxels(), [1, 2, 3], batch_size=0)


# ------------------------------------------------------------------------------- assembly errors
def test_assembly_mismatches_name_both_sides() -> None:
    brain, enc, gen, low, vae = tiny_brain(), tiny_encoder(), tiny_generator(), tiny_lowlevel(), tiny_latent_vae()
    cases = [
        (lambda: Reconstructor(brain, tiny_encoder(image_size=32), gen, low, vae), ["(5, 16)", "(17, 16)"]),
        (lambda: Reconstructor(brain, enc, tiny_generator(n_tokens=7), low, vae), ["(5, 16)", "(7, 16)"]),
        (lambda: Reconstructor(brain, enc, tiny_generator(n_tokens=None, dim=24), low, vae), ["(5, 16)", "width 24"]),
        (lambda: Reconstructor(brain, enc, gen, tiny_lowlevel(latent_size=2), vae), ["(4, 4, 4)", "(4, 8, 8)"]),
        (lambda: Reconstructor(brain, enc, gen, tiny_lowlevel(n_voxels=60), vae), ["n_voxels=50", "n_voxels=60"]),
        (lambda: Reconstructor(brain, enc, gen, tiny_lowlevel(latent_size=8), tiny_latent_vae(32)),
         ["16 px", "32 px"]),
        (lambda: Reconstructor(tiny_brain(use_prior=False), enc, gen, low, vae), ["use_prior=False"]),
        (lambda: Reconstructor(brain, enc, gen, low, None), ["needs a VAE"]),
    ]
    for build, parts in cases:
        with pytest.raises(ConfigMismatchError) as err:
            build()
        for part in parts:
            assert part in str(err.value), (part, str(err.value))
    with pytest.raises(ValueError, match="needs a low-level model"):
        Reconstructor(brain, enc, gen, strength=0.15)
    # without a low-level model, strength 0 works and there is no blurry image
    plain = Reconstructor(brain, enc, gen, n_samples=2, strength=0.0, steps=2)
    res = plain.reconstruct(voxels(2), [1, 2])
    assert res.blurry is None and res.finals[0.0].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="needs a low-level model"):
        plain.reconstruct(voxels(2), [1, 2], strengths=(0.15,))


def test_bad_inputs_name_the_parameter(rec: Reconstructor) -> None:
    nan = voxels(2)
    nan[1, 3] = float("nan")
    bad_calls = [
        (lambda: rec.reconstruct(nan, [1, 2]), DataFormatError, r"voxels contain NaN.*\[1\]"),
        (lambda: rec.reconstruct(torch.randn(2, V + 1), [1, 2]), DataFormatError, "expected 50 voxels"),
        (lambda: rec.reconstruct(torch.randn(V), [1]), DataFormatError, "voxels must have shape"),
        (lambda: rec.reconstruct(voxels(2), [1, 2, 3]), DataFormatError, "seeds: got 3 seeds for 2 trials"),
        (lambda: rec.reconstruct(voxels(2), [1, -2]), DataFormatError, "seeds must be non-negative integers"),
        (lambda: rec.reconstruct(voxels(2), [1, 2], strengths=(1.5,)), ValueError, r"strength must be in \[0, 1\]"),
        (lambda: rec.regenerate(torch.zeros(1, N, T + 1, D), None, [1], 0.0), DataFormatError, "prior_samples"),
        (lambda: rec.regenerate(torch.zeros(1, N, T, D), None, [1], 0.5), ValueError, "needs the blurry"),
        (lambda: rec.regenerate(torch.zeros(1, N, T, D), torch.full((1, 3, 16, 16), 2.0), [1], 0.5),
         DataFormatError, "blurry must be uint8 or float in"),
        (lambda: rec.regenerate(torch.zeros(1, N, T, D), None, [1], 0.0, projector=torch.zeros(1, 7)),
         DataFormatError, "projector must hold 80 values"),
        (lambda: rec.regenerate(torch.zeros(1, N, T, D), None, [1], 0.0, projector=torch.zeros(2, T, D)),
         DataFormatError, r"projector must hold 80 values per trial \(1, 5, 16\)"),
    ]
    for call, exc, match in bad_calls:
        with pytest.raises(exc, match=match):
            call()
    brain, enc, gen = tiny_brain(), tiny_encoder(), tiny_generator()
    for kw, match in (({"n_samples": 0}, "n_samples must be an integer >= 1"), ({"steps": 0}, "steps must be"),
                      ({"strength": -0.1}, r"strength must be in \[0, 1\]"),
                      ({"trials_per_call": 0}, "trials_per_call")):
        with pytest.raises(ValueError, match=match):
            Reconstructor(brain, enc, gen, **{"strength": 0.0, **kw})


# ------------------------------------------------------------------------------------------ specs
def test_spec_round_trips_through_json_and_yaml(tmp_path: Path) -> None:
    import yaml

    spec = ReconstructionSpec(brain=tmp_path / "brain", encoder={"kind": "openclip-hidden", "source": "x"},
                              generator="demo", lowlevel=str(tmp_path / "low"), vae={"kind": "vae", "source": "v",
                                                                                     "image_size": 16},
                              n_samples=3, steps=7, guidance=2.0)
    d = spec.to_dict()
    assert d["brain"] == str(tmp_path / "brain") and d["n_samples"] == 3
    assert ReconstructionSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert ReconstructionSpec.from_dict(yaml.safe_load(yaml.safe_dump(d))) == spec
    with pytest.raises(ConfigMismatchError, match="unknown keys"):
        ReconstructionSpec.from_dict({**d, "n_sample": 2})
    with pytest.raises(ConfigMismatchError, match="needs a vae"):
        spec.replace(vae=None)
    with pytest.raises(ValueError, match="n_samples"):
        spec.replace(n_samples=0)


def test_presets() -> None:
    nsd = nsd_spec("b", "l")
    assert nsd.encoder == {"kind": "clip-hidden", "source": "openai/clip-vit-large-patch14"}
    assert nsd.generator == {"kind": "versatile-diffusion", "source": "shi-labs/versatile-diffusion"}
    assert nsd.vae["source"] == "shi-labs/versatile-diffusion" and nsd.vae["image_size"] == 512
    assert (nsd.n_samples, nsd.strength, nsd.steps, nsd.guidance, nsd.prior_cond_scale) == (16, 0.15, 20, 3.5, 1.0)
    assert nsd_spec("b").strength == 0.0 and nsd_spec("b").vae is None
    demo = demo_spec("b", "l")
    assert (demo.encoder, demo.generator, demo.vae, demo.n_samples, demo.strength) == ("demo", "demo", "demo", 4, 0.15)
    assert demo_spec("b", n_samples=2).strength == 0.0


def test_from_spec_loads_saved_parts(tmp_path: Path, rec: Reconstructor, out: ReconstructionOutput) -> None:
    rec.brain_model.save_pretrained(tmp_path / "brain")
    rec.lowlevel.save_pretrained(tmp_path / "low")
    rec.generator.save_pretrained(tmp_path / "gen")
    rec.vae.vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(3)
    cfg = tiny_open_clip_cfg(image_size=16, patch_size=8, embed_dim=D)
    save_open_clip_folder(build_open_clip_model(cfg), tmp_path / "clip", cfg)
    spec = ReconstructionSpec(brain=tmp_path / "brain", encoder={"kind": "openclip-hidden", "source": str(tmp_path / "clip")},
                              generator=str(tmp_path / "gen"), lowlevel=tmp_path / "low",
                              vae={"kind": "vae", "source": str(tmp_path / "vae"), "image_size": 16},
                              n_samples=N, strength=0.5, steps=STEPS)
    loaded = Reconstructor.from_spec(spec.to_dict())
    again = loaded.reconstruct(voxels(), [10, 11, 12], strengths=(0.5,))
    assert torch.equal(again.prior_samples, out.prior_samples)
    assert torch.equal(again.candidates[0.5], out.candidates[0.5])
    torch.testing.assert_close(again.scores[0.5], out.scores[0.5], atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigMismatchError, match=r"\(5, 16\).*\(65, 128\)"):
        Reconstructor.from_spec(spec.replace(encoder="demo"))


def test_demo_spec_with_the_shipped_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    create_model("demo-highlevel", n_voxels=64).save_pretrained(tmp_path / "brain")
    create_model("demo-lowlevel", n_voxels=64).save_pretrained(tmp_path / "low")
    rec = Reconstructor.from_spec(demo_spec(tmp_path / "brain", tmp_path / "low", steps=4))
    assert rec.n_samples == 4 and rec.image_size == 64
    res = rec.reconstruct(torch.randn(2, 64), [0, 1])
    assert res.blurry.shape == (2, 3, 64, 64) and res.prior_samples.shape == (2, 4, 65, 128)
    assert res.candidates[0.15].shape == (2, 4, 3, 64, 64) and res.finals[0.15].shape == (2, 3, 64, 64)
    assert torch.isfinite(res.scores[0.15]).all() and res.scores[0.15].abs().max() <= 1 + 1e-5


def test_trials_per_call_batches_trials_without_changing_them(rec: Reconstructor, out: ReconstructionOutput) -> None:
    batched = Reconstructor(rec.brain_model, rec.encoder, rec.generator, rec.lowlevel, rec.vae, n_samples=N,
                            strength=0.5, steps=STEPS, trials_per_call=2)
    res = batched.regenerate(out.prior_samples, out.blurry, out.seeds.tolist(), 0.5, projector=out.projector)
    torch.testing.assert_close(res.candidates, out.candidates[0.5], atol=1e-5, rtol=1e-5)
    assert torch.equal(res.picked, out.picked[0.5])


def test_sample_prior_of_chosen_candidates_equals_the_full_draw(rec: Reconstructor) -> None:
    """``sample_ids`` draws only the chosen candidates, each with its own generator: the same samples as the
    corresponding rows of the full draw (what the app's slider uses to skip the other K - 1)."""
    v = voxels(2, seed=4)
    with torch.no_grad():
        backbone, _ = rec.brain_model(v)
    full = rec.sample_prior(backbone, [21, 22])
    some = rec.sample_prior(backbone, [21, 22], sample_ids=[[N - 1], [0]])
    assert some.shape == (2, 1, *full.shape[2:]) and some.dtype == torch.float16
    torch.testing.assert_close(some[0, 0].float(), full[0, N - 1].float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(some[1, 0].float(), full[1, 0].float(), atol=2e-3, rtol=0)
    for bad in ([[0]], [[0], [N]], [[0, 1], [0]]):
        with pytest.raises(ValueError, match="sample_ids must be 2 equal-length lists"):
            rec.sample_prior(backbone, [21, 22], sample_ids=bad)
