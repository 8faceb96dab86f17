"""The explorer's Blocks: components, tabs and event wiring; the logic lives in :mod:`app.callbacks`.

:func:`build_demo` builds the page for one :class:`~app.store.ExplorerStore`; :func:`launch_kwargs`
gives what ``Blocks.launch`` needs (CSS, the plotly.js file it may serve); :func:`launch_app` does both
and starts the server. Tabs are added by one ``_*_tab`` function each, so new panels slot in beside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402

from . import callbacks as cb  # noqa: E402
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
              "metrics": "Metrics"}
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
        p["umap"]: v.umap,
    })
    return out


def _subject_outputs(p: _Page, v: cb.SubjectView) -> dict[Any, Any]:
    return {p["table1"]: v.table1, p["table5"]: v.table5, p["gallery"]: v.gallery.items,
            p["page"]: v.gallery.page, p["page_label"]: v.gallery.label,
            p["trial_max"]: f"{v.subject}: trials 0 to {v.n_trials - 1}"}


_TRIAL_KEYS = ("trial", "header", "seen", "blurry", "final", "note", "compare", "chart", "strength",
               "ridge_blurry", "ridge_final", "ridge_final_me", "ridge_note", "retrieval_summary",
               "image_retrieval", "brain_retrieval", "umap")
_SUBJECT_KEYS = ("table1", "table5", "gallery", "page", "page_label", "trial_max")


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


TAB_BUILDERS: dict[str, Callable[..., None]] = {"trial": lambda p, s: _trial_tab(p),
                                                "browse": lambda p, s: _browse_tab(p),
                                                "retrieval": lambda p, s: _retrieval_tab(p),
                                                "umap": _umap_tab,
                                                "metrics": lambda p, s: _metrics_tab(p)}


# ------------------------------------------------------------------------------------ wiring
def _wire(p: _Page, store: ExplorerStore, demo: gr.Blocks) -> None:
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
    for k, event in enumerate(trial_events):
        event.success(api_name="candidates" if k == 0 else False, **candidates)
    p["strength"].release(on_strength, [p["subject"], p["trial"], p["strength"]],
                          p.pick("strength", "final", "note", "compare", "chart"), api_name="strength",
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
    """The explorer for ``store``: controls, five tabs, deep links; a banner only when nothing is loaded."""
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
        _wire(p, store, demo)
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
