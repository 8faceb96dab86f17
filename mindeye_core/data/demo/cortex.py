"""A simulated visual cortex: noiseless voxel responses of the demo world's subjects.

The image spans ``FIELD_OF_VIEW_DEG`` = 8 degrees of visual angle (NSD: 8.4), centred on fixation.

Early visual areas (V1, V2, V3, hV4): image-computable population-receptive-field (pRF) models
----------------------------------------------------------------------------------------------
1. **Channels** ``F_c(x)`` (C = 18 maps, computed at full resolution then 2x2 average-pooled):

   * 12 Gabor-energy channels on the luminance image ``Y``: for spatial frequencies ``f_s`` (3 octave-
     spaced bands, 3/32, 6/32 and 12/32 cycles/pixel = 0.75, 1.5 and 3 cycles/degree at 64 px) and
     orientations ``theta_o`` (0, 45, 90, 135 degrees)::

         E_so(x) = | IFFT( FFT(Y) * H_so ) |(x),   H_so(k) = exp(-|k - f_s u(theta_o)|^2 / (2 (0.35 f_s)^2))

     ``H_so`` is one-sided in frequency, so the complex output is the quadrature pair (even + i odd)
     and its modulus the phase-invariant energy (Adelson & Bergen 1985).
   * 6 colour/luminance channels: sRGB -> linear RGB (gamma 2.2) -> LMS cone responses, then the
     opponent signals ``L-M``, ``S-(L+M)/2`` and the luminance contrast ``(Y - mean Y) / mean Y``, each
     split into rectified ON and OFF halves.

   Each channel is divided by a fixed scale (its mean over a calibration set, :meth:`FeatureExtractor.calibrate`).

2. **pRF pooling + CSS nonlinearity** (Kay et al. 2013, compressive spatial summation)::

       drive_v = sum_c w_vc * sum_x G_v(x) F_c(x),     G_v = 2-D Gaussian(x_v, y_v, sigma_v) / (2 pi sigma_v^2)
       r_v     = g_v * drive_v ** n_v                  (n_v < 1: compressive)

   pRF centres follow cortical magnification (density ~ 1 / (ecc + 0.75 deg)); pRF size grows linearly
   with eccentricity with an area-specific slope (Dumoulin & Wandell 2008): ``sigma = a_area + b_area * ecc``.
   Channel weights ``w_vc``: each voxel prefers one spatial-frequency band (lower at larger eccentricity
   and in later areas), has a weak orientation bias (radial bias: preferred orientation ~ polar angle),
   and a colour weight that grows from V1 to hV4.

Higher visual areas (LO, VO, PPA): tuned to the scene's content
---------------------------------------------------------------
Computed from the stimulus labels (what is *visible*: areas after occlusion), with position tolerance
through large Gaussian receptive fields ``S_v(p) = exp(-|p - c_v|^2 / (2 s_v^2))``, s_v of 1.5-3.5 deg:

* **LO** (object-selective): ``drive_v = sum_o sqrt(A_o / A_ref) S_v(p_o) (b_v + (1 - b_v) T_v[cat_o])``
  with broad category tuning ``T_v[c] = exp(-d(c, c_v)^2 / (2 tau_v^2))`` over a shape-descriptor space
  (roundness, corners, holes, concavity, elongation, curvature) and a category-general part ``b_v``.
* **VO** (colour-selective, ventral occipital): same form with hue tuning
  ``T_v[col] = chroma(col) exp(kappa_v (cos(h_col - h_v) - 1))`` (von Mises on the hue circle), plus a
  weaker response to the background's mean colour weighted by its visible fraction.
* **PPA** (scene-selective): tuned to the background class (horizon scenes vs walls; ground colour /
  wall texture) with broad tuning, scaled by the visible background fraction, plus an "openness" term.

Their responses go through the same compressive power law (exponents 0.25-0.35).
All parameters of one subject are drawn from a seeded generator (:meth:`SimulatedCortex.sample`);
noise is added later (``world.py``), relative to each voxel's signal SD.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.fft

from ...errors import DataFormatError
from .stimuli import BACKGROUNDS, CATEGORIES, COLOURS, GROUNDS, SHAPE_DESCRIPTORS, StimulusLabels

FIELD_OF_VIEW_DEG = 8.0
"""Width (and height) of the image in degrees of visual angle."""

AREAS: tuple[str, ...] = ("V1", "V2", "V3", "hV4", "LO", "VO", "PPA")
"""Simulated visual areas; the first four are early (pRF over image channels), the rest high-level."""
EARLY_AREAS = 4
DEFAULT_AREA_FRACTIONS: tuple[float, ...] = (0.22, 0.18, 0.14, 0.10, 0.18, 0.10, 0.08)

# pRF size = a + b * eccentricity (deg); approximate values after Dumoulin & Wandell (2008) / Kay et al. (2013)
_PRF_A = {"V1": 0.15, "V2": 0.2, "V3": 0.3, "hV4": 0.4}
_PRF_B = {"V1": 0.12, "V2": 0.18, "V3": 0.28, "hV4": 0.45}
# compressive exponents, decreasing along the hierarchy (chosen, in the range reported by Kay et al. 2013)
_EXPONENT = {"V1": 0.5, "V2": 0.42, "V3": 0.36, "hV4": 0.32, "LO": 0.3, "VO": 0.3, "PPA": 0.35}
# share of colour channels in the drive
_COLOUR_SHARE = {"V1": (0.1, 0.35), "V2": (0.15, 0.4), "V3": (0.2, 0.45), "hV4": (0.45, 0.8)}

SF_CYCLES_PER_PIXEL: tuple[float, ...] = (3 / 32, 6 / 32, 12 / 32)
ORIENTATIONS_DEG: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)
CHANNEL_NAMES: tuple[str, ...] = tuple(
    f"energy_sf{s}_ori{int(o)}" for s in range(len(SF_CYCLES_PER_PIXEL)) for o in ORIENTATIONS_DEG
) + ("L-M_on", "L-M_off", "S-(L+M)_on", "S-(L+M)_off", "lum_on", "lum_off")
N_ENERGY = len(SF_CYCLES_PER_PIXEL) * len(ORIENTATIONS_DEG)

# sRGB (linear) -> LMS cone excitations (Hunt-Pointer-Estevez via XYZ; widely used approximation)
_RGB_TO_LMS = np.array(
    [[0.31399022, 0.63951294, 0.04649755], [0.15537241, 0.75789446, 0.08670142], [0.01775239, 0.10944209, 0.87256922]],
    dtype=np.float32,
)


# ---------------------------------------------------------------------------------------------- features
class FeatureExtractor:
    """Image -> 18 channel maps (Gabor energy + colour opponency), pooled 2x2.

    Args:
        image_size: H = W of the images.
    """

    def __init__(self, image_size: int) -> None:
        if image_size < 16 or image_size % 2:
            raise ValueError(f"image_size must be an even number >= 16, got {image_size}")
        self.image_size = int(image_size)
        self.grid = self.image_size // 2
        fy = scipy.fft.fftfreq(self.image_size)[:, None]
        fx = scipy.fft.fftfreq(self.image_size)[None, :]
        filters = []
        for f in SF_CYCLES_PER_PIXEL:
            for o in ORIENTATIONS_DEG:
                a = np.deg2rad(o)
                u, v = f * np.cos(a), f * np.sin(a)
                bw = 0.35 * f
                filters.append(np.exp(-((fx - u) ** 2 + (fy - v) ** 2) / (2 * bw**2)))
        self.filters = np.stack(filters).astype(np.float32)  # (12, S, S)
        self.scale = np.ones(len(CHANNEL_NAMES), np.float32)

    @property
    def n_channels(self) -> int:
        return len(CHANNEL_NAMES)

    def raw(self, images: np.ndarray) -> np.ndarray:
        """Unscaled channel maps.

        Args:
            images: (B, S, S, 3) uint8.

        Returns:
            (B, C=18, S/2, S/2) float32.
        """
        images = np.asarray(images)
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise DataFormatError(f"feature extractor expects images (B, {s}, {s}, 3), got {images.shape}")
        lin = (images.astype(np.float32) / 255.0) ** 2.2
        lms = lin @ _RGB_TO_LMS.T  # (B, S, S, 3)
        L, M, S_ = lms[..., 0], lms[..., 1], lms[..., 2]
        lum = 0.5 * (L + M)
        mean_lum = lum.mean(axis=(1, 2), keepdims=True) + 1e-3
        lum_c = (lum - mean_lum) / mean_lum
        rg = L - M
        by = S_ - lum
        spec = scipy.fft.fft2(lum_c.astype(np.float32), axes=(1, 2))  # (B, S, S) complex64
        energy = np.abs(scipy.fft.ifft2(spec[:, None] * self.filters[None], axes=(2, 3)))  # (B, 12, S, S)
        colour = np.stack(
            [np.maximum(rg, 0), np.maximum(-rg, 0), np.maximum(by, 0), np.maximum(-by, 0), np.maximum(lum_c, 0), np.maximum(-lum_c, 0)],
            axis=1,
        )
        maps = np.concatenate([energy.astype(np.float32), colour.astype(np.float32)], axis=1)
        b, c = maps.shape[:2]
        g = self.grid
        return maps.reshape(b, c, g, 2, g, 2).mean(axis=(3, 5))

    def calibrate(self, images: np.ndarray) -> FeatureExtractor:
        """Set each channel's scale to its mean over ``images`` (B, S, S, 3) uint8, so channels are
        comparable. Returns self."""
        m = self.raw(images).mean(axis=(0, 2, 3)).astype(np.float32)
        self.scale = np.where(m > 1e-8, m, 1.0).astype(np.float32)
        return self

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Scaled channel maps (B, C, S/2, S/2) float32."""
        return self.raw(images) / self.scale[None, :, None, None]


# ---------------------------------------------------------------------------------------------- cortex
def _hue_chroma() -> tuple[np.ndarray, np.ndarray]:
    hues, chromas = [], []
    for rgb in COLOURS.values():
        h, l, s = colorsys.rgb_to_hls(*(v / 255 for v in rgb))
        hues.append(2 * np.pi * h)
        chromas.append(s * (1 - abs(2 * l - 1)))
    return np.array(hues), np.array(chromas)


def _background_similarity() -> np.ndarray:
    """(B, B) similarity of background classes: same class 1, same family (ground/wall) 0.45, else 0.1."""
    n = len(BACKGROUNDS)
    fam = np.array([0 if i < len(GROUNDS) else 1 for i in range(n)])
    sim = np.where(fam[:, None] == fam[None, :], 0.45, 0.1)
    np.fill_diagonal(sim, 1.0)
    return sim


def _sample_eccentricity(rng: np.random.Generator, n: int, e_min: float, e_max: float, e2: float = 0.75) -> np.ndarray:
    """Eccentricities with density proportional to cortical magnification 1 / (ecc + e2)."""
    u = rng.uniform(size=n)
    return (e_min + e2) * ((e_max + e2) / (e_min + e2)) ** u - e2


@dataclass
class SimulatedCortex:
    """One simulated subject's voxels (noiseless part). Build with :meth:`sample`.

    Attributes (V voxels, sorted by area):
        area: (V,) int index into AREAS.
        prf_x, prf_y: (V,) receptive-field centres in degrees (x right, y up; 0 = fixation).
        prf_sigma: (V,) receptive-field SD in degrees.
        exponent: (V,) compressive exponent n_v.
        gain: (V,) gain g_v.
        channel_weights: (V_early, C) weights w_vc over the image channels (rows sum to 1).
        category_tuning: (V_LO, n_categories) T_v for LO voxels.
        colour_tuning: (V_VO, n_colours) T_v for VO voxels; vo_hue: (V_VO,) preferred hue (radians).
        background_tuning: (V_PPA, n_backgrounds).
        general: (V_high,) category/colour-general share b_v (LO, VO, PPA voxels in that order).
    """

    image_size: int
    area: np.ndarray
    prf_x: np.ndarray
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    exponent: np.ndarray
    gain: np.ndarray
    channel_weights: np.ndarray
    category_tuning: np.ndarray
    colour_tuning: np.ndarray
    vo_hue: np.ndarray
    background_tuning: np.ndarray
    general: np.ndarray
    _prf_matrix: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_voxels(self) -> int:
        return int(self.area.shape[0])

    @property
    def area_names(self) -> list[str]:
        return [AREAS[a] for a in self.area]

    def voxels_in(self, area: str) -> np.ndarray:
        """Indices of the voxels of one area."""
        return np.flatnonzero(self.area == AREAS.index(area))

    @classmethod
    def sample(
        cls,
        n_voxels: int,
        rng: np.random.Generator,
        image_size: int = 64,
        area_fractions: Sequence[float] = DEFAULT_AREA_FRACTIONS,
    ) -> SimulatedCortex:
        """Draw a subject's voxel population.

        Args:
            n_voxels: total voxels (>= 2 per area).
            rng: seeded generator.
            image_size: image side in pixels.
            area_fractions: share of voxels per area in AREAS order (normalised).
        """
        fr = np.asarray(area_fractions, np.float64)
        if fr.shape != (len(AREAS),) or (fr < 0).any() or fr.sum() <= 0:
            raise ValueError(f"area_fractions must be {len(AREAS)} non-negative numbers ({', '.join(AREAS)})")
        if n_voxels < 2 * len(AREAS):
            raise ValueError(f"need at least {2 * len(AREAS)} voxels, got {n_voxels}")
        counts = np.floor(fr / fr.sum() * n_voxels).astype(int)
        counts[np.argmax(fr)] += n_voxels - counts.sum()
        area = np.repeat(np.arange(len(AREAS)), counts)
        v = n_voxels
        prf_x = np.zeros(v)
        prf_y = np.zeros(v)
        prf_sigma = np.zeros(v)
        exponent = np.array([_EXPONENT[AREAS[a]] for a in area]) * rng.uniform(0.85, 1.15, v)
        gain = rng.lognormal(0.0, 0.4, v)
        half = FIELD_OF_VIEW_DEG / 2
        n_sf = len(SF_CYCLES_PER_PIXEL)
        n_ori = len(ORIENTATIONS_DEG)
        early = np.flatnonzero(area < EARLY_AREAS)
        w = np.zeros((early.size, len(CHANNEL_NAMES)))
        for row, i in enumerate(early):
            name = AREAS[area[i]]
            ecc = _sample_eccentricity(rng, 1, 0.15, half * 1.35)[0]
            ang = rng.uniform(0, 2 * np.pi)
            prf_x[i], prf_y[i] = ecc * np.cos(ang), ecc * np.sin(ang)
            prf_sigma[i] = (_PRF_A[name] + _PRF_B[name] * ecc) * rng.uniform(0.8, 1.25)
            # preferred SF band: high near the fovea, lower with eccentricity and along the hierarchy
            pref = np.clip(2.2 - 0.45 * ecc - 0.35 * area[i] + rng.normal(0, 0.5), 0, n_sf - 1)
            sf_w = np.exp(-((np.arange(n_sf) - pref) ** 2) / (2 * 0.6**2))
            ori_pref = ang + np.pi / 2 + rng.normal(0, 0.6)  # radial bias (image y axis points down)
            ori = np.deg2rad(np.array(ORIENTATIONS_DEG))
            ori_w = 1.0 + rng.uniform(0.1, 0.5) * np.cos(2 * (ori - ori_pref))
            energy_w = (sf_w[:, None] * ori_w[None, :]).ravel()
            colour_w = rng.dirichlet(np.ones(6) * 1.5)
            lo, hi = _COLOUR_SHARE[name]
            share = rng.uniform(lo, hi)
            w[row, :N_ENERGY] = (1 - share) * energy_w / energy_w.sum()
            w[row, N_ENERGY:] = share * colour_w
        high = np.flatnonzero(area >= EARLY_AREAS)
        ecc = np.abs(rng.normal(0, 1.2, high.size))
        ang = rng.uniform(0, 2 * np.pi, high.size)
        prf_x[high], prf_y[high] = ecc * np.cos(ang), ecc * np.sin(ang)
        prf_sigma[high] = rng.uniform(1.5, 3.5, high.size)
        general = rng.uniform(0.05, 0.45, high.size)
        # LO: category tuning over the shape-descriptor space
        lo = np.flatnonzero(area == AREAS.index("LO"))
        d = np.linalg.norm(SHAPE_DESCRIPTORS[:, None] - SHAPE_DESCRIPTORS[None], axis=-1)
        d = d / np.median(d[d > 0])
        pref_cat = rng.integers(len(CATEGORIES), size=lo.size)
        tau = rng.uniform(0.35, 0.9, lo.size)
        category_tuning = np.exp(-(d[pref_cat] ** 2) / (2 * tau[:, None] ** 2))
        # VO: hue tuning (von Mises) times chroma
        vo = np.flatnonzero(area == AREAS.index("VO"))
        hues, chroma = _hue_chroma()
        vo_hue = rng.uniform(0, 2 * np.pi, vo.size)
        kappa = rng.uniform(1.0, 4.0, vo.size)
        colour_tuning = chroma[None] * np.exp(kappa[:, None] * (np.cos(hues[None] - vo_hue[:, None]) - 1))
        # PPA: background class tuning
        ppa = np.flatnonzero(area == AREAS.index("PPA"))
        sim = _background_similarity()
        pref_bg = rng.integers(len(BACKGROUNDS), size=ppa.size)
        sharp = rng.uniform(1.0, 3.0, ppa.size)
        background_tuning = sim[pref_bg] ** sharp[:, None]
        return cls(
            image_size=int(image_size),
            area=area.astype(np.int16),
            prf_x=prf_x.astype(np.float32),
            prf_y=prf_y.astype(np.float32),
            prf_sigma=prf_sigma.astype(np.float32),
            exponent=exponent.astype(np.float32),
            gain=gain.astype(np.float32),
            channel_weights=w.astype(np.float32),
            category_tuning=category_tuning.astype(np.float32),
            colour_tuning=colour_tuning.astype(np.float32),
            vo_hue=vo_hue.astype(np.float32),
            background_tuning=background_tuning.astype(np.float32),
            general=general.astype(np.float32),
        )

    # ------------------------------------------------------------------------------------------ early
    def prf_matrix(self, grid: int) -> np.ndarray:
        """(grid*grid, V_early) pRF weights G_v(x) on the pooled feature grid (normalised to the full
        Gaussian's integral, so pRFs partly outside the image get less drive)."""
        if self._prf_matrix is not None and self._prf_matrix.shape[0] == grid * grid:
            return self._prf_matrix
        early = self.area < EARLY_AREAS
        half = FIELD_OF_VIEW_DEG / 2
        c = (np.arange(grid) + 0.5) / grid * FIELD_OF_VIEW_DEG - half
        gx = np.tile(c, grid)  # column coordinate, x right
        gy = -np.repeat(c, grid)  # row coordinate, y up
        sx, sy, sg = self.prf_x[early], self.prf_y[early], self.prf_sigma[early]
        cell = (FIELD_OF_VIEW_DEG / grid) ** 2
        d2 = (gx[:, None] - sx[None]) ** 2 + (gy[:, None] - sy[None]) ** 2
        g = np.exp(-d2 / (2 * sg[None] ** 2)) * cell / (2 * np.pi * sg[None] ** 2)
        self._prf_matrix = g.astype(np.float32)
        return self._prf_matrix

    def early_drive(self, features: np.ndarray) -> np.ndarray:
        """Linear drive of the early voxels.

        Args:
            features: (B, C, g, g) scaled channel maps from :class:`FeatureExtractor`.

        Returns:
            (B, V_early) float32: sum_c w_vc sum_x G_v(x) F_c(x).
        """
        b, c, g, _ = features.shape
        if c != self.channel_weights.shape[1]:
            raise DataFormatError(f"expected {self.channel_weights.shape[1]} feature channels, got {c}")
        pooled = features.reshape(b * c, g * g) @ self.prf_matrix(g)  # (B*C, V_early)
        pooled = pooled.reshape(b, c, -1)
        return np.einsum("bcv,vc->bv", pooled, self.channel_weights, optimize=True)

    # ------------------------------------------------------------------------------------------ high
    def high_drive(self, labels: StimulusLabels) -> np.ndarray:
        """Linear drive of the LO, VO and PPA voxels from the stimulus labels: (N, V_high) float32."""
        high = np.flatnonzero(self.area >= EARLY_AREAS)
        n = len(labels)
        out = np.zeros((n, high.size), np.float64)
        a_lo, a_vo, a_ppa = (AREAS.index(x) for x in ("LO", "VO", "PPA"))
        hx, hy, hs = self.prf_x[high], self.prf_y[high], self.prf_sigma[high]
        harea = self.area[high]
        is_lo, is_vo, is_ppa = harea == a_lo, harea == a_vo, harea == a_ppa
        gen = self.general
        a_ref = 0.05
        for j in range(labels.max_objects):
            present = labels.category[:, j] >= 0
            if not present.any():
                continue
            cat = np.where(present, labels.category[:, j], 0)
            col = np.where(present, labels.colour[:, j], 0)
            ox = (labels.center[:, j, 0] - 0.5) * FIELD_OF_VIEW_DEG
            oy = (0.5 - labels.center[:, j, 1]) * FIELD_OF_VIEW_DEG
            size_w = np.sqrt(np.maximum(labels.visible[:, j], 0) / a_ref) * present
            spatial = np.exp(-((ox[:, None] - hx[None]) ** 2 + (oy[:, None] - hy[None]) ** 2) / (2 * hs[None] ** 2))
            base = size_w[:, None] * spatial  # (N, V_high)
            out[:, is_lo] += base[:, is_lo] * (gen[is_lo] + (1 - gen[is_lo]) * self.category_tuning[:, cat].T)
            out[:, is_vo] += base[:, is_vo] * (gen[is_vo] * 0.5 + (1 - gen[is_vo]) * self.colour_tuning[:, col].T)
        bg_frac = 1.0 - labels.visible.clip(0).sum(axis=1)
        # VO: background colour
        rgb = labels.background_rgb.astype(np.float64)
        hls = np.array([colorsys.rgb_to_hls(*c) for c in rgb]) if n else np.zeros((0, 3))
        bg_hue = 2 * np.pi * hls[:, 0]
        bg_chroma = hls[:, 2] * (1 - np.abs(2 * hls[:, 1] - 1))
        kappa_bg = 2.0  # VO voxels are all high-level, in order: vo_hue lines up with is_vo
        bg_tune = bg_chroma[:, None] * np.exp(kappa_bg * (np.cos(bg_hue[:, None] - self.vo_hue[None]) - 1))
        out[:, is_vo] += 0.3 * bg_frac[:, None] * bg_tune * np.sqrt(1 / a_ref)
        # PPA: background class + openness
        open_ = (labels.background < len(GROUNDS)).astype(np.float64)
        tune = self.background_tuning[:, labels.background].T  # (N, V_ppa)
        ppa_gen = gen[is_ppa]
        out[:, is_ppa] = (bg_frac[:, None] * np.sqrt(1 / a_ref)) * ((1 - ppa_gen) * tune + ppa_gen * open_[:, None])
        return out.astype(np.float32)

    # ------------------------------------------------------------------------------------------ total
    def responses(self, features: np.ndarray, labels: StimulusLabels) -> np.ndarray:
        """Noiseless responses r_v = g_v drive_v^n_v.

        Args:
            features: (N, C, g, g) channel maps of the N images.
            labels: their labels (N images).

        Returns:
            (N, V) float32.
        """
        if features.shape[0] != len(labels):
            raise DataFormatError(f"{features.shape[0]} feature maps for {len(labels)} labelled images")
        drive = np.concatenate([self.early_drive(features), self.high_drive(labels)], axis=1)
        drive = np.maximum(drive, 0.0)
        return (self.gain[None] * drive ** self.exponent[None]).astype(np.float32)
