"""The explorer's read-only store: one results bundle plus, on the demo world, live reconstruction.

One :class:`ExplorerStore` is built at start-up and shared by every user session; nothing in it changes
after :meth:`ExplorerStore.open` returns (generation runs under a lock; the models are frozen). On the
demo world it holds one :class:`~mindeye_core.recon.Reconstructor` per subject (the shipped tiny CLIP,
generator and VAE, the trained brain models of ``assets/demo_brain``), so moving the strength slider
regenerates a trial's final from its prior samples (stored, or drawn again from its stored voxels) and
seed, exactly as the bundle's build did.
Callbacks (:mod:`app.callbacks`) read it through the small surface below; per-user state (subject, trial,
strength, tab) lives in the page's components.

The bundle is reached through the results-bundle reader of :mod:`mindeye_core.results`
(``open_results``, format v2, ``docs/results_bundle.md``). The store only needs the part of that reader
named by :class:`BundleReader` / :class:`SubjectReader`, so tests can hand it any object of that shape.

A store whose bundle is missing or unreadable still opens: :attr:`ExplorerStore.problem` then says what is
missing and how to build it, and the app shows that message instead of the views.
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from mindeye_core.errors import MindEyeError
from mindeye_core.paths import ASSETS_DIR
from mindeye_core.results import UMAP_SPACES
from mindeye_core.similarity import DIRECTIONS, top_k_of_similarity

__all__ = [
    "BUILD_HINT",
    "ENV_DEMO_BRAIN",
    "ENV_RESULTS",
    "ENV_RESULTS_REVISION",
    "UMAP_SPACES",
    "BundleReader",
    "ExplorerStore",
    "LiveResult",
    "SubjectCache",
    "SubjectReader",
    "default_brain_root",
    "default_results_source",
    "load_demo_reconstructors",
    "open_bundle",
    "png_data_url",
]


ENV_RESULTS = "MINDEYE_RESULTS"
"""Environment variable: a bundle folder or a Hub dataset repo id (``owner/name``)."""
ENV_RESULTS_REVISION = "MINDEYE_RESULTS_REVISION"
"""Environment variable: the pinned revision (commit sha or tag) of a Hub bundle."""
BUILD_HINT = (
    "Build the demo bundle with `mindeye build-demo` (it trains the four demo subjects and writes "
    "assets/demo_results), or point the app at a bundle folder or a Hub dataset repo id with "
    f"`mindeye app --results PATH_OR_REPO` (or ${ENV_RESULTS})."
)
MEMO_TRIALS = 16
"""Trials whose prior samples (recomputed from voxels in a light bundle) are kept for the next slider move."""
STIMULI_CACHE_BYTES = 256 * 2**20
"""The test images are held in memory when they take at most this much (the demo world's: 7 MB)."""
ENV_DEMO_BRAIN = "MINDEYE_DEMO_BRAIN"
"""Environment variable: folder of the demo world's trained brain models (``<subject>/{highlevel,lowlevel}``)."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------ reader protocol
class SubjectReader(Protocol):
    """What the store reads of one subject (``ResultsBundle.subject(name)``, docs/results_bundle.md)."""

    info: Mapping[str, Any]
    stored_strengths: list[float]
    has_candidates: bool
    has_prior_samples: bool
    has_voxels: bool
    embedding_spaces: list[str]

    def ground_truth(self, index: Any = None) -> np.ndarray: ...
    def blurry(self, index: Any = None) -> np.ndarray | None: ...
    def finals(self, strength: float | None = None, index: Any = None) -> np.ndarray: ...
    def candidates(self, index: Any = None) -> np.ndarray: ...
    def candidate_scores(self) -> np.ndarray: ...
    def picked(self) -> np.ndarray: ...
    def seeds(self) -> np.ndarray: ...
    def stimulus_rows(self) -> np.ndarray: ...
    def voxels(self, index: Any = None) -> np.ndarray: ...
    def prior_samples(self, index: Any) -> np.ndarray: ...
    def embeddings(self, space: str) -> np.ndarray: ...
    def umap(self) -> Mapping[str, np.ndarray] | None: ...
    def similarity(self, direction: str = "brain_to_image") -> np.ndarray: ...
    def retrieval_ranks(self) -> Mapping[str, np.ndarray]: ...

    @property
    def ridge(self) -> Any: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...


class BundleReader(Protocol):
    """What the store reads of a bundle (``mindeye_core.results.ResultsBundle``)."""

    root: Path
    strengths: list[float]
    default_strength: float

    @property
    def subjects(self) -> list[str]: ...
    @property
    def world(self) -> str: ...
    @property
    def provenance(self) -> Mapping[str, Any]: ...
    @property
    def n_stimuli(self) -> int: ...

    def subject(self, name: str) -> SubjectReader: ...
    def stimulus_images(self, rows: Any = None) -> np.ndarray: ...


# ------------------------------------------------------------------------------------ helpers
def png_data_url(image: np.ndarray) -> str:
    """``(H, W, 3)`` uint8 -> ``data:image/png;base64,...`` (for the UMAP hover)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def default_results_source() -> str:
    """``$MINDEYE_RESULTS`` if set, else the shipped demo bundle folder ``assets/demo_results``."""
    return os.environ.get(ENV_RESULTS) or str(ASSETS_DIR / "demo_results")


def default_brain_root() -> Path:
    """``$MINDEYE_DEMO_BRAIN`` if set, else ``assets/demo_brain`` (``<subject>/{highlevel,lowlevel}``)."""
    env = os.environ.get(ENV_DEMO_BRAIN)
    return Path(env).expanduser() if env else ASSETS_DIR / "demo_brain"


def open_bundle(source: str | Path, revision: str | None = None,
                opener: Callable[..., BundleReader] | None = None) -> BundleReader:
    """Open the bundle at ``source``: a folder, or a Hub dataset repo id ``owner/name``.

    A repo id is fetched once (``snapshot_download`` through ``mindeye_core.results.results_from_hub``) at
    ``revision``, which must be given (a commit sha or tag) so that a Space shows a pinned bundle.

    Args:
        source: folder or repo id.
        revision: pinned revision of a Hub bundle (default ``$MINDEYE_RESULTS_REVISION``).
        opener: replaces ``results_from_hub`` (tests); called as ``opener(source, revision=...)``.

    Raises:
        FileNotFoundError: no folder there and not a repo id, or a repo id without a revision; the message
            says what is missing and how to build it.
        MindEyeError: the bundle cannot be fetched or read (the library's message).
    """
    path = Path(source).expanduser()
    is_repo = not path.exists() and bool(_REPO_ID.match(str(source))) and not str(source).startswith((".", "~"))
    if not is_repo and not (path / "manifest.json").is_file():
        partial = path.with_name(path.name + ".partial")
        what = (f"an interrupted write: {partial} exists, manifest.json is missing" if partial.exists()
                else "the folder has no manifest.json" if path.is_dir() else "the folder does not exist")
        raise FileNotFoundError(f"No results bundle at {path} ({what}).")
    revision = revision or os.environ.get(ENV_RESULTS_REVISION)
    if is_repo and not revision:
        raise FileNotFoundError(f"{source!r} is not a local folder; as a Hub dataset repo id it needs a pinned "
                                f"revision (--revision SHA or ${ENV_RESULTS_REVISION}).")
    if opener is None:
        from mindeye_core.results import results_from_hub as opener  # type: ignore[no-redef]
    return opener(str(path) if not is_repo else str(source), revision=revision)


def load_demo_reconstructors(subjects: Sequence[str], brain_root: str | Path, *, n_samples: int,
                             strength: float, steps: int | None, guidance: float | None) -> dict[str, Any]:
    """One :class:`~mindeye_core.recon.Reconstructor` per subject on the demo world, sharing one tiny CLIP,
    tiny generator and tiny VAE; brain models from ``<brain_root>/<subject>/{highlevel,lowlevel}``.

    Raises:
        FileNotFoundError: a subject's ``highlevel`` folder is missing (the message names it).
        MindEyeError: a model does not load or the parts do not fit together.
    """
    from mindeye_core.demo_models import load_demo_clip, load_demo_generator, load_demo_vae
    from mindeye_core.models import LowLevelModel, MindEyeHighLevel
    from mindeye_core.recon import Reconstructor

    root = Path(brain_root)
    missing = [str(root / s / "highlevel") for s in subjects if not (root / s / "highlevel").is_dir()]
    if missing:
        raise FileNotFoundError(f"no trained brain model at {', '.join(missing)}")
    encoder, generator = load_demo_clip("hidden"), load_demo_generator()
    vae = None
    out = {}
    for s in subjects:
        brain = MindEyeHighLevel.from_pretrained(root / s / "highlevel")
        low = None
        if (root / s / "lowlevel").is_dir():
            low = LowLevelModel.from_pretrained(root / s / "lowlevel")
            vae = vae or load_demo_vae()
        out[s] = Reconstructor(brain, encoder, generator, low, vae if low is not None else None,
                               n_samples=n_samples, strength=strength if low is not None else 0.0,
                               steps=steps, guidance=guidance)
    return out


# ------------------------------------------------------------------------------------ per-subject cache
@dataclass
class SubjectCache:
    """The small arrays of one subject, read once (images stay on disk, read on demand).

    Attributes:
        n: number of test samples ``N``.
        seeds: ``(N,)`` per-sample seeds.
        picked: ``(N,)`` index of the picked candidate at the default strength.
        candidate_scores: ``(N, K)`` CLIP scores of the candidates.
        similarity: direction -> ``(N, N)`` cosine similarities, rows = queries of that direction.
        ranks: direction -> ``(N,)`` rank of the true match (0 = top-1).
        umap: space -> ``(N, 2)``, empty without a UMAP.
        ridge_similarity / ridge_ranks: the same for the ridge baseline (empty without one).
        metrics: the manifest's metrics block of the subject.
        stored_strengths: strengths whose finals the bundle stores (the whole grid unless it is light).
        has_candidates / has_prior_samples: what a light bundle may leave out.
        has_voxels: the betas are stored (a light bundle's prior samples are drawn again from them).
        has_projector: the projector embeddings are stored (else they are recomputed from the voxels).
        neighbours: the subject's retrieval neighbours from a large collection
            (:class:`mindeye_core.results.Neighbours`: the demo pool standing in for LAION), or ``None``.
        neighbours_problem: why stored neighbours could not be read (``None`` when fine or absent).
    """

    name: str
    reader: SubjectReader
    n: int
    stimulus_rows: np.ndarray
    seeds: np.ndarray
    picked: np.ndarray
    candidate_scores: np.ndarray
    similarity: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    umap: dict[str, np.ndarray]
    ridge_similarity: dict[str, np.ndarray]
    ridge_ranks: dict[str, np.ndarray]
    metrics: dict[str, Any]
    has_blurry: bool
    stored_strengths: list[float]
    has_candidates: bool
    has_prior_samples: bool
    has_voxels: bool
    has_projector: bool
    ridge: Any = None
    neighbours: Any = None
    neighbours_problem: str | None = None

    @classmethod
    def load(cls, name: str, reader: SubjectReader) -> SubjectCache:
        info = dict(reader.info)
        ranks = {k: np.asarray(v) for k, v in reader.retrieval_ranks().items()}
        ridge = reader.ridge
        r_sim: dict[str, np.ndarray] = {}
        r_ranks: dict[str, np.ndarray] = {}
        if ridge is not None:
            r_sim = {d: np.asarray(ridge.similarity(d), dtype=np.float32) for d in DIRECTIONS}
            r_ranks = {k: np.asarray(v) for k, v in ridge.retrieval_ranks().items()}
        neighbours, nb_problem = None, None
        if reader.has_neighbours:
            try:
                neighbours = reader.neighbours()
            except (MindEyeError, OSError, KeyError, ValueError) as exc:  # the rest of the bundle is still shown
                nb_problem = f"its stored pool neighbours cannot be read: {exc}"
        return cls(
            name=name, reader=reader, n=int(info["n_samples"]), stimulus_rows=np.asarray(reader.stimulus_rows()),
            seeds=np.asarray(reader.seeds()), picked=np.asarray(reader.picked()),
            candidate_scores=np.asarray(reader.candidate_scores(), dtype=np.float32),
            similarity={d: np.asarray(reader.similarity(d), dtype=np.float32) for d in DIRECTIONS},
            ranks=ranks, umap={k: np.asarray(v, dtype=np.float32) for k, v in (reader.umap() or {}).items()},
            ridge_similarity=r_sim, ridge_ranks=r_ranks, metrics=dict(reader.metrics or {}),
            has_blurry=bool(info.get("has_blurry")), stored_strengths=[float(x) for x in reader.stored_strengths],
            has_candidates=bool(reader.has_candidates), has_prior_samples=bool(reader.has_prior_samples),
            has_voxels=bool(reader.has_voxels), has_projector="projector" in reader.embedding_spaces, ridge=ridge,
            neighbours=neighbours, neighbours_problem=nb_problem,
        )

    def stored(self, strength: float) -> float | None:
        """The stored strength equal to ``strength`` (to 1e-6), or ``None``."""
        return next((x for x in self.stored_strengths if abs(x - float(strength)) < 1e-6), None)

    def top_k(self, index: int, k: int, direction: str, *, ridge: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best matches of query ``index`` in ``direction``: ``(indices (k,), cosines (k,))``."""
        sim = (self.ridge_similarity if ridge else self.similarity)[direction]
        return top_k_of_similarity(sim[int(index)], k)


@dataclass(frozen=True)
class LiveResult:
    """One live regeneration of a trial at one strength.

    Attributes:
        final: ``(H, W, 3)`` uint8 final reconstruction.
        candidates: ``(K, H, W, 3)`` uint8 all K candidates (``all_candidates=True``), else ``(1, H, W, 3)``:
            just the picked one.
        scores: ``(K,)`` cosine(CLIP(candidate), projector output), or ``None`` when not rescored.
        picked: the candidate the final is (index into the trial's K candidates).
        seconds: wall time of the generation.
        seed: the trial's seed.
    """

    final: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray | None
    picked: int
    seconds: float
    seed: int


def _to_uint8_hwc(images: Any) -> np.ndarray:
    """``(..., 3, H, W)`` float in [0, 1] (torch) -> ``(..., H, W, 3)`` uint8 (the bundle writer's rounding)."""
    a = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    return np.moveaxis((a * 255.0 + 0.5).astype(np.uint8), -3, -1)


# ------------------------------------------------------------------------------------ the store
@dataclass
class ExplorerStore:
    """Read-only, shared state of the explorer (see module docstring). Build with :meth:`open`.

    Attributes:
        source: what was asked for (folder or repo id).
        bundle: the opened bundle, or ``None`` when :attr:`problem` is set.
        problem: why there is nothing to show, and how to fix it (``None`` when ready).
        reconstructors: subject -> :class:`~mindeye_core.recon.Reconstructor` for live generation (demo world).
        live_problem: why live generation is off, if it is.
    """

    source: str
    bundle: BundleReader | None = None
    problem: str | None = None
    reconstructors: dict[str, Any] = field(default_factory=dict)
    live_problem: str | None = None
    _subjects: dict[str, SubjectCache] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loading: threading.Thread | None = None
    _stimuli: np.ndarray | None = None
    _memo: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict)
    world_data: Any = None
    world_problem: str | None = None
    _clip: dict[int, np.ndarray] = field(default_factory=dict)
    _world_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def open(cls, source: str | Path | None = None, *, revision: str | None = None, live: bool | None = None,
             brain_root: str | Path | None = None,
             live_loader: Callable[[ExplorerStore], Mapping[str, Any]] | None = None,
             opener: Callable[..., BundleReader] | None = None, background: bool = False,
             data: str | Path | bool | None = None, build_world: bool | Any = False) -> ExplorerStore:
        """Open a bundle and, on the demo world (``live`` not ``False``), the live reconstructors.

        Never raises for a missing or unreadable bundle or model: the reason lands in :attr:`problem` /
        :attr:`live_problem`, with how to fix it.

        Args:
            source: bundle folder or Hub dataset repo id; default :func:`default_results_source`.
            revision: pinned Hub revision (see :func:`open_bundle`).
            live: ``False`` never generates; ``None`` (default) generates on the demo world only; ``True``
                tries whatever the bundle's world (with ``live_loader`` for models other than the demo's).
            brain_root: folder of ``<subject>/{highlevel,lowlevel}`` (default :func:`default_brain_root`).
            live_loader: ``live_loader(store) -> {subject: Reconstructor}`` replacing the default
                (:func:`load_demo_reconstructors` with the bundle's generation settings).
            opener: ``opener(source, revision=...)`` replacing ``mindeye_core.results.results_from_hub``.
            background: load the live models in a background thread (the app serves the precomputed
                views meanwhile; :attr:`live_loading` is true until they are in); see :meth:`wait_live`.
            data: the dataset the bundle was built from (brain view, single trials, decoding lab;
                :mod:`app.world`): a folder, ``False`` for none, ``None`` (default) for
                :func:`app.world.default_world_root` on the demo world; why it is missing lands in
                :attr:`world_problem`.
            build_world: on the demo world with ``data=None``, generate the missing demo world at
                :func:`app.world.default_world_root` in a background thread (what ``mindeye demo`` would
                write: about a minute on 2 CPU cores, once); the three panels that need it say so until it is
                in (:attr:`world_building`, :meth:`wait_world`). ``mindeye app`` turns this on. A
                :class:`~mindeye_core.data.demo.DemoWorldConfig` instead of ``True`` generates that world
                (default: the shipped bundle's, ``DemoWorldConfig()``).
        """
        src = str(source) if source is not None else default_results_source()
        try:
            bundle = open_bundle(src, revision, opener)
        except FileNotFoundError as exc:
            return cls(source=src, problem=f"{exc} {BUILD_HINT}")
        except (MindEyeError, OSError, KeyError, ValueError) as exc:
            return cls(source=src, problem=f"The results bundle {src!r} cannot be read: {exc}. {BUILD_HINT}")
        store = cls(source=src, bundle=bundle)
        try:
            for name in bundle.subjects:
                store._subjects[name] = SubjectCache.load(name, bundle.subject(name))
            first = next(iter(store._subjects.values()))
            one = np.asarray(bundle.stimulus_images([int(first.stimulus_rows[0])]))
            if one.nbytes * int(bundle.n_stimuli) <= STIMULI_CACHE_BYTES:
                store._stimuli = np.asarray(bundle.stimulus_images())  # the test images, held in memory
        except (MindEyeError, OSError, KeyError, ValueError) as exc:
            return cls(source=src, problem=f"The results bundle {src!r} cannot be read: {exc}. {BUILD_HINT}")
        store._open_world(data, build_world=build_world)
        if live is False or (live is None and store.world != "demo"):
            store.live_problem = (f"live generation is off for the {store.world!r} world" if live is None
                                  else "live generation was turned off (--no-live)")
            return store
        loader = live_loader or (lambda st: st._default_reconstructors(brain_root))
        if background:
            store._loading = threading.Thread(target=store._load_live, args=(loader,), name="mindeye-live-models",
                                              daemon=True)
            store._loading.start()
        else:
            store._load_live(loader)
        return store

    def _open_world(self, data: str | Path | bool | None, *, build_world: bool | Any = False) -> None:
        from .world import default_world_root, open_world

        if data is False or (data is None and self.world != "demo"):
            self.world_problem = "no dataset beside the bundle" if data is False else (
                f"the {self.world!r} world's dataset is not opened by default (pass data=)")
            return
        root = default_world_root() if data is None or data is True else Path(data)
        voxels = {name: c.reader.info.get("n_voxels") for name, c in self._subjects.items()}
        fingerprint = self.provenance.get("dataset_manifest_sha256")
        fingerprint = fingerprint if isinstance(fingerprint, str) else None
        if build_world and data is None and self.world == "demo" and not (root / "manifest.json").exists():
            self.world_problem = (f"the demo world is being generated at {root} (once, about a minute on 2 CPU "
                                  "cores); this panel works as soon as it is in")
            config = None if build_world is True else build_world
            self._world_thread = threading.Thread(target=self._build_world, args=(root, voxels, fingerprint, config),
                                                  name="mindeye-demo-world", daemon=True)
            self._world_thread.start()
            return
        self.world_data, self.world_problem = open_world(root, voxels, fingerprint)

    def _build_world(self, root: Path, voxels: Mapping[str, int | None], fingerprint: str | None,
                     config: Any = None) -> None:
        """Background thread of ``build_world``: :func:`mindeye_core.data.demo.ensure_demo_world` (the
        staging module's lock refuses a second writer, e.g. another app started at once), then open it."""
        from mindeye_core.data.demo import DemoWorldConfig, ensure_demo_world

        from .world import open_world

        try:
            ensure_demo_world(root, config if config is not None else DemoWorldConfig(), progress=False)
        except (MindEyeError, OSError, ValueError) as exc:
            self.world_problem = f"generating the demo world at {root} failed: {exc} (run `mindeye demo`)"
            return
        world, problem = open_world(root, voxels, fingerprint)
        self.world_problem = problem
        self.world_data = world
        if world is not None and world.can_simulate and self.reconstructors:
            self._prepare_lab()

    @property
    def world_building(self) -> bool:
        """``True`` while the demo world is generated in the background (``build_world``)."""
        return self._world_thread is not None and self._world_thread.is_alive()

    def wait_world(self, timeout: float | None = None) -> bool:
        """Wait for a background world generation (if any); returns whether the dataset is open."""
        if self._world_thread is not None:
            self._world_thread.join(timeout)
        return self.world_data is not None

    def _load_live(self, loader: Callable[[ExplorerStore], Mapping[str, Any]]) -> None:
        try:
            recs = dict(loader(self))
            self._warm_up(recs)
            self.reconstructors = recs
        except FileNotFoundError as exc:
            self.live_problem = f"{exc} (`mindeye build-demo` trains and writes them)"
        except (MindEyeError, OSError, ValueError, RuntimeError) as exc:
            self.live_problem = f"the live generator failed to load: {exc}"
        if self._loading is not None and self.reconstructors:
            self._prepare_lab()

    def _prepare_lab(self) -> None:
        """Background start-up: the test images' CLIP embeddings and every subject's forward model (seconds
        each), so the first lab decode and single trial do not wait for them."""
        try:
            for name in self.subjects:
                self.clip_embeddings(name)
                if self.world_data is not None and self.world_data.can_simulate:
                    self.world_data.forward(name)
        except (MindEyeError, OSError, KeyError, ValueError, RuntimeError) as exc:
            self.world_problem = f"the demo world's forward model failed to build: {exc}"
            self.world_data = None

    @property
    def live_loading(self) -> bool:
        """``True`` while the live models load in the background."""
        return self._loading is not None and self._loading.is_alive()

    def wait_live(self, timeout: float | None = None) -> bool:
        """Wait for a background load (if any) to finish; returns :attr:`live`."""
        if self._loading is not None:
            self._loading.join(timeout)
        return self.live

    def _warm_up(self, recs: Mapping[str, Any]) -> None:
        """One small generation, so the first slider move does not pay torch's one-off initialisation
        (seconds on a CPU)."""
        import torch

        rec = next(iter(recs.values()), None)  # the subjects share one generator and encoder
        if rec is not None:
            rec.regenerate(torch.zeros(1, 1, *rec.tokens, dtype=torch.float16),
                           torch.zeros(1, 3, rec.image_size, rec.image_size), [0], 0.5)

    def _default_reconstructors(self, brain_root: str | Path | None) -> dict[str, Any]:
        gen = dict(self.provenance.get("generation", {}))
        k = {int(c.candidate_scores.shape[1]) for c in self._subjects.values()}
        return load_demo_reconstructors(
            self.subjects, brain_root if brain_root is not None else default_brain_root(),
            n_samples=max(k), strength=self.default_strength, steps=gen.get("steps"), guidance=gen.get("guidance"))

    # ---------------------------------------------------------------- what there is
    @property
    def ready(self) -> bool:
        """``True`` when a bundle is open."""
        return self.bundle is not None

    @property
    def live(self) -> bool:
        """``True`` when the slider can generate at any strength (for every subject)."""
        return bool(self._subjects) and all(self.can_regenerate(s) for s in self._subjects)

    def can_regenerate(self, subject: str) -> bool:
        """``subject`` has a reconstructor and stored prior samples (or voxels to draw them again)."""
        cache = self.subject(subject)
        return subject in self.reconstructors and (cache.has_prior_samples or cache.has_voxels)

    @property
    def subjects(self) -> list[str]:
        return list(self._subjects)

    @property
    def strengths(self) -> list[float]:
        return [float(s) for s in self.bundle.strengths] if self.bundle is not None else []

    @property
    def default_strength(self) -> float:
        return float(self.bundle.default_strength) if self.bundle is not None else 0.15

    @property
    def world(self) -> str:
        return str(self.bundle.world) if self.bundle is not None else ""

    @property
    def provenance(self) -> Mapping[str, Any]:
        return dict(self.bundle.provenance or {}) if self.bundle is not None else {}

    def subject(self, name: str) -> SubjectCache:
        """The cached subject ``name``; :class:`KeyError` naming the available ones otherwise."""
        try:
            return self._subjects[name]
        except KeyError:
            raise KeyError(f"subject {name!r} is not in the bundle; available: {', '.join(self._subjects)}") from None

    def on_grid(self, strength: float) -> float | None:
        """The grid strength equal to ``strength`` (to 1e-6), or ``None``."""
        for s in self.strengths:
            if abs(s - float(strength)) < 1e-6:
                return s
        return None

    def nearest_stored(self, subject: str, strength: float) -> float:
        """The stored strength of ``subject`` nearest to ``strength`` (ties: the lower)."""
        return min(self.subject(subject).stored_strengths, key=lambda s: (abs(s - float(strength)), s))

    # ---------------------------------------------------------------- images
    def seen(self, subject: str, index: int | Sequence[int]) -> np.ndarray:
        """Seen image(s) of sample(s) ``index``: ``(H, W, 3)`` for an int, ``(k, H, W, 3)`` for a list."""
        cache = self.subject(subject)
        idx: int | list[int] = int(index) if isinstance(index, (int, np.integer)) else [int(i) for i in index]
        if self._stimuli is None:
            return np.asarray(cache.reader.ground_truth(idx))
        return self._stimuli[cache.stimulus_rows[idx]]

    def blurry(self, subject: str, index: int) -> np.ndarray | None:
        """``(H, W, 3)`` uint8 low-level reconstruction, or ``None`` when the bundle has none."""
        cache = self.subject(subject)
        return np.asarray(cache.reader.blurry(int(index))) if cache.has_blurry else None

    def final(self, subject: str, index: int, strength: float) -> np.ndarray:
        """Precomputed final at a stored strength (:class:`ValueError` otherwise, naming the stored ones)."""
        cache = self.subject(subject)
        s = cache.stored(strength)
        if s is None:
            raise ValueError(f"{subject}: no precomputed final at strength {strength:g}; the bundle stores "
                             f"{', '.join(f'{x:g}' for x in cache.stored_strengths)}")
        return np.asarray(cache.reader.finals(s, int(index)))

    def candidates(self, subject: str, index: int) -> np.ndarray | None:
        """``(K, H, W, 3)`` stored best-of-N candidates at the default strength, ``None`` in a light bundle."""
        cache = self.subject(subject)
        return np.asarray(cache.reader.candidates(int(index))) if cache.has_candidates else None

    def ridge_images(self, subject: str, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(ridge blurry, ridge final)`` of sample ``index`` (either may be ``None``)."""
        ridge = self.subject(subject).ridge
        if ridge is None:
            return None, None
        b, f = ridge.blurry(int(index)), ridge.finals(int(index))
        return (None if b is None else np.asarray(b)), (None if f is None else np.asarray(f))

    def stimulus_thumbnail(self, subject: str, index: int) -> str:
        """PNG data URL of the seen image of sample ``index``."""
        return png_data_url(self.seen(subject, int(index)))

    # ---------------------------------------------------------------- live generation
    def _memoised(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` for ``key``, kept for the :data:`MEMO_TRIALS` most recently used keys."""
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        value = self._memo[key] = compute()
        while len(self._memo) > MEMO_TRIALS:
            self._memo.popitem(last=False)
        return value

    def _brain_outputs(self, subject: str, i: int) -> tuple[Any, Any]:
        """``(backbone, projector (1, E) float32)`` of trial ``i`` from its stored float16 voxels, exactly as the
        reconstruction computed them."""
        import torch

        rec = self.reconstructors[subject]
        v = torch.from_numpy(np.asarray(self.subject(subject).reader.voxels(i), np.float16).astype(np.float32))[None]
        with torch.no_grad():
            backbone, projector = rec.brain_model(v.to(rec.device))
        return backbone, projector.float().cpu()

    def _trial_inputs(self, subject: str, i: int) -> tuple[Any, Any]:
        """``(prior_samples (1, K, T, D) float16, projector (1, E) float32 or None)`` of trial ``i``: stored, or
        (light bundle) recomputed from its float16 voxels exactly as the reconstruction did (brain model ->
        backbone and projector -> the prior's K samples with the trial's seed). Memoised for recent trials."""
        import torch

        def compute() -> tuple[Any, Any]:
            cache = self.subject(subject)
            prior = projector = None
            if cache.has_prior_samples:
                prior = torch.from_numpy(np.asarray(cache.reader.prior_samples(i)))[None]
            if cache.has_voxels:
                backbone, projector = self._brain_outputs(subject, i)
                if prior is None:
                    prior = self.reconstructors[subject].sample_prior(backbone, [int(cache.seeds[i])])
            elif cache.has_projector:
                projector = torch.from_numpy(np.asarray(cache.reader.embeddings("projector")[i], np.float32))[None]
            return prior, projector

        return self._memoised((subject, i), compute)

    def _picked_prior(self, subject: str, i: int, picked: int) -> Any:
        """``(1, 1, T, D)`` float16: the prior sample of trial ``i``'s candidate ``picked``, from the stored or
        memoised K samples, else (light bundle) drawn alone from the voxels with that candidate's own generator
        (:meth:`~mindeye_core.recon.Reconstructor.sample_prior` ``sample_ids``): the same sample for a quarter of
        the prior's cost. Memoised for recent trials."""
        cache = self.subject(subject)
        if (subject, i) in self._memo or cache.has_prior_samples or not cache.has_voxels:
            return self._trial_inputs(subject, i)[0][:, picked:picked + 1]
        return self._memoised((subject, i, "picked"), lambda: self.reconstructors[subject].sample_prior(
            self._brain_outputs(subject, i)[0], [int(cache.seeds[i])], sample_ids=[[picked]]))

    def regenerate(self, subject: str, index: int, strength: float, *, all_candidates: bool = False) -> LiveResult:
        """Trial ``index`` at any ``strength`` with its own seed, through ``Reconstructor.regenerate``.

        By default the candidate picked at the default strength is regenerated alone (its own prior sample and
        noise): how the demo build computes the finals at the other grid strengths, so on the grid it gives
        the bundle's pixels, and off it the slider moves smoothly. ``all_candidates=True`` regenerates all K
        and picks the best by CLIP score against the projector output (the candidates view).

        Raises:
            RuntimeError: live generation is off (:attr:`live_problem` says why) or the subject has no blurry
                image to start img2img from.
        """
        cache = self.subject(subject)
        rec = self.reconstructors.get(subject)
        if rec is None or not self.can_regenerate(subject):
            why = self.live_problem or (f"no model for {subject}" if rec is None else
                                        f"{subject} stores neither prior samples nor voxels")
            raise RuntimeError(f"live generation is unavailable: {why}")
        import torch

        i = int(index)
        blurry = self.blurry(subject, i)
        if blurry is None and float(strength) > 0:
            raise RuntimeError(f"{subject} has no blurry reconstructions to start img2img from")
        init = None if blurry is None else torch.from_numpy(np.array(blurry)).permute(2, 0, 1)[None].contiguous()  # a writable copy
        seed, picked = int(cache.seeds[i]), int(cache.picked[i])
        t0 = time.perf_counter()
        with self._lock:
            if all_candidates:
                prior, projector = self._trial_inputs(subject, i)
                out = rec.regenerate(prior, init, [seed], float(strength), projector=projector)
            else:
                out = rec.regenerate(self._picked_prior(subject, i, picked), init, [seed], float(strength),
                                     sample_ids=[[picked]])
        seconds = time.perf_counter() - t0
        candidates = _to_uint8_hwc(out.candidates[0])
        if out.picked is not None:
            picked = int(out.picked[0])
        final = candidates[picked] if all_candidates else candidates[0]
        scores = None if out.scores is None else out.scores[0].numpy()
        return LiveResult(final=final, candidates=candidates, scores=scores, picked=picked, seconds=seconds, seed=seed)

    # ---------------------------------------------------------------- live decoding (new panels)
    def reconstruct_voxels(self, subject: str, voxels: np.ndarray, seed: int,
                           strengths: Sequence[float] | None = None) -> Any:
        """``Reconstructor.reconstruct`` of one brain sample ``voxels`` ``(V,)`` with ``seed`` (the lab, single
        trials): a :class:`~mindeye_core.recon.ReconstructionOutput` of one trial, candidates kept.

        Raises:
            RuntimeError: no reconstructor for ``subject`` (:attr:`live_problem` says why).
        """
        rec = self.reconstructors.get(subject)
        if rec is None:
            raise RuntimeError(f"live decoding is unavailable for {subject}: "
                               f"{self.live_problem or 'its brain model is not loaded'}")
        import torch

        v = torch.from_numpy(np.asarray(voxels, np.float32).reshape(1, -1))
        with self._lock:
            return rec.reconstruct(v, [int(seed)], strengths=strengths)

    def regenerate_output(self, subject: str, out: Any, strength: float) -> Any:
        """The best of the K candidates of a :meth:`reconstruct_voxels` output at another ``strength``
        (``Reconstructor.regenerate`` with its prior samples, blurry image, seed and projector)."""
        rec = self.reconstructors[subject]
        with self._lock:
            return rec.regenerate(out.prior_samples, out.blurry, [int(out.seeds[0])], float(strength),
                                  projector=out.projector)

    def clip_embedding_of(self, subject: str, image: np.ndarray) -> np.ndarray:
        """``(T*D,)`` unit-norm CLIP embedding of one ``(H, W, 3)`` uint8 image (the live encoder)."""
        import torch

        from mindeye_core.similarity import normalise

        rec = self.reconstructors[subject]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        with self._lock, torch.no_grad():
            out = rec.encoder.encode(x)
        return normalise(out.float().reshape(1, -1).numpy())[0]

    def clip_embeddings(self, subject: str) -> np.ndarray:
        """``(N, T*D)`` unit-norm CLIP image embeddings of ``subject``'s test images (sample order), from
        the live encoder; computed once for all the bundle's stimuli (the retrieval space of the bundle's
        ``similarity``: cosine(projector output, CLIP image embedding), flattened tokens)."""
        import torch

        from mindeye_core.similarity import normalise

        rec = self.reconstructors.get(subject)
        if rec is None:
            raise RuntimeError(f"no live encoder for {subject}: {self.live_problem or 'models not loaded'}")
        key = id(rec.encoder)
        with self._lock:
            emb = self._clip.get(key)
            if emb is None:
                images = self._stimuli if self._stimuli is not None else np.asarray(self.bundle.stimulus_images())
                x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
                emb = normalise(rec.encoder.encode_batches(x, batch_size=64).reshape(x.shape[0], -1).numpy())
                self._clip[key] = emb
        return emb[self.subject(subject).stimulus_rows]
