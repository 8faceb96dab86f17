"""Low-level reconstruction metrics: PixCorr and SSIM, with the paper's protocol.

Protocol (MindEye Table 1, following Ozcelik & VanRullen 2023):

* **PixCorr**: both images resized to 425 px (bilinear, shorter side), then the Pearson correlation over
  all ``3 * 425 * 425`` pixel values of an image pair; mean over pairs::

      pixcorr = mean_i  corr(flatten(resize(gt_i)), flatten(resize(recon_i)))

* **SSIM**: both images resized to 425 px, converted to grayscale with scikit-image's ``rgb2gray``
  (``0.2125 R + 0.7154 G + 0.0721 B``), then SSIM (Wang et al. 2004) with Gaussian weights (sigma 1.5,
  11 taps), population covariance, ``data_range = 1``, ``K1 = 0.01``, ``K2 = 0.03``; the SSIM map is
  averaged over the interior (5 px cropped on each side, exactly as scikit-image does); mean over pairs.
  This is a true 2-D SSIM and agrees with
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)`` to float precision (tested).

``paper_parity=True`` reproduces what the released MindEye evaluation code (``Reconstruction_Metrics.py``)
actually computed, which differs from the description above in three ways:

1. every image (ground truth and reconstruction) is first resized to 256 x 256 (the display cell of the
   notebook resizes them and every metric then reuses the resized tensors), then to 425 px;
2. the resizes ran on tensors with torchvision 0.14, i.e. **without** antialiasing (we use
   ``antialias=True`` by default, which only matters when downscaling);
3. SSIM was called with ``multichannel=True`` on a 2-D grayscale image, so scikit-image treated the last
   axis (the 425 columns) as channels: the published SSIM is the mean over columns of a 1-D SSIM computed
   down each column. ``paper_parity=True`` computes exactly that.

Images are accepted as numpy arrays or torch tensors, ``(N, H, W, 3)`` or ``(N, 3, H, W)``, either
``uint8`` (divided by 255) or floating point in ``[0, 1]``. Anything else raises
:class:`~mindeye_core.errors.DataFormatError`. Work is done in batches, so 1000 images at 425 px never need
to be held as float64 at once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DataFormatError

LOWLEVEL_SIZE = 425
"""Resolution (px) at which PixCorr and SSIM are computed."""

PAPER_PRE_RESIZE = 256
"""The official code resizes every image to 256 x 256 before any metric (``paper_parity``)."""

RGB2GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
"""scikit-image ``rgb2gray`` coefficients (ITU-R BT.709 luma)."""

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# ------------------------------------------------------------------------------------------ image input
class ImageBatch:
    """A validated batch of RGB images that yields float tensors ``(n, 3, H, W)`` in [0, 1] chunk by chunk.

    Args:
        images: ``(N, H, W, 3)`` or ``(N, 3, H, W)`` numpy array or torch tensor; ``uint8`` or float in
            ``[0, 1]``. A tensor/array with ``shape[1] == 3`` is read as channels-first, otherwise the
            last axis must be 3.
        name: used in error messages (e.g. ``"reconstructions"``).

    Raises:
        DataFormatError: wrong rank/channels, non-finite values, or floats outside [0, 1].
    """

    def __init__(self, images: Any, name: str = "images") -> None:
        self.name = name
        if isinstance(images, ImageBatch):
            self.data: Any = images.data
            self.channels_first: bool = images.channels_first
            self.scale: float = images.scale
            return
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            images = np.asarray(images)
        shape = tuple(images.shape)
        if len(shape) != 4:
            raise DataFormatError(f"{name}: expected a 4-D image batch (N, H, W, 3) or (N, 3, H, W), got shape {shape}")
        if shape[1] == 3:
            self.channels_first = True
        elif shape[3] == 3:
            self.channels_first = False
        else:
            raise DataFormatError(f"{name}: expected 3 colour channels (N, H, W, 3) or (N, 3, H, W), got shape {shape}")
        dtype = images.dtype
        is_uint8 = dtype in (np.uint8, torch.uint8)
        if is_uint8:
            self.scale = 1.0 / 255.0
        else:
            is_float = (isinstance(images, torch.Tensor) and images.is_floating_point()) or (
                isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating)
            )
            if not is_float:
                raise DataFormatError(f"{name}: images must be uint8 or floating point in [0, 1], got dtype {dtype}")
            self.scale = 1.0
            arr = images.detach() if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
            if shape[0] > 0:
                finite = torch.isfinite(arr)
                if not bool(finite.all()):
                    first = int(torch.nonzero(~finite.reshape(shape[0], -1).all(dim=1))[0, 0])
                    raise DataFormatError(f"{name}: contains NaN/inf values (first in image {first})")
                lo, hi = float(arr.min()), float(arr.max())
                if lo < 0.0 or hi > 1.0:
                    raise DataFormatError(
                        f"{name}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                        "(clamp generator outputs to [0, 1] or pass uint8)"
                    )
        self.data = images

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        s = self.data.shape
        return (int(s[2]), int(s[3])) if self.channels_first else (int(s[1]), int(s[2]))

    def get(self, start: int, stop: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images ``start:stop`` as a ``(n, 3, H, W)`` tensor in [0, 1]."""
        chunk = self.data[start:stop]
        t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
        t = t.to(device=device)
        if not self.channels_first:
            t = t.permute(0, 3, 1, 2)
        t = t.to(dtype)
        if self.scale != 1.0:
            t = t * self.scale
        return t.contiguous()


def check_pairs(
    recons: ImageBatch | Any,
    gts: ImageBatch | Any,
    recon_ids: Sequence[int] | np.ndarray | None = None,
    gt_ids: Sequence[int] | np.ndarray | None = None,
    *,
    what: str = "reconstructions",
) -> tuple[ImageBatch, ImageBatch]:
    """Validate that ``recons[i]`` is paired with ``gts[i]``.

    Args:
        recons, gts: image batches (see :class:`ImageBatch`).
        recon_ids, gt_ids: optional ``(N,)`` identifiers (e.g. dataset image indices) of each row; when
            given they must be equal element-wise, which catches a reordered or shifted array.

    Raises:
        DataFormatError: different counts, empty input, or ids that do not line up.
    """
    r = ImageBatch(recons, what)
    g = ImageBatch(gts, "ground truths")
    if len(r) != len(g):
        raise DataFormatError(f"got {len(r)} {what} but {len(g)} ground-truth images; they must be paired 1:1")
    if len(r) == 0:
        raise DataFormatError(f"no {what} to evaluate")
    check_ids(recon_ids, gt_ids, len(r), what=what)
    return r, g


def check_ids(a: Any, b: Any, n: int, *, what: str = "reconstructions", other: str = "ground truths") -> None:
    """Raise :class:`DataFormatError` unless ids ``a`` and ``b`` (both optional) are equal ``(n,)`` arrays."""
    if a is None and b is None:
        return
    if a is None or b is None:
        raise DataFormatError(f"ids given for only one side of the {what}/{other} pairing; give both or neither")
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != (n,) or b.shape != (n,):
        raise DataFormatError(f"ids must have shape ({n},), got {a.shape} and {b.shape}")
    diff = np.nonzero(a != b)[0]
    if diff.size:
        i = int(diff[0])
        raise DataFormatError(
            f"{what} and {other} are not in the same order: {diff.size} of {n} ids differ "
            f"(first at row {i}: {a[i]!r} vs {b[i]!r})"
        )


def resize(images: torch.Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of ``(n, C, H, W)``; an int resizes the shorter side (torchvision ``Resize(int)``)."""
    return TF.resize(images, size if isinstance(size, int) else list(size), interpolation=InterpolationMode.BILINEAR, antialias=antialias)


def lowlevel_preprocess(images: torch.Tensor, *, paper_parity: bool = False) -> torch.Tensor:
    """The resize chain before PixCorr/SSIM: ``(n, 3, H, W) -> (n, 3, 425, 425)`` for square inputs.

    Default: one antialiased bilinear resize to 425 px. ``paper_parity``: 256 x 256 then 425 px, both
    without antialiasing (the official code on torchvision 0.14).
    """
    if paper_parity:
        images = resize(images, (PAPER_PRE_RESIZE, PAPER_PRE_RESIZE), antialias=False)
        return resize(images, LOWLEVEL_SIZE, antialias=False)
    return resize(images, LOWLEVEL_SIZE, antialias=True)


def rgb2gray(images: torch.Tensor) -> torch.Tensor:
    """``(n, 3, H, W) -> (n, H, W)`` with scikit-image's coefficients ``0.2125 R + 0.7154 G + 0.0721 B``."""
    w = torch.tensor(RGB2GRAY_WEIGHTS, dtype=images.dtype, device=images.device)
    return torch.einsum("nchw,c->nhw", images, w)


# ---------------------------------------------------------------------------------------------- PixCorr
def _batched(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def pixcorr_per_image(
    recons: Any,
    gts: Any,
    *,
    paper_parity: bool = False,
    recon_ids: Any = None,
    gt_ids: Any = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Pearson r between each reconstruction and its ground truth over all pixels at 425 px.

    Args:
        recons, gts: N paired images (see :class:`ImageBatch`).
        paper_parity: use the official code's resize chain (see module docstring).
        recon_ids, gt_ids: optional ids checked for equal order.

    Returns:
        ``(N,)`` float64, ``r_i = corr(flatten(gt_i), flatten(recon_i))``.

    Raises:
        DataFormatError: bad input, or a constant image (correlation undefined).
    """
    r, g = check_pairs(recons, gts, recon_ids, gt_ids)
    out = np.empty(len(r), dtype=np.float64)
    for s, e in _batched(len(r), batch_size):
        a = lowlevel_preprocess(r.get(s, e, torch.float64, device), paper_parity=paper_parity).flatten(1)
        b = lowlevel_preprocess(g.get(s, e, torch.float64, device), paper_parity=paper_parity).flatten(1)
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
        na, nb = a.norm(dim=1), b.norm(dim=1)
        bad = torch.nonzero((na == 0) | (nb == 0))
        if bad.numel():
            raise DataFormatError(f"PixCorr undefined: image pair {s + int(bad[0, 0])} has a constant image")
        out[s:e] = ((a * b).sum(dim=1) / (na * nb)).cpu().numpy()
    return out


def pixcorr(recons: Any, gts: Any, **kwargs: Any) -> float:
    """Mean PixCorr over pairs (paper Table 1 "PixCorr"); arguments as :func:`pixcorr_per_image`."""
    return float(pixcorr_per_image(recons, gts, **kwargs).mean())


# ------------------------------------------------------------------------------------------------- SSIM
def gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """scipy.ndimage's normalised Gaussian taps: radius ``int(truncate * sigma + 0.5)`` (11 taps for 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _ssim_from_moments(ux: torch.Tensor, uy: torch.Tensor, uxx: torch.Tensor, uyy: torch.Tensor, uxy: torch.Tensor, data_range: float) -> torch.Tensor:
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    vx = uxx - ux * ux  # population covariance (cov_norm = 1)
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_gray(x: torch.Tensor, y: torch.Tensor, *, columns_only: bool = False, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of grayscale pairs ``(n, H, W)``, Gaussian weights, interior crop; returns ``(n,)``.

    ``columns_only=False``: separable 2-D Gaussian filter; only "valid" positions (at least 5 px from every
    border) are computed, which is exactly scikit-image's crop, so the reflect padding never matters.
    ``columns_only=True``: 1-D SSIM down each column (the official code's ``multichannel`` quirk), mean
    over all columns.
    """
    k = gaussian_kernel1d(dtype=x.dtype).to(x.device)
    radius = (k.numel() - 1) // 2
    h, w = x.shape[-2:]
    if h <= 2 * radius or (not columns_only and w <= 2 * radius):
        raise DataFormatError(f"SSIM needs images larger than {2 * radius + 1} px, got {h}x{w}")
    taps = [float(w) for w in k]
    if x.device.type == "cpu":
        return torch.from_numpy(_ssim_gray_scipy(x.numpy(), y.numpy(), k.numpy(), radius, columns_only, data_range))

    def filt(t: torch.Tensor) -> torch.Tensor:
        # "valid" correlation with the symmetric taps as a sum of shifted slices (exact, and much faster
        # than float64 conv2d on CPU)
        n_h = t.shape[-2] - 2 * radius
        out = taps[0] * t[..., 0:n_h, :]
        for i in range(1, len(taps)):
            out = out + taps[i] * t[..., i : i + n_h, :]
        if columns_only:
            return out
        n_w = t.shape[-1] - 2 * radius
        res = taps[0] * out[..., 0:n_w]
        for i in range(1, len(taps)):
            res = res + taps[i] * out[..., i : i + n_w]
        return res

    s = _ssim_from_moments(filt(x), filt(y), filt(x * x), filt(y * y), filt(x * y), data_range)
    return s.flatten(1).mean(dim=1)


def _ssim_gray_scipy(x: np.ndarray, y: np.ndarray, taps: np.ndarray, radius: int, columns_only: bool, data_range: float) -> np.ndarray:
    """CPU path of :func:`ssim_gray`: scipy.ndimage's separable correlation (what scikit-image uses), then
    the interior crop. ~6x faster than the torch path on CPU; the torch path serves CUDA."""
    from scipy.ndimage import correlate1d

    def filt(t: np.ndarray) -> np.ndarray:  # one 2-D image at a time: scipy is fastest on contiguous 2-D
        out = correlate1d(t, taps, axis=0, mode="reflect")
        if not columns_only:
            out = correlate1d(out, taps, axis=1, mode="reflect")
        out = out[radius:-radius]
        return out if columns_only else out[:, radius:-radius]

    res = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        a = np.ascontiguousarray(x[i], dtype=np.float64)
        b = np.ascontiguousarray(y[i], dtype=np.float64)
        m = [filt(v) for v in (a, b, a * a, b * b, a * b)]
        res[i] = float(_ssim_from_moments(*m, data_range).mean())  # type: ignore[arg-type]  # plain arithmetic
    return res


def ssim_per_image(
    recons: Any,
    gts: Any,
    *,
    paper_parity: bool = False,
    recon_ids: Any = None,
    gt_ids: Any = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """SSIM of each reconstruction against its ground truth (grayscale, 425 px); ``(N,)`` float64.

    See the module docstring for the exact protocol and what ``paper_parity`` changes.
    """
    r, g = check_pairs(recons, gts, recon_ids, gt_ids)
    out = np.empty(len(r), dtype=np.float64)
    for s, e in _batched(len(r), batch_size):
        a = rgb2gray(lowlevel_preprocess(r.get(s, e, torch.float64, device), paper_parity=paper_parity))
        b = rgb2gray(lowlevel_preprocess(g.get(s, e, torch.float64, device), paper_parity=paper_parity))
        # skimage call order in the official code: ssim(recon, gt); SSIM is symmetric anyway.
        out[s:e] = ssim_gray(a, b, columns_only=paper_parity).cpu().numpy()
    return out


def ssim(recons: Any, gts: Any, **kwargs: Any) -> float:
    """Mean SSIM over pairs (paper Table 1 "SSIM"); arguments as :func:`ssim_per_image`."""
    return float(ssim_per_image(recons, gts, **kwargs).mean())

