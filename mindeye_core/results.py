"""The results bundle (format version 2): everything the app and the tables read about one evaluated world.

The format is specified in ``docs/results_bundle.md``; in short::

    <root>/
      manifest.json   written LAST (its presence means "complete"); {"format": "mindeye-results", "version": 2}
      stimuli.h5      /image_index int64 (M,), /images uint8 (M, H, W, 3): the test images, once for all subjects
                      (every image dataset is stored as one lossless PNG per image and read back as uint8)
      <subject>.h5    N test samples: image_index, stimulus_row, seed, blurry, finals (S', N, H, W, 3) at the
                      subject's stored_strengths, candidates (N, K, H, W, 3) (optional), candidate_scores (N, K),
                      picked (N,), prior_samples float16 (N, K, T, D) (optional), embeddings/<space> float16
                      (N, E), umap (4, N, 2), retrieval/{similarity float16 (N, N), brain_to_image_rank (N,),
                      image_to_brain_rank (N,)}, ridge/{retrieval/..., blurry, finals}

A *full* bundle stores finals at every grid strength, the candidates and the prior samples; a *light* one
stores finals at a subset of the grid (always including the default strength) and may leave out the
candidates and the prior samples (the app then regenerates them live). The manifest says which
(``stored_strengths``, ``has_candidates``, ``has_prior_samples``); readers refuse what is absent with a
:class:`~mindeye_core.errors.DataFormatError`.

:class:`ResultsWriter` stages everything in ``<root>.partial`` (:mod:`mindeye_core.staging`) and computes the
similarity matrix and both rank vectors from the embeddings (float32, :mod:`mindeye_core.similarity`); the
matrix is stored as float16 and read back as float32.
:func:`open_results` validates the manifest and every array's shape and dtype and returns a
:class:`ResultsBundle` whose arrays are read lazily (h5py). Any problem raises
:class:`~mindeye_core.errors.DataFormatError` naming the file and the dataset.

Reading a bundle imports neither torch, torchvision nor :mod:`mindeye_core.metrics` (this module imports only
numpy, h5py, :mod:`mindeye_core.similarity`, :mod:`mindeye_core.staging` and :mod:`mindeye_core.errors`);
``huggingface_hub`` is imported only by :func:`push_results_to_hub` / :func:`results_from_hub`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from . import __version__
from .errors import DataFormatError, MindEyeError
from .similarity import DIRECTIONS, as_numpy, cosine_matrix, ranks, top_k_of_similarity
from .configfile import CLASS_KEY, VERSION_KEY, dump_versioned_config, read_versioned_config
from .staging import begin, h5_writing, partial_path, raise_storage_error

FORMAT_NAME = "mindeye-results"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
STIMULI_FILE = "stimuli.h5"
DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 0.15, 0.3, 0.5, 0.7, 1.0)
"""img2img strength grid, paper convention: 0 = pure high-level, 1 = only the blurry image."""
DEFAULT_STRENGTH = 0.15
"""The paper's default strength (must be on the grid)."""
UMAP_SPACES: tuple[str, ...] = ("clip_image", "backbone", "projector", "prior")
"""Embedding spaces of a bundle, in the order of ``/umap`` (paper Figure 9)."""
TEST_MODES = ("average", "single")
"""``average``: 3-trial averages (the paper's test set); ``single``: single trials."""
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def strength_key(strength: float) -> str:
    """Canonical string of an img2img strength, used as a JSON key (``0.15 -> "0.15"``)."""
    return f"{float(strength):g}"


def _subject_file(subject: str) -> str:
    if (not subject or any(c in subject for c in "/\\ .") or subject.startswith("manifest")
            or f"{subject}.h5" == STIMULI_FILE):
        raise DataFormatError(f"invalid subject name {subject!r}: use letters, digits, '-' or '_'")
    return f"{subject}.h5"


# ------------------------------------------------------------------------------------- input checks
def _shape_text(labels: Sequence[str], shape: Sequence[int | None]) -> str:
    parts = [lab if s is None or lab == str(s) else f"{lab}={s}" for lab, s in zip(labels, shape)]
    return "(" + ", ".join(parts) + ")"


def _check_shape(a: np.ndarray, name: str, labels: Sequence[str], shape: Sequence[int | None]) -> None:
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        raise DataFormatError(f"{name}: expected shape {_shape_text(labels, shape)}, got {tuple(a.shape)}")


def _images(x: Any, name: str, labels: Sequence[str], lead: Sequence[int | None],
            size: tuple[int, int] | None = None) -> np.ndarray:
    """``(*lead, H, W, 3)`` uint8 from uint8 or [0, 1]-float images (channels-first ``(*lead, 3, H, W)`` too)."""
    a = as_numpy(x)
    if a.ndim == len(lead) + 3 and a.shape[-3] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, -3, -1)
    h, w = (None, None) if size is None else size
    _check_shape(a, name, [*labels, "H", "W", "3"], [*lead, h, w, 3])
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataFormatError(f"{name}: images must be uint8 or float in [0, 1], got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise DataFormatError(f"{name}: contains NaN/inf")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise DataFormatError(f"{name}: float images must lie in [0, 1], got [{a.min():.4g}, {a.max():.4g}]")
    return (a * 255.0 + 0.5).astype(np.uint8)


def _floats(x: Any, name: str, labels: Sequence[str], shape: Sequence[int | None], dtype: Any = np.float32) -> np.ndarray:
    a = as_numpy(x)
    _check_shape(a, name, labels, shape)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DataFormatError(f"{name}: expected floats, got dtype {a.dtype}")
    a = a.astype(np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataFormatError(f"{name}: {int(bad.sum())} NaN/inf values")
    if dtype == np.float16 and a.size and float(np.abs(a).max()) > _FLOAT16_MAX:
        raise DataFormatError(f"{name}: values up to {float(np.abs(a).max()):.4g} overflow float16 storage")
    return a.astype(dtype)


def _ints(x: Any, name: str, labels: Sequence[str], shape: Sequence[int | None]) -> np.ndarray:
    a = as_numpy(x)
    _check_shape(a, name, labels, shape)
    if not np.issubdtype(a.dtype, np.integer):
        raise DataFormatError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def _embeddings(x: Any, name: str, n: int, t: int, d: int) -> np.ndarray:
    """``(N, T, D)`` or ``(N, T*D)`` -> ``(N, T*D)`` float32 (finite)."""
    a = as_numpy(x)
    if a.ndim == 3:
        _check_shape(a, name, ["N", "T", "D"], [n, t, d])
    else:
        _check_shape(a, name, ["N", "E"], [n, t * d])
    return _floats(a.reshape(n, t * d), name, ["N", "E"], [n, t * d])


def _flat_rows(x: Any, name: str, n: int, e: int | None = None) -> np.ndarray:
    """``(N, ...)`` -> ``(N, E)`` float32 (finite); ``E`` checked when given."""
    a = as_numpy(x)
    if a.ndim < 2 or a.shape[0] != n:
        raise DataFormatError(f"{name}: expected ({n}, ...) embeddings, got shape {tuple(a.shape)}")
    return _floats(a.reshape(n, -1), name, ["N", "E"], [n, e])


def _check_stored_strengths(grid: Sequence[float], default: float, stored: Any, where: str) -> list[float]:
    """The stored strengths as grid values (their given order); the whole grid when ``stored`` is ``None``.

    Raises:
        DataFormatError: ``where: ...`` for a non-list, an empty list, a value off the grid, a duplicate or
            a missing default strength.
    """
    if stored is None:
        return [float(s) for s in grid]
    if isinstance(stored, (str, bytes)) or not isinstance(stored, Sequence) and not isinstance(stored, np.ndarray):
        raise DataFormatError(f"{where}: expected a list of strengths on the grid {list(grid)}, got {stored!r}")
    keys = [strength_key(s) for s in grid]
    out: list[float] = []
    for s in list(stored):
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise DataFormatError(f"{where}: strengths must be numbers, got {s!r}")
        if strength_key(s) not in keys:
            raise DataFormatError(f"{where}: strength {float(s):g} is not on the strength grid {list(grid)}")
        out.append(float(grid[keys.index(strength_key(s))]))
    if not out:
        raise DataFormatError(f"{where}: no strengths (the default strength {default:g} must be stored)")
    if len(set(out)) != len(out):
        raise DataFormatError(f"{where}: duplicate strengths in {out}")
    if strength_key(default) not in [strength_key(s) for s in out]:
        raise DataFormatError(f"{where}: must contain the default strength {default:g}, got {out}")
    return out


def _token_shape(prior_samples: Any, embedding_shape: Any, brain_embeddings: Any, p: str) -> tuple[int, int]:
    """``(T, D)`` of a subject: from ``prior_samples (N, K, T, D)`` (already checked to be 4-D), else
    ``embedding_shape``, else 3-D ``brain_embeddings (N, T, D)``; ``embedding_shape``, when given, must agree
    with ``prior_samples``."""
    given: tuple[int, int] | None = None
    if embedding_shape is not None:
        es = tuple(embedding_shape) if isinstance(embedding_shape, (tuple, list)) else ()
        if len(es) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in es):
            raise DataFormatError(f"{p}embedding_shape: expected two positive ints (T, D), got {embedding_shape!r}")
        given = (int(es[0]), int(es[1]))
    if prior_samples is not None:
        t, d = (int(v) for v in as_numpy(prior_samples).shape[2:])
        if given is not None and given != (t, d):
            raise DataFormatError(f"{p}embedding_shape: {given} disagrees with prior_samples tokens {(t, d)}")
        return t, d
    if given is not None:
        return given
    brain = as_numpy(brain_embeddings)
    if brain.ndim == 3:
        return int(brain.shape[1]), int(brain.shape[2])
    raise DataFormatError(f"{p}embedding_shape: prior_samples is None and brain_embeddings are flat "
                          f"{tuple(brain.shape)}: pass embedding_shape=(T, D)")


@dataclass
class RidgeArrays:
    """The ridge baseline of one subject, on the same N test samples (input of :meth:`ResultsWriter.add_subject`).

    Attributes:
        brain_embeddings: ``(N, T, D)`` or ``(N, E)`` ridge predictions in the projector's (CLIP image) space,
            or ``(N, E')`` in another space when ``image_embeddings`` is given.
        finals: optional ``(N, H, W, 3)`` ridge hidden tokens through the same generator, default strength.
        blurry: optional ``(N, H, W, 3)`` ridge to VAE latents, decoded.
        image_embeddings: optional ``(N, E')`` image embeddings of the ridge's own retrieval space (e.g. the final
            CLIP embedding, as the published ridge rows); ``None`` = the subject's ``clip_image`` space.
        space: name of that space, stored in the manifest (``"clip_image"`` when ``image_embeddings`` is None).
    """

    brain_embeddings: Any
    finals: Any = None
    blurry: Any = None
    image_embeddings: Any = None
    space: str = "clip_image"


IMAGE_CODEC = "png"
"""How the writer stores image datasets: each image a lossless PNG (about 40 % smaller than gzip on raw pixels)."""


def _encode_png(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> the bytes of a lossless PNG as a uint8 vector."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", optimize=True)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _decode_png(data: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The bytes of one stored PNG -> ``(H, W, 3)`` uint8, checked against the dataset's ``image_shape``."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as im:
            im.load()  # verifies the PNG chunk CRCs and the zlib checksum: damage raises here
            out = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataFormatError(f"{where}: a stored PNG image is damaged ({exc})") from exc
    if out.shape != shape:
        raise DataFormatError(f"{where}: a stored image has shape {out.shape}, the dataset says {shape}")
    return out


def _is_png_dataset(ds: h5py.Dataset) -> bool:
    return ds.attrs.get("codec") == IMAGE_CODEC


def _h5_put(h5: h5py.File, key: str, data: np.ndarray, *, image_dims: int = 0, chunks: tuple[int, ...] | None = None) -> None:
    """Write one dataset. Images (``(*lead, H, W, 3)`` uint8, ``image_dims=3``) become a ``lead``-shaped dataset of
    PNG bytes (attributes ``codec="png"``, ``image_shape``; PNG carries its own CRCs); every other dataset is
    written with fletcher32."""
    if image_dims:
        lead, shape = data.shape[:-3], data.shape[-3:]
        ds = h5.create_dataset(key, shape=lead, dtype=h5py.vlen_dtype(np.uint8))
        for pos in np.ndindex(*lead):  # one element at a time: PNGs of equal length must not be read as a 2-D array
            ds[pos] = _encode_png(data[pos])
        ds.attrs["codec"] = IMAGE_CODEC
        ds.attrs["image_shape"] = np.asarray(shape, dtype=np.int64)
        return
    kwargs: dict[str, Any] = {"fletcher32": True}
    if chunks is not None:
        kwargs["chunks"] = chunks
    h5.create_dataset(key, data=data, **kwargs)


def _retrieval_arrays(brain: np.ndarray, image: np.ndarray, names: tuple[str, str]) -> dict[str, np.ndarray]:
    """``similarity [brain, image] (N, N)`` float16 and both strict rank vectors (int64 ``(N,)``).

    The ranks come from the float32 matrix; only the stored copy of the matrix is rounded to float16
    (cosines lie in [-1, 1]: the rounding error is at most 2**-12 ~ 2.4e-4).
    """
    sim = cosine_matrix(brain, image, names=names)
    return {"similarity": sim.astype(np.float16), "brain_to_image_rank": ranks(sim), "image_to_brain_rank": ranks(sim.T)}


# ---------------------------------------------------------------------------------------------- writer
class ResultsWriter:
    """Write a results bundle (format 2); everything lands in ``<root>.partial`` until :meth:`finalize`.

    Usage::

        with ResultsWriter(root, world="demo", dataset="demo-v1") as w:
            w.add_stimuli(image_index, images)                       # (M,), (M, H, W, 3)
            w.add_subject("subj01", image_index=..., seeds=..., finals=..., candidates=...,
                          candidate_scores=..., prior_samples=..., brain_embeddings=...,
                          image_embeddings=..., blurry=..., umap=..., ridge=RidgeArrays(...))
            w.finalize(metadata={...}, provenance={...})

    Leaving the ``with`` block without :meth:`finalize` (e.g. on an exception) deletes the partial folder,
    so nothing that opens is left behind.

    Args:
        root: the bundle folder to create.
        world: ``"demo"`` or ``"nsd"`` (free text, stored in the manifest).
        dataset: name/version of the canonical dataset the samples come from.
        strengths: img2img strength grid (paper convention); a subject's ``finals`` axis follows its
            ``stored_strengths`` (by default the whole grid, in this order).
        default_strength: the strength of ``candidates``/``picked``; must be on the grid.
        overwrite: replace an existing bundle at ``root`` (only when :meth:`finalize` succeeds).
    """

    def __init__(self, root: str | Path, *, world: str, dataset: str = "",
                 strengths: Sequence[float] = DEFAULT_STRENGTHS, default_strength: float = DEFAULT_STRENGTH,
                 overwrite: bool = False) -> None:
        self.root = Path(root)
        strengths = [float(s) for s in strengths]
        if not strengths or any(not (0.0 <= s <= 1.0) for s in strengths):
            raise DataFormatError(f"strengths must be a non-empty list of values in [0, 1], got {strengths}")
        keys = [strength_key(s) for s in strengths]
        if len(set(keys)) != len(keys):
            raise DataFormatError(f"duplicate strengths: {strengths}")
        if strength_key(default_strength) not in keys:
            raise DataFormatError(f"default strength {default_strength:g} is not on the strength grid {strengths}")
        self.strengths = strengths
        self.default_strength = float(default_strength)
        self.world = world
        self.dataset = dataset
        self.subjects: dict[str, dict[str, Any]] = {}
        self.stimuli: dict[str, Any] | None = None
        self._stimulus_rows: dict[int, int] = {}
        # lock, destination and storage checks, <root>.partial (mindeye_core.staging)
        self._staging = begin(self.root, kind=FORMAT_NAME, manifest=MANIFEST_NAME, overwrite=overwrite,
                              exists_error=_BundleExists)
        self.partial = self._staging.partial
        self._done = False

    # stimuli --------------------------------------------------------------------------------------
    def add_stimuli(self, image_index: Any, images: Any) -> None:
        """Store the test images once for all subjects.

        Args:
            image_index: ``(M,)`` unique non-negative ints, rows of the canonical dataset's images.h5.
            images: ``(M, H, W, 3)`` (or ``(M, 3, H, W)``) uint8 or float in [0, 1].
        """
        if self.stimuli is not None:
            raise DataFormatError("stimuli added twice")
        idx = _ints(image_index, "stimuli image_index", ["M"], [None])
        m = idx.shape[0]
        if m == 0:
            raise DataFormatError("stimuli image_index: no images")
        if (idx < 0).any():
            raise DataFormatError(f"stimuli image_index: negative value {int(idx[idx < 0][0])}")
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise DataFormatError(f"stimuli image_index: {int((counts > 1).sum())} duplicated values (first: {int(uniq[counts > 1][0])})")
        imgs = _images(images, "stimuli images", ["M"], [m])
        with h5_writing(self.partial / STIMULI_FILE) as h5:
            _h5_put(h5, "image_index", idx)
            _h5_put(h5, "images", imgs, image_dims=3)
        self._stimulus_rows = {int(v): i for i, v in enumerate(idx)}
        self.stimuli = {"file": STIMULI_FILE, "n_images": int(m), "image_size": [int(imgs.shape[1]), int(imgs.shape[2])]}

    # subjects -------------------------------------------------------------------------------------
    def add_subject(
        self,
        subject: str,
        *,
        image_index: Any,
        seeds: Any,
        finals: Any,
        candidates: Any,
        candidate_scores: Any,
        prior_samples: Any,
        brain_embeddings: Any,
        image_embeddings: Any,
        picked: Any = None,
        blurry: Any = None,
        backbone_embeddings: Any = None,
        prior_embeddings: Any = None,
        store_embeddings: bool = True,
        umap: Any = None,
        ridge: RidgeArrays | None = None,
        test_mode: str = "average",
        stored_strengths: Sequence[float] | None = None,
        embedding_shape: tuple[int, int] | None = None,
        voxels: Any = None,
        metrics: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        """Validate and write one subject (N samples, K candidates, S' stored strengths, tokens ``(T, D)``).

        A *full* subject passes everything; a *light* one passes ``stored_strengths`` (a subset of the grid)
        and/or ``candidates=None`` / ``prior_samples=None`` (the app regenerates what is missing live).

        Args:
            subject: file-safe name (``subj01``).
            image_index: ``(N,)`` dataset image row of each sample; every value must be in the stimuli.
            seeds: ``(N,)`` ints, per-sample seed of prior sampling and generation.
            finals: ``(S', N, H, W, 3)`` best-of-K reconstructions at each stored strength, in the order of
                ``stored_strengths`` (``S' = S`` and the grid's order by default); images may be uint8 or
                float in [0, 1] (channels-first accepted).
            candidates: ``(N, K, H, W, 3)`` the K candidates at the default strength, or ``None`` (not stored).
            candidate_scores: ``(N, K)`` cosine(CLIP(candidate), projector output); always required (``K``
                comes from it).
            prior_samples: ``(N, K, T, D)`` the prior's samples (stored float16; must fit its range), or
                ``None`` (not stored; ``(T, D)`` then comes from ``embedding_shape`` or 3-D
                ``brain_embeddings``).
            brain_embeddings: ``(N, T, D)`` or ``(N, E)``, ``E = T * D``: projector outputs (retrieval space).
            image_embeddings: same shape: CLIP image embeddings of the seen images (``clip_image``).
            picked: ``(N,)`` index of the final among the candidates; computed as the argmax of
                ``candidate_scores`` when ``None``; when given it must point at a best-scoring candidate.
                When candidates are stored, ``finals`` at the default strength must equal
                ``candidates[i, picked[i]]``.
            blurry: optional ``(N, H, W, 3)`` low-level reconstructions.
            backbone_embeddings, prior_embeddings: optional, same shape as ``brain_embeddings``.
            store_embeddings: store the given spaces under ``/embeddings/<space>`` (float16, ``(N, E)``);
                with ``False`` the similarity, ranks and ``umap`` (computed by the caller) are still stored.
            umap: optional ``(4, N, 2)`` coordinates in the order of :data:`UMAP_SPACES`
                (see :func:`mindeye_core.projection.bundle_umap`).
            ridge: optional :class:`RidgeArrays` (ridge baseline on the same samples).
            test_mode: ``"average"`` (3-trial averages) or ``"single"``.
            stored_strengths: strengths of the ``finals`` axis, a subset of the grid that contains the default
                strength, in any order; ``None`` = the whole grid. Metrics may still cover every grid strength.
            voxels: optional ``(N, V)`` betas of the samples (stored float16; a light bundle's app recomputes
                prior samples from them, so reconstruct from the float16-rounded values).
            embedding_shape: ``(T, D)`` of the prior tokens; required when ``prior_samples`` is ``None`` and
                ``brain_embeddings`` are flat ``(N, E)``; when given it must agree with the arrays.
            metrics, provenance: JSON-serialisable mappings stored in the manifest (``metrics`` layout:
                docs/results_bundle.md, "Metrics").

        Raises:
            DataFormatError: naming the subject and the array, for any shape, dtype or value problem.
        """
        fname = _subject_file(subject)
        if subject in self.subjects:
            raise DataFormatError(f"subject {subject} added twice")
        if self.stimuli is None:
            raise DataFormatError(f"{subject}: call add_stimuli(image_index, images) before add_subject")
        if test_mode not in TEST_MODES:
            raise DataFormatError(f"{subject}: test_mode must be one of {TEST_MODES}, got {test_mode!r}")
        p = f"{subject} "  # prefix of every message
        if brain_embeddings is None or image_embeddings is None:
            raise DataFormatError(f"{subject}: brain_embeddings (projector) and image_embeddings (clip_image) are required")
        if candidate_scores is None:
            raise DataFormatError(f"{subject}: candidate_scores (N, K) are required, also without stored candidates")
        stored = _check_stored_strengths(self.strengths, self.default_strength, stored_strengths, p + "stored_strengths")
        default_pos = [strength_key(s) for s in stored].index(strength_key(self.default_strength))
        index = _ints(image_index, p + "image_index", ["N"], [None])
        n = index.shape[0]
        if n < 2:
            raise DataFormatError(f"{p}image_index: need at least 2 test samples, got {n}")
        missing = [int(v) for v in index if int(v) not in self._stimulus_rows]
        if missing:
            raise DataFormatError(f"{p}image_index: {len(missing)} values are not in the stimuli (first: {missing[0]})")
        rows = np.array([self._stimulus_rows[int(v)] for v in index], np.int64)
        seed = _ints(seeds, p + "seeds", ["N"], [n])
        fin = _images(finals, p + "finals", ["S", "N"], [len(stored), n])
        size = (int(fin.shape[2]), int(fin.shape[3]))
        cand = None if candidates is None else _images(candidates, p + "candidates", ["N", "K"], [n, None], size)
        # K: from the candidates when stored (the scores must match them), else from the scores
        scores = _floats(candidate_scores, p + "candidate_scores", ["N", "K"], [n, None if cand is None else cand.shape[1]])
        k = scores.shape[1]
        if k < 1:
            what = "candidate_scores" if cand is None else "candidates"
            raise DataFormatError(f"{p}{what}: need at least one candidate per sample")
        best = scores.argmax(axis=1)
        if picked is None:
            pick = best.astype(np.int64)
        else:
            pick = _ints(picked, p + "picked", ["N"], [n])
            if ((pick < 0) | (pick >= k)).any():
                raise DataFormatError(f"{p}picked: values must lie in [0, {k}), got [{pick.min()}, {pick.max()}]")
            worse = np.flatnonzero(scores[np.arange(n), pick] < scores[np.arange(n), best])
            if worse.size:
                raise DataFormatError(f"{p}picked: sample {int(worse[0])} does not pick a best-scoring candidate "
                                      f"({worse.size} samples); picked must be the argmax of candidate_scores")
        if cand is not None:
            differ = np.flatnonzero((fin[default_pos] != cand[np.arange(n), pick]).reshape(n, -1).any(axis=1))
            if differ.size:
                raise DataFormatError(
                    f"{p}finals: at the default strength {self.default_strength:g} finals must be candidates[i, picked[i]]; "
                    f"{differ.size} samples differ (first: {int(differ[0])})"
                )
        if prior_samples is not None:
            _check_shape(as_numpy(prior_samples), p + "prior_samples", ["N", "K", "T", "D"], [n, k, None, None])
        t, d = _token_shape(prior_samples, embedding_shape, brain_embeddings, p)
        prior = None
        if prior_samples is not None:
            prior = _floats(prior_samples, p + "prior_samples", ["N", "K", "T", "D"], [n, k, t, d], np.float16)
        spaces = {"clip_image": image_embeddings, "backbone": backbone_embeddings,
                  "projector": brain_embeddings, "prior": prior_embeddings}
        emb = {s: _embeddings(x, f"{p}{s} embeddings", n, t, d) for s, x in spaces.items() if x is not None}
        blur = None if blurry is None else _images(blurry, p + "blurry", ["N"], [n], size)
        vox = None if voxels is None else _floats(voxels, p + "voxels", ["N", "V"], [n, None], np.float16)
        coords = None
        if umap is not None:
            coords = _floats(umap, p + "umap", ["4", "N", "2"], [len(UMAP_SPACES), n, 2])
        retrieval = _retrieval_arrays(emb["projector"], emb["clip_image"], (f"{p}projector embeddings", f"{p}clip_image embeddings"))
        ridge_info: dict[str, bool] | None = None
        ridge_arrays: dict[str, np.ndarray] = {}
        if ridge is not None:
            if not isinstance(ridge, RidgeArrays):
                raise DataFormatError(f"{p}ridge: expected a RidgeArrays, got {type(ridge).__name__}")
            if ridge.image_embeddings is None:
                r_emb = _embeddings(ridge.brain_embeddings, f"{p}ridge brain_embeddings", n, t, d)
                r_img = emb["clip_image"]
            else:
                r_img = _flat_rows(ridge.image_embeddings, f"{p}ridge image_embeddings", n)
                r_emb = _flat_rows(ridge.brain_embeddings, f"{p}ridge brain_embeddings", n, r_img.shape[1])
            for key, arr in _retrieval_arrays(r_emb, r_img, (f"{p}ridge brain_embeddings", f"{p}ridge image embeddings")).items():
                ridge_arrays[f"ridge/retrieval/{key}"] = arr
            if ridge.blurry is not None:
                ridge_arrays["ridge/blurry"] = _images(ridge.blurry, p + "ridge blurry", ["N"], [n], size)
            if ridge.finals is not None:
                ridge_arrays["ridge/finals"] = _images(ridge.finals, p + "ridge finals", ["N"], [n], size)
            ridge_info = {"has_blurry": ridge.blurry is not None, "has_finals": ridge.finals is not None,
                          "space": str(ridge.space if ridge.image_embeddings is not None else "clip_image")}
        spaces_stored = [s for s in UMAP_SPACES if s in emb] if store_embeddings else []
        with h5_writing(self.partial / fname) as h5:
            _h5_put(h5, "image_index", index)
            _h5_put(h5, "stimulus_row", rows)
            _h5_put(h5, "seed", seed)
            if blur is not None:
                _h5_put(h5, "blurry", blur, image_dims=3)
            _h5_put(h5, "finals", fin, image_dims=3)
            if cand is not None:
                _h5_put(h5, "candidates", cand, image_dims=3)
            if vox is not None:
                _h5_put(h5, "voxels", vox)
            _h5_put(h5, "candidate_scores", scores)
            _h5_put(h5, "picked", pick)
            if prior is not None:
                _h5_put(h5, "prior_samples", prior, chunks=(1, k, t, d))
            for s in spaces_stored:
                _h5_put(h5, f"embeddings/{s}", emb[s].astype(np.float16))
            if coords is not None:
                _h5_put(h5, "umap", coords)
            for key, arr in retrieval.items():
                _h5_put(h5, f"retrieval/{key}", arr)
            for key, arr in ridge_arrays.items():
                _h5_put(h5, key, arr, image_dims=3 if arr.dtype == np.uint8 else 0)
        info: dict[str, Any] = {
            "file": fname,
            "n_samples": int(n),
            "n_candidates": int(k),
            "stored_strengths": stored,
            "has_candidates": cand is not None,
            "has_prior_samples": prior is not None,
            "embedding_shape": [t, d],
            "final_size": list(size),
            "test_mode": test_mode,
            "has_blurry": blur is not None,
            "has_voxels": vox is not None,
            "n_voxels": int(vox.shape[1]) if vox is not None else None,
            "has_embeddings": bool(spaces_stored),
            "embedding_spaces": spaces_stored,
            "has_umap": coords is not None,
            "has_ridge": ridge_info is not None,
            "metrics": _json_safe(dict(metrics or {})),
            "provenance": _json_safe(dict(provenance or {})),
        }
        if ridge_info is not None:
            info["ridge"] = ridge_info
        self.subjects[subject] = info

    def set_metrics(self, subject: str, metrics: Mapping[str, Any]) -> None:
        """Replace the metrics of an added subject (written with the manifest by :meth:`finalize`)."""
        if subject not in self.subjects:
            raise DataFormatError(f"set_metrics: subject {subject!r} was not added; added: {sorted(self.subjects)}")
        self.subjects[subject]["metrics"] = _json_safe(dict(metrics))

    def finalize(self, metadata: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
        """Write the manifest last and move the bundle into place; returns its path.

        ``provenance`` (code version, seed, encoder/generator names and hashes, generation settings) gets
        ``code_version`` = the package version unless it names one.
        """
        if self.stimuli is None:
            raise DataFormatError("results bundle has no stimuli (call add_stimuli)")
        if not self.subjects:
            raise DataFormatError("results bundle has no subjects")
        prov = dict(provenance or {})
        prov.setdefault("code_version", __version__)
        manifest = {
            "world": self.world,
            "dataset": self.dataset,
            "strengths": self.strengths,
            "default_strength": self.default_strength,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metadata": dict(metadata or {}),
            "provenance": prov,
            "stimuli": self.stimuli,
            "subjects": self.subjects,
        }
        self._staging.publish(_manifest_text(manifest))
        self._done = True
        return self.root

    def abort(self) -> None:
        """Delete the partial folder (nothing is published) and release the destination's lock."""
        self._staging.abort()
        self._done = True

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._done:
            self.abort()
        raise_storage_error(exc, self.root)


class _BundleExists(DataFormatError, FileExistsError):
    """A results bundle (or other files) already at the destination and ``overwrite`` is False."""


def _json_safe(x: Any) -> Any:
    """Convert numpy scalars/arrays; NaN/inf become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


# ---------------------------------------------------------------------------------------------- reader
def _read(path: Path, key: str, index: Any = None, lead: tuple[int, ...] = ()) -> np.ndarray:
    """Read ``key[*lead, index]`` from ``path``; ``index``: None (all), int, slice or ints in any order.
    PNG-coded image datasets come back decoded, ``(..., H, W, 3)`` uint8, like raw ones."""
    try:
        with h5py.File(path, "r") as h5:
            return _read_open(h5, path, key, index, lead)
    except OSError as exc:  # a fletcher32 mismatch (damaged chunk) or an unreadable file
        raise DataFormatError(f"corrupt results file {path}, dataset {key!r}: {exc}") from exc


def _read_open(h5: h5py.File, path: Path, key: str, index: Any, lead: tuple[int, ...]) -> np.ndarray:
    """:func:`_read` on an open file."""
    if key not in h5:
        raise DataFormatError(f"{path}: missing dataset {key!r}")
    ds = h5[key]
    n = ds.shape[len(lead)]
    if index is None:
        return _decoded(ds, ds[lead] if lead else ds[()], path, key)
    if isinstance(index, slice):
        return _decoded(ds, ds[(*lead, index)], path, key)
    if np.ndim(index) == 0:
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{path}: index {i} out of range for {key} with {n} rows")
        return _decoded(ds, ds[(*lead, i % n)], path, key)
    idx = np.asarray(index).reshape(-1)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"{path}: indices out of range for {key} with {n} rows")
    uniq, inverse = np.unique(idx % n if idx.size else idx, return_inverse=True)
    if not uniq.size:
        return _decoded(ds, ds[(*lead, slice(0, 0))], path, key)
    return np.take(_decoded(ds, ds[(*lead, uniq)], path, key), inverse, axis=0)


def _decoded(ds: h5py.Dataset, raw: Any, path: Path, key: str) -> np.ndarray:
    """``raw`` as read from ``ds``; for a PNG-coded dataset, its images decoded into ``(*raw.shape, H, W, 3)``
    (one element of a vlen dataset reads as a uint8 vector, a selection as an object array)."""
    if not _is_png_dataset(ds):
        return raw
    shape = tuple(int(v) for v in ds.attrs["image_shape"])
    where = f"{path}: dataset {key!r}"
    if not (isinstance(raw, np.ndarray) and raw.dtype == object):
        return _decode_png(raw, shape, where)
    cells = np.asarray(raw, dtype=object)
    out = np.empty((cells.size, *shape), dtype=np.uint8)
    for i, data in enumerate(cells.reshape(-1)):
        out[i] = _decode_png(data, shape, where)
    return out.reshape((*cells.shape, *shape))


class _RetrievalView:
    """Similarity and ranks stored under ``<prefix>retrieval/`` of one subject file."""

    def __init__(self, path: Path, prefix: str, n: int) -> None:
        self.path = path
        self._prefix = prefix
        self._n = n

    @staticmethod
    def _direction(direction: str) -> str:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return direction

    def similarity(self, direction: str = "brain_to_image") -> np.ndarray:
        """``(N, N)`` float32 cosine similarities, rows = the queries of ``direction``.

        ``brain_to_image``: ``[brain i, image j]`` (as stored, float16 upcast); ``image_to_brain``: its transpose.
        """
        sim = _read(self.path, f"{self._prefix}retrieval/similarity").astype(np.float32)
        return sim if self._direction(direction) == "brain_to_image" else np.ascontiguousarray(sim.T)

    def top_k(self, i: int, k: int = 5, direction: str = "brain_to_image") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best candidates for query ``i`` of ``direction``: ``(indices (k,), scores (k,))``, best first.

        ``brain_to_image``: test images (sample rows) most similar to brain sample ``i``;
        ``image_to_brain``: brain samples most similar to image ``i``. Ties: lower row first. Scores are the
        stored float16 similarities as float32.
        """
        key = f"{self._prefix}retrieval/similarity"
        if self._direction(direction) == "brain_to_image":
            row = _read(self.path, key, i)
        else:
            if not -self._n <= int(i) < self._n:
                raise IndexError(f"{self.path}: index {i} out of range for {self._n} samples")
            with h5py.File(self.path, "r") as h5:
                row = h5[key][:, int(i) % self._n]
        return top_k_of_similarity(np.asarray(row, np.float32), k)

    def retrieval_ranks(self) -> dict[str, np.ndarray]:
        """``{"brain_to_image": (N,), "image_to_brain": (N,)}`` int64 full-set strict ranks (0 = top-1)."""
        return {d: _read(self.path, f"{self._prefix}retrieval/{d}_rank") for d in DIRECTIONS}


class RidgeResults(_RetrievalView):
    """The ridge baseline of one subject (``/ridge`` of its file): retrieval plus optional images."""

    def __init__(self, path: Path, n: int, info: Mapping[str, Any]) -> None:
        super().__init__(path, "ridge/", n)
        self.has_blurry = bool(info.get("has_blurry"))
        self.has_finals = bool(info.get("has_finals"))
        self.space = str(info.get("space", "clip_image"))
        """The ridge's retrieval space (``"clip_image"`` = the subject's; e.g. ``"clip_final"``)."""

    def blurry(self, index: Any = None) -> np.ndarray | None:
        """``(N, H, W, 3)`` uint8 ridge-to-VAE reconstructions (rows ``index``), or ``None``."""
        return _read(self.path, "ridge/blurry", index) if self.has_blurry else None

    def finals(self, index: Any = None) -> np.ndarray | None:
        """``(N, H, W, 3)`` uint8 ridge tokens through the generator at the default strength, or ``None``."""
        return _read(self.path, "ridge/finals", index) if self.has_finals else None


NEIGHBOURS_SUFFIX = "_neighbours.h5"


@dataclass
class Neighbours:
    """A subject's retrieved pool (or collection) images, per test sample, best first.

    Attributes:
        ids: ``(N, K)`` item ids of the index (int64 pool seeds, or str paths / URLs / keys).
        scores: ``(N, K)`` float32 cosine similarities, descending per row (for the two-stage procedure
            the projector-vs-hidden scores of the re-ranked candidates).
        seeds: ``(N, K)`` int64 demo-pool seeds (re-render the images with
            ``mindeye_core.retrieval.pool.render_pool``), or ``None`` for other collections.
        info: the manifest entry: ``index`` (name, n_items, model, kind), ``procedure``, ``k`` and what
            the writer added (e.g. match shares).
    """

    ids: np.ndarray
    scores: np.ndarray
    seeds: np.ndarray | None
    info: dict[str, Any]

    @property
    def top(self) -> np.ndarray:
        """``(N,)`` the retrieved (best) id of each sample."""
        return self.ids[:, 0]


def _check_neighbours(subject: str, n: int, ids: Any, scores: Any, seeds: Any) -> tuple[np.ndarray, ...]:
    where = f"neighbours of {subject}"
    ids_a = np.asarray(ids)
    if ids_a.ndim != 2 or ids_a.shape[0] != n or ids_a.shape[1] < 1:
        raise DataFormatError(f"{where}: ids must be (N={n}, K>=1), got shape {ids_a.shape}")
    if not (np.issubdtype(ids_a.dtype, np.integer) or ids_a.dtype.kind in "UO"):
        raise DataFormatError(f"{where}: ids must be integers or strings, got dtype {ids_a.dtype}")
    sc = _floats(scores, f"{where} scores", ["N", "K"], [n, ids_a.shape[1]])
    if (np.diff(sc, axis=1) > 1e-6).any():
        raise DataFormatError(f"{where}: scores must be best first (descending) in every row")
    sd = None if seeds is None else _ints(seeds, f"{where} seeds", ["N", "K"], [n, ids_a.shape[1]])
    return ids_a, sc, sd


class SubjectResults(_RetrievalView):
    """One subject of a bundle; arrays are read lazily from its file. Build with :meth:`ResultsBundle.subject`.

    ``index`` arguments accept ``None`` (all samples), an int (one sample, leading axis dropped), a slice
    or a sequence of ints in any order.
    """

    def __init__(self, bundle: ResultsBundle, name: str, info: Mapping[str, Any]) -> None:
        super().__init__(bundle.root / info["file"], "", int(info["n_samples"]))
        self.bundle = bundle
        self.name = name
        self.info = dict(info)
        self.strengths = list(bundle.strengths)
        self.default_strength = bundle.default_strength

    # manifest facts --------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.info["n_samples"])

    @property
    def n_candidates(self) -> int:
        return int(self.info["n_candidates"])

    @property
    def embedding_shape(self) -> tuple[int, int]:
        """``(T, D)`` of the prior samples (``E = T * D`` for the stored embeddings)."""
        t, d = self.info["embedding_shape"]
        return int(t), int(d)

    @property
    def final_size(self) -> tuple[int, int]:
        h, w = self.info["final_size"]
        return int(h), int(w)

    @property
    def test_mode(self) -> str:
        return str(self.info["test_mode"])

    @property
    def has_blurry(self) -> bool:
        return bool(self.info["has_blurry"])

    @property
    def has_voxels(self) -> bool:
        """Whether the bundle stores the samples' betas (``/voxels``, float16)."""
        return bool(self.info.get("has_voxels", False))

    def voxels(self, index: Any = None) -> np.ndarray:
        """``(N, V)`` float16 betas of the samples (rows ``index``): what the reconstruction was computed from.

        Raises:
            DataFormatError: the bundle stores no voxels.
        """
        if not self.has_voxels:
            raise DataFormatError(f"{self.path}: this bundle stores no voxels of subject {self.name}")
        return _read(self.path, "voxels", index)

    @property
    def has_embeddings(self) -> bool:
        return bool(self.info["has_embeddings"])

    @property
    def embedding_spaces(self) -> list[str]:
        """The spaces stored under ``/embeddings`` (a subset of :data:`UMAP_SPACES`)."""
        return list(self.info.get("embedding_spaces", [])) if self.has_embeddings else []

    @property
    def has_umap(self) -> bool:
        return bool(self.info["has_umap"])

    @property
    def stored_strengths(self) -> list[float]:
        """Strengths whose finals are stored, in the order of ``/finals`` (the whole grid in a full bundle)."""
        return [float(s) for s in self.info["stored_strengths"]]

    @property
    def has_candidates(self) -> bool:
        """Whether the K candidates at the default strength are stored (``False`` in a light bundle)."""
        return bool(self.info["has_candidates"])

    @property
    def has_prior_samples(self) -> bool:
        """Whether the prior's ``(N, K, T, D)`` samples are stored (``False`` in a light bundle)."""
        return bool(self.info["has_prior_samples"])

    @property
    def is_light(self) -> bool:
        """``True`` when finals are stored at only part of the grid, or candidates / prior samples are absent."""
        return (len(self.stored_strengths) < len(self.strengths) or not self.has_candidates
                or not self.has_prior_samples)

    @property
    def has_ridge(self) -> bool:
        return bool(self.info["has_ridge"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.info.get("metrics", {}))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.info.get("provenance", {}))

    @property
    def ridge(self) -> RidgeResults | None:
        """The ridge baseline on the same samples, or ``None``."""
        return RidgeResults(self.path, self.n_samples, self.info.get("ridge", {})) if self.has_ridge else None

    # arrays ------------------------------------------------------------------------------------------
    def image_index(self) -> np.ndarray:
        """``(N,)`` int64 dataset image row seen in each sample."""
        return _read(self.path, "image_index")

    def stimulus_rows(self) -> np.ndarray:
        """``(N,)`` int64 row of each sample's image in ``stimuli.h5``."""
        return _read(self.path, "stimulus_row")

    def seeds(self) -> np.ndarray:
        """``(N,)`` int64 per-sample seed of prior sampling and generation."""
        return _read(self.path, "seed")

    def ground_truth(self, index: Any = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 seen images (rows ``index``), read from the stimuli via ``stimulus_row``."""
        rows = self.stimulus_rows()
        sel = rows if index is None else rows[index]
        return self.bundle.stimulus_images(sel)

    def blurry(self, index: Any = None) -> np.ndarray | None:
        """``(N, H, W, 3)`` uint8 low-level reconstructions, or ``None`` when the bundle has none."""
        return _read(self.path, "blurry", index) if self.has_blurry else None

    def strength_position(self, strength: float) -> int:
        """Position of ``strength`` on the grid (``DataFormatError`` when it is not on it)."""
        keys = [strength_key(s) for s in self.strengths]
        key = strength_key(strength)
        if key not in keys:
            raise DataFormatError(f"strength {strength:g} not in this bundle's grid {self.strengths}")
        return keys.index(key)

    def has_final(self, strength: float) -> bool:
        """Whether finals at ``strength`` are stored (``False`` off the grid or not stored in a light bundle)."""
        return strength_key(strength) in [strength_key(s) for s in self.stored_strengths]

    def finals(self, strength: float | None = None, index: Any = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 best-of-K reconstructions at ``strength`` (default: the default strength).

        Raises:
            DataFormatError: ``strength`` is off the grid, or on it but not stored (a light bundle: the
                message names the stored strengths; regenerate it live).
        """
        strength = self.default_strength if strength is None else strength
        self.strength_position(strength)  # off the grid: its own message
        stored = [strength_key(s) for s in self.stored_strengths]
        if strength_key(strength) not in stored:
            raise DataFormatError(
                f"{self.path}: subject {self.name} stores no finals at strength {strength:g} (a light bundle); "
                f"stored strengths: {self.stored_strengths}: regenerate it live")
        return _read(self.path, "finals", index, lead=(stored.index(strength_key(strength)),))

    def candidates(self, index: Any = None) -> np.ndarray:
        """``(N, K, H, W, 3)`` uint8 candidates at the default strength (``(K, H, W, 3)`` for one int).

        Raises:
            DataFormatError: the bundle stores no candidates (:attr:`has_candidates` is ``False``).
        """
        if not self.has_candidates:
            raise DataFormatError(
                f"{self.path}: subject {self.name}: this bundle stores no candidate images (a light bundle): "
                "regenerate them from the prior samples or the brain model")
        return _read(self.path, "candidates", index)

    def candidate_scores(self) -> np.ndarray:
        """``(N, K)`` float32 cosine(CLIP(candidate), projector output)."""
        return _read(self.path, "candidate_scores")

    def picked(self) -> np.ndarray:
        """``(N,)`` int64 candidate chosen as the final at the default strength."""
        return _read(self.path, "picked")

    def prior_samples(self, index: Any) -> np.ndarray:
        """``(K, T, D)`` float16 prior samples of sample ``index`` (``(n, K, T, D)`` for several).

        Raises:
            DataFormatError: the bundle stores no prior samples (:attr:`has_prior_samples` is ``False``).
        """
        if not self.has_prior_samples:
            raise DataFormatError(
                f"{self.path}: subject {self.name}: this bundle stores no prior samples (a light bundle): "
                "sample them again from the brain model (seeds are stored)")
        return _read(self.path, "prior_samples", index)

    def embeddings(self, space: str) -> np.ndarray:
        """``(N, E)`` float16 stored embeddings of ``space`` (one of :attr:`embedding_spaces`)."""
        if space not in self.embedding_spaces:
            raise DataFormatError(f"subject {self.name} has no stored {space!r} embeddings; stored: {self.embedding_spaces}")
        return _read(self.path, f"embeddings/{space}")

    def umap(self) -> dict[str, np.ndarray] | None:
        """``{space: (N, 2) float32}`` in the order of :data:`UMAP_SPACES`, or ``None``."""
        if not self.has_umap:
            return None
        coords = _read(self.path, "umap")
        return {s: coords[i] for i, s in enumerate(UMAP_SPACES)}

    @property
    def has_neighbours(self) -> bool:
        """Whether retrieval neighbours were written for this subject (:meth:`ResultsBundle.set_neighbours`)."""
        return isinstance(self.info.get("neighbours"), dict)

    def neighbours(self) -> Neighbours:
        """The subject's retrieved images per test sample (ids, scores, pool seeds; see :class:`Neighbours`).

        Raises:
            DataFormatError: none were written (:attr:`has_neighbours`), or the file is missing or malformed.
        """
        if not self.has_neighbours:
            raise DataFormatError(f"{self.bundle.root}: subject {self.name} has no neighbours: write them with "
                                  "`mindeye retrieval neighbours --bundle ...`")
        info = dict(self.info["neighbours"])
        path = self.bundle.root / str(info.get("file", ""))
        if not path.is_file():
            raise DataFormatError(f"{self.bundle.root}: subject {self.name}: missing neighbours file {path}")
        ids = _read(path, "ids")
        if ids.dtype.kind in "OS":
            ids = np.array([[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in ids])
        with h5py.File(path, "r") as h5:
            has_seeds = "seeds" in h5
        seeds = _read(path, "seeds") if has_seeds else None
        ids, scores, seeds = _check_neighbours(self.name, self.n_samples, ids, _read(path, "scores"), seeds)
        return Neighbours(ids=ids, scores=scores, seeds=seeds, info=info)

    def __repr__(self) -> str:
        return (f"SubjectResults({self.name!r}, n_samples={self.n_samples}, n_candidates={self.n_candidates}, "
                f"stored_strengths={self.stored_strengths}, has_ridge={self.has_ridge})")


class ResultsBundle:
    """A validated results bundle (format 2). Build with :func:`open_results`."""

    def __init__(self, root: str | Path, *, validate_arrays: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_results_manifest(self.root)
        self.strengths: list[float] = [float(s) for s in self.manifest["strengths"]]
        self.default_strength = float(self.manifest["default_strength"])
        self.stimuli_path = self.root / self.manifest["stimuli"]["file"]
        for path in [self.stimuli_path] + [self.root / info["file"] for info in self.manifest["subjects"].values()]:
            if not path.is_file():
                raise DataFormatError(f"results bundle {self.root}: missing file {path}")
        if validate_arrays:
            stim_index = _validate_stimuli(self.stimuli_path, self.manifest["stimuli"])
            for name in self.subjects:
                _validate_subject_file(self.root / self.manifest["subjects"][name]["file"], name,
                                       self.manifest["subjects"][name], stim_index)

    @property
    def world(self) -> str:
        return str(self.manifest.get("world", ""))

    @property
    def dataset(self) -> str:
        return str(self.manifest.get("dataset", ""))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.manifest.get("provenance", {}))

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.manifest.get("metadata", {}))

    @property
    def subjects(self) -> list[str]:
        return sorted(self.manifest["subjects"])

    @property
    def n_stimuli(self) -> int:
        return int(self.manifest["stimuli"]["n_images"])

    def stimuli(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image_index (M,) int64, images (M, H, W, 3) uint8)``: every test image of the bundle."""
        return _read(self.stimuli_path, "image_index"), _read(self.stimuli_path, "images")

    def stimulus_images(self, rows: Any = None) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 stimuli at ``rows`` (rows of ``stimuli.h5``; any order, repeats allowed)."""
        return _read(self.stimuli_path, "images", rows)

    def subject(self, name: str) -> SubjectResults:
        if name not in self.manifest["subjects"]:
            raise DataFormatError(f"{self.root}: no subject {name!r}; available: {self.subjects}")
        return SubjectResults(self, name, self.manifest["subjects"][name])

    def set_metrics(self, subject: str, metrics: Mapping[str, Any]) -> None:
        """Replace the stored metrics of ``subject`` and rewrite the manifest atomically."""
        if subject not in self.manifest["subjects"]:
            raise DataFormatError(f"{self.root}: no subject {subject!r}")
        from .staging import WriterLock, lock_path

        manifest = json.loads(json.dumps(self.manifest))
        manifest["subjects"][subject]["metrics"] = _json_safe(dict(metrics))
        with WriterLock(lock_path(self.root), what=str(self.root)):
            self._replace_manifest(manifest)

    def _replace_manifest(self, manifest: dict[str, Any]) -> None:
        """Rewrite ``manifest.json`` atomically (a ``.tmp`` file renamed over it; the caller holds the bundle's
        writer lock); :attr:`manifest` becomes ``manifest`` only once it is on disk."""
        tmp = self.root / (MANIFEST_NAME + ".tmp")
        try:
            tmp.write_text(_manifest_text(manifest))
            tmp.replace(self.root / MANIFEST_NAME)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            raise_storage_error(exc, self.root, left="the bundle was left as it was")
            raise
        self.manifest = manifest

    def set_neighbours(self, subject: str, ids: Any, scores: Any, *, seeds: Any = None,
                       info: Mapping[str, Any] | None = None) -> Path:
        """Store ``subject``'s retrieval neighbours (replacing earlier ones) and record them in the manifest.

        Args:
            ids: ``(N, K)`` item ids (int or str), best first, ``N`` = the subject's samples.
            scores: ``(N, K)`` cosine similarities, descending per row.
            seeds: optional ``(N, K)`` int demo-pool seeds.
            info: JSON-able description stored in the manifest (index name, model, procedure...).

        The arrays go to a new file ``<subject>_neighbours-<content sha256[:12]>.h5`` (checksummed), then the
        manifest is rewritten atomically to point at it, then the previous neighbours file is deleted: a reader
        sees the old manifest and file or the new ones, never a mix. The bundle's writer lock
        (:class:`mindeye_core.staging.WriterLock` on ``<root>.lock``, the one :class:`ResultsWriter` takes) is
        held meanwhile, so a concurrent rewrite of the bundle or a second ``set_neighbours`` is refused with
        :class:`~mindeye_core.errors.DestinationLockedError`; out of disk raises
        :class:`~mindeye_core.errors.StorageError` and leaves the bundle as it was.

        Returns:
            The neighbours file.
        """
        import hashlib

        from .staging import WriterLock, lock_path, require_free_space

        if subject not in self.manifest["subjects"]:
            raise DataFormatError(f"{self.root}: no subject {subject!r}")
        n = int(self.manifest["subjects"][subject]["n_samples"])
        ids_a, sc, sd = _check_neighbours(subject, n, ids, scores, seeds)
        ids_store = ids_a.astype(np.int64) if np.issubdtype(ids_a.dtype, np.integer) else ids_a.astype(str)
        digest = hashlib.sha256()
        for part in (ids_store, sc, sd):
            if part is not None:
                digest.update(np.ascontiguousarray(part).tobytes())
        name = f"{subject}{NEIGHBOURS_SUFFIX[:-3]}-{digest.hexdigest()[:12]}.h5"
        left = "the bundle was left as it was"
        with WriterLock(lock_path(self.root), what=str(self.root)):
            tmp = self.root / (name + ".tmp")
            # the size is known: a full disk is refused before the write (HDF5 handles ENOSPC mid-write badly)
            require_free_space(self.root / name, sum(a.nbytes for a in (ids_store, sc, sd) if a is not None) + (64 << 10))
            try:
                with h5_writing(tmp) as h5:
                    if ids_store.dtype.kind == "i":
                        h5.create_dataset("ids", data=ids_store, fletcher32=True)
                    else:
                        h5.create_dataset("ids", data=ids_store.astype(object), dtype=h5py.string_dtype())
                    h5.create_dataset("scores", data=sc, fletcher32=True)
                    if sd is not None:
                        h5.create_dataset("seeds", data=sd.astype(np.int64), fletcher32=True)
                tmp.replace(self.root / name)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                raise_storage_error(exc, self.root, left=left)
                raise
            previous = self.manifest["subjects"][subject].get("neighbours")
            manifest = json.loads(json.dumps(self.manifest))
            manifest["subjects"][subject]["neighbours"] = _json_safe(
                {**dict(info or {}), "file": name, "k": int(ids_a.shape[1]), "has_seeds": sd is not None})
            try:
                self._replace_manifest(manifest)
            except BaseException:
                if not (isinstance(previous, dict) and previous.get("file") == name):
                    (self.root / name).unlink(missing_ok=True)  # nothing points at it
                raise
            old = previous.get("file") if isinstance(previous, dict) else None
            if isinstance(old, str) and old != name and "/" not in old:
                (self.root / old).unlink(missing_ok=True)
        return self.root / name

    def __repr__(self) -> str:
        return f"ResultsBundle({str(self.root)!r}, world={self.world!r}, subjects={self.subjects}, strengths={self.strengths})"


_SUBJECT_KEYS = ("file", "n_samples", "n_candidates", "stored_strengths", "has_candidates", "has_prior_samples",
                 "embedding_shape", "final_size", "test_mode", "has_blurry", "has_embeddings", "has_umap", "has_ridge")
_LIGHT_KEYS = ("stored_strengths", "has_candidates", "has_prior_samples")
"""Subject keys added with light bundles (a version-2 manifest written before them lacks them)."""


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    """The manifest's JSON through the project's one versioned-config writer (``_class`` / ``_format_version``)."""
    body = {k: v for k, v in _json_safe(dict(manifest)).items() if k not in ("format", "version")}
    return dump_versioned_config(FORMAT_NAME, FORMAT_VERSION, body, sort_keys=False)


def read_results_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a bundle (format, version, required keys)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        partial = partial_path(root)
        hint = f" ({partial} exists: the write was interrupted)" if partial.exists() else ""
        raise DataFormatError(f"not a results bundle: missing {path}{hint}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"corrupt results manifest {path}: {exc}") from exc
    if isinstance(raw, dict) and raw.get("format", raw.get(CLASS_KEY)) == FORMAT_NAME \
            and raw.get("version", raw.get(VERSION_KEY)) == 1:
        raise DataFormatError(f"results bundle {root} is format version 1; this code reads version {FORMAT_VERSION}: "
                              "rebuild it with `mindeye build-demo` or re-run the reconstruction")
    cfg = read_versioned_config(path, kind=FORMAT_NAME, version=FORMAT_VERSION, error=DataFormatError,
                                what="results manifest", legacy_kind_key="format", legacy_version_key="version")
    manifest = {**cfg.data, "format": cfg.kind, "version": cfg.version}
    for key in ("strengths", "default_strength", "stimuli", "subjects"):
        if key not in manifest:
            raise DataFormatError(f"{path}: missing key {key!r}")
    strengths = manifest["strengths"]
    if (not isinstance(strengths, list) or not strengths
            or not all(isinstance(s, (int, float)) and 0 <= s <= 1 for s in strengths)):
        raise DataFormatError(f"{path}: strengths must be a non-empty list of numbers in [0, 1], got {strengths!r}")
    if not isinstance(manifest["default_strength"], (int, float)) or \
            strength_key(manifest["default_strength"]) not in [strength_key(s) for s in strengths]:
        raise DataFormatError(f"{path}: default_strength {manifest['default_strength']!r} is not on the grid {strengths}")
    stimuli = manifest["stimuli"]
    for key in ("file", "n_images", "image_size"):
        if not isinstance(stimuli, dict) or key not in stimuli:
            raise DataFormatError(f"{path}: stimuli lacks {key!r}")
    if not isinstance(manifest["subjects"], dict) or not manifest["subjects"]:
        raise DataFormatError(f"{path}: no subjects")
    for name, info in manifest["subjects"].items():
        for key in _SUBJECT_KEYS:
            if not isinstance(info, dict) or key not in info:
                hint = (" (written before light bundles existed: rebuild it with `mindeye build-demo` or re-run "
                        "the reconstruction)" if key in _LIGHT_KEYS else "")
                raise DataFormatError(f"{path}: subject {name} lacks {key!r}{hint}")
        for key in ("has_candidates", "has_prior_samples"):
            if not isinstance(info[key], bool):
                raise DataFormatError(f"{path}: subject {name}: {key!r} must be true or false, got {info[key]!r}")
        _check_stored_strengths(strengths, manifest["default_strength"], info["stored_strengths"],
                                f"{path}: subject {name} stored_strengths")
        if info["has_embeddings"] and "embedding_spaces" not in info:
            raise DataFormatError(f"{path}: subject {name} has embeddings but lacks 'embedding_spaces'")
        if info["has_ridge"] and "ridge" not in info:
            raise DataFormatError(f"{path}: subject {name} has a ridge baseline but lacks 'ridge'")
    return manifest


def _check_datasets(path: Path, expected: Mapping[str, tuple[tuple[int | None, ...], Any]]) -> None:
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataFormatError(f"corrupt results file {path}: {exc}") from exc
    with h5:
        for key, (shape, dtype) in expected.items():
            if key not in h5:
                raise DataFormatError(f"{path}: missing dataset {key!r}")
            ds = h5[key]
            if not isinstance(ds, h5py.Dataset):
                raise DataFormatError(f"{path}: {key!r} is not a dataset")
            actual, actual_dtype = ds.shape, ds.dtype
            if _is_png_dataset(ds):  # images as PNG bytes: the dataset holds the leading axes, the attribute the rest
                actual = (*ds.shape, *(int(v) for v in ds.attrs.get("image_shape", ())))
                actual_dtype = h5py.check_vlen_dtype(ds.dtype)
            ok = len(actual) == len(shape) and all(s is None or s == t for s, t in zip(shape, actual))
            if not ok:
                want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
                raise DataFormatError(f"{path}: dataset {key!r} has shape {tuple(actual)}, expected {want}")
            if actual_dtype != dtype:
                raise DataFormatError(f"{path}: dataset {key!r} has dtype {actual_dtype}, expected {np.dtype(dtype)}")


def _validate_stimuli(path: Path, info: Mapping[str, Any]) -> np.ndarray:
    m = int(info["n_images"])
    h, w = (int(v) for v in info["image_size"])
    _check_datasets(path, {"image_index": ((m,), np.int64), "images": ((m, h, w, 3), np.uint8)})
    return _read(path, "image_index")


def _validate_subject_file(path: Path, name: str, info: Mapping[str, Any], stimulus_index: np.ndarray) -> None:
    """Every dataset the manifest entry ``info`` promises, with its shape and dtype (light parts only when
    flagged), plus the ``stimulus_row`` and ``picked`` indices."""
    n, k = int(info["n_samples"]), int(info["n_candidates"])
    t, d = (int(v) for v in info["embedding_shape"])
    h, w = (int(v) for v in info["final_size"])
    retrieval = {"similarity": ((n, n), np.float16), "brain_to_image_rank": ((n,), np.int64),
                 "image_to_brain_rank": ((n,), np.int64)}
    expected: dict[str, tuple[tuple[int | None, ...], Any]] = {
        "image_index": ((n,), np.int64),
        "stimulus_row": ((n,), np.int64),
        "seed": ((n,), np.int64),
        "finals": ((len(info["stored_strengths"]), n, h, w, 3), np.uint8),
    }
    if info["has_candidates"]:
        expected["candidates"] = ((n, k, h, w, 3), np.uint8)
    expected["candidate_scores"] = ((n, k), np.float32)
    expected["picked"] = ((n,), np.int64)
    if info["has_prior_samples"]:
        expected["prior_samples"] = ((n, k, t, d), np.float16)
    expected.update({f"retrieval/{key}": v for key, v in retrieval.items()})
    if info["has_blurry"]:
        expected["blurry"] = ((n, h, w, 3), np.uint8)
    if info.get("has_voxels"):
        expected["voxels"] = ((n, int(info["n_voxels"])), np.float16)
    if info["has_embeddings"]:
        for space in info["embedding_spaces"]:
            if space not in UMAP_SPACES:
                raise DataFormatError(f"{path}: unknown embedding space {space!r} (known: {UMAP_SPACES})")
            expected[f"embeddings/{space}"] = ((n, t * d), np.float16)
    if info["has_umap"]:
        expected["umap"] = ((len(UMAP_SPACES), n, 2), np.float32)
    if info["has_ridge"]:
        expected.update({f"ridge/retrieval/{key}": v for key, v in retrieval.items()})
        for key in ("blurry", "finals"):
            if info["ridge"].get(f"has_{key}"):
                expected[f"ridge/{key}"] = ((n, h, w, 3), np.uint8)
    _check_datasets(path, expected)
    rows, index, picked = _read(path, "stimulus_row"), _read(path, "image_index"), _read(path, "picked")
    m = stimulus_index.shape[0]
    if ((rows < 0) | (rows >= m)).any():
        raise DataFormatError(f"{path}: dataset 'stimulus_row' has values outside [0, {m}) (subject {name})")
    if not np.array_equal(stimulus_index[rows], index):
        raise DataFormatError(f"{path}: dataset 'stimulus_row' does not point at the stimuli of 'image_index' (subject {name})")
    if ((picked < 0) | (picked >= k)).any():
        raise DataFormatError(f"{path}: dataset 'picked' has values outside [0, {k}) (subject {name})")


def open_results(root: str | Path, *, validate_arrays: bool = True) -> ResultsBundle:
    """Open a results bundle: validates the manifest, that every file exists and (``validate_arrays``)
    every array's shape and dtype plus the stimulus/picked indices. Arrays are then read lazily."""
    return ResultsBundle(root, validate_arrays=validate_arrays)


# ------------------------------------------------------------------------------------ Hugging Face Hub
def push_results_to_hub(root: str | Path, repo_id: str, *, revision: str | None = None, token: str | None = None,
                        private: bool = False, commit_message: str = "Upload MindEye results bundle") -> Any:
    """Upload a (validated) bundle folder to a Hugging Face *dataset* repo in one commit.

    Creates the repo if needed (``exist_ok``) and the branch ``revision`` if given. Returns what
    ``HfApi.upload_folder`` returns (the commit info).
    """
    open_results(root)  # refuse to publish an incomplete or corrupt bundle
    import huggingface_hub  # imported lazily: heavy, and tests monkeypatch it

    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(root), repo_type="dataset", revision=revision,
                             commit_message=commit_message)


def results_from_hub(repo_id: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                     local_dir: str | Path | None = None, token: str | None = None) -> ResultsBundle:
    """Open a bundle from a Hugging Face dataset repo (``snapshot_download``), or a local folder as-is.

    Args:
        repo_id: ``"org/name"`` on the hub, or the path of an existing local bundle folder.
        revision: branch, tag or commit of the repo.
        cache_dir, local_dir: passed to ``huggingface_hub.snapshot_download`` (default: the hub cache).
        token: optional Hugging Face token.
    """
    local = Path(repo_id).expanduser()
    if local.is_dir():
        return open_results(local)
    import huggingface_hub  # imported lazily: heavy, and tests monkeypatch it

    try:
        folder = huggingface_hub.snapshot_download(repo_id=str(repo_id), repo_type="dataset", revision=revision,
                                                   cache_dir=cache_dir, local_dir=local_dir, token=token)
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, auth, network)
        raise MindEyeError(f"could not fetch results bundle {repo_id!r} (revision {revision!r}) from the hub "
                           f"or its cache: {type(exc).__name__}: {exc}") from exc
    return open_results(folder)


__all__ = [
    "DEFAULT_STRENGTH",
    "DEFAULT_STRENGTHS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STIMULI_FILE",
    "TEST_MODES",
    "UMAP_SPACES",
    "ResultsBundle",
    "ResultsWriter",
    "RidgeArrays",
    "RidgeResults",
    "SubjectResults",
    "open_results",
    "push_results_to_hub",
    "read_results_manifest",
    "results_from_hub",
    "strength_key",
]
