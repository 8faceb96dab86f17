"""The decoding lab's library half: compose a new scene and let a demo subject's simulated cortex respond.

:class:`SubjectForwardModel` rebuilds, from a generated demo world folder, exactly the forward model that
made one subject's betas (``world.py``, module docstring), replaying the world's seeded generators:

* the subject's :class:`~.cortex.SimulatedCortex` (stream ``_STREAM_CORTEX``) and the
  :class:`~.cortex.FeatureExtractor` calibrated on the first test images, as :func:`~.world.generate_demo_world`;
* the standardisation ``m_v = (r_v - mean_i r_v) / sd_i r_v`` over the subject's own images (its test and
  training images, read from the dataset);
* the idiosyncratic part's latent loadings ``M`` (stream ``_STREAM_IDIO``) and the noise: target ncsnr,
  ``sigma_v = noise_level / ncsnr0_v`` and the shared-noise loadings ``L`` (stream ``_STREAM_TRIALS``,
  replayed after the trial schedule).

A new image ``x`` gets, per presentation ``t`` (``repetitions`` presentations averaged)::

    s_v(x)  = sqrt(f) m_v(x) + sqrt(1 - f) (sqrt(1/2) xi_v + sqrt(1/2) sum_j M_vj zeta_j / sqrt(8))
    b_tv    = s_v(x) + sigma_v (sqrt(1 - rho) z_tv + sqrt(rho) sum_j L_vj u_tj / sqrt(n_f) + drift tau_t d_tv)
    beta_tv = b_tv / sd_v

with fresh ``xi, zeta`` (the new image's own repeatable part) and fresh trial noise ``z, u`` and drift
(``tau ~ U(-1/2, 1/2)``, ``d ~ N(0, 1)``), all drawn from the caller's generator. The world z-scores betas
within each 750-trial session; one new trial has no session, so the session mean (the session offset,
~0 for the signal) is dropped and the session SD is replaced by its expectation
``sd_v = sqrt(var s_v + sigma_v^2 (var noise_v + drift^2 / 12))`` (``var s_v`` and ``var noise_v`` exact
for the subject's ``M`` and ``L``). ``noise_level`` scales ``sigma_v`` of the new trials only (1 = the
dataset's calibrated noise; 0 = the noiseless signal), ``sd_v`` keeps the dataset's scale.

:func:`compose_scene` builds a :class:`~.stimuli.SceneSpec` from words (category, colour, size, position
per object; a background class), :func:`random_scene` draws one as the world does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import DataFormatError
from ..format import open_dataset
from .cortex import FeatureExtractor, SimulatedCortex
from .stimuli import (
    BACKGROUNDS, CATEGORIES, COLOUR_NAMES, COLOURS, GROUNDS, POSITIONS, SIZE_NAMES, SIZES, SKIES, ObjectSpec,
    SceneSpec, StimulusLabels, render_scenes, sample_scenes,
)
from .world import (
    _STREAM_CORTEX, _STREAM_IDIO, _STREAM_TRIALS, DemoWorldConfig, _rng, demo_config_of,
    load_demo_labels, load_voxel_table, trial_schedule,
)

__all__ = ["N_LATENT", "SubjectForwardModel", "compose_scene", "random_scene", "render_one"]

N_LATENT = 8
"""Shared latent image factors of the idiosyncratic part (``world.simulate_subject``)."""
N_FACTORS = 4
"""Global trial factors of the shared noise (``world.simulate_subject``)."""


def _index(value: Any, vocab: Sequence[str], what: str) -> int:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(vocab):
        return int(value)
    if isinstance(value, str) and value in vocab:
        return vocab.index(value)
    raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(vocab)}")


def compose_scene(objects: Sequence[Mapping[str, Any]], background: Any, seed: int) -> SceneSpec:
    """A scene from words: ``objects`` = 1-3 mappings with ``category``, ``colour``, ``size``, ``position``
    (names or vocabulary indices), ``background`` a name of BACKGROUNDS (or its index). The continuous
    details are drawn from ``seed``: sky, horizon, wall colour and texture by :func:`~.stimuli.sample_scenes`
    itself, each object's exact colour, radius, angle and position jitter as it draws them; objects are
    drawn largest first.

    Raises:
        ValueError: no object, more than 3, two in one grid cell, or a word outside the vocabulary.
    """
    if not 1 <= len(objects) <= 3:
        raise ValueError(f"a lab scene has 1 to 3 objects, got {len(objects)}")
    bg = _index(background, BACKGROUNDS, "background")
    rng = np.random.default_rng(seed)
    parsed = [(_index(o["category"], CATEGORIES, "shape"), _index(o["colour"], COLOUR_NAMES, "colour"),
               _index(o["size"], SIZE_NAMES, "size"), _index(o["position"], POSITIONS, "position")) for o in objects]
    cells = [p[3] for p in parsed]
    if len(set(cells)) != len(cells):
        raise ValueError(f"two objects share the grid cell {POSITIONS[max(set(cells), key=cells.count)]!r}; "
                         "give each object its own position")
    details = sample_scenes(rng, 1)[0]  # sky, horizon, wall colour, texture: drawn as the world draws them
    sky = -1 if bg >= len(GROUNDS) else (details.sky if details.sky >= 0 else int(rng.integers(len(SKIES))))
    specs = []
    for cat, col, size, cell in sorted(parsed, key=lambda p: -p[2]):  # largest first (stable)
        jitter = rng.uniform(-0.04, 0.04, size=2)
        base = np.asarray(COLOURS[COLOUR_NAMES[col]], np.float64)
        rgb = tuple(int(v) for v in np.clip(base * rng.uniform(0.9, 1.08) + rng.normal(0, 6, 3), 0, 255).round())
        specs.append(ObjectSpec(category=cat, colour=col, size=size, position=cell,
                                cx=float((cell % 3 * 2 + 1) / 6 + jitter[0]), cy=float((cell // 3 * 2 + 1) / 6 + jitter[1]),
                                radius=float(SIZES[SIZE_NAMES[size]] * rng.uniform(0.92, 1.08)),
                                angle=float(rng.uniform(-15, 15)), rgb=rgb))  # type: ignore[arg-type]
    return dataclasses.replace(details, objects=tuple(specs), background=bg, sky=sky)


def random_scene(seed: int, max_objects: int = 3) -> SceneSpec:
    """One scene drawn as the world draws its stimuli (:func:`~.stimuli.sample_scenes`), from ``seed``.
    Its continuous parameters (texture seed, jitter) make it, with probability 1, an image nobody has seen."""
    return sample_scenes(np.random.default_rng(seed), 1, max_objects=max_objects)[0]


def render_one(scene: SceneSpec, config: DemoWorldConfig) -> tuple[np.ndarray, StimulusLabels, str]:
    """Render ``scene`` as the world renders its images: ``(image (S, S, 3) uint8, labels (1 image), caption)``."""
    images, labels, captions = render_scenes([scene], config.image_size, config.supersample, config.max_objects)
    return images[0], labels, captions[0]


@dataclass
class SubjectForwardModel:
    """One demo subject's forward model (see the module docstring). Build with :meth:`from_dataset`.

    Attributes (V voxels):
        subject: the subject name.
        config: the world's :class:`~.world.DemoWorldConfig`.
        cortex: the subject's simulated cortex.
        extractor: the calibrated feature extractor.
        mean, sd: ``(V,)`` mean and SD of the noiseless responses over the subject's images.
        idio_loadings: ``(8, V)`` latent loadings ``M`` of the idiosyncratic part.
        noise_sigma: ``(V,)`` ``sigma_v`` at noise level 1 (``config.noise_level / ncsnr0_v``).
        noise_loadings: ``(4, V)`` shared-noise loadings ``L`` (already divided by 2 = sqrt(4)).
        target_ncsnr: ``(V,)`` ncsnr0_v (equals the saved voxel table's).
        beta_sd: ``(V,)`` the expected within-session SD ``sd_v`` used to scale new trials.
    """

    subject: str
    config: DemoWorldConfig
    cortex: SimulatedCortex
    extractor: FeatureExtractor
    mean: np.ndarray
    sd: np.ndarray
    idio_loadings: np.ndarray
    noise_sigma: np.ndarray
    noise_loadings: np.ndarray
    target_ncsnr: np.ndarray
    beta_sd: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.cortex.n_voxels)

    @classmethod
    def from_dataset(cls, root: str | Path, subject: str, *, batch: int = 256) -> SubjectForwardModel:
        """Rebuild ``subject``'s forward model from the demo world at ``root`` (reads its images and labels;
        seconds per subject on a CPU: the features of its test + training images).

        Raises:
            DataFormatError: ``root`` is not a demo world; KeyError: no such subject.
        """
        root = Path(root)
        config = demo_config_of(root)
        if subject not in config.subjects:
            raise KeyError(f"subject {subject!r} is not in the demo world {root} ({', '.join(config.subjects)})")
        s = config.subjects.index(subject)
        n_vox, n_test = config.voxels[s], config.n_test_images
        cortex = SimulatedCortex.sample(n_vox, _rng(config.seed, _STREAM_CORTEX, s), config.image_size,
                                        config.area_fractions)
        ds = open_dataset(root)
        try:
            extractor = FeatureExtractor(config.image_size).calibrate(ds.images(slice(0, min(256, n_test))))
            labels = load_demo_labels(root)
            train_rows = n_test + s * config.n_train_images + np.arange(config.n_train_images)
            rows = np.concatenate([np.arange(n_test), train_rows])
            resp = np.empty((rows.size, n_vox), np.float32)
            for a in range(0, rows.size, batch):
                sel = rows[a:a + batch]
                resp[a:a + sel.size] = cortex.responses(extractor(np.asarray(ds.images(sel))), labels.subset(sel))
        finally:
            ds.close()
        mean = resp.mean(0)
        sd = resp.std(0)
        sd = np.where(sd > 1e-8, sd, 1.0)
        rng_idio = _rng(config.seed, _STREAM_IDIO, s)  # replay: xi (rows, V), zeta (rows, 8), then M (8, V)
        rng_idio.standard_normal((rows.size, n_vox), dtype=np.float32)
        rng_idio.standard_normal((rows.size, N_LATENT), dtype=np.float32)
        idio_loadings = rng_idio.standard_normal((N_LATENT, n_vox), dtype=np.float32)
        rng = _rng(config.seed, _STREAM_TRIALS, s)  # replay: the schedule, then target ncsnr, then L
        trial_schedule(n_test, train_rows, config.repetitions, config.trials_per_session, rng)
        medians = np.asarray(config.ncsnr_medians)[cortex.area]
        target = np.exp(np.log(medians) + config.ncsnr_spread * rng.standard_normal(n_vox))
        sigma = (config.noise_level / target).astype(np.float32)
        loadings = rng.standard_normal((N_FACTORS, n_vox)).astype(np.float32) / np.sqrt(N_FACTORS)
        f, rho = config.explained_fraction, config.correlated_noise
        var_signal = f + (1 - f) * (0.5 + 0.5 / N_LATENT * (idio_loadings.astype(np.float64) ** 2).sum(0))
        var_noise = (1 - rho) + rho * (loadings.astype(np.float64) ** 2).sum(0)
        beta_sd = np.sqrt(var_signal + sigma.astype(np.float64) ** 2 * (var_noise + config.session_drift**2 / 12))
        return cls(subject=subject, config=config, cortex=cortex, extractor=extractor, mean=mean, sd=sd,
                   idio_loadings=idio_loadings, noise_sigma=sigma, noise_loadings=loadings,
                   target_ncsnr=target.astype(np.float32), beta_sd=beta_sd.astype(np.float32))

    def model_response(self, images: np.ndarray, labels: StimulusLabels) -> np.ndarray:
        """Standardised noiseless responses ``m_v``: images ``(B, S, S, 3)`` uint8 -> ``(B, V)`` float32."""
        r = self.cortex.responses(self.extractor(np.asarray(images)), labels)
        return ((r - self.mean) / self.sd).astype(np.float32)

    def signal(self, images: np.ndarray, labels: StimulusLabels, rng: np.random.Generator) -> np.ndarray:
        """Repeatable signal ``s_v`` of new images (fresh idiosyncratic part from ``rng``): ``(B, V)`` float32."""
        m = self.model_response(images, labels)
        b, v = m.shape
        xi = rng.standard_normal((b, v), dtype=np.float32)
        zeta = rng.standard_normal((b, N_LATENT), dtype=np.float32)
        idio = np.sqrt(0.5) * xi + np.sqrt(0.5 / N_LATENT) * (zeta @ self.idio_loadings)
        f = self.config.explained_fraction
        return (np.sqrt(f) * m + np.sqrt(1 - f) * idio).astype(np.float32)

    def respond(self, images: np.ndarray, labels: StimulusLabels, rng: np.random.Generator, *,
                noise_level: float = 1.0, repetitions: int = 1) -> np.ndarray:
        """Betas of new images averaged over ``repetitions`` presentations: ``(B, V)`` float32.

        Args:
            images: ``(B, S, S, 3)`` uint8, rendered as the world renders (:func:`render_one`).
            labels: their :class:`~.stimuli.StimulusLabels` (the high-level areas respond to them).
            rng: every random draw (the idiosyncratic part, then each presentation's noise).
            noise_level: multiplies the dataset's noise SD (>= 0).
            repetitions: presentations averaged (>= 1).
        """
        if not np.isfinite(noise_level) or noise_level < 0:
            raise ValueError(f"noise_level must be a number >= 0, got {noise_level!r}")
        if int(repetitions) != repetitions or repetitions < 1:
            raise ValueError(f"repetitions must be an integer >= 1, got {repetitions!r}")
        signal = self.signal(images, labels, rng)
        b, v = signal.shape
        rho, drift = self.config.correlated_noise, self.config.session_drift
        sigma = float(noise_level) * self.noise_sigma
        total = np.zeros((b, v), np.float64)
        for _ in range(int(repetitions)):
            z = rng.standard_normal((b, v), dtype=np.float32)
            u = rng.standard_normal((b, N_FACTORS), dtype=np.float32)
            tau = rng.uniform(-0.5, 0.5, (b, 1)).astype(np.float32)
            d = rng.standard_normal((b, v), dtype=np.float32)
            noise = np.sqrt(1 - rho) * z + np.sqrt(rho) * (u @ self.noise_loadings) + drift * tau * d
            total += signal + sigma * noise
        return (total / int(repetitions) / self.beta_sd).astype(np.float32)

    def check_against(self, root: str | Path) -> None:
        """Raise :class:`DataFormatError` unless the replayed cortex and noise targets equal the voxel table
        saved in the world at ``root`` (pRF centres, sizes, areas, target ncsnr)."""
        table = load_voxel_table(root, self.subject)
        for key, mine in (("area", self.cortex.area), ("prf_x", self.cortex.prf_x), ("prf_y", self.cortex.prf_y),
                          ("prf_sigma", self.cortex.prf_sigma), ("target_ncsnr", self.target_ncsnr)):
            if table[key].shape != mine.shape or not np.allclose(table[key], mine, rtol=1e-5, atol=1e-6):
                raise DataFormatError(f"{self.subject}: the replayed forward model's {key} differs from the voxel "
                                      f"table saved in {root}; was the world generated by another code version?")

