"""Training schedule, optimizer groups, OneCycle, autocast helper and the objectives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mindeye_core.losses import mixco_nce, soft_clip_loss
from mindeye_core.models import create_model
from mindeye_core.schedule import (
    TrainingSchedule,
    autocast,
    autocast_dtype,
    build_lr_scheduler,
    build_optimizer,
    highlevel_loss,
    lowlevel_loss,
    param_groups,
)


def test_official_schedule_phases_and_temperatures() -> None:
    s = TrainingSchedule(steps_per_epoch=10)
    assert s.mixup_epochs == 79  # int(0.33 * 240)
    for epoch in (0, 40, 78):
        plan = s.at(epoch, 3)
        assert (plan.mode, plan.temperature, plan.use_mixco, plan.prior_weight) == ("bimixco", 0.006, True, 30.0)
    temps = [s.temperature(e) for e in range(79, 240)]
    assert all(s.loss_mode(e) == "softclip" for e in range(79, 240))
    assert temps[0] == pytest.approx(0.004) and temps[-1] == pytest.approx(0.0075)
    assert all(b > a for a, b in zip(temps, temps[1:]))  # annealed upwards
    k = len(temps)
    for i in (0, 37, 80, k - 1):  # explicit cosine formula
        assert temps[i] == pytest.approx(0.0075 + (0.004 - 0.0075) / 2 * (1 + math.cos(math.pi * i / (k - 1))))
    assert s.at(100, 0).temperature == s.at(100, 9).temperature  # per-epoch temperature
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 240\), got 240"):
        s.at(240)
    with pytest.raises(ValueError, match=r"step must be in \[0, 10\)"):
        s.at(0, 10)
    with pytest.raises(ValueError, match="mixup_pct"):
        TrainingSchedule(steps_per_epoch=1, mixup_pct=1.5)


def test_param_groups_exclude_biases_and_norms() -> None:
    model = create_model("test-highlevel")
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids_decay = {id(p) for p in decay["params"]}
    ids_no = {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_no
    assert ids_decay | ids_no == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm))
        expected_no_decay = name.endswith(".bias") or is_norm
        assert (id(p) in ids_no) == expected_no_decay, name
    # a Linear weight decays, the first LayerNorm does not
    assert id(model.brain.backbone.lin0[0].weight) in ids_decay
    assert id(model.brain.backbone.lin0[1].weight) in ids_no
    # frozen parameters are left out
    model.prior.requires_grad_(False)
    total = sum(len(g["params"]) for g in param_groups(model))
    assert total == len(list(model.brain.parameters()))


def test_onecycle_matches_official_settings() -> None:
    s = TrainingSchedule(steps_per_epoch=10, num_epochs=20)
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, s)
    sched = build_lr_scheduler(opt, s)
    lrs = []
    for _ in range(s.total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(3e-4 / 25)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert abs(peak - 20) <= 1  # 2 warm-up epochs x 10 steps
    assert max(lrs) == pytest.approx(3e-4)
    assert lrs[-1] == pytest.approx(3e-4 / 25 / 1000, rel=0.05)
    assert isinstance(opt, torch.optim.AdamW)


def test_autocast_helper() -> None:
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "auto") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("cpu", "fp8")
    lin = nn.Linear(4, 4)
    with autocast("cpu", "bf16") as dtype:
        assert dtype is torch.bfloat16 and lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("cpu", "fp32") as dtype:
        assert dtype is None and lin(torch.randn(2, 4)).dtype == torch.float32


def test_highlevel_loss_follows_the_plan() -> None:
    torch.manual_seed(0)
    model = create_model("test-highlevel").eval()  # eval: deterministic dropout for the comparison
    s = TrainingSchedule(steps_per_epoch=4, num_epochs=6)
    x, t = torch.randn(8, 50), torch.randn(8, 5, 16)
    soft = highlevel_loss(model, x, t, s.at(5), schedule=s, generator=torch.Generator().manual_seed(1))
    backbone, proj = model(x)
    torch.testing.assert_close(soft["contrastive"], soft_clip_loss(proj, t, s.temperature(5)))
    torch.testing.assert_close(soft["loss"], soft["contrastive"] + 30.0 * soft["prior"])
    mixed = highlevel_loss(model, x, t, s.at(0), schedule=s, generator=torch.Generator().manual_seed(1))
    assert mixed["contrastive"].item() != pytest.approx(mixco_nce(proj, t, 0.006).item())  # voxels were mixed
    for out in (soft, mixed):
        assert all(torch.isfinite(out[k]) for k in ("loss", "contrastive", "prior"))


def test_highlevel_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    model = create_model("test-highlevel", dropout_in=0.0, dropout_block=0.0)
    s = TrainingSchedule(steps_per_epoch=60, num_epochs=3, warmup_epochs=0.3, max_lr=3e-3)
    opt = build_optimizer(model, s)
    sched = build_lr_scheduler(opt, s)
    x, t = torch.randn(16, 50), torch.randn(16, 5, 16) / 4  # tokens of norm ~1, like normalised CLIP
    plan = s.at(2)
    g = torch.Generator().manual_seed(0)

    def evaluate() -> float:
        with torch.no_grad():
            return highlevel_loss(model, x, t, plan, generator=torch.Generator().manual_seed(9))["loss"].item()

    before = evaluate()
    for step in range(s.steps_per_epoch):
        out = highlevel_loss(model, x, t, plan, schedule=s, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        sched.step()
    after = evaluate()
    assert after < 0.7 * before, (before, after)


def test_lowlevel_loss() -> None:
    torch.manual_seed(0)
    model = create_model("test-lowlevel").eval()
    x = torch.randn(3, 50)
    latents = torch.randn(3, 4, 8, 8)
    teacher = torch.randn(3, 16, 16)
    out = lowlevel_loss(model, x, latents, teacher, teacher + 0.1)
    torch.testing.assert_close(out["l1"], (model(x)[0] - latents).abs().mean())
    torch.testing.assert_close(out["loss"], out["l1"] + 0.1 * out["contrastive"])
    assert lowlevel_loss(model, x, latents)["contrastive"].item() == 0.0
    with pytest.raises(ValueError, match="does not match the model output"):
        lowlevel_loss(model, x, torch.randn(3, 4, 16, 16))
