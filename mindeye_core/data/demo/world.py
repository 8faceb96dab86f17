"""The demo world: stimuli + 4 simulated subjects with NSD's trial structure, written in the canonical format.

Structure (defaults; every number is a :class:`DemoWorldConfig` knob):

* images: ``n_test_images`` = 600 shared test images (rows ``0 .. 599`` of ``images.h5``), then
  ``n_train_images`` = 3000 subject-specific training images per subject (subject ``s`` owns rows
  ``600 + 3000 s ... 600 + 3000 (s + 1) - 1``), 64 x 64, with captions.
* trials: every image a subject sees is shown ``repetitions`` = 3 times; each subject's 3 x 3600 = 10800
  trials are shuffled and cut into sessions of ``trials_per_session`` = 750 trials (NSD's session length);
  ``repetition`` counts the presentations of an image in chronological order.
* betas (float32), per trial ``t`` showing image ``i`` in session ``k``, for voxel ``v``::

      m_v(i)    = (r_v(i) - mean_i r_v) / sd_i r_v                  standardised noiseless response (cortex.py)
      s_v(i)    = sqrt(f) m_v(i) + sqrt(1 - f) eta_v(i)              f = explained_fraction
      eta_v(i)  = sqrt(1/2) xi_vi + sqrt(1/2) sum_j M_vj zeta_ji / sqrt(8)     xi, zeta, M ~ N(0, 1)
      sigma_v   = noise_level / ncsnr0_v                            ncsnr0_v ~ LogNormal(log m_area, 0.5)
      e_tv      = sigma_v (sqrt(1 - rho) z_tv + sqrt(rho) sum_j L_vj u_tj / sqrt(n_f))   z, u ~ N(0, 1)
      drift_tv  = sigma_v drift (o_kv + d_kv (tau_t - 1/2))          o, d ~ N(0, 1); tau_t = position in session
      beta_tv   = zscore_within_session_k( s_v(i) + e_tv + drift_tv )

  ``rho`` (``correlated_noise``) is the share of noise variance shared across voxels through ``n_f`` = 4
  trial-wise global factors with loadings ``L ~ N(0, 1)``; session offsets and linear drifts follow
  ``session_drift``. ``eta`` is repeatable (the same for every presentation of an image) but not a
  function of the modelled features: in real data the best encoding models explain only part of the
  noise ceiling, and this is what keeps decoding hard at an NSD-like noise ceiling. Target single-trial ncsnr medians per area ``m_area`` are largest in V1 and smallest
  in the high-level areas, so most voxels are unreliable and a tail of early visual voxels is reliable.
  The *measured* noise ceilings (NSD definition, :mod:`mindeye_core.data.noise_ceiling`, all trials) are
  stored in the manifest and in ``demo_extra.h5``.

Extra files next to the canonical ones: ``demo_extra.h5`` holds the structured stimulus labels
(``/labels/...``, see :class:`StimulusLabels`) and each subject's voxel table (``/voxels/<subject>/...``:
area, pRF centre and size, exponent, target and measured ncsnr). Read them with :func:`load_demo_labels`
and :func:`load_voxel_table`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import ConfigMismatchError, DataFormatError
from ...staging import h5_writing
from ..format import SPLIT_TEST, SPLIT_TRAIN, DatasetWriter, read_manifest
from ..noise_ceiling import ncsnr as compute_ncsnr
from ..noise_ceiling import noise_ceiling
from .cortex import AREAS, CHANNEL_NAMES, DEFAULT_AREA_FRACTIONS, FeatureExtractor, SimulatedCortex
from .stimuli import (
    BACKGROUNDS, CATEGORIES, COLOUR_NAMES, POSITIONS, SIZE_NAMES, SKY_NAMES, StimulusLabels, render_scenes, sample_scenes,
)

EXTRA_NAME = "demo_extra.h5"
WORLD_NAME = "demo"
GENERATOR_VERSION = 1
"""Bumped whenever the generator's output for a given config changes."""

DEFAULT_NCSNR_MEDIANS: tuple[float, ...] = (0.58, 0.5, 0.44, 0.36, 0.3, 0.26, 0.26)
"""Target single-trial ncsnr medians per area (AREAS order), before ``noise_level`` scaling."""


@dataclass(frozen=True)
class DemoWorldConfig:
    """Every knob of the demo world. ``DemoWorldConfig.small()`` is a fast variant for tests/smoke runs.

    Attributes:
        seed: master seed; all randomness derives from it.
        image_size: image side in pixels (even, >= 16).
        supersample: anti-aliasing factor of the shape drawing.
        max_objects: at most this many objects per image (1-3 by default).
        n_test_images: shared test images (seen by every subject).
        n_train_images: training images per subject (disjoint across subjects).
        voxels: voxel count of each subject; its length is the number of subjects.
        repetitions: presentations of every image.
        trials_per_session: trials per simulated session (the last sessions may hold one trial less or
            more: trials are split as evenly as possible into round(total / trials_per_session) sessions).
        noise_level: multiplies every voxel's noise SD (1 = calibrated default; 0 = noiseless up to drift).
        explained_fraction: share of each voxel's reliable (repeatable) variance driven by the modelled
            image features; the rest is image-specific but idiosyncratic (unmodelled features, arousal...),
            as in real data where the best encoding models explain only part of the noise ceiling.
        ncsnr_medians: target single-trial ncsnr median per area (AREAS order).
        ncsnr_spread: SD of log ncsnr within an area.
        correlated_noise: share of the noise variance shared across voxels (global trial factors).
        session_drift: SD of per-session offsets and linear drifts, relative to the voxel's noise SD.
        area_fractions: share of voxels per area (AREAS order).
        betas_dtype: "float32" or "float16".
    """

    seed: int = 0
    image_size: int = 64
    supersample: int = 4
    max_objects: int = 3
    n_test_images: int = 600
    n_train_images: int = 3000
    voxels: tuple[int, ...] = (2300, 2000, 1800, 1600)
    repetitions: int = 3
    trials_per_session: int = 750
    noise_level: float = 1.0
    explained_fraction: float = 0.4
    ncsnr_medians: tuple[float, ...] = DEFAULT_NCSNR_MEDIANS
    ncsnr_spread: float = 0.5
    correlated_noise: float = 0.3
    session_drift: float = 0.3
    area_fractions: tuple[float, ...] = DEFAULT_AREA_FRACTIONS
    betas_dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 16 or self.image_size % 2:
            problems.append(f"image_size must be an even number >= 16 (got {self.image_size})")
        if self.supersample < 1:
            problems.append(f"supersample must be >= 1 (got {self.supersample})")
        if not 1 <= self.max_objects <= 9:
            problems.append(f"max_objects must be in 1..9 (got {self.max_objects})")
        if self.n_test_images < 2 or self.n_train_images < 2:
            problems.append(f"need >= 2 test and train images (got {self.n_test_images}, {self.n_train_images})")
        if not self.voxels or min(self.voxels) < 2 * len(AREAS):
            problems.append(f"every subject needs >= {2 * len(AREAS)} voxels (got {self.voxels})")
        if self.repetitions < 1:
            problems.append(f"repetitions must be >= 1 (got {self.repetitions})")
        if self.trials_per_session < 10:
            problems.append(f"trials_per_session must be >= 10 (got {self.trials_per_session})")
        if not 0 < self.explained_fraction <= 1:
            problems.append(f"explained_fraction must be in (0, 1] (got {self.explained_fraction})")
        if self.noise_level < 0:
            problems.append(f"noise_level must be >= 0 (got {self.noise_level})")
        if len(self.ncsnr_medians) != len(AREAS) or min(self.ncsnr_medians) <= 0:
            problems.append(f"ncsnr_medians needs {len(AREAS)} positive values ({', '.join(AREAS)})")
        if len(self.area_fractions) != len(AREAS) or min(self.area_fractions) < 0:
            problems.append(f"area_fractions needs {len(AREAS)} non-negative values ({', '.join(AREAS)})")
        if not 0 <= self.correlated_noise < 1:
            problems.append(f"correlated_noise must be in [0, 1) (got {self.correlated_noise})")
        if self.session_drift < 0:
            problems.append(f"session_drift must be >= 0 (got {self.session_drift})")
        if self.betas_dtype not in ("float32", "float16"):
            problems.append(f"betas_dtype must be 'float32' or 'float16' (got {self.betas_dtype!r})")
        if problems:
            raise ValueError("invalid DemoWorldConfig: " + "; ".join(problems))

    @classmethod
    def small(cls, **overrides: Any) -> DemoWorldConfig:
        """A small world for tests and smoke runs (150 test / 300 train images, ~300 voxels)."""
        kw: dict[str, Any] = dict(n_test_images=150, n_train_images=300, voxels=(320, 300, 280, 260), trials_per_session=225)
        kw.update(overrides)
        return cls(**kw)

    @property
    def subjects(self) -> list[str]:
        """Subject names: subj01, subj02, ..."""
        return [f"subj{i + 1:02d}" for i in range(len(self.voxels))]

    @property
    def n_images(self) -> int:
        return self.n_test_images + len(self.voxels) * self.n_train_images

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoWorldConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigMismatchError(f"unknown DemoWorldConfig fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


# stream ids of the seeded generators
_STREAM_STIMULI = 1
_STREAM_CORTEX = 2
_STREAM_TRIALS = 3
_STREAM_IDIO = 4


@dataclass
class SubjectSimulation:
    """Everything simulated for one subject (in memory), returned by :func:`simulate_subject`.

    Attributes:
        betas: (T, V) float32 z-scored betas in chronological order.
        image_index: (T,) image rows; split (T,) uint8; repetition (T,) int16; session (T,) int16.
        cortex: the subject's :class:`SimulatedCortex`.
        target_ncsnr: (V,) ncsnr0_v used to set the noise.
    """

    betas: np.ndarray
    image_index: np.ndarray
    split: np.ndarray
    repetition: np.ndarray
    session: np.ndarray
    cortex: SimulatedCortex
    target_ncsnr: np.ndarray = field(repr=False)


def trial_schedule(
    n_test: int, train_rows: np.ndarray, repetitions: int, trials_per_session: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NSD-like schedule: every image ``repetitions`` times, shuffled, cut into sessions.

    Returns ``(image_index, split, repetition, session)``, each (T,), T = repetitions * (n_test + n_train),
    in chronological order.
    """
    rows = np.concatenate([np.arange(n_test), np.asarray(train_rows)])
    split_of = np.concatenate([np.full(n_test, SPLIT_TEST), np.full(len(train_rows), SPLIT_TRAIN)]).astype(np.uint8)
    order = rng.permutation(np.repeat(np.arange(rows.size), repetitions))
    image_index = rows[order]
    split = split_of[order]
    seen = np.zeros(rows.size, np.int64)
    repetition = np.empty(order.size, np.int16)
    for t, k in enumerate(order):
        repetition[t] = seen[k]
        seen[k] += 1
    n_sessions = max(1, int(round(order.size / trials_per_session)))
    session = np.empty(order.size, np.int16)
    for k, chunk in enumerate(np.array_split(np.arange(order.size), n_sessions)):
        session[chunk] = k
    return image_index.astype(np.int64), split, repetition, session


def _responses_in_batches(
    cortex: SimulatedCortex,
    extractor: FeatureExtractor,
    images: np.ndarray,
    labels: StimulusLabels,
    features: np.ndarray | None = None,
    batch: int = 128,
) -> np.ndarray:
    """Noiseless responses (N, V) of N images, features computed batch by batch unless given."""
    out = np.empty((images.shape[0], cortex.n_voxels), np.float32)
    for s in range(0, images.shape[0], batch):
        sl = slice(s, min(s + batch, images.shape[0]))
        feats = extractor(images[sl]) if features is None else features[sl]
        out[sl] = cortex.responses(feats, labels.subset(np.arange(sl.start, sl.stop)))
    return out


def simulate_subject(
    config: DemoWorldConfig,
    subject_index: int,
    images: np.ndarray,
    labels: StimulusLabels,
    extractor: FeatureExtractor,
    test_features: np.ndarray | None = None,
) -> SubjectSimulation:
    """Simulate one subject's trials (see the module docstring for the equations).

    Args:
        config: the world config.
        subject_index: 0-based subject number.
        images: (N, S, S, 3) uint8 all images of the world (test rows first).
        labels: labels of all N images.
        extractor: a calibrated :class:`FeatureExtractor`.
        test_features: optional precomputed ``extractor(images[:n_test_images])`` (shared by all subjects).
    """
    n_vox = config.voxels[subject_index]
    cortex = SimulatedCortex.sample(
        n_vox, _rng(config.seed, _STREAM_CORTEX, subject_index), config.image_size, config.area_fractions
    )
    n_test = config.n_test_images
    train_rows = n_test + subject_index * config.n_train_images + np.arange(config.n_train_images)
    rows = np.concatenate([np.arange(n_test), train_rows])
    test_labels = labels.subset(np.arange(n_test))
    resp = np.concatenate(
        [
            _responses_in_batches(cortex, extractor, images[:n_test], test_labels, test_features),
            _responses_in_batches(cortex, extractor, images[train_rows], labels.subset(train_rows)),
        ]
    )  # (n_img, V), rows in the order of `rows`
    mu = resp.mean(0)
    sd = resp.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    model = (resp - mu) / sd  # (n_img, V) feature-driven part, unit variance
    # idiosyncratic but repeatable part: half voxel-specific, half through 8 shared latent image factors
    rng_idio = _rng(config.seed, _STREAM_IDIO, subject_index)
    n_lat = 8
    idio = np.sqrt(0.5) * rng_idio.standard_normal((rows.size, n_vox), dtype=np.float32) + np.sqrt(0.5 / n_lat) * (
        rng_idio.standard_normal((rows.size, n_lat), dtype=np.float32) @ rng_idio.standard_normal((n_lat, n_vox), dtype=np.float32)
    )
    f = config.explained_fraction
    signal = (np.sqrt(f) * model + np.sqrt(1 - f) * idio).astype(np.float32)
    row_of = np.full(int(rows.max()) + 1, -1, np.int64)
    row_of[rows] = np.arange(rows.size)

    rng = _rng(config.seed, _STREAM_TRIALS, subject_index)
    image_index, split, repetition, session = trial_schedule(
        n_test, train_rows, config.repetitions, config.trials_per_session, rng
    )
    medians = np.asarray(config.ncsnr_medians)[cortex.area]
    target = np.exp(np.log(medians) + config.ncsnr_spread * rng.standard_normal(n_vox))
    sigma = (config.noise_level / target).astype(np.float32)  # (V,)
    n_factors = 4
    loadings = rng.standard_normal((n_factors, n_vox)).astype(np.float32) / np.sqrt(n_factors)
    rho = config.correlated_noise
    t_total = image_index.size
    betas = np.empty((t_total, n_vox), np.float32)
    for k in np.unique(session):
        idx = np.flatnonzero(session == k)
        m = idx.size
        z = rng.standard_normal((m, n_vox), dtype=np.float32)
        u = rng.standard_normal((m, n_factors), dtype=np.float32)
        noise = np.sqrt(1 - rho) * z + np.sqrt(rho) * (u @ loadings)
        offset = rng.standard_normal(n_vox).astype(np.float32)
        slope = rng.standard_normal(n_vox).astype(np.float32)
        tau = ((np.arange(m) + 0.5) / m - 0.5).astype(np.float32)
        drift = config.session_drift * (offset[None] + tau[:, None] * slope[None])
        b = signal[row_of[image_index[idx]]] + sigma[None] * (noise + drift)
        b -= b.mean(0, keepdims=True)
        std = b.std(0, keepdims=True)
        betas[idx] = b / np.where(std > 1e-8, std, 1.0)
    return SubjectSimulation(
        betas=betas, image_index=image_index, split=split, repetition=repetition, session=session, cortex=cortex,
        target_ncsnr=target.astype(np.float32),
    )


def noise_ceiling_summary(nc: np.ndarray, areas: np.ndarray | None = None) -> dict[str, Any]:
    """Summary of a noise-ceiling vector (percent): median, quartiles, 10/90 % quantiles, share > 50 %,
    and per-area medians when ``areas`` (V,) indices into AREAS are given."""
    q = np.percentile(nc, [10, 25, 50, 75, 90])
    out: dict[str, Any] = {
        "median": round(float(q[2]), 2),
        "q10": round(float(q[0]), 2),
        "q25": round(float(q[1]), 2),
        "q75": round(float(q[3]), 2),
        "q90": round(float(q[4]), 2),
        "frac_above_50": round(float((nc > 50).mean()), 4),
    }
    if areas is not None:
        out["median_by_area"] = {AREAS[a]: round(float(np.median(nc[areas == a])), 2) for a in np.unique(areas)}
    return out


def _put(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """One dataset with a fletcher32 checksum (empty arrays cannot be chunked: stored plain)."""
    data = np.asarray(data)
    group.create_dataset(name, data=data, fletcher32=bool(data.size))


def estimated_bytes(config: DemoWorldConfig) -> int:
    """A lower bound of a generated world's size: the betas uncompressed, the images at half their raw size."""
    trials = (config.n_test_images + config.n_train_images) * config.repetitions
    betas = trials * sum(config.voxels) * np.dtype(config.betas_dtype).itemsize
    return int(betas + config.n_images * config.image_size ** 2 * 3 // 2)


def _write_labels(h5: h5py.File, labels: StimulusLabels) -> None:
    g = h5.create_group("labels")
    for name in StimulusLabels.ARRAYS:
        _put(g, name, getattr(labels, name))
    vocab = {
        "categories": list(CATEGORIES), "colours": list(COLOUR_NAMES), "sizes": list(SIZE_NAMES),
        "positions": list(POSITIONS), "backgrounds": list(BACKGROUNDS), "skies": list(SKY_NAMES),
    }
    g.attrs["vocabulary"] = json.dumps(vocab)


def generate_demo_world(
    root: str | Path,
    config: DemoWorldConfig = DemoWorldConfig(),
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> Path:
    """Generate the demo world into ``root`` (canonical format, world="demo"). Returns ``root``.

    Deterministic: the same config (seed included) gives identical arrays. Raises FileExistsError if
    ``root`` exists and ``overwrite`` is False. The manifest's metadata holds the config, the seed, the
    generator version, the vocabularies, per-subject noise-ceiling summaries and timings.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    t0 = time.perf_counter()
    subjects_meta: dict[str, Any] = {}
    # the writer (lock, destination and free-space checks) comes first: a refusal costs no rendering
    with DatasetWriter(root, name=WORLD_NAME, world=WORLD_NAME, overwrite=overwrite, betas_dtype=config.betas_dtype,
                       required_bytes=estimated_bytes(config)) as w:
        scenes = sample_scenes(_rng(config.seed, _STREAM_STIMULI), config.n_images, max_objects=config.max_objects)
        images, labels, captions = render_scenes(
            scenes, config.image_size, config.supersample, config.max_objects, progress=progress
        )
        t_stimuli = time.perf_counter() - t0
        extractor = FeatureExtractor(config.image_size).calibrate(images[: min(256, config.n_test_images)])
        test_features = extractor(images[: config.n_test_images])
        w.append_images(images, image_ids=np.arange(config.n_images), captions=captions)
        with h5_writing(w.partial / EXTRA_NAME) as extra:
            _write_labels(extra, labels)
            vox = extra.create_group("voxels")
            for s, name in enumerate(tqdm(config.subjects, desc="subjects", disable=not progress, leave=False)):
                sim = simulate_subject(config, s, images, labels, extractor, test_features)
                app = w.subject(name, n_voxels=config.voxels[s])
                chunk = 2048
                for a in range(0, sim.betas.shape[0], chunk):
                    sl = slice(a, a + chunk)
                    app.append(sim.betas[sl], sim.image_index[sl], sim.split[sl], sim.repetition[sl], sim.session[sl])
                # per block of voxels: the float64 temporaries stay small
                snr = np.concatenate(
                    [compute_ncsnr(sim.betas[:, a : a + 512], sim.image_index) for a in range(0, sim.betas.shape[1], 512)]
                )
                nc = noise_ceiling(snr, config.repetitions)
                c = sim.cortex
                g = vox.create_group(name)
                for key, arr in (
                    ("area", c.area), ("prf_x", c.prf_x), ("prf_y", c.prf_y), ("prf_sigma", c.prf_sigma),
                    ("exponent", c.exponent), ("gain", c.gain), ("target_ncsnr", sim.target_ncsnr),
                    ("ncsnr", snr.astype(np.float32)), ("noise_ceiling", nc.astype(np.float32)),
                ):
                    _put(g, key, arr)
                g.attrs["areas"] = json.dumps(list(AREAS))
                subjects_meta[name] = {
                    "n_voxels": int(config.voxels[s]),
                    "n_sessions": int(sim.session.max()) + 1,
                    "voxels_per_area": {AREAS[a]: int((c.area == a).sum()) for a in np.unique(c.area)},
                    f"noise_ceiling_{config.repetitions}trial": noise_ceiling_summary(nc, c.area),
                    "noise_ceiling_1trial": noise_ceiling_summary(noise_ceiling(snr, 1)),
                }
        metadata = {
            "generator": "mindeye_core.data.demo",
            "generator_version": GENERATOR_VERSION,
            "seed": config.seed,
            "config": config.to_dict(),
            "areas": list(AREAS),
            "channels": list(CHANNEL_NAMES),
            "vocabulary": {
                "categories": list(CATEGORIES), "colours": list(COLOUR_NAMES), "sizes": list(SIZE_NAMES),
                "positions": list(POSITIONS), "backgrounds": list(BACKGROUNDS),
            },
            "extra_file": EXTRA_NAME,
            "test_images": [0, config.n_test_images],
            "train_images": {
                name: [config.n_test_images + s * config.n_train_images, config.n_test_images + (s + 1) * config.n_train_images]
                for s, name in enumerate(config.subjects)
            },
            "subjects": subjects_meta,
            "timing_s": {"stimuli": round(t_stimuli, 2), "total": round(time.perf_counter() - t0, 2)},
        }
        return w.finalize(metadata=metadata)


def demo_config_of(root: str | Path) -> DemoWorldConfig:
    """The config a demo world folder was generated with (DataFormatError if it is not a demo world)."""
    manifest = read_manifest(root)
    meta = manifest.get("metadata", {})
    if manifest.get("world") != WORLD_NAME or "config" not in meta:
        raise DataFormatError(f"{root} is not a demo world (world={manifest.get('world')!r})")
    return DemoWorldConfig.from_dict(meta["config"])


def ensure_demo_world(
    root: str | Path, config: DemoWorldConfig = DemoWorldConfig(), progress: bool = True, *, overwrite: bool = False
) -> tuple[Path, bool]:
    """Reuse ``root`` if it holds a complete demo world with the same config and generator version,
    otherwise generate it. Returns ``(root, generated)``.

    A folder holding something else (another config, another world, an incomplete write) is only replaced
    when ``overwrite`` is True; otherwise a FileExistsError explains the difference.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        try:
            existing = demo_config_of(root)
            version = read_manifest(root)["metadata"].get("generator_version")
        except (DataFormatError, ConfigMismatchError, ValueError) as exc:
            raise FileExistsError(f"{root} exists but is not a usable demo world ({exc}); pass overwrite to replace it") from exc
        if existing == config and version == GENERATOR_VERSION:
            return root, False
        diff = {k: (v, config.to_dict()[k]) for k, v in existing.to_dict().items() if config.to_dict()[k] != v}
        what = f"config differs: {diff}" if diff else f"generator version {version} != {GENERATOR_VERSION}"
        raise FileExistsError(f"{root} holds a demo world generated differently ({what}); pass overwrite to regenerate it")
    return generate_demo_world(root, config, progress, overwrite=True), True


def load_demo_labels(root: str | Path) -> StimulusLabels:
    """Structured labels of every image of a demo world (rows match ``images.h5``)."""
    path = Path(root) / EXTRA_NAME
    if not path.is_file():
        raise DataFormatError(f"demo labels missing: {path} (is {root} a demo world?)")
    try:
        with h5py.File(path, "r") as f:
            g = f["labels"]
            labels = StimulusLabels(**{name: g[name][:] for name in StimulusLabels.ARRAYS})
    except (OSError, KeyError) as exc:
        raise DataFormatError(f"corrupt demo labels file {path}: {exc}") from exc
    labels.validate()
    return labels


def load_voxel_table(root: str | Path, subject: str) -> dict[str, np.ndarray]:
    """A subject's voxel table: area (V,) indices into AREAS, prf_x/prf_y/prf_sigma (deg), exponent,
    gain, target_ncsnr, ncsnr (measured), noise_ceiling (measured, %, for the repetition average)."""
    path = Path(root) / EXTRA_NAME
    if not path.is_file():
        raise DataFormatError(f"demo voxel table missing: {path} (is {root} a demo world?)")
    with h5py.File(path, "r") as f:
        if subject not in f["voxels"]:
            raise KeyError(f"subject {subject!r} not in {path} (available: {', '.join(sorted(f['voxels']))})")
        g = f["voxels"][subject]
        return {k: g[k][:] for k in g}
