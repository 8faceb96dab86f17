"""Pure callbacks of the explorer: functions of ``(store, inputs)`` returning plain values.

Nothing here touches Gradio components: each function returns images (``(H, W, 3)`` uint8 arrays),
Markdown strings, pandas tables or plotly figure dicts, bundled in small dataclasses; ``app/layout.py``
maps them onto components. Bad input raises :class:`gradio.Error` with a message that names the problem
(a subject not in the bundle, a trial out of range, a strength outside [0, 1]); soft problems (a deep link
naming an unknown subject) come back as ``warnings`` for the layout to show with ``gr.Warning``.

Retrieval directions are named as in the paper: *image retrieval* = brain -> image (for a brain sample,
rank the test images), *brain retrieval* = image -> brain (for an image, rank the brain samples).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

import gradio as gr
import numpy as np
import pandas as pd

from mindeye_core.errors import MindEyeError
from mindeye_core.metrics.tables import (
    COLUMNS,
    TABLE1_REFERENCE,
    TABLE5_KEYS,
    TABLE5_REFERENCE,
    TABLE7_SUBJ01,
    TableRow,
    ReferenceRow,
    format_value,
    pick_strength,
    table1_rows,
    table5_rows,
)

from .store import UMAP_SPACES, ExplorerStore

__all__ = [
    "PAGE_SIZE",
    "TABS",
    "TOP_K",
    "CandidatesView",
    "GalleryPage",
    "QueryState",
    "RetrievalView",
    "StrengthView",
    "SubjectView",
    "TrialView",
    "check_strength",
    "check_subject",
    "candidates_view",
    "check_trial",
    "gallery_page",
    "link_query",
    "metrics_chart",
    "metrics_tables",
    "random_trial",
    "restore_from_query",
    "retrieval_view",
    "status_markdown",
    "strength_view",
    "subject_view",
    "thumbnail",
    "trial_from_gallery",
    "trial_view",
    "umap_figure",
]

TABS: tuple[str, ...] = ("trial", "browse", "retrieval", "umap", "metrics", "subjects", "brain", "lab")
"""Tab ids, in page order (the ``tab`` query parameter)."""
PAGE_SIZE = 24
"""Test images per gallery page."""
TOP_K = 5
"""Matches shown per retrieval direction."""
SPACE_TITLES = {"clip_image": "CLIP image", "backbone": "backbone", "projector": "projector", "prior": "prior"}
_SPACE_COLOURS = {"clip_image": "#4c78a8", "backbone": "#f58518", "projector": "#54a24b", "prior": "#b279a2"}
_METRIC_NAMES = {key: head for key, head, _ in COLUMNS}


# ------------------------------------------------------------------------------------ validation
def check_subject(store: ExplorerStore, subject: str | None) -> str:
    """``subject`` if the bundle has it; :class:`gr.Error` naming the available ones otherwise."""
    if not store.ready:
        raise gr.Error(store.problem or "no results bundle is loaded")
    if subject not in store.subjects:
        raise gr.Error(f"subject {subject!r} is not in the results bundle; available: {', '.join(store.subjects)}")
    return str(subject)


def check_trial(store: ExplorerStore, subject: str, trial: Any) -> int:
    """``trial`` as an int in ``[0, N)``; :class:`gr.Error` naming the valid range otherwise."""
    n = store.subject(subject).n
    try:
        value = float(trial)
    except (TypeError, ValueError):
        raise gr.Error(f"trial must be a number between 0 and {n - 1}, got {trial!r}") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value < n:
        raise gr.Error(f"trial {trial!r} is out of range: {subject} has {n} test trials (0 to {n - 1})")
    return int(value)


def check_strength(strength: Any) -> float:
    """``strength`` as a float in [0, 1] (paper convention); :class:`gr.Error` otherwise."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise gr.Error(f"img2img strength must be a number in [0, 1], got {strength!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise gr.Error(f"img2img strength {strength!r} is outside [0, 1] (0 = pure high-level, 1 = only the blurry image)")
    return value


# ------------------------------------------------------------------------------------ header
def status_markdown(store: ExplorerStore) -> str:
    """The banner: what is loaded (world, subjects, grid, live or not), or what is missing and how to build it."""
    if not store.ready:
        return f"### Nothing to show yet\n\n{store.problem}"
    prov = store.provenance
    gen = prov.get("generator", {}) if isinstance(prov, Mapping) else {}
    if store.live or store.live_loading:
        live = "moving the slider generates live (tiny generator, the trial's seed)" + (
            "; its models are loading" if store.live_loading else "")
    else:
        live = f"the slider snaps to the bundle's strength grid ({store.live_problem})"
    grid = ", ".join(f"{s:g}" for s in store.strengths)
    name = gen.get("name", "") if isinstance(gen, Mapping) else ""
    return (f"**{store.world}** world · {len(store.subjects)} subjects ({', '.join(store.subjects)}) · "
            f"strength grid {grid} (default {store.default_strength:g}) · {live}"
            + (f" · generator `{name}`" if name else "") + f" · bundle `{store.source}`"
            + (" · the demo world (brain view, single trials, lab) is being generated: reload in a minute"
               if store.world_building else ""))


# ------------------------------------------------------------------------------------ strength
@dataclass(frozen=True)
class StrengthView:
    """The part of the trial view that depends on the img2img strength.

    Attributes:
        strength: the strength shown (snapped to the grid when live generation is off).
        final: the final reconstruction at that strength.
        note: Markdown: precomputed, generated live (seconds, seed) or snapped (and why).
        compare: ``(seen, final)`` for the before/after slider.
        chart: plotly figure dict of each metric against strength, current strength marked.
        live: whether the final was generated live.
    """

    strength: float
    final: np.ndarray
    note: str
    compare: tuple[np.ndarray, np.ndarray]
    chart: dict[str, Any]
    live: bool = False


def _live_note(result: Any) -> str:
    return f"generated live in {result.seconds:.2f} s with the trial's seed {result.seed}"


def _why_not_live(store: ExplorerStore, subject: str) -> str:
    if store.live_loading:
        return "live generation is still loading, try again in a few seconds"
    if store.live_problem:
        return store.live_problem
    return f"{subject} stores neither prior samples nor voxels to generate from"


def strength_view(store: ExplorerStore, subject: str, trial: Any, strength: Any) -> StrengthView:
    """The final at ``strength``: precomputed where the bundle stores it, generated live elsewhere when the
    store can, otherwise snapped to the nearest stored strength (the note says which and why)."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    s = check_strength(strength)
    seen = store.seen(subject, i)
    cache = store.subject(subject)
    stored = cache.stored(s)
    live = False
    if stored is not None:
        final, s = store.final(subject, i, stored), stored
        note = f"Strength {s:g}: precomputed (stored in the bundle)."
    elif store.can_regenerate(subject):
        try:
            result = store.regenerate(subject, i, s)
        except (RuntimeError, ValueError, MindEyeError) as exc:
            raise gr.Error(f"live generation failed for {subject} trial {i} at strength {s:g}: {exc}") from exc
        final, live = result.final, True
        where = "on the grid but not stored in this light bundle" if store.on_grid(s) is not None else "off the grid"
        note = (f"Strength {s:g} ({where}): candidate {result.picked} (picked at {store.default_strength:g}) "
                f"{_live_note(result)}.")
    else:
        snapped = store.nearest_stored(subject, s)
        final = store.final(subject, i, snapped)
        note = (f"Strength {s:g} snapped to {snapped:g}, the nearest strength stored in the bundle "
                f"({', '.join(f'{g:g}' for g in cache.stored_strengths)}): {_why_not_live(store, subject)}.")
        s = snapped
    return StrengthView(strength=s, final=final, note=note, compare=(seen, final),
                        chart=metrics_chart(store, subject, s), live=live)


@dataclass(frozen=True)
class CandidatesView:
    """The best-of-N candidates of a trial at the default strength.

    Attributes:
        items: ``(candidate, caption)``, caption with its CLIP score, the picked one marked (empty when the
            bundle stores none and they cannot be regenerated).
        note: which candidate was picked, and where the images come from.
    """

    items: list[tuple[np.ndarray, str]]
    note: str


def candidates_view(store: ExplorerStore, subject: str, trial: Any) -> CandidatesView:
    """The stored candidates, or (light bundle) the candidates regenerated live at the default strength."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    cache = store.subject(subject)
    d = store.default_strength
    scores, picked = cache.candidate_scores[i], int(cache.picked[i])
    images = store.candidates(subject, i)
    source = "stored in the bundle"
    if images is None and store.can_regenerate(subject):
        try:
            result = store.regenerate(subject, i, d, all_candidates=True)
        except (RuntimeError, ValueError, MindEyeError) as exc:
            raise gr.Error(f"regenerating the candidates of {subject} trial {i} failed: {exc}") from exc
        images, picked = result.candidates, result.picked
        scores = scores if result.scores is None else result.scores
        source = f"{_live_note(result)} (this light bundle stores no candidate images)"
    if images is None:
        return CandidatesView([], f"This light bundle stores no candidate images for {subject} "
                                  f"({_why_not_live(store, subject)}); their CLIP scores: "
                                  + ", ".join(f"{x:.3f}" for x in scores) + f"; candidate {picked} was picked.")
    items = [(images[k], f"CLIP {scores[k]:.3f}" + (" ✓ picked" if k == picked else "")) for k in range(len(images))]
    return CandidatesView(items, f"Best of {len(items)} candidates at the default strength {d:g}, ranked by "
                                 f"cosine(CLIP(candidate), projector output); candidate {picked} was picked; "
                                 f"{source}.")


# ------------------------------------------------------------------------------------ retrieval
@dataclass(frozen=True)
class RetrievalView:
    """Both retrieval directions for one trial.

    Attributes:
        summary: Markdown with the true match's rank in each direction (MindEye and ridge).
        image_retrieval: brain -> image: ``(test image, caption)`` best first.
        brain_retrieval: image -> brain: ``(seen image of the brain sample, caption)`` best first.
        image_retrieval_trials / brain_retrieval_trials: the trials shown, best first.
        pool: the brain sample's neighbours in a large collection (:func:`pool_view`): ``(image, caption)``.
        pool_note: Markdown: what the collection and the procedure are, or how to get them.
    """

    summary: str
    image_retrieval: list[tuple[np.ndarray, str]]
    brain_retrieval: list[tuple[np.ndarray, str]]
    image_retrieval_trials: list[int]
    brain_retrieval_trials: list[int]
    pool: list[tuple[np.ndarray, str]] = field(default_factory=list)
    pool_note: str = ""


def _rank_text(rank: int, n: int) -> str:
    return f"rank **{rank + 1}** of {n}" + (" (top-1)" if rank == 0 else "")


def retrieval_view(store: ExplorerStore, subject: str, trial: Any, k: int = TOP_K) -> RetrievalView:
    """Top-``k`` of both directions for the trial's brain sample and its image, with the true rank."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    cache = store.subject(subject)
    galleries: dict[str, tuple[list[tuple[np.ndarray, str]], list[int]]] = {}
    for direction in ("brain_to_image", "image_to_brain"):
        idx, sims = cache.top_k(i, k, direction)
        images = store.seen(subject, idx.tolist())
        what = "image" if direction == "brain_to_image" else "brain sample"
        items = [(images[p], f"#{p + 1} · cos {sims[p]:.3f} · trial {j}" + (f" ✓ true {what}" if j == i else ""))
                 for p, j in enumerate(idx.tolist())]
        galleries[direction] = (items, idx.tolist())
    lines = [
        f"**Image retrieval** (brain → image: for brain sample {i}, rank all {cache.n} test images): "
        f"true image at {_rank_text(int(cache.ranks['brain_to_image'][i]), cache.n)}.",
        f"**Brain retrieval** (image → brain: for image {i}, rank all {cache.n} brain samples): "
        f"true brain sample at {_rank_text(int(cache.ranks['image_to_brain'][i]), cache.n)}.",
    ]
    if cache.ridge_ranks:
        lines.append(f"Ridge baseline: image retrieval {_rank_text(int(cache.ridge_ranks['brain_to_image'][i]), cache.n)}, "
                     f"brain retrieval {_rank_text(int(cache.ridge_ranks['image_to_brain'][i]), cache.n)}.")
    pool, pool_note = pool_view(store, subject, i)
    return RetrievalView(summary="\n\n".join(lines),
                         image_retrieval=galleries["brain_to_image"][0],
                         brain_retrieval=galleries["image_to_brain"][0],
                         image_retrieval_trials=galleries["brain_to_image"][1],
                         brain_retrieval_trials=galleries["image_to_brain"][1],
                         pool=pool, pool_note=pool_note)


POOL_K = 8
"""Pool neighbours shown per trial."""


def pool_view(store: ExplorerStore, subject: str, trial: Any, k: int = POOL_K) -> tuple[list[tuple[np.ndarray, str]], str]:
    """The trial's brain sample's retrieved images from a large collection, as stored in the bundle
    (``mindeye retrieval neighbours``: the paper's two-stage LAION procedure on the demo pool).

    Returns ``(items, note)``: up to ``k`` ``(image (64, 64, 3) uint8, caption)`` best first, demo-pool images
    re-rendered from their seeds (:func:`mindeye_core.retrieval.pool.render_pool`; nothing is stored); for a
    collection of other ids (paths, URLs) no images and the ids in the note.
    """
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    cache = store.subject(subject)
    nb = cache.neighbours
    if nb is None:
        why = cache.neighbours_problem or "this bundle stores no pool neighbours"
        return [], (f"**Retrieval from a large collection** (the paper's LAION-5B step): {why}. "
                    "`mindeye retrieval neighbours --bundle BUNDLE` writes them (two-stage, over the 10^5-image "
                    "demo pool on the demo world).")
    info = nb.info
    index = info.get("index", {}) if isinstance(info.get("index"), Mapping) else {}
    n_items = index.get("n_items")
    where = (f"the demo pool ({int(n_items):,} procedurally generated scenes, none of them a test image)"
             if index.get("pool") and n_items else f"a collection of {n_items} images" if n_items else "a collection")
    from mindeye_core.retrieval.demo import QUERY_SOURCES

    query = info.get("query", {}) if isinstance(info.get("query"), Mapping) else {}
    final = f" ({QUERY_SOURCES[query['final']]})" if query.get("final") in QUERY_SOURCES else ""
    how = (f"two-stage as the paper: the brain's final-layer embedding{final} queries {info.get('n_candidates', 16)} "
           "candidates, re-ranked by the projector output against each candidate's hidden tokens"
           if str(info.get("procedure", "")).startswith("two-stage") else str(info.get("procedure", "nearest neighbours")))
    scores = nb.scores[i, :k]
    if nb.seeds is None:
        ids = ", ".join(f"`{x}`" for x in nb.ids[i, :k].tolist())
        return [], f"**Retrieval from {where}** ({how}): best first {ids}."
    from mindeye_core.retrieval.pool import render_pool

    seeds = nb.seeds[i, :k]
    images = render_pool(seeds)
    items = [(images[r], f"#{r + 1} · cos {float(scores[r]):.3f} · pool seed {int(seeds[r])}"
              + (" · retrieved" if r == 0 else "")) for r in range(len(seeds))]
    match = info.get("match")
    share = ""
    if isinstance(match, Mapping) and isinstance(match.get("two_stage"), Mapping):
        share = (f" Over {subject}'s test set the retrieved image's main object has the seen image's category and "
                 f"colour for {100 * float(match['two_stage']['category_and_colour']):.1f} % of the brain samples "
                 f"(final embedding alone: {100 * float(match['one_stage']['category_and_colour']):.1f} %; chance "
                 f"{100 * float(match['chance_category_and_colour']):.1f} %).")
    return items, f"**Retrieval from {where}** ({how}); the first is the retrieved image.{share}"


# ------------------------------------------------------------------------------------ UMAP
def umap_figure(store: ExplorerStore, subject: str, trial: Any) -> dict[str, Any]:
    """Plotly figure dict: one panel per embedding space, every test sample a point (``customdata`` =
    trial), the current trial as a red star. Empty figure with a message when the bundle has no UMAP."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    coords = store.subject(subject).umap
    spaces = [s for s in UMAP_SPACES if s in coords]
    if not spaces:
        return {"data": [], "layout": {"annotations": [{"text": f"{subject}: this bundle has no UMAP coordinates",
                                                         "showarrow": False, "x": 0.5, "y": 0.5,
                                                         "xref": "paper", "yref": "paper"}],
                                        "xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 200}}
    cols = 2 if len(spaces) > 1 else 1
    rows = math.ceil(len(spaces) / cols)
    data: list[dict[str, Any]] = []
    annotations = []
    layout: dict[str, Any] = {"grid": {"rows": rows, "columns": cols, "pattern": "independent"},
                              "showlegend": False, "hovermode": "closest", "clickmode": "event",
                              "height": 330 * rows, "margin": {"l": 30, "r": 10, "t": 30, "b": 30},
                              "meta": {"subject": subject, "trial": i}}
    for p, space in enumerate(spaces):
        xy = coords[space]
        ax = "" if p == 0 else str(p + 1)
        n = xy.shape[0]
        data.append({"type": "scatter", "mode": "markers", "name": SPACE_TITLES.get(space, space),
                     "x": np.round(xy[:, 0], 3).tolist(), "y": np.round(xy[:, 1], 3).tolist(),
                     "customdata": list(range(n)), "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                     "marker": {"size": 6, "color": _SPACE_COLOURS.get(space, "#888"), "opacity": 0.55},
                     "hovertemplate": "trial %{customdata}<extra>" + SPACE_TITLES.get(space, space) + "</extra>"})
        data.append({"type": "scatter", "mode": "markers", "name": f"trial {i}",
                     "x": [round(float(xy[i, 0]), 3)], "y": [round(float(xy[i, 1]), 3)], "customdata": [i],
                     "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                     "marker": {"size": 16, "color": "#e4002b", "symbol": "star", "line": {"width": 1, "color": "#fff"}},
                     "hovertemplate": "trial %{customdata} (current)<extra></extra>"})
        layout[f"xaxis{ax}"] = {"showticklabels": False, "zeroline": False}
        layout[f"yaxis{ax}"] = {"showticklabels": False, "zeroline": False}
        annotations.append({"text": f"<b>{SPACE_TITLES.get(space, space)}</b>", "showarrow": False,
                            "xref": f"x{ax} domain", "yref": f"y{ax} domain", "x": 0.5, "y": 1.08})
    layout["annotations"] = annotations
    return {"data": data, "layout": layout}


def thumbnail(store: ExplorerStore, subject: str, trial: Any) -> str:
    """PNG data URL of the seen image of ``trial`` (the UMAP hover)."""
    subject = check_subject(store, subject)
    return store.stimulus_thumbnail(subject, check_trial(store, subject, trial))


# ------------------------------------------------------------------------------------ metrics
EXTRA_METRIC_NAMES = {"tinyclip_2way": "tiny-CLIP 2-way"}
"""Headers of metrics a bundle may carry beyond the paper's columns (e.g. the demo world's stand-in for CLIP)."""


def _metrics_entry(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """A subject's metrics (docs/results_bundle.md "Metrics": MindEye's entry with optional ``ridge`` and
    ``ceiling`` entries of the same shape), or ``None`` when it holds no numbers."""
    if not isinstance(metrics, Mapping) or not metrics.get("strengths") and not metrics.get("retrieval"):
        return None
    out = dict(metrics)
    out["strengths"] = dict(out.get("strengths") or {})
    return out


def _at(entry: Mapping[str, Any] | None, strength: float) -> Mapping[str, Any]:
    """An entry's metric values at the stored strength nearest ``strength`` (empty when none)."""
    per = (entry or {}).get("strengths") or {}
    return per[pick_strength(list(per), strength)] if per else {}


def _extra_keys(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric metric keys the entries carry beyond the paper's columns, in first-seen order."""
    known = {c[0] for c in COLUMNS}
    keys: list[str] = []
    for entry in entries:
        for values in [*entry.get("strengths", {}).values(), entry.get("blurry") or {}]:
            for k, v in (values.items() if isinstance(values, Mapping) else ()):
                if k not in known and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.append(k)
    return keys


def _format(key: str, value: Any) -> str:
    if key in EXTRA_METRIC_NAMES or key not in _METRIC_NAMES:
        if isinstance(value, (int, float)) and "2way" in key:
            return f"{100.0 * value:.1f}%"
    return format_value(key, value)


def _frame(rows: Sequence[TableRow | ReferenceRow], keys: Sequence[str], first: str) -> pd.DataFrame:
    heads = {key: f"{head} {'↑' if up else '↓'}" for key, head, up in COLUMNS}
    heads.update({k: EXTRA_METRIC_NAMES.get(k, k) for k in keys if k not in heads})
    records = [[r.method, *[_format(k, r.values.get(k)) for k in keys], r.source] for r in rows]
    return pd.DataFrame(records, columns=[first, *[heads[k] for k in keys], "Source"])


def metrics_tables(store: ExplorerStore, subject: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 shape (MindEye, its low-level images, ridge, the generator ceiling, the paper's NSD rows for
    scale) and Table 5 shape (per strength); metrics the bundle adds beyond the paper's (``tinyclip_2way``)
    get their own columns."""
    subject = check_subject(store, subject)
    entry = _metrics_entry(store.subject(subject).metrics)
    source = f"{store.world} bundle"
    rows: list[TableRow | ReferenceRow] = []
    rows5: list[TableRow | ReferenceRow] = []
    extra: list[str] = []
    if entry is None:
        rows.append(TableRow(f"{subject}: no metrics in the bundle", {}, source))
    else:
        parts = [entry] + [e for k in ("ridge", "ceiling") if isinstance(e := entry.get(k), Mapping)]
        extra = _extra_keys(parts)
        d = store.default_strength
        values_of = {"MindEye (Low-": entry.get("blurry") or {}, "Ridge": _at(entry.get("ridge"), d),
                     "Generator ceiling": _at(entry.get("ceiling"), d), "MindEye": _at(entry, d)}
        for row in table1_rows({subject: entry}, strength=d, label="MindEye"):
            at = next(v for prefix, v in values_of.items() if row.method.startswith(prefix))
            rows.append(TableRow(row.method, {**row.values, **{k: at.get(k) for k in extra}}, source))
        for row in table5_rows(entry, subject=subject, label="MindEye"):
            at = entry["strengths"].get(row.method.rsplit(" ", 1)[-1], {})
            rows5.append(TableRow(row.method, {**row.values, **{k: at.get(k) for k in extra}}, source))
    rows += [r for r in TABLE1_REFERENCE if r.method == "MindEye"] + [TABLE7_SUBJ01]
    rows5 += list(TABLE5_REFERENCE.values())
    return (_frame(rows, [c[0] for c in COLUMNS] + extra, "Method"),
            _frame(rows5, [*TABLE5_KEYS, *extra], "Img2Img strength"))


def metrics_chart(store: ExplorerStore, subject: str, strength: float) -> dict[str, Any]:
    """Plotly figure dict: each metric the bundle has against strength (small multiples), ``strength``
    marked by a vertical line in every panel; the paper's subject-1 values (Table 5) dotted for scale."""
    entry = _metrics_entry(store.subject(subject).metrics) or {"strengths": {}}
    by_strength = {float(k): v for k, v in entry["strengths"].items() if isinstance(v, Mapping)}
    xs = sorted(by_strength)
    keys = [k for k in [*TABLE5_KEYS, *_extra_keys([entry])]
            if any(isinstance(by_strength[x].get(k), (int, float)) for x in xs)] or list(TABLE5_KEYS)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"grid": {"rows": rows, "columns": cols, "pattern": "independent"}, "showlegend": False,
                              "height": 220 * rows, "margin": {"l": 40, "r": 10, "t": 40, "b": 40}, "shapes": [],
                              "annotations": [], "meta": {"subject": subject, "strength": float(strength)}}
    ref_x = sorted(TABLE5_REFERENCE)
    for p, key in enumerate(keys):
        ax = "" if p == 0 else str(p + 1)
        ys = [by_strength[x].get(key) for x in xs]
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{subject} {key}", "x": xs, "y": ys,
                     "xaxis": f"x{ax}", "yaxis": f"y{ax}", "line": {"color": "#4c78a8"}})
        if key in TABLE5_KEYS:
            data.append({"type": "scatter", "mode": "lines", "name": f"paper subj01 {key}", "x": ref_x,
                         "y": [TABLE5_REFERENCE[x].values.get(key) for x in ref_x], "xaxis": f"x{ax}",
                         "yaxis": f"y{ax}", "line": {"color": "#aaa", "dash": "dot"}})
        layout[f"xaxis{ax}"] = {"range": [-0.05, 1.05], "title": {"text": "strength"} if p >= len(keys) - cols else {}}
        layout[f"yaxis{ax}"] = {}
        layout["shapes"].append({"type": "line", "xref": f"x{ax}", "yref": f"y{ax} domain", "x0": float(strength),
                                 "x1": float(strength), "y0": 0, "y1": 1, "line": {"color": "#e4002b", "width": 2}})
        name = _METRIC_NAMES.get(key) or EXTRA_METRIC_NAMES.get(key, key)
        layout["annotations"].append({"text": f"<b>{name}</b>", "showarrow": False, "xref": f"x{ax} domain",
                                      "yref": f"y{ax} domain", "x": 0.5, "y": 1.12})
    return {"data": data, "layout": layout}


# ------------------------------------------------------------------------------------ trial
@dataclass(frozen=True)
class TrialView:
    """Everything the page shows for one (subject, trial, strength), except the candidates
    (:func:`candidates_view`, which may need a live generation on a light bundle).

    Attributes:
        header: Markdown naming the trial (seed, ranks).
        seen / blurry: the seen image and the low-level reconstruction (``None`` without one).
        view: the strength-dependent part (:class:`StrengthView`).
        ridge_blurry / ridge_final: the ridge baseline's reconstructions (``None`` when absent).
        ridge_note: what the ridge images are, or why there are none.
        retrieval: both retrieval directions.
        umap: the UMAP figure dict.
    """

    subject: str
    trial: int
    header: str
    seen: np.ndarray
    blurry: np.ndarray | None
    view: StrengthView
    ridge_blurry: np.ndarray | None
    ridge_final: np.ndarray | None
    ridge_note: str
    retrieval: RetrievalView
    umap: dict[str, Any]


def trial_view(store: ExplorerStore, subject: str, trial: Any, strength: Any) -> TrialView:
    """The page for one trial: seen, blurry, final at ``strength``, ridge, retrieval, UMAP."""
    subject = check_subject(store, subject)
    i = check_trial(store, subject, trial)
    cache = store.subject(subject)
    view = strength_view(store, subject, i, strength)
    ridge_blurry, ridge_final = store.ridge_images(subject, i)
    if cache.ridge is None:
        ridge_note = "This bundle has no ridge baseline."
    else:
        ridge_note = (f"Ridge baseline (linear, same samples): blurry from ridge → VAE latents, final from ridge → "
                      f"CLIP tokens through the same generator at strength {store.default_strength:g}.")
        if ridge_final is None and ridge_blurry is None:
            ridge_note += " (No ridge images in this bundle: retrieval only.)"
        elif ridge_blurry is None:
            ridge_note += " This bundle does not store the ridge blurry images (a light bundle keeps the ridge finals only)."
    blurry = store.blurry(subject, i)
    header = (f"### {subject} · trial {i}\nseed {int(cache.seeds[i])} · image retrieval rank "
              f"{int(cache.ranks['brain_to_image'][i]) + 1}/{cache.n} · brain retrieval rank "
              f"{int(cache.ranks['image_to_brain'][i]) + 1}/{cache.n}"
              + ("" if blurry is not None else " · no blurry reconstruction in this bundle"))
    return TrialView(
        subject=subject, trial=i, header=header, seen=store.seen(subject, i), blurry=blurry, view=view,
        ridge_blurry=ridge_blurry, ridge_final=ridge_final, ridge_note=ridge_note,
        retrieval=retrieval_view(store, subject, i), umap=umap_figure(store, subject, i),
    )


def random_trial(store: ExplorerStore, subject: str, rng: random.Random | None = None) -> int:
    """A uniformly random trial of ``subject``."""
    subject = check_subject(store, subject)
    return (rng or random.Random()).randrange(store.subject(subject).n)


# ------------------------------------------------------------------------------------ gallery
@dataclass(frozen=True)
class GalleryPage:
    """One page of the test-image gallery."""

    items: list[tuple[np.ndarray, str]]
    page: int
    n_pages: int
    label: str


def gallery_page(store: ExplorerStore, subject: str, page: Any, page_size: int = PAGE_SIZE) -> GalleryPage:
    """Page ``page`` (0-based, clamped to the valid range) of ``subject``'s test images."""
    subject = check_subject(store, subject)
    n = store.subject(subject).n
    n_pages = max(1, math.ceil(n / page_size))
    try:
        p = int(float(page))
    except (TypeError, ValueError):
        raise gr.Error(f"gallery page must be a number, got {page!r}") from None
    p = min(max(p, 0), n_pages - 1)
    trials = list(range(p * page_size, min(n, (p + 1) * page_size)))
    images = store.seen(subject, trials)
    items = [(images[k], f"trial {t}") for k, t in enumerate(trials)]
    return GalleryPage(items=items, page=p, n_pages=n_pages,
                       label=f"Page {p + 1} of {n_pages} · trials {trials[0]}–{trials[-1]} of {n}")


def trial_from_gallery(store: ExplorerStore, subject: str, page: Any, index: Any,
                       page_size: int = PAGE_SIZE) -> int:
    """The trial of the ``index``-th image on gallery page ``page``."""
    subject = check_subject(store, subject)
    return check_trial(store, subject, int(page) * page_size + int(index))


# ------------------------------------------------------------------------------------ subject
@dataclass(frozen=True)
class SubjectView:
    """What changes with the subject: the trial range, the tables and the first gallery page."""

    subject: str
    n_trials: int
    table1: pd.DataFrame
    table5: pd.DataFrame
    gallery: GalleryPage


def subject_view(store: ExplorerStore, subject: str) -> SubjectView:
    subject = check_subject(store, subject)
    t1, t5 = metrics_tables(store, subject)
    return SubjectView(subject=subject, n_trials=store.subject(subject).n, table1=t1, table5=t5,
                       gallery=gallery_page(store, subject, 0))


# ------------------------------------------------------------------------------------ links
@dataclass(frozen=True)
class QueryState:
    """The view a link asks for, with defaults filled in and what was wrong with the link."""

    subject: str
    trial: int
    strength: float
    tab: str
    warnings: list[str] = field(default_factory=list)


def restore_from_query(store: ExplorerStore, params: Mapping[str, str]) -> QueryState:
    """Parse ``?subject=subj02&trial=117&strength=0.3&tab=umap``; unknown or bad values fall back to the
    defaults (first subject, trial 0, the default strength, the trial tab) with a warning naming them."""
    if not store.ready:
        raise gr.Error(store.problem or "no results bundle is loaded")
    warnings: list[str] = []
    subject = params.get("subject") or store.subjects[0]
    if subject not in store.subjects:
        warnings.append(f"link names subject {subject!r}, not in this bundle ({', '.join(store.subjects)}); "
                        f"showing {store.subjects[0]}")
        subject = store.subjects[0]
    trial, strength = 0, store.default_strength
    for key in ("trial", "strength"):
        raw = params.get(key)
        if raw in (None, ""):
            continue
        try:
            if key == "trial":
                trial = check_trial(store, subject, raw)
            else:
                strength = check_strength(raw)
        except gr.Error as exc:
            warnings.append(f"link parameter {key}={raw!r} ignored: {exc.message}")
    tab = params.get("tab") or TABS[0]
    if tab not in TABS:
        warnings.append(f"link names tab {tab!r}; tabs are {', '.join(TABS)}")
        tab = TABS[0]
    return QueryState(subject=subject, trial=trial, strength=strength, tab=tab, warnings=warnings)


def link_query(subject: str, trial: Any, strength: Any, tab: str) -> str:
    """The query string that restores this view: ``?subject=...&trial=...&strength=...&tab=...``."""
    params = {"subject": subject, "trial": int(float(trial)), "strength": f"{float(strength):g}",
              "tab": tab if tab in TABS else TABS[0]}
    return "?" + urlencode(params)
