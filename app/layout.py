"""The explorer's Blocks: components, tabs and event wiring; the logic lives in :mod:`app.callbacks`.

:func:`build_demo` builds the page for one :class:`~app.store.ExplorerStore`; :func:`launch_kwargs`
gives what ``Blocks.launch`` needs (CSS, the plotly.js file it may serve); :func:`launch_app` does both
and starts the server. Tabs are added by one ``_*_tab`` function each, so new panels slot in beside them.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402

from . import callbacks as cb  # noqa: E402
from . import panels as pn  # noqa: E402
from .store import ExplorerStore  # noqa: E402

__all__ = ["GENERATE_CONCURRENCY", "QUEUE_MAX_SIZE", "build_demo", "free_port", "launch_app", "launch_kwargs",
           "plotly_js_path"]

STATIC = Path(__file__).resolve().parent / "static"
GENERATE_CONCURRENCY = 1
"""Live generations at a time (the generator runs on the CPU; one at a time keeps each one fast)."""
BROWSE_CONCURRENCY = 4
"""Concurrent runs of every other handler (reading the bundle)."""
QUEUE_MAX_SIZE = 64
"""Events waiting at most; beyond that users are told the queue is full."""
TAB_TITLES = {"trial": "Trial", "browse": "Browse test images", "retrieval": "Retrieval", "umap": "UMAP",
              "metrics": "Metrics", "subjects": "Subjects side by side", "brain": "Brain view", "lab": "Decoding lab"}
_IMAGE = dict(format="png", type="numpy", height=200, elem_classes=["pixelated"], interactive=False,
              buttons=["download", "fullscreen"])
_COPY_JS = """(q) => {
  const url = window.location.origin + window.location.pathname + q;
  try { window.history.replaceState(null, '', q); } catch (e) {}
  if (navigator.clipboard) { navigator.clipboard.writeText(url).catch(() => {}); }
  return url;
}"""


def plotly_js_path() -> Path:
    """``plotly.min.js`` of the installed plotly package (served by the app, never a CDN)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path}: reinstall plotly (pip install plotly)")
    return path


def _plot(fig: dict[str, Any]) -> PlotData:
    import json

    return PlotData(type="plotly", plot=json.dumps(fig))


@dataclass
class _Page:
    """The components handlers write to (filled by the ``_*`` builders)."""

    c: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.c[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.c[key] = value

    def pick(self, *keys: str) -> list[Any]:
        return [self.c[k] for k in keys]


# ------------------------------------------------------------------------------------ view -> outputs
def _strength_outputs(p: _Page, v: cb.StrengthView) -> dict[Any, Any]:
    return {p["strength"]: v.strength, p["final"]: v.final, p["note"]: v.note, p["compare"]: v.compare,
            p["chart"]: _plot(v.chart)}


def _trial_outputs(p: _Page, v: cb.TrialView) -> dict[Any, Any]:
    out = _strength_outputs(p, v.view)
    out.update({
        p["trial"]: v.trial, p["header"]: v.header, p["seen"]: v.seen, p["blurry"]: v.blurry,
        p["ridge_blurry"]: v.ridge_blurry, p["ridge_final"]: v.ridge_final, p["ridge_final_me"]: v.view.final,
        p["ridge_note"]: v.ridge_note, p["retrieval_summary"]: v.retrieval.summary,
        p["image_retrieval"]: v.retrieval.image_retrieval, p["brain_retrieval"]: v.retrieval.brain_retrieval,
        p["umap"]: v.umap, p["pool_note"]: v.retrieval.pool_note, p["pool_retrieval"]: v.retrieval.pool,
    })
    return out


def _subject_outputs(p: _Page, v: cb.SubjectView) -> dict[Any, Any]:
    return {p["table1"]: v.table1, p["table5"]: v.table5, p["gallery"]: v.gallery.items,
            p["page"]: v.gallery.page, p["page_label"]: v.gallery.label,
            p["trial_max"]: f"{v.subject}: trials 0 to {v.n_trials - 1}"}


_TRIAL_KEYS = ("trial", "header", "seen", "blurry", "final", "note", "compare", "chart", "strength",
               "ridge_blurry", "ridge_final", "ridge_final_me", "ridge_note", "retrieval_summary",
               "image_retrieval", "brain_retrieval", "umap", "pool_note", "pool_retrieval")
_SUBJECT_KEYS = ("table1", "table5", "gallery", "page", "page_label", "trial_max")
_PANEL_KEYS = ("subjects_gallery", "subjects_table", "subjects_note", "brain_plot", "brain_summary", "brain_note")
_LAB_KEYS = ("lab_seen", "lab_blurry", "lab_final", "lab_candidates", "lab_nearest", "lab_note", "lab_state")


# ------------------------------------------------------------------------------------ builders
def _controls(p: _Page, store: ExplorerStore) -> None:
    first = store.subjects[0]
    with gr.Row(equal_height=True):
        p["subject"] = gr.Dropdown(store.subjects, value=first, label="Subject", scale=1, elem_id="subject")
        p["trial"] = gr.Number(value=0, precision=0, minimum=0, label="Test trial", scale=1, elem_id="trial")
        p["random"] = gr.Button("Random trial", scale=0, size="md", min_width=120, elem_id="random")
        live = store.live or store.live_loading
        p["strength"] = gr.Slider(0.0, 1.0, value=store.default_strength, step=0.01 if live else 0.05,
                                  label="img2img strength (0 = pure high-level, 1 = only the blurry image)",
                                  info=("generates live off the grid" if live
                                        else "snaps to the bundle's grid " + ", ".join(f"{s:g}" for s in store.strengths)),
                                  scale=3, elem_id="strength")
    with gr.Row(equal_height=True):
        p["trial_max"] = gr.Markdown(elem_id="trial-range")
        p["copy"] = gr.Button("Copy link", scale=0, size="md", min_width=120, elem_id="copy-link")
        p["link"] = gr.Textbox(label="Link to this view", interactive=False, scale=3, elem_id="link",
                               buttons=["copy"])


def _trial_tab(p: _Page) -> None:
    p["header"] = gr.Markdown(elem_id="trial-header")
    with gr.Row():
        p["seen"] = gr.Image(label="Seen image", elem_id="seen", **_IMAGE)
        p["blurry"] = gr.Image(label="Blurry (low-level) reconstruction", elem_id="blurry", **_IMAGE)
        p["final"] = gr.Image(label="Final reconstruction", elem_id="final", **_IMAGE)
    p["note"] = gr.Markdown(elem_id="strength-note")
    with gr.Row():
        p["compare"] = gr.ImageSlider(label="Seen vs final (drag the divider)", format="png", type="numpy",
                                      elem_id="compare", elem_classes=["pixelated"], max_height=260,
                                      interactive=False)
        with gr.Column():
            p["candidates"] = gr.Gallery(label="Best-of-N candidates (CLIP score)", columns=4, height=220,
                                         format="png", elem_id="candidates", elem_classes=["pixelated"],
                                         allow_preview=False, interactive=False)
            p["candidates_note"] = gr.Markdown()
    gr.Markdown("#### Ridge baseline beside MindEye")
    with gr.Row():
        p["ridge_blurry"] = gr.Image(label="Ridge blurry", elem_id="ridge-blurry", **_IMAGE)
        p["ridge_final"] = gr.Image(label="Ridge final", elem_id="ridge-final", **_IMAGE)
        p["ridge_final_me"] = gr.Image(label="MindEye final", elem_id="mindeye-final", **_IMAGE)
    p["ridge_note"] = gr.Markdown()
    gr.Markdown("#### Single trial vs the 3-trial average (decoded live with the trial's seed)")
    with gr.Row(equal_height=True):
        p["mode"] = gr.Radio(list(pn.MODES), value=pn.AVERAGE, label="Betas decoded", elem_id="trial-mode", scale=2)
        p["download_btn"] = gr.Button("Download this trial (.zip)", scale=0, min_width=200, elem_id="download-btn")
        p["download"] = gr.File(label="Trial download", interactive=False, elem_id="download", scale=1, height=80)
    with gr.Row():
        p["single_blurry"] = gr.Image(label="Blurry (this mode)", elem_id="single-blurry", **_IMAGE)
        p["single_final"] = gr.Image(label="Final (this mode, current strength)", elem_id="single-final", **_IMAGE)
        p["single_note"] = gr.Markdown(elem_id="single-note")


def _browse_tab(p: _Page) -> None:
    with gr.Row(equal_height=True):
        p["prev"] = gr.Button("◀ Previous", scale=0)
        p["page"] = gr.Number(value=0, precision=0, minimum=0, label="Page (0-based)", scale=0, elem_id="page")
        p["next"] = gr.Button("Next ▶", scale=0)
        p["page_label"] = gr.Markdown()
    p["gallery"] = gr.Gallery(label="Test images: click one to open its trial", columns=8, height="auto",
                              format="png", elem_id="gallery", elem_classes=["pixelated"], allow_preview=False,
                              interactive=False)


def _retrieval_tab(p: _Page) -> None:
    p["retrieval_summary"] = gr.Markdown(elem_id="retrieval-summary")
    p["image_retrieval"] = gr.Gallery(label="Image retrieval (brain → image): top test images for this brain sample",
                                      columns=cb.TOP_K, height=200, format="png", elem_id="image-retrieval",
                                      elem_classes=["pixelated"], allow_preview=False, interactive=False)
    p["brain_retrieval"] = gr.Gallery(label="Brain retrieval (image → brain): top brain samples for this image, "
                                      "shown as their seen images", columns=cb.TOP_K, height=200, format="png",
                                      elem_id="brain-retrieval", elem_classes=["pixelated"], allow_preview=False,
                                      interactive=False)
    p["pool_note"] = gr.Markdown(elem_id="pool-note")
    p["pool_retrieval"] = gr.Gallery(label="Retrieval from the demo pool (the paper's LAION-5B step): images retrieved "
                                     "for this brain sample, best first", columns=cb.POOL_K, height=200, format="png",
                                     elem_id="pool-retrieval", elem_classes=["pixelated"], allow_preview=False,
                                     interactive=False)


def _umap_tab(p: _Page, store: ExplorerStore) -> None:
    gr.Markdown("UMAP of the CLIP image, backbone, projector and prior embeddings of every test sample "
                "(precomputed, as the paper's Figure 9). The red star is the current trial; hover a point to "
                "see its image, click it to open that trial.")

    def thumbnail(query: list[Any]) -> str:  # JS: server.thumbnail([subject, trial]) arrives as one list
        subject, trial = query
        return cb.thumbnail(store, subject, trial)

    p["umap"] = gr.HTML(
        value=None,
        html_template='<div class="umap-plot"></div><div class="umap-hover"><img alt=""/><span>hover a point</span></div>',
        js_on_load=(STATIC / "umap.js").read_text(),
        head=f'<script src="gradio_api/file={plotly_js_path()}"></script>',
        server_functions=[thumbnail],
        elem_id="umap",
        apply_default_css=False,
    )


def _metrics_tab(p: _Page) -> None:
    p["table1"] = gr.Dataframe(label="Table 1 shape: this subject (MindEye, ridge) and the paper's NSD rows for scale",
                               interactive=False, wrap=True, elem_id="table1")
    p["table5"] = gr.Dataframe(label="Table 5 shape: metrics across the img2img strength grid", interactive=False,
                               wrap=True, elem_id="table5")
    p["chart"] = gr.Plot(label="Metrics against strength (red line: current strength; dotted: paper, subject 1)",
                         elem_id="chart")


def _subjects_tab(p: _Page) -> None:
    p["subjects_note"] = gr.Markdown(elem_id="subjects-note")
    p["subjects_gallery"] = gr.Gallery(label="Every subject's reconstruction of this image: MindEye blurry, MindEye "
                                       "final, ridge blurry, ridge final", columns=4, height="auto", format="png",
                                       elem_id="subjects-gallery", elem_classes=["pixelated"], allow_preview=False,
                                       interactive=False)
    p["subjects_table"] = gr.Dataframe(label="Retrieval ranks and CLIP scores", interactive=False, wrap=True,
                                       elem_id="subjects-table")


def _brain_tab(p: _Page) -> None:
    with gr.Row():
        p["brain_mode"] = gr.Radio(list(pn.MODES), value=pn.AVERAGE, label="Betas", elem_id="brain-mode")
        p["brain_value"] = gr.Radio(["beta", "noise ceiling"], value="beta", label="Colour by", elem_id="brain-value")
    p["brain_note"] = gr.Markdown(elem_id="brain-note")
    p["brain_plot"] = gr.Plot(label="Voxels at their pRF centres (V1-hV4) and high-level areas", elem_id="brain-plot")
    p["brain_summary"] = gr.Dataframe(label="Per area", interactive=False, elem_id="brain-summary")


def _lab_tab(p: _Page, store: ExplorerStore) -> None:
    from mindeye_core.data.demo import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, POSITIONS, SIZE_NAMES

    world = store.world_data
    has_world = store.world_building or world is not None and world.can_simulate  # building: the demo world
    if not has_world or not store.reconstructors and not store.live_loading:
        why = (store.live_problem if has_world else None) or store.world_problem or store.live_problem or (
            f"the {world.world!r} world has no simulated cortex" if world is not None else "no dataset is open")
        p["lab_off"] = gr.Markdown(f"The decoding lab needs the demo world's dataset and the live models: {why}.",
                                   elem_id="lab-off")
        return
    gr.Markdown("Compose a scene nobody has seen (or draw a random one): the subject's simulated cortex responds "
                "(the forward model that made the dataset, with fresh noise), and the trained MindEye decodes it "
                "live. Nothing here is precomputed.")
    defaults = [("star", "red", "large", "center"), ("circle", "blue", "small", "top left"),
                ("square", "yellow", "medium", "bottom right")]
    p["lab_objects"] = []
    for k, (cat, col, size, pos) in enumerate(defaults):
        with gr.Row(equal_height=True):
            row = [gr.Checkbox(value=k == 0, label=f"object {k + 1}", scale=0, min_width=100,
                               elem_id=f"lab-use-{k}"),
                   gr.Dropdown(list(CATEGORIES), value=cat, label="shape", elem_id=f"lab-shape-{k}"),
                   gr.Dropdown(list(COLOUR_NAMES), value=col, label="colour", elem_id=f"lab-colour-{k}"),
                   gr.Dropdown(list(SIZE_NAMES), value=size, label="size", elem_id=f"lab-size-{k}"),
                   gr.Dropdown(list(POSITIONS), value=pos, label="position", elem_id=f"lab-position-{k}")]
        p["lab_objects"].extend(row)
    with gr.Row(equal_height=True):
        p["lab_background"] = gr.Dropdown(list(BACKGROUNDS), value=BACKGROUNDS[0], label="background",
                                          elem_id="lab-background")
        p["lab_seed"] = gr.Number(value=1, precision=0, minimum=0, label="seed (scene details, noise, decoding)",
                                  elem_id="lab-seed")
        p["lab_subject"] = gr.Dropdown(store.subjects, value=store.subjects[0], label="subject", elem_id="lab-subject")
        p["lab_noise"] = gr.Slider(0.0, 3.0, value=1.0, step=0.1, label="noise level (1 = the dataset's)",
                                   elem_id="lab-noise")
        p["lab_reps"] = gr.Radio([1, 2, 3], value=3, label="repetitions averaged", elem_id="lab-reps")
    with gr.Row(equal_height=True):
        p["lab_decode"] = gr.Button("Decode this scene", variant="primary", elem_id="lab-decode")
        p["lab_random"] = gr.Button("Random unseen scene", elem_id="lab-random")
        p["lab_strength"] = gr.Slider(0.0, 1.0, value=store.default_strength, step=0.01, label="img2img strength",
                                      elem_id="lab-strength", scale=2)
    p["lab_note"] = gr.Markdown(elem_id="lab-note")
    with gr.Row():
        p["lab_seen"] = gr.Image(label="New scene (seen)", elem_id="lab-seen", **_IMAGE)
        p["lab_blurry"] = gr.Image(label="Blurry (decoded)", elem_id="lab-blurry", **_IMAGE)
        p["lab_final"] = gr.Image(label="Final (decoded)", elem_id="lab-final", **_IMAGE)
    p["lab_candidates"] = gr.Gallery(label="Best-of-N candidates (CLIP score)", columns=4, height=180, format="png",
                                     elem_id="lab-candidates", elem_classes=["pixelated"], allow_preview=False,
                                     interactive=False)
    p["lab_nearest"] = gr.Gallery(label="Nearest test images to the new brain sample (brain → image)",
                                  columns=pn.NEAREST_K, height=180, format="png", elem_id="lab-nearest",
                                  elem_classes=["pixelated"], allow_preview=False, interactive=False)
    p["lab_state"] = gr.State(None)


TAB_BUILDERS: dict[str, Callable[..., None]] = {"trial": lambda p, s: _trial_tab(p),
                                                "browse": lambda p, s: _browse_tab(p),
                                                "retrieval": lambda p, s: _retrieval_tab(p),
                                                "umap": _umap_tab,
                                                "metrics": lambda p, s: _metrics_tab(p),
                                                "subjects": lambda p, s: _subjects_tab(p),
                                                "brain": lambda p, s: _brain_tab(p),
                                                "lab": _lab_tab}


# ------------------------------------------------------------------------------------ wiring
def _wire(p: _Page, store: ExplorerStore, demo: gr.Blocks, downloads: Path) -> None:
    trial_out = p.pick(*_TRIAL_KEYS)
    subject_out = p.pick(*_SUBJECT_KEYS)

    def warn(messages: list[str]) -> None:
        for m in messages:
            gr.Warning(m)

    def on_load(request: gr.Request) -> dict[Any, Any]:
        q = cb.restore_from_query(store, dict(request.query_params) if request else {})
        warn(q.warnings)
        out = _subject_outputs(p, cb.subject_view(store, q.subject))
        out.update(_trial_outputs(p, cb.trial_view(store, q.subject, q.trial, q.strength)))
        out.update({p["subject"]: q.subject, p["tabs"]: gr.Tabs(selected=q.tab), p["tab"]: q.tab,
                    p["link"]: cb.link_query(q.subject, q.trial, q.strength, q.tab)})
        return out

    def on_subject(subject: str, trial: Any, strength: float) -> dict[Any, Any]:
        sv = cb.subject_view(store, subject)
        try:
            t = cb.check_trial(store, subject, trial)
        except gr.Error:
            t = 0
        out = _subject_outputs(p, sv)
        out.update(_trial_outputs(p, cb.trial_view(store, subject, t, strength)))
        return out

    def on_trial(subject: str, trial: Any, strength: float) -> dict[Any, Any]:
        return _trial_outputs(p, cb.trial_view(store, subject, trial, strength))

    def on_random(subject: str, strength: float) -> dict[Any, Any]:
        return on_trial(subject, cb.random_trial(store, subject), strength)

    def on_gallery(subject: str, page: Any, strength: float, evt: gr.SelectData) -> dict[Any, Any]:
        out = on_trial(subject, cb.trial_from_gallery(store, subject, page, evt.index), strength)
        out.update({p["tabs"]: gr.Tabs(selected="trial"), p["tab"]: "trial"})
        return out

    def on_umap(subject: str, strength: float, evt: gr.EventData) -> dict[Any, Any]:
        return on_trial(subject, getattr(evt, "trial", None), strength)

    def on_strength(subject: str, trial: Any, strength: float,
                    progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:  # noqa: B008 (Gradio's idiom)
        progress(0.0, desc=f"strength {float(strength):g}")
        return _strength_outputs(p, cb.strength_view(store, subject, trial, strength))

    def on_candidates(subject: str, trial: Any) -> tuple[Any, str]:
        v = cb.candidates_view(store, subject, trial)
        return v.items, v.note

    def on_panels(subject: str, trial: Any, strength: float, brain_mode: str, brain_value: str) -> dict[Any, Any]:
        sv = pn.subjects_view(store, subject, trial, strength)
        out = {p["subjects_gallery"]: sv.items, p["subjects_table"]: sv.table, p["subjects_note"]: sv.note}
        out.update(on_brain(subject, trial, brain_mode, brain_value))
        return out

    def on_brain(subject: str, trial: Any, brain_mode: str, brain_value: str) -> dict[Any, Any]:
        bv = pn.brain_view(store, subject, trial, brain_mode, brain_value)
        return {p["brain_plot"]: _plot(bv.figure), p["brain_summary"]: bv.summary, p["brain_note"]: bv.note}

    def on_single(subject: str, trial: Any, mode: str, strength: float) -> tuple[Any, Any, str]:
        v = pn.single_trial_view(store, subject, trial, mode, strength)
        return v.blurry, v.final, v.note

    def on_download(subject: str, trial: Any, strength: float) -> str:
        data, name = pn.trial_zip(store, subject, trial, strength)
        path = downloads / name
        path.write_bytes(data)
        return str(path)

    def lab_outputs(r: pn.LabResult) -> dict[Any, Any]:
        return {p["lab_seen"]: r.seen, p["lab_blurry"]: r.blurry, p["lab_final"]: r.final,
                p["lab_candidates"]: r.candidates, p["lab_nearest"]: r.nearest, p["lab_note"]: r.note,
                p["lab_state"]: r}

    def on_lab_decode(*args: Any) -> dict[Any, Any]:
        n = len(p["lab_objects"])
        rows = [args[k:k + 5] for k in range(0, n, 5)]
        background, seed, subject, noise, reps, strength = args[n:]
        scene, _ = pn.lab_scene(store, rows, background, seed)
        return lab_outputs(pn.lab_decode(store, subject, scene, noise, reps, seed, strength))

    def on_lab_random(subject: str, noise: float, reps: int, strength: float) -> dict[Any, Any]:
        seed = random.randrange(2**31)
        scene, rows, background = pn.lab_random_scene(seed)
        out = lab_outputs(pn.lab_decode(store, subject, scene, noise, reps, seed, strength))
        out.update(dict(zip(p["lab_objects"], [v for row in rows for v in row])))
        out.update({p["lab_background"]: background, p["lab_seed"]: seed})
        return out

    def on_lab_strength(state: pn.LabResult | None, strength: float) -> tuple[Any, Any, str]:
        return pn.lab_strength(store, state, strength)

    def on_page(subject: str, page: Any, step: int) -> dict[Any, Any]:
        g = cb.gallery_page(store, subject, (int(page or 0) + step))
        return {p["gallery"]: g.items, p["page"]: g.page, p["page_label"]: g.label}

    common = dict(show_progress="minimal", concurrency_limit=BROWSE_CONCURRENCY, concurrency_id="browse")
    generate = dict(show_progress="minimal", concurrency_limit=GENERATE_CONCURRENCY, concurrency_id="generate")
    light = any(not store.subject(s).has_candidates for s in store.subjects)  # candidates generated live
    candidates = dict(fn=on_candidates, inputs=[p["subject"], p["trial"]],
                      outputs=p.pick("candidates", "candidates_note"), **(generate if light else common))
    trial_events = [
        demo.load(on_load, inputs=None, outputs=[*trial_out, *subject_out, p["subject"], p["tabs"], p["tab"],
                                                 p["link"]], api_name="load", **common),
        p["subject"].input(on_subject, [p["subject"], p["trial"], p["strength"]], [*trial_out, *subject_out],
                           api_name="subject", **common),
        p["trial"].input(on_trial, [p["subject"], p["trial"], p["strength"]], trial_out, api_name="trial",
                         trigger_mode="always_last", **common),
        p["random"].click(on_random, [p["subject"], p["strength"]], trial_out, api_name="random", **common),
        p["gallery"].select(on_gallery, [p["subject"], p["page"], p["strength"]],
                            [*trial_out, p["tabs"], p["tab"]], api_name=False, **common),
        p["umap"].click(on_umap, [p["subject"], p["strength"]], trial_out, api_name=False, **common),
    ]
    panels = dict(fn=on_panels, inputs=[p["subject"], p["trial"], p["strength"], p["brain_mode"], p["brain_value"]],
                  outputs=p.pick(*_PANEL_KEYS), **common)
    single = dict(fn=on_single, inputs=[p["subject"], p["trial"], p["mode"], p["strength"]],
                  outputs=p.pick("single_blurry", "single_final", "single_note"), **generate)
    for k, event in enumerate(trial_events):
        event.success(api_name="candidates" if k == 0 else False, **candidates)
        event.success(api_name="panels" if k == 0 else False, **panels)
        event.success(api_name=False, **single)
    p["strength"].release(on_strength, [p["subject"], p["trial"], p["strength"]],
                          p.pick("strength", "final", "note", "compare", "chart"), api_name="strength",
                          trigger_mode="always_last", **generate).success(api_name=False, **single)
    p["mode"].input(api_name="single_trial", trigger_mode="always_last", **single)
    for key in ("brain_mode", "brain_value"):
        p[key].input(on_brain, [p["subject"], p["trial"], p["brain_mode"], p["brain_value"]],
                     p.pick("brain_plot", "brain_summary", "brain_note"), api_name="brain" if key == "brain_mode" else False,
                     **common)
    p["download_btn"].click(on_download, [p["subject"], p["trial"], p["strength"]], p["download"], api_name="download",
                            **generate)
    if "lab_decode" in p.c:
        lab_in = [*p["lab_objects"], *p.pick("lab_background", "lab_seed", "lab_subject", "lab_noise", "lab_reps",
                                             "lab_strength")]
        lab_out = [*p.pick(*_LAB_KEYS)]
        p["lab_decode"].click(on_lab_decode, lab_in, lab_out, api_name="lab_decode", **generate)
        p["lab_random"].click(on_lab_random, p.pick("lab_subject", "lab_noise", "lab_reps", "lab_strength"),
                              [*lab_out, *p["lab_objects"], p["lab_background"], p["lab_seed"]], api_name="lab_random",
                              **generate)
        p["lab_strength"].release(on_lab_strength, p.pick("lab_state", "lab_strength"),
                                  p.pick("lab_final", "lab_candidates", "lab_note"), api_name="lab_strength",
                                  trigger_mode="always_last", **generate)
    for key, step in (("prev", -1), ("next", 1), ("page", 0)):
        event = p[key].submit if key == "page" else p[key].click
        event(lambda s, pg, _step=step: on_page(s, pg, _step), [p["subject"], p["page"]],
              p.pick("gallery", "page", "page_label"), api_name=False, **common)
    for tab_id, item in p["tab_items"].items():
        item.select(lambda _t=tab_id: _t, None, p["tab"], api_name=False, queue=False)
    p["copy"].click(cb.link_query, [p["subject"], p["trial"], p["strength"], p["tab"]], p["link"],
                    api_name="link", queue=False).then(None, p["link"], p["link"], js=_COPY_JS)


def build_demo(store: ExplorerStore) -> gr.Blocks:
    """The explorer for ``store``: controls, the tabs of :data:`app.callbacks.TABS`, deep links; a banner only
    when nothing is loaded. Trial downloads are written to a fresh temporary folder (one per page build)."""
    with gr.Blocks(title="MindEye Explorer", analytics_enabled=False) as demo:
        gr.Markdown("# MindEye Explorer\nfMRI → image reconstruction and retrieval "
                    "(Scotti et al., NeurIPS 2023), browsed from a results bundle.")
        gr.Markdown(cb.status_markdown(store), elem_id="status")
        if not store.ready:
            return demo
        p = _Page()
        _controls(p, store)
        p["tab"] = gr.State(cb.TABS[0])
        p["tab_items"] = {}
        with gr.Tabs(selected=cb.TABS[0]) as tabs:
            p["tabs"] = tabs
            for tab_id in cb.TABS:
                with gr.Tab(TAB_TITLES[tab_id], id=tab_id, elem_id=f"tab-{tab_id}") as item:
                    TAB_BUILDERS[tab_id](p, store)
                p["tab_items"][tab_id] = item
        _wire(p, store, demo, Path(tempfile.mkdtemp(prefix="mindeye-downloads-")))
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=BROWSE_CONCURRENCY)
    return demo


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tests and tools that launch the app)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``Blocks.launch`` every start needs: CSS, the plotly.js file, no SSR."""
    return {"css_paths": [STATIC / "app.css"], "allowed_paths": [str(plotly_js_path())], "ssr_mode": False,
            "footer_links": ["api"]}


def launch_app(store: ExplorerStore, *, host: str = "127.0.0.1", port: int | None = None,
               block: bool = True, quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Build and start the explorer; returns ``(demo, local_url)``. ``block=False`` returns at once
    (stop it with ``demo.close()``)."""
    demo = build_demo(store)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                            **launch_kwargs())
    if block:
        demo.block_thread()
    return demo, url
