"""Losses vs direct loop-based evaluations of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mindeye_core.losses import clip_loss_targets, mixco, mixco_nce, soft_clip_loss, soft_cont_loss


def _unit(x: torch.Tensor) -> list[list[float]]:
    x = x.flatten(1).double()
    return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x.tolist()]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _log_softmax(logits: list[float], k: int) -> float:
    m = max(logits)
    return logits[k] - m - math.log(sum(math.exp(v - m) for v in logits))


def _softmax(logits: list[float], k: int) -> float:
    return math.exp(_log_softmax(logits, k))


def ref_mixco_nce(preds, targets, temp, perm=None, betas=None, bidirectional=True) -> float:
    """Eq. (2) with per-row normalisers, written as explicit sums over the batch."""
    p, t = _unit(preds), _unit(targets)
    n = len(p)
    lam = [1.0] * n if betas is None else [float(b) for b in betas]
    k = list(range(n)) if perm is None else [int(v) for v in perm]
    fwd = 0.0
    for i in range(n):
        row = [_dot(p[i], t[m]) / temp for m in range(n)]
        fwd -= lam[i] * _log_softmax(row, i) + (1 - lam[i]) * _log_softmax(row, k[i])
    fwd /= n
    if not bidirectional:
        return fwd
    bwd = 0.0
    for j in range(n):
        col = [_dot(p[m], t[j]) / temp for m in range(n)]
        bwd -= lam[j] * _log_softmax(col, j)
        for l in range(n):
            if k[l] == j:
                bwd -= (1 - lam[l]) * _log_softmax(col, l)
    bwd /= n
    return (fwd + bwd) / 2


def ref_soft_clip(preds, targets, temp) -> float:
    p, t = _unit(preds), _unit(targets)
    n = len(p)
    fwd = bwd = 0.0
    for i in range(n):
        teach = [_dot(t[i], t[m]) / temp for m in range(n)]
        stud = [_dot(p[i], t[m]) / temp for m in range(n)]
        for j in range(n):
            fwd -= _softmax(teach, j) * _log_softmax(stud, j)
    for j in range(n):
        teach = [_dot(t[m], t[j]) / temp for m in range(n)]
        stud = [_dot(p[m], t[j]) / temp for m in range(n)]
        for i in range(n):
            bwd -= _softmax(teach, i) * _log_softmax(stud, i)
    return (fwd / n + bwd / n) / 2


def ref_soft_cont(s, u, a, temp) -> float:
    s = _unit(s.reshape(-1, s.shape[-1]))
    u = _unit(u.reshape(-1, u.shape[-1]))
    a = _unit(a.reshape(-1, a.shape[-1]))
    n = len(s)
    fwd = bwd = 0.0
    for i in range(n):
        teach = [_dot(u[i], a[j]) / temp for j in range(n)]
        stud = [_dot(s[i], a[j]) / temp for j in range(n)]
        fwd -= sum(_softmax(teach, j) * _log_softmax(stud, j) for j in range(n))
        teach = [_dot(a[i], u[j]) / temp for j in range(n)]
        stud = [_dot(a[i], s[j]) / temp for j in range(n)]
        bwd -= sum(_softmax(teach, j) * _log_softmax(stud, j) for j in range(n))
    return (fwd / n + bwd / n) / 2


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    preds = targets + 0.8 * torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    return preds, targets


@pytest.mark.parametrize("temp", [0.05, 0.5])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_clip_loss_without_mixing_matches_reference(batch, temp: float, bidirectional: bool) -> None:
    preds, targets = batch
    got = mixco_nce(preds, targets, temp=temp, bidirectional=bidirectional)
    assert got.item() == pytest.approx(ref_mixco_nce(preds, targets, temp, bidirectional=bidirectional), rel=1e-10)


def test_bimixco_matches_reference_including_self_permutation(batch) -> None:
    preds, targets = batch
    perm = torch.tensor([2, 1, 0, 5, 3, 4])  # perm[1] == 1: a sample mixed with itself
    betas = torch.tensor([0.3, 0.2, 1.0, 0.9, 0.05, 0.6], dtype=torch.float64)
    got = mixco_nce(preds, targets, temp=0.1, perm=perm, betas=betas)
    assert got.item() == pytest.approx(ref_mixco_nce(preds, targets, 0.1, perm, betas), rel=1e-10)
    fwd = mixco_nce(preds, targets, temp=0.1, perm=perm, betas=betas, bidirectional=False)
    assert fwd.item() == pytest.approx(ref_mixco_nce(preds, targets, 0.1, perm, betas, False), rel=1e-10)
    # targets of a self-mixed row are one-hot; every row sums to one
    probs = clip_loss_targets(6, perm, betas)
    assert probs[1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(probs.sum(1), torch.ones(6))


def test_identity_permutation_reduces_to_clip_loss(batch) -> None:
    preds, targets = batch
    perm = torch.arange(6)
    betas = torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mixed = mixco_nce(preds, targets, temp=0.2, perm=perm, betas=betas)
    plain = mixco_nce(preds, targets, temp=0.2)
    assert mixed.item() == pytest.approx(plain.item(), rel=1e-12)


@pytest.mark.parametrize("temp", [0.004, 0.0075, 0.3])
def test_soft_clip_matches_reference(batch, temp: float) -> None:
    preds, targets = batch
    assert soft_clip_loss(preds, targets, temp).item() == pytest.approx(ref_soft_clip(preds, targets, temp), rel=1e-9)


def test_soft_cont_matches_reference() -> None:
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    aug = teacher + 0.3 * torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    student = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    got = soft_cont_loss(student, teacher, aug, temp=0.075)
    assert got.item() == pytest.approx(ref_soft_cont(student, teacher, aug, 0.075), rel=1e-9)


def test_losses_are_invariant_to_scale_and_have_finite_gradients(batch) -> None:
    preds, targets = (x.float() for x in batch)
    for fn in (
        lambda p: mixco_nce(p, targets, 0.006),
        lambda p: mixco_nce(p, targets, 0.006, perm=torch.tensor([1, 0, 2, 4, 5, 3]), betas=torch.full((6,), 0.3)),
        lambda p: soft_clip_loss(p, targets, 0.004),
        lambda p: soft_cont_loss(p, targets, targets.flip(0), 0.075),
    ):
        p = preds.clone().requires_grad_(True)
        loss = fn(p)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        assert fn(preds * 7.0).item() == pytest.approx(loss.item(), rel=1e-5)


def test_perfect_predictions_beat_random_ones(batch) -> None:
    preds, targets = batch
    assert mixco_nce(targets, targets, 0.05) < mixco_nce(preds, targets, 0.05)
    assert soft_clip_loss(targets, targets, 0.05) < soft_clip_loss(preds, targets, 0.05)


def test_mixco_mixes_selected_rows_only_and_is_reproducible() -> None:
    voxels = torch.randn(64, 10, generator=torch.Generator().manual_seed(3))
    original = voxels.clone()
    mixed, perm, betas, select = mixco(voxels, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(voxels, original)  # input untouched
    assert sorted(perm.tolist()) == list(range(64))
    assert 10 < int(select.sum()) < 54  # ~ half selected
    assert (betas[~select] == 1).all() and ((betas[select] >= 0) & (betas[select] <= 1)).all()
    for i in range(64):
        expected = betas[i] * original[i] + (1 - betas[i]) * original[perm[i]] if select[i] else original[i]
        torch.testing.assert_close(mixed[i], expected)
    again = mixco(original, generator=torch.Generator().manual_seed(4))
    for a, b in zip(again, (mixed, perm, betas, select)):
        assert torch.equal(a, b)
    # Beta(0.15, 0.15) is U-shaped: most draws near 0 or 1
    _, _, many, sel = mixco(torch.zeros(4000, 1), s_thresh=1.0, generator=torch.Generator().manual_seed(5))
    assert sel.all() and ((many < 0.1) | (many > 0.9)).float().mean() > 0.6


def test_loss_input_errors(batch) -> None:
    preds, targets = batch
    with pytest.raises(ValueError, match="same batch size, got 5 and 6"):
        mixco_nce(preds[:5], targets)
    with pytest.raises(ValueError, match="same embedding size"):
        soft_clip_loss(preds[:, :2], targets)
    with pytest.raises(ValueError, match="temperature must be positive"):
        soft_clip_loss(preds, targets, 0.0)
    with pytest.raises(ValueError, match="both perm and betas"):
        mixco_nce(preds, targets, perm=torch.arange(6))
    with pytest.raises(ValueError, match="same shape"):
        soft_cont_loss(preds, targets, targets[:3])
