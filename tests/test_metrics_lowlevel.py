"""PixCorr and SSIM against independent references (numpy, scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray as sk_rgb2gray
from skimage.metrics import structural_similarity

from mindeye_core.errors import DataFormatError
from mindeye_core.metrics import lowlevel as ll


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish random images so SSIM is not trivially ~0
    base = rng.random((n, -(-size // 8), -(-size // 8), 3))
    up = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :size, :size]
    return np.clip(up + 0.1 * rng.standard_normal(up.shape), 0, 1)


def test_pixcorr_matches_numpy_corrcoef() -> None:
    gts = _images(4, 64, 0)
    recons = np.clip(0.6 * gts + 0.4 * _images(4, 64, 1), 0, 1)
    got = ll.pixcorr_per_image(recons, gts)
    g = ll.lowlevel_preprocess(torch.from_numpy(gts).permute(0, 3, 1, 2)).reshape(4, -1).numpy()
    r = ll.lowlevel_preprocess(torch.from_numpy(recons).permute(0, 3, 1, 2)).reshape(4, -1).numpy()
    want = np.array([np.corrcoef(g[i], r[i])[0, 1] for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert ll.pixcorr(recons, gts) == pytest.approx(want.mean())
    assert ll.pixcorr(gts, gts) == pytest.approx(1.0)


def test_pixcorr_at_425_equals_plain_corrcoef_without_resize() -> None:
    gts = _images(2, 425, 2)  # 425 px: the resize is the identity
    recons = _images(2, 425, 3)
    assert gts.shape == (2, 425, 425, 3)
    want = [np.corrcoef(gts[i].transpose(2, 0, 1).ravel(), recons[i].transpose(2, 0, 1).ravel())[0, 1] for i in range(2)]
    np.testing.assert_allclose(ll.pixcorr_per_image(recons, gts), want, rtol=1e-10)


def test_layouts_and_uint8_agree() -> None:
    gts = _images(3, 48, 4)
    recons = _images(3, 48, 5)
    a = ll.pixcorr_per_image(recons, gts)
    b = ll.pixcorr_per_image(torch.from_numpy(recons).permute(0, 3, 1, 2), torch.from_numpy(gts).permute(0, 3, 1, 2))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    u8 = ll.pixcorr_per_image((recons * 255).round().astype(np.uint8), (gts * 255).round().astype(np.uint8))
    np.testing.assert_allclose(a, u8, atol=2e-3)


def test_ssim_matches_skimage_2d() -> None:
    gts = _images(3, 425, 6)  # already 425: the resize is the identity, compare SSIM itself
    recons = np.clip(0.5 * gts + 0.5 * _images(3, 425, 7), 0, 1)
    got = ll.ssim_per_image(recons, gts)
    want = [
        structural_similarity(
            sk_rgb2gray(recons[i]), sk_rgb2gray(gts[i]), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    assert ll.ssim(gts, gts) == pytest.approx(1.0)


def test_ssim_with_resize_matches_skimage_on_resized_images() -> None:
    gts = _images(2, 96, 8)
    recons = _images(2, 96, 9)
    got = ll.ssim_per_image(recons, gts)
    g = ll.lowlevel_preprocess(torch.from_numpy(gts).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    r = ll.lowlevel_preprocess(torch.from_numpy(recons).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert g.shape == (2, 425, 425, 3)
    want = [
        structural_similarity(sk_rgb2gray(r[i]), sk_rgb2gray(g[i]), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0)
        for i in range(2)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_paper_parity_ssim_is_skimage_multichannel_quirk() -> None:
    """The official call ssim(gray, gray, multichannel=True) = columns treated as channels."""
    gts = _images(2, 256, 10)  # 256 px: the first parity resize is the identity
    recons = _images(2, 256, 11)
    got = ll.ssim_per_image(recons, gts, paper_parity=True)
    g = ll.resize(torch.from_numpy(gts).permute(0, 3, 1, 2), 425, antialias=False).permute(0, 2, 3, 1).numpy()
    r = ll.resize(torch.from_numpy(recons).permute(0, 3, 1, 2), 425, antialias=False).permute(0, 2, 3, 1).numpy()
    want = [
        structural_similarity(sk_rgb2gray(r[i]), sk_rgb2gray(g[i]), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0, channel_axis=-1)
        for i in range(2)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    assert not np.allclose(got, ll.ssim_per_image(recons, gts))


def test_paper_parity_resizes_to_256_first() -> None:
    x = torch.from_numpy(_images(1, 512, 12)).permute(0, 3, 1, 2)
    direct = ll.lowlevel_preprocess(x)
    parity = ll.lowlevel_preprocess(x, paper_parity=True)
    via256 = ll.resize(ll.resize(x, (256, 256), antialias=False), 425, antialias=False)
    assert parity.shape == direct.shape == (1, 3, 425, 425)
    torch.testing.assert_close(parity, via256)
    assert not torch.allclose(parity, direct)


def test_bad_inputs_raise_clear_errors() -> None:
    gts = _images(3, 32, 13)
    with pytest.raises(DataFormatError, match="got 2 reconstructions but 3 ground-truth"):
        ll.pixcorr(gts[:2], gts)
    with pytest.raises(DataFormatError, match=r"must lie in \[0, 1\]"):
        ll.ssim(gts * 2, gts)
    with pytest.raises(DataFormatError, match=r"must lie in \[0, 1\]"):
        ll.pixcorr(gts - 0.5, gts)
    nan = gts.copy()
    nan[1, 0, 0, 0] = np.nan
    with pytest.raises(DataFormatError, match="NaN/inf values \\(first in image 1\\)"):
        ll.pixcorr(nan, gts)
    with pytest.raises(DataFormatError, match="3 colour channels"):
        ll.pixcorr(gts[..., :2], gts[..., :2])
    with pytest.raises(DataFormatError, match="not in the same order: 2 of 3 ids differ"):
        ll.pixcorr(gts, gts, recon_ids=[5, 6, 7], gt_ids=[5, 7, 6])
    with pytest.raises(DataFormatError, match="constant image"):
        ll.pixcorr(np.full_like(gts, 0.5), gts)
    with pytest.raises(DataFormatError, match="uint8 or floating point"):
        ll.pixcorr(gts.astype(np.int32), gts)


def test_torch_and_scipy_ssim_paths_agree() -> None:
    rng = np.random.default_rng(14)
    x = torch.from_numpy(rng.random((3, 40, 50)))
    y = torch.from_numpy(np.clip(x.numpy() + 0.2 * rng.random((3, 40, 50)), 0, 1))
    for cols in (False, True):
        cpu = ll.ssim_gray(x, y, columns_only=cols)  # scipy path
        # the device (CUDA) path is a shifted-slice sum; written out here to compare with the scipy CPU path
        k = ll.gaussian_kernel1d()
        r = (k.numel() - 1) // 2

        def filt(t: torch.Tensor) -> torch.Tensor:
            n_h = t.shape[-2] - 2 * r
            out = sum(float(k[i]) * t[..., i : i + n_h, :] for i in range(k.numel()))
            if cols:
                return out
            n_w = t.shape[-1] - 2 * r
            return sum(float(k[i]) * out[..., i : i + n_w] for i in range(k.numel()))

        ref = ll._ssim_from_moments(filt(x), filt(y), filt(x * x), filt(y * y), filt(x * y), 1.0).flatten(1).mean(dim=1)
        torch.testing.assert_close(cpu, ref, rtol=1e-10, atol=1e-12)
