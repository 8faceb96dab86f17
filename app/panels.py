"""Pure callbacks of the panels beyond browsing (issue 13): subjects side by side, the brain view, single
trials vs the 3-trial average, the decoding lab, and the trial download.

Like :mod:`app.callbacks`, every function takes ``(store, inputs)`` and returns plain values (``(H, W, 3)``
uint8 images, Markdown, pandas tables, plotly figure dicts, bytes); bad input raises :class:`gradio.Error`
naming the problem. What needs the dataset beside the bundle (:mod:`app.world`: voxel tables, single
trials, the simulated cortex) says so when it is missing instead of failing.

Live decoding goes through the library: the lab's betas come from
:class:`mindeye_core.data.demo.lab.SubjectForwardModel` (the forward model that made the dataset), the
reconstruction from :meth:`mindeye_core.recon.Reconstructor.reconstruct` with the given seed
(:meth:`app.store.ExplorerStore.reconstruct_voxels`), so a test can recompute both and compare pixels.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr
import numpy as np
import pandas as pd

from mindeye_core.errors import MindEyeError

from .callbacks import candidates_view, check_strength, check_subject, check_trial, strength_view
from .store import ExplorerStore, _to_uint8_hwc

__all__ = [
    "AVERAGE",
    "LAB_MAX_OBJECTS",
    "MODES",
    "NSD_RELEASE_LACKS",
    "BrainView",
    "LabResult",
    "SingleTrialView",
    "SubjectsView",
    "brain_view",
    "check_mode",
    "lab_decode",
    "lab_random_scene",
    "lab_scene",
    "lab_strength",
    "lab_voxels",
    "single_trial_view",
    "subjects_view",
    "trial_zip",
]

AVERAGE = "3-trial average"
"""The paper's main setting; the other modes are single trials ``"trial 1"`` ... (appendix A.8)."""
MODES: tuple[str, ...] = (AVERAGE, "trial 1", "trial 2", "trial 3")
LAB_MAX_OBJECTS = 3
NEAREST_K = 5
NSD_RELEASE_LACKS = (
    "MindEye's NSD release (`pscotti/naturalscenesdataset`, webdataset_avg_split) holds the nsdgeneral betas "
    "only: no per-voxel ROI labels, pRF estimates or ncsnr, so the strip is ordered by the reliability "
    "computed from the test repetitions when the single trials are there, and per-ROI summaries need ROI "
    "labels from NSD's own release (nsddata/ppdata/<subj>/func1pt8mm/roi/)."
)
EARLY = ("V1", "V2", "V3", "hV4")
HIGH = ("LO", "VO", "PPA")


def check_mode(mode: Any) -> int:
    """``0`` for the 3-trial average, ``r`` for ``"trial r"``; :class:`gr.Error` naming the modes otherwise."""
    if mode in (None, "", AVERAGE):
        return 0
    if isinstance(mode, str) and mode.startswith("trial ") and mode[6:].isdigit() and int(mode[6:]) >= 1:
        return int(mode[6:])
    raise gr.Error(f"unknown trial mode {mode!r}; choose {', '.join(MODES)}")


def _rank_line(rank: int, n: int) -> str:
    return f"{rank + 1}/{n}" + (" (top-1)" if rank == 0 else "")


def _image_row(store: ExplorerStore, subject: str, i: int) -> int:
    """The dataset image row of sample ``i`` (``image_index`` in the bundle)."""
    return int(np.asarray(store.subject(subject).reader.image_index())[i])


# ------------------------------------------------------------------------------------ subjects side by side
@dataclass(frozen=True)
class SubjectsView:
    """Every subject's reconstructions of the current image.

    Attributes:
        items: ``(image, caption)`` per subject, in order MindEye blurry, MindEye final, ridge blurry, ridge
            final (a grey tile where the bundle has none).
        table: one row per subject: sample, ranks (image and brain retrieval, MindEye and ridge), the picked
            candidate's CLIP score.
        note: which image, at which strength.
        subjects: the subjects shown (those that saw the image).
    """

    items: list[tuple[np.ndarray, str]]
    table: pd.DataFrame
    note: str
    subjects: list[str]


def subjects_view(store: ExplorerStore, subject: str, trial: Any, strength: Any = None) -> SubjectsView:
    """The current trial's image as reconstructed from every subject's brain (the test images are shared,
    as NSD's shared1000): blurry and final, MindEye and ridge, with ranks and CLIP scores. Finals are the
    bundle's at ``strength`` where every subject stores it, else at the default strength."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    s = store.default_strength if strength is None else check_strength(strength)
    row = int(store.subject(subject).stimulus_rows[i])
    if any(store.subject(n).stored(s) is None for n in store.subjects):
        s = store.default_strength
    blank = np.full_like(store.seen(subject, i), 200)
    items: list[tuple[np.ndarray, str]] = []
    records = []
    shown = []
    for name in store.subjects:
        cache = store.subject(name)
        hits = np.flatnonzero(cache.stimulus_rows == row)
        if hits.size == 0:
            continue
        j = int(hits[0])
        shown.append(name)
        blurry = store.blurry(name, j)
        final = store.final(name, j, s) if cache.stored(s) is not None else store.final(
            name, j, store.nearest_stored(name, s))
        r_blurry, r_final = store.ridge_images(name, j)
        for img, what in ((blurry, "MindEye blurry"), (final, f"MindEye final {s:g}"), (r_blurry, "ridge blurry"),
                          (r_final, "ridge final")):
            items.append((blank if img is None else img, f"{name} · {what}" + (" (not in bundle)" if img is None else "")))
        picked = int(cache.picked[j])
        rec = {"Subject": name, "Sample": j,
               "Image retrieval (MindEye)": _rank_line(int(cache.ranks["brain_to_image"][j]), cache.n),
               "Brain retrieval (MindEye)": _rank_line(int(cache.ranks["image_to_brain"][j]), cache.n),
               "Image retrieval (ridge)": (_rank_line(int(cache.ridge_ranks["brain_to_image"][j]), cache.n)
                                           if cache.ridge_ranks else "—"),
               "Brain retrieval (ridge)": (_rank_line(int(cache.ridge_ranks["image_to_brain"][j]), cache.n)
                                           if cache.ridge_ranks else "—"),
               "CLIP score (picked)": f"{float(cache.candidate_scores[j, picked]):.3f}"}
        records.append(rec)
    note = (f"Test image {row} of the bundle (shared by {len(shown)} of {len(store.subjects)} subjects), "
            f"finals at strength {s:g}; ranks are of the true match among each subject's {store.subject(subject).n} "
            "test samples; CLIP score = cosine(CLIP(picked candidate), projector output). Ridge: a linear "
            "decoder of the same betas (no CLIP score: it has no best-of-N).")
    return SubjectsView(items=items, table=pd.DataFrame(records), note=note, subjects=shown)


# ------------------------------------------------------------------------------------ betas of a trial
def trial_betas(store: ExplorerStore, subject: str, trial: Any, mode: Any = AVERAGE) -> tuple[np.ndarray, str]:
    """``(betas (V,) float32, what)`` of a trial: the 3-trial average the bundle stores (float16, as it was
    reconstructed from), or single trial ``r`` from the dataset.

    Raises:
        gr.Error: the betas are not available (no voxels in the bundle, or no dataset for single trials).
    """
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    r = check_mode(mode)
    cache = store.subject(subject)
    if r == 0 and cache.has_voxels:
        return np.asarray(cache.reader.voxels(i), np.float16).astype(np.float32), "3-trial average (bundle)"
    if store.world_data is None:
        raise gr.Error(("single trials need the dataset the bundle was built from" if r else
                        f"{subject}: this bundle stores no betas, and the dataset beside it is missing")
                       + f": {store.world_problem}")
    try:
        trials = store.world_data.single_trials(subject, _image_row(store, subject, i))
    except KeyError as exc:
        raise gr.Error(str(exc.args[0])) from None
    if r == 0:
        return trials.mean(0), f"{trials.shape[0]}-trial average (dataset)"
    if r > trials.shape[0]:
        raise gr.Error(f"{subject} saw image {_image_row(store, subject, i)} {trials.shape[0]} times; no trial {r}")
    return trials[r - 1], f"single trial {r} of {trials.shape[0]} (dataset)"


# ------------------------------------------------------------------------------------ brain view
@dataclass(frozen=True)
class BrainView:
    """The trial's voxel activity.

    Attributes:
        figure: plotly figure dict: demo world, one pRF map per early area (V1-hV4: each voxel at its pRF
            centre in degrees, coloured by the value; ``customdata`` = ``[voxel, pRF sigma, value]``) and a
            bar chart of LO / VO / PPA summaries; otherwise a per-voxel strip ordered by reliability.
        summary: per-area table (voxels, mean, SD, median noise ceiling).
        note: what is shown, and what is missing.
    """

    figure: dict[str, Any]
    summary: pd.DataFrame
    note: str


def _message_figure(text: str) -> dict[str, Any]:
    return {"data": [], "layout": {"annotations": [{"text": text, "showarrow": False, "x": 0.5, "y": 0.5,
                                                     "xref": "paper", "yref": "paper"}],
                                   "xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 200}}


def brain_view(store: ExplorerStore, subject: str, trial: Any, mode: Any = AVERAGE,
               value: str = "beta") -> BrainView:
    """The brain view of a trial (``mode``: the average or a single trial) showing ``value`` = ``"beta"``
    or ``"noise ceiling"`` (the voxel's NC for the 3-trial average, %)."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    check_mode(mode)
    if value not in ("beta", "noise ceiling"):
        raise gr.Error(f"brain view shows 'beta' or 'noise ceiling', got {value!r}")
    table = store.world_data.voxel_tables.get(subject) if store.world_data is not None else None
    try:
        betas, what = trial_betas(store, subject, i, mode)
    except gr.Error as exc:
        if value == "beta" or table is None:
            return BrainView(_message_figure(str(exc.message)), pd.DataFrame(), str(exc.message))
        betas, what = None, "no betas"
    if table is None:
        return _strip_view(store, subject, i, betas, what)
    areas = store.world_data.areas
    nc = np.asarray(table["noise_ceiling"], np.float32)
    vals = nc if value == "noise ceiling" else betas
    label = "NC %" if value == "noise ceiling" else "beta"
    area = np.asarray(table["area"])
    x, y, sig = (np.asarray(table[k], np.float32) for k in ("prf_x", "prf_y", "prf_sigma"))
    early = [a for a in EARLY if a in areas]
    high = [a for a in HIGH if a in areas]
    cols = len(early) + 1
    half = 4.0
    lim = float(max(half * 1.4, np.abs(np.concatenate([x, y])).max() if x.size else half))
    cmin, cmax = (0.0, 100.0) if value == "noise ceiling" else (-2.5, 2.5)
    colorscale = "Viridis" if value == "noise ceiling" else "RdBu_r"
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"grid": {"rows": 1, "columns": cols, "pattern": "independent"}, "showlegend": False,
                              "height": 330, "margin": {"l": 30, "r": 10, "t": 40, "b": 40}, "hovermode": "closest",
                              "coloraxis": {"colorscale": colorscale, "cmin": cmin, "cmax": cmax,
                                            "colorbar": {"title": {"text": label}, "len": 0.9}},
                              "annotations": [], "shapes": [],
                              "meta": {"subject": subject, "trial": i, "value": value, "mode": what}}
    for p, name in enumerate(early):
        ax = "" if p == 0 else str(p + 1)
        idx = np.flatnonzero(area == areas.index(name))
        custom = [[int(v), round(float(sig[v]), 3), round(float(vals[v]), 3)] for v in idx]
        data.append({"type": "scattergl" if idx.size > 4000 else "scatter", "mode": "markers", "name": name,
                     "x": [round(float(a), 3) for a in x[idx]], "y": [round(float(b), 3) for b in y[idx]],
                     "customdata": custom, "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                     "marker": {"color": [c[2] for c in custom], "coloraxis": "coloraxis", "size": 6,
                                "line": {"width": 0}},
                     "hovertemplate": f"<b>{name}</b> voxel %{{customdata[0]}}<br>pRF centre (%{{x:.2f}}°, %{{y:.2f}}°)"
                                      f", σ %{{customdata[1]:.2f}}°<br>{label} %{{customdata[2]:.2f}}<extra></extra>"})
        layout[f"xaxis{ax}"] = {"range": [-lim, lim], "zeroline": True, "title": {"text": "x (deg)"}}
        layout[f"yaxis{ax}"] = {"range": [-lim, lim], "zeroline": True, "scaleanchor": f"x{ax}",
                                "title": {"text": "y (deg)"} if p == 0 else {}}
        layout["shapes"].append({"type": "rect", "xref": f"x{ax}", "yref": f"y{ax}", "x0": -half, "x1": half,
                                 "y0": -half, "y1": half, "line": {"color": "#999", "dash": "dot", "width": 1}})
        layout["annotations"].append({"text": f"<b>{name}</b> ({idx.size} voxels)", "showarrow": False,
                                      "xref": f"x{ax} domain", "yref": f"y{ax} domain", "x": 0.5, "y": 1.1})
    rows = []
    for name in [*early, *high]:
        idx = np.flatnonzero(area == areas.index(name))
        v = vals[idx] if idx.size else np.zeros(1)
        rows.append({"Area": name, "Voxels": int(idx.size), f"Mean {label}": round(float(v.mean()), 3),
                     f"SD {label}": round(float(v.std()), 3),
                     "Median NC %": round(float(np.median(nc[idx])), 1) if idx.size else float("nan")})
    ax = str(cols)
    summ = [r for r in rows if r["Area"] in high]
    data.append({"type": "bar", "name": "high-level areas", "x": [r["Area"] for r in summ],
                 "y": [r[f"Mean {label}"] for r in summ],
                 "error_y": {"type": "data", "array": [r[f"SD {label}"] for r in summ], "visible": True},
                 "customdata": [[r["Voxels"], r["Median NC %"]] for r in summ], "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                 "marker": {"color": "#8c6bb1"},
                 "hovertemplate": f"<b>%{{x}}</b>: %{{customdata[0]}} voxels<br>mean {label} %{{y:.3f}}"
                                  "<br>median NC %{customdata[1]:.1f}%<extra></extra>"})
    layout[f"xaxis{ax}"] = {}
    layout[f"yaxis{ax}"] = {"title": {"text": f"mean {label} (± SD)"}}
    layout["annotations"].append({"text": "<b>LO / VO / PPA</b> (per area)", "showarrow": False,
                                  "xref": f"x{ax} domain", "yref": f"y{ax} domain", "x": 0.5, "y": 1.1})
    shown = "noise ceiling of each voxel (3-trial average, NSD definition)" if value == "noise ceiling" else \
        f"betas of the {what}"
    note = (f"{subject} · trial {i}: {shown}. Early areas: each voxel at its pRF centre in the visual field "
            f"(degrees; the dotted square is the 8° image), hover for its area, pRF and value. LO / VO / PPA "
            f"respond to objects, colours and scenes rather than places in the field: per-area mean ± SD.")
    return BrainView(figure={"data": data, "layout": layout}, summary=pd.DataFrame(rows), note=note)


def _strip_view(store: ExplorerStore, subject: str, i: int, betas: np.ndarray | None, what: str) -> BrainView:
    """NSD-style: one strip of every voxel's beta, ordered by reliability when it is known."""
    if betas is None:
        return BrainView(_message_figure("no betas for this trial"), pd.DataFrame(), "no betas")
    order = np.arange(betas.size)
    reliability = None
    if store.world_data is not None:
        reliability = store.world_data.reliability(subject)
    if reliability is not None:
        order = np.argsort(-reliability, kind="stable")
    v = betas[order]
    fig = {"data": [{"type": "heatmap", "z": [[round(float(a), 3) for a in v]], "colorscale": "RdBu_r",
                     "zmin": -2.5, "zmax": 2.5, "customdata": [[int(o) for o in order]],
                     "hovertemplate": "voxel %{customdata}<br>beta %{z:.2f}<extra></extra>"}],
           "layout": {"height": 180, "margin": {"l": 40, "r": 10, "t": 30, "b": 40},
                      "xaxis": {"title": {"text": "voxels, most reliable first" if reliability is not None
                                          else "voxels (file order: no reliability known)"}},
                      "yaxis": {"visible": False}, "meta": {"subject": subject, "trial": i, "mode": what}}}
    summary = pd.DataFrame([{"Area": "all voxels", "Voxels": int(betas.size), "Mean beta": round(float(betas.mean()), 3),
                             "SD beta": round(float(betas.std()), 3)}])
    note = f"{subject} · trial {i}: betas of the {what}. {NSD_RELEASE_LACKS}"
    return BrainView(figure=fig, summary=summary, note=note)


# ------------------------------------------------------------------------------------ single trials
@dataclass(frozen=True)
class SingleTrialView:
    """One trial decoded in the chosen mode.

    Attributes:
        mode: the mode shown.
        blurry / final: reconstructions (the bundle's for the average; decoded live for a single trial).
        note: Markdown: the betas used, retrieval rank, CLIP score, seconds.
        rank: brain -> image rank of the true image among the test images (0 = top-1), ``None`` unknown.
        seconds: wall time of a live decode (0 for the average).
    """

    mode: str
    blurry: np.ndarray | None
    final: np.ndarray
    note: str
    rank: int | None
    seconds: float


def single_trial_view(store: ExplorerStore, subject: str, trial: Any, mode: Any, strength: Any) -> SingleTrialView:
    """The average (the bundle's reconstruction at ``strength``) or single trial ``r`` decoded live with the
    trial's seed (``Reconstructor.reconstruct`` of that trial's betas), with its retrieval rank."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    r = check_mode(mode)
    s = check_strength(strength)
    cache = store.subject(subject)
    if r == 0:
        v = strength_view(store, subject, i, s)
        rank = int(cache.ranks["brain_to_image"][i])
        return SingleTrialView(AVERAGE, store.blurry(subject, i), v.final,
                               f"**3-trial average** (the paper's main setting): the bundle's reconstruction; "
                               f"image retrieval rank {_rank_line(rank, cache.n)}. {v.note}", rank, 0.0)
    betas, what = trial_betas(store, subject, i, mode)
    t0 = time.perf_counter()
    try:
        out = store.reconstruct_voxels(subject, betas, int(cache.seeds[i]), strengths=[s])
        emb = store.clip_embeddings(subject)
    except (RuntimeError, ValueError, MindEyeError) as exc:
        raise gr.Error(f"decoding {subject} trial {i} ({what}) failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    sims = emb @ _unit(out.projector[0].numpy().ravel())
    rank = int((sims >= sims[i]).sum() - 1)
    picked = int(out.picked[s][0])
    note = (f"**{what}** decoded live in {seconds:.2f} s (seed {int(cache.seeds[i])}, strength {s:g}): image "
            f"retrieval rank {_rank_line(rank, cache.n)} (3-trial average: "
            f"{_rank_line(int(cache.ranks['brain_to_image'][i]), cache.n)}); best of {out.scores[s].shape[1]}: "
            f"candidate {picked}, CLIP {float(out.scores[s][0, picked]):.3f}.")
    blurry = None if out.blurry is None else _to_uint8_hwc(out.blurry[0])
    return SingleTrialView(str(mode), blurry, _to_uint8_hwc(out.finals[s][0]), note, rank, seconds)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / max(float(np.linalg.norm(x)), 1e-12)


# ------------------------------------------------------------------------------------ the decoding lab
@dataclass(frozen=True)
class LabResult:
    """A new scene decoded live.

    Attributes:
        seen: ``(H, W, 3)`` the composed scene.
        caption: its caption.
        blurry / final: reconstructions (final at ``strength``).
        candidates: ``(candidate, caption)`` best-of-N at ``strength``.
        nearest: ``(test image, caption)``: the test images nearest the new brain sample (brain -> image).
        rank: the new scene's rank among itself + the N test images (0 = retrieved first).
        note: Markdown summary (subject, noise, repetitions, seconds, rank).
        seconds: scene -> reconstruction wall time (respond + reconstruct + retrieval).
        output: the :class:`~mindeye_core.recon.ReconstructionOutput` (kept per session for the slider).
        voxels: ``(V,)`` the simulated betas decoded.
    """

    seen: np.ndarray
    caption: str
    blurry: np.ndarray | None
    final: np.ndarray
    strength: float
    candidates: list[tuple[np.ndarray, str]]
    nearest: list[tuple[np.ndarray, str]]
    rank: int
    note: str
    seconds: float
    subject: str
    output: Any
    voxels: np.ndarray


def _lab_world(store: ExplorerStore) -> Any:
    if store.world_data is None or not store.world_data.can_simulate:
        why = store.world_problem or ("no dataset is open" if store.world_data is None
                                      else f"the bundle's dataset is the {store.world_data.world!r} world")
        raise gr.Error(f"the decoding lab needs the demo world the bundle was built from: {why}")
    return store.world_data


def lab_scene(store: ExplorerStore, objects: Sequence[Sequence[Any]], background: str, seed: Any) -> tuple[Any, str]:
    """Compose a scene: ``objects`` rows ``(use, shape, colour, size, position)`` (rows with ``use`` false
    are left out), ``background`` a background class, ``seed`` for its continuous details.
    Returns ``(SceneSpec, caption)``."""
    from mindeye_core.data.demo.lab import compose_scene

    _lab_world(store)
    seed_i = _check_seed(seed)
    chosen = [{"category": o[1], "colour": o[2], "size": o[3], "position": o[4]} for o in objects if o[0]]
    try:
        scene = compose_scene(chosen, background, seed_i)
    except ValueError as exc:
        raise gr.Error(f"cannot compose this scene: {exc}") from None
    from mindeye_core.data.demo import caption

    return scene, caption(scene)


def lab_random_scene(seed: Any) -> tuple[Any, list[list[Any]], str]:
    """A random unseen scene from ``seed`` (drawn as the world draws): ``(SceneSpec, object rows, background)``
    with the rows in the lab's ``(use, shape, colour, size, position)`` form (3 rows, unused ones off)."""
    from mindeye_core.data.demo import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, POSITIONS, SIZE_NAMES
    from mindeye_core.data.demo.lab import random_scene

    scene = random_scene(_check_seed(seed))
    rows = [[True, CATEGORIES[o.category], COLOUR_NAMES[o.colour], SIZE_NAMES[o.size], POSITIONS[o.position]]
            for o in scene.objects]
    rows += [[False, "circle", "red", "medium", p] for p in POSITIONS if p not in [r[4] for r in rows]][:3 - len(rows)]
    return scene, rows, BACKGROUNDS[scene.background]


def _check_seed(seed: Any) -> int:
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"seed must be a non-negative integer, got {seed!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 0 or value >= 2**31:
        raise gr.Error(f"seed must be an integer in [0, 2^31), got {seed!r}")
    return int(value)


def lab_voxels(store: ExplorerStore, subject: str, scene: Any, noise: Any, repetitions: Any,
               seed: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The simulated cortex of ``subject`` responding to ``scene``: ``(image (S, S, 3) uint8, betas (V,)
    float32 averaged over repetitions, caption)``, every draw from ``numpy.random.default_rng(seed)``."""
    from mindeye_core.data.demo.lab import render_one

    subject = check_subject(store, subject)
    world = _lab_world(store)
    try:
        level = float(noise)
        reps = int(float(repetitions))
    except (TypeError, ValueError):
        raise gr.Error(f"noise level and repetitions must be numbers, got {noise!r} and {repetitions!r}") from None
    if not math.isfinite(level) or not 0 <= level <= 3:
        raise gr.Error(f"noise level {noise!r} is outside [0, 3] (1 = the dataset's noise)")
    if reps not in (1, 2, 3) or reps != float(repetitions):
        raise gr.Error(f"repetitions must be 1, 2 or 3, got {repetitions!r}")
    model = world.forward(subject)
    image, labels, cap = render_one(scene, model.config)
    betas = model.respond(image[None], labels, np.random.default_rng(_check_seed(seed)), noise_level=level,
                          repetitions=reps)[0]
    return image, betas, cap


def lab_decode(store: ExplorerStore, subject: str, scene: Any, noise: Any, repetitions: Any, seed: Any,
               strength: Any) -> LabResult:
    """Scene -> simulated betas (:func:`lab_voxels`) -> ``Reconstructor.reconstruct`` with ``seed`` at
    ``strength`` -> the new image's retrieval rank among the test images and its nearest test images."""
    subject = check_subject(store, subject)
    s = check_strength(strength)
    t0 = time.perf_counter()
    image, betas, cap = lab_voxels(store, subject, scene, noise, repetitions, seed)
    try:
        out = store.reconstruct_voxels(subject, betas, _check_seed(seed), strengths=[s])
        emb = store.clip_embeddings(subject)
        own_emb = store.clip_embedding_of(subject, image)
    except (RuntimeError, ValueError, MindEyeError) as exc:
        raise gr.Error(f"decoding the new scene for {subject} failed: {exc}") from exc
    q = _unit(out.projector[0].numpy().ravel())
    sims = emb @ q
    own_sim = float(own_emb @ q)
    rank = int((sims >= own_sim).sum())
    seconds = time.perf_counter() - t0
    order = np.argsort(-sims, kind="stable")[:NEAREST_K]
    seen = store.seen(subject, order.tolist())
    nearest = [(seen[p], f"#{p + 1 + int(rank <= p)} · cos {sims[j]:.3f} · test trial {int(j)}") for p, j in enumerate(order)]
    items = _candidate_items(out.candidates[s][0], out.scores[s][0], int(out.picked[s][0]))
    n = emb.shape[0]
    note = (f"**{subject}** saw a new scene ({cap}); noise level {float(noise):g}, "
            f"{int(float(repetitions))} repetition(s) averaged, seed {_check_seed(seed)}. Scene → reconstruction in "
            f"**{seconds:.2f} s**. Retrieval: the new image ranks **{rank + 1}** of {n + 1} (itself + the {n} "
            f"test images) for this brain sample (cos {own_sim:.3f}).")
    blurry = None if out.blurry is None else _to_uint8_hwc(out.blurry[0])
    return LabResult(seen=image, caption=cap, blurry=blurry, final=_to_uint8_hwc(out.finals[s][0]), strength=s,
                     candidates=items, nearest=nearest, rank=rank, note=note, seconds=seconds, subject=subject,
                     output=out, voxels=betas)


def _candidate_items(candidates: Any, scores: Any, picked: int) -> list[tuple[np.ndarray, str]]:
    imgs = _to_uint8_hwc(candidates)
    return [(imgs[k], f"CLIP {float(scores[k]):.3f}" + (" ✓ picked" if k == picked else "")) for k in range(len(imgs))]


def lab_strength(store: ExplorerStore, result: LabResult | None, strength: Any) -> tuple[np.ndarray, list[tuple[np.ndarray, str]], str]:
    """The lab's last decode at another ``strength``: ``(final, candidates, note)`` (same prior samples,
    blurry image and seed; best of N again)."""
    s = check_strength(strength)
    if result is None:
        raise gr.Error("decode a scene first")
    t0 = time.perf_counter()
    try:
        c = store.regenerate_output(result.subject, result.output, s)
    except (RuntimeError, ValueError, MindEyeError) as exc:
        raise gr.Error(f"regenerating at strength {s:g} failed: {exc}") from exc
    picked = int(c.picked[0])
    return (_to_uint8_hwc(c.finals[0]), _candidate_items(c.candidates[0], c.scores[0], picked),
            f"Strength {s:g}: best of {c.candidates.shape[1]} regenerated in {time.perf_counter() - t0:.2f} s "
            f"(candidate {picked}).")


# ------------------------------------------------------------------------------------ download
def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def trial_zip(store: ExplorerStore, subject: str, trial: Any, strength: Any) -> tuple[bytes, str]:
    """A zip of the current trial: ``seen.png``, ``blurry.png``, ``final_<strength>.png`` (at the current
    strength, live where the page generates live), ``candidates.png`` (the best-of-N strip) and
    ``trial.json`` (scores, ranks, strength, seed, bundle provenance). Returns ``(bytes, file name)``."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    view = strength_view(store, subject, i, strength)
    cands = candidates_view(store, subject, i)
    cache = store.subject(subject)
    blurry = store.blurry(subject, i)
    info: dict[str, Any] = {
        "subject": subject, "trial": i, "stimulus_row": int(cache.stimulus_rows[i]),
        "dataset_image": _image_row(store, subject, i), "seed": int(cache.seeds[i]),
        "strength": float(view.strength), "strength_note": view.note, "final_generated_live": bool(view.live),
        "default_strength": store.default_strength,
        "ranks": {"mindeye": {d: int(cache.ranks[d][i]) + 1 for d in ("brain_to_image", "image_to_brain")},
                  **({"ridge": {d: int(cache.ridge_ranks[d][i]) + 1 for d in ("brain_to_image", "image_to_brain")}}
                     if cache.ridge_ranks else {})},
        "rank_convention": "1 = the true match retrieved first among the subject's test samples",
        "n_test_samples": cache.n,
        "candidate_scores": [round(float(x), 6) for x in cache.candidate_scores[i]],
        "picked": int(cache.picked[i]), "candidates_note": cands.note,
        "bundle": {"source": store.source, "world": store.world, "provenance": dict(store.provenance)},
    }
    name = f"mindeye_{subject}_trial{i}_s{view.strength:g}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("seen.png", _png(store.seen(subject, i)))
        if blurry is not None:
            z.writestr("blurry.png", _png(blurry))
        z.writestr(f"final_{view.strength:g}.png", _png(view.final))
        if cands.items:
            z.writestr("candidates.png", _png(np.concatenate([img for img, _ in cands.items], axis=1)))
        z.writestr("trial.json", json.dumps(info, indent=2, default=str) + "\n")
    return buf.getvalue(), name + ".zip"
