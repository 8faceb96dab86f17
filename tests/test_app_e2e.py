"""The explorer in a real browser: Debian's chromium driven by Playwright (never a browser download).

One app (a tiny test bundle, live generation on) is served on 127.0.0.1 for the whole module; each test
drives a fresh page. Skipped, with the reason, when playwright or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("gradio")

from app.screenshots import browser_problem, launch_browser  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))]

from test_app import save_test_brains, write_test_bundle  # noqa: E402

TIMEOUT = 30_000  # ms: upper bound of a wait for content (expect polls; nothing here depends on timing)
LIVE_TIMEOUT = 180_000  # ms: upper bound of a wait for a live decode on a loaded 2-core machine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("e2e_bundle") / "results")


@pytest.fixture(scope="module")
def app_url(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from app.layout import build_demo, free_port, launch_kwargs
    from app.store import ExplorerStore

    store = ExplorerStore.open(bundle, brain_root=save_test_brains(tmp_path_factory.mktemp("e2e_brains")))
    assert store.live, store.live_problem
    demo = build_demo(store)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    try:
        yield url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_browser(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _png(page: Any, selector: str) -> np.ndarray:
    """Pixels of the image element at ``selector`` (fetched from the app, decoded)."""
    from PIL import Image

    src = page.locator(selector).first.get_attribute("src")
    body = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _wait_header(page: Any, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#trial-header")).to_contain_text(text, timeout=TIMEOUT)


def test_browse_subject_trial_slider_and_umap(page: Any, app_url: str, bundle: Path) -> None:
    from playwright.sync_api import expect

    from mindeye_core.results import open_results

    reader = open_results(bundle)
    page.goto(app_url + "/")
    _wait_header(page, "subj01 · trial 0")

    # pick a subject
    page.locator("#subject input").click()
    page.get_by_role("option", name="subj02").click()
    _wait_header(page, "subj02 · trial 0")

    # pick a trial: the seen, blurry and final images are the bundle's pixels
    page.locator("#trial input").fill("5")
    page.locator("#trial input").press("Enter")
    _wait_header(page, "subj02 · trial 5")
    s = reader.subject("subj02")
    expect(page.locator("#seen img")).to_have_count(1, timeout=TIMEOUT)
    np.testing.assert_array_equal(_png(page, "#seen img"), s.ground_truth(5))
    np.testing.assert_array_equal(_png(page, "#blurry img"), s.blurry(5))
    np.testing.assert_array_equal(_png(page, "#final img"), s.finals(0.15, 5))
    expect(page.locator("#candidates")).to_contain_text("✓ picked", timeout=TIMEOUT)
    expect(page.locator("#compare img")).to_have_count(2, timeout=TIMEOUT)  # seen | final before/after slider
    np.testing.assert_array_equal(_png(page, "#compare img"), s.ground_truth(5))
    expect(page.locator("#ridge-final img")).to_have_count(1, timeout=TIMEOUT)

    # move the slider (its number box, released by leaving it): on the grid -> precomputed
    box = page.locator("#strength input[type=number]")
    box.fill("0.3")
    box.press("Tab")
    expect(page.locator("#strength-note")).to_contain_text("Strength 0.3: precomputed", timeout=TIMEOUT)
    np.testing.assert_array_equal(_png(page, "#final img"), s.finals(0.3, 5))
    # off the grid -> generated live with the trial's seed
    box.fill("0.42")
    box.press("Tab")
    live_note = re.compile(r"Strength 0.42 \(off the grid\): candidate \d \(picked at 0.15\) generated live")
    expect(page.locator("#strength-note")).to_contain_text(live_note, timeout=TIMEOUT)
    expect(page.locator("#strength-note")).to_contain_text(f"seed {int(s.seeds()[5])}")

    # retrieval tab: both directions, named
    page.get_by_role("tab", name="Retrieval").click()
    expect(page.locator("#retrieval-summary")).to_contain_text("brain → image", timeout=TIMEOUT)
    expect(page.locator("#image-retrieval")).to_contain_text("cos ", timeout=TIMEOUT)
    expect(page.locator("#brain-retrieval")).to_contain_text("cos ", timeout=TIMEOUT)

    # UMAP: four panels of 12 points + the current trial starred; clicking point 7 opens trial 7
    page.get_by_role("tab", name="UMAP").click()
    expect(page.locator("#umap .point")).to_have_count(4 * 12 + 4, timeout=TIMEOUT)
    expect(page.locator("#umap [data-trial='5']")).to_have_count(1)
    page.locator("#umap .scatterlayer .trace").first.locator(".point").nth(2).hover(force=True)
    expect(page.locator("#umap .umap-hover span")).to_have_text("subj02 · trial 2", timeout=TIMEOUT)
    expect(page.locator("#umap .umap-hover img")).to_have_attribute("src", re.compile("^data:image/png;base64,"),
                                                                   timeout=TIMEOUT)
    np.testing.assert_array_equal(_png(page, "#umap .umap-hover img"), s.ground_truth(2))
    # plotly reports a click on the point it currently hovers: hover point 7 first, then click it
    point7 = page.locator("#umap .scatterlayer .trace").first.locator(".point").nth(7)
    point7.hover(force=True)
    expect(page.locator("#umap .umap-hover span")).to_have_text("subj02 · trial 7", timeout=TIMEOUT)
    point7.click(force=True)
    _wait_header(page, "subj02 · trial 7")
    expect(page.locator("#umap [data-trial='7']")).to_have_count(1, timeout=TIMEOUT)
    expect(page.locator("#trial input")).to_have_value("7")

    # copy link gives the current view
    page.locator("#copy-link").click()
    expect(page.locator("#link input, #link textarea").first).to_have_value(
        f"{app_url}/?subject=subj02&trial=7&strength=0.42&tab=umap", timeout=TIMEOUT)


def test_gallery_click_and_random_trial(page: Any, app_url: str) -> None:
    from playwright.sync_api import expect

    page.goto(app_url + "/?subject=subj01&trial=0&tab=browse")
    _wait_header(page, "subj01 · trial 0")
    expect(page.locator("#gallery")).to_contain_text("trial 11", timeout=TIMEOUT)
    page.locator("#gallery").get_by_role("button", name="Thumbnail 10 of 12").click()
    _wait_header(page, "subj01 · trial 9")
    expect(page.get_by_role("tab", name="Trial")).to_have_attribute("aria-selected", "true", timeout=TIMEOUT)
    page.locator("#random").click()
    # the trial box and the header update in two events: poll (bounded) until they agree
    import time

    deadline = time.monotonic() + TIMEOUT / 1000
    while True:
        value = page.locator("#trial input").input_value()
        header = page.locator("#trial-header").inner_text()
        if value.isdigit() and re.search(rf"subj01 · trial {int(value)}\b", header):
            break
        assert time.monotonic() < deadline, f"trial box {value!r} and header {header!r} never agreed"
        page.wait_for_timeout(200)
    assert 0 <= int(value) < 12


def test_deep_link_restores_the_view(page: Any, app_url: str, bundle: Path) -> None:
    from playwright.sync_api import expect

    page.goto(app_url + "/?subject=subj02&trial=3&strength=0.7&tab=metrics")
    _wait_header(page, "subj02 · trial 3")
    expect(page.get_by_role("tab", name="Metrics")).to_have_attribute("aria-selected", "true", timeout=TIMEOUT)
    expect(page.locator("#strength input[type=number]")).to_have_value("0.7")
    expect(page.locator("#table1")).to_contain_text("MindEye (subj02, strength 0.15)", timeout=TIMEOUT)
    expect(page.locator("#table1")).to_contain_text("paper Table 1")
    expect(page.locator("#table5")).to_contain_text("MindEye subj02 0.7")
    expect(page.locator("#chart .main-svg").first).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#chart .shapelayer path")).to_have_count(8, timeout=TIMEOUT)  # the strength marker
    page.get_by_role("tab", name="Trial").click()
    from mindeye_core.results import open_results

    np.testing.assert_array_equal(_png(page, "#final img"), open_results(bundle).subject("subj02").finals(0.7, 3))


def test_bad_deep_link_warns_and_falls_back(page: Any, app_url: str) -> None:
    from playwright.sync_api import expect

    page.goto(app_url + "/?subject=subj99&trial=2")
    _wait_header(page, "subj01 · trial 2")
    expect(page.get_by_text("link names subject 'subj99'").first).to_be_visible(timeout=TIMEOUT)


def test_missing_bundle_page_says_how_to_build_it(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from app.layout import build_demo, launch_kwargs
    from app.store import ExplorerStore

    demo = build_demo(ExplorerStore.open(tmp_path / "no-bundle"))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    try:
        page.goto(url)
        expect(page.locator("#status")).to_contain_text("Nothing to show yet", timeout=TIMEOUT)
        expect(page.locator("#status")).to_contain_text("mindeye build-demo")
        expect(page.locator("#status")).to_contain_text(str(tmp_path / "no-bundle"))
    finally:
        demo.close()


# ------------------------------------------------------------------------------------ issue 13 panels
@pytest.fixture(scope="module")
def panels_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The app on a bundle of a tiny generated demo world, the world beside it (brain view, single trials,
    lab), tiny brain models with a low-level model; yields ``(url, store)``."""
    from test_app_panels import make_bundle, make_store, make_world

    from app.layout import build_demo, free_port, launch_kwargs

    folder = tmp_path_factory.mktemp("e2e_panels")
    world = make_world(folder)
    store = make_store(world, make_bundle(world, folder), folder)
    demo = build_demo(store)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    try:
        yield url.rstrip("/"), store
    finally:
        demo.close()


def test_subjects_side_by_side_and_brain_view(page: Any, panels_app: tuple[str, Any]) -> None:
    from playwright.sync_api import expect

    url, store = panels_app
    page.goto(url + "/?subject=subj02&trial=4&tab=subjects")
    _wait_header(page, "subj02 · trial 4")
    gallery = page.locator("#subjects-gallery")
    for name in ("subj01", "subj02"):
        expect(gallery).to_contain_text(f"{name} · MindEye final 0.15", timeout=TIMEOUT)
        expect(gallery).to_contain_text(f"{name} · ridge final")
    expect(page.locator("#subjects-table")).to_contain_text("subj01", timeout=TIMEOUT)
    expect(page.locator("#subjects-note")).to_contain_text("shared by 2 of 2 subjects")

    page.get_by_role("tab", name="Brain view").click()
    table = store.world_data.voxel_tables["subj02"]
    n_early = int((table["area"] < 4).sum())
    expect(page.locator("#brain-plot .scatterlayer .point")).to_have_count(n_early, timeout=TIMEOUT)
    expect(page.locator("#brain-plot")).to_contain_text("LO / VO / PPA")
    page.locator("#brain-plot .scatterlayer .trace").first.locator(".point").first.hover(force=True)
    hover = page.locator("#brain-plot .hoverlayer .hovertext")
    expect(hover).to_contain_text("V1", timeout=TIMEOUT)
    expect(hover).to_contain_text("pRF centre")
    expect(hover).to_contain_text("beta")
    page.locator("#brain-value label", has_text="noise ceiling").click()
    expect(page.locator("#brain-note")).to_contain_text("noise ceiling of each voxel", timeout=TIMEOUT)
    expect(page.locator("#brain-plot .colorbar")).to_contain_text("NC %", timeout=TIMEOUT)
    page.locator("#brain-mode label", has_text="trial 2").click()
    page.locator("#brain-value label", has_text="beta").click()
    expect(page.locator("#brain-note")).to_contain_text("single trial 2 of 3", timeout=TIMEOUT)


def test_single_trial_toggle_and_download(page: Any, panels_app: tuple[str, Any]) -> None:
    import zipfile

    import torch
    from playwright.sync_api import expect

    url, store = panels_app
    page.goto(url + "/?subject=subj01&trial=6")
    _wait_header(page, "subj01 · trial 6")
    expect(page.locator("#single-note")).to_contain_text("3-trial average", timeout=TIMEOUT)
    page.locator("#trial-mode label", has_text="trial 2").click()
    expect(page.locator("#single-note")).to_contain_text("single trial 2 of 3", timeout=LIVE_TIMEOUT)
    cache = store.subject("subj01")
    betas = store.world_data.single_trials("subj01", int(cache.reader.image_index()[6]))[1]
    out = store.reconstructors["subj01"].reconstruct(torch.from_numpy(betas)[None], [int(cache.seeds[6])],
                                                     strengths=[0.15])
    want = (out.finals[0.15][0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(_png(page, "#single-final img"), want)

    page.locator("#download-btn").click()
    link = page.locator("#download a").first
    expect(link).to_have_attribute("href", re.compile("mindeye_subj01_trial6_s0.15.zip"), timeout=TIMEOUT)
    href = link.get_attribute("href")
    body = page.request.get(href if href.startswith("http") else url + "/" + href.lstrip("/")).body()
    z = zipfile.ZipFile(io.BytesIO(body))
    assert {"seen.png", "blurry.png", "final_0.15.png", "candidates.png", "trial.json"} <= set(z.namelist())


def test_decoding_lab(page: Any, panels_app: tuple[str, Any]) -> None:
    from playwright.sync_api import expect

    from app import panels as pn

    url, store = panels_app
    page.goto(url + "/?tab=lab")
    _wait_header(page, "subj01 · trial 0")
    page.locator("#lab-shape-0 input").click()
    page.get_by_role("option", name="heart").click()
    page.locator("#lab-decode").click()
    note = page.locator("#lab-note")
    expect(note).to_contain_text("a large red heart at the center", timeout=LIVE_TIMEOUT)
    expect(note).to_contain_text("Scene → reconstruction in")
    scene, _ = pn.lab_scene(store, [[True, "heart", "red", "large", "center"], [False] + [None] * 4,
                                    [False] + [None] * 4], "green ground", 1)
    want = pn.lab_decode(store, "subj01", scene, 1.0, 3, 1, 0.15)
    np.testing.assert_array_equal(_png(page, "#lab-seen img"), want.seen)
    np.testing.assert_array_equal(_png(page, "#lab-final img"), want.final)
    expect(page.locator("#lab-candidates")).to_contain_text("✓ picked", timeout=TIMEOUT)
    expect(page.locator("#lab-nearest")).to_contain_text("cos ", timeout=TIMEOUT)
    box = page.locator("#lab-strength input[type=number]")
    box.fill("0.5")
    box.press("Tab")
    expect(note).to_contain_text("Strength 0.5: best of 3", timeout=LIVE_TIMEOUT)
    page.locator("#lab-random").click()
    expect(note).not_to_contain_text("a large red heart at the center", timeout=LIVE_TIMEOUT)
    expect(note).to_contain_text("Scene → reconstruction in", timeout=LIVE_TIMEOUT)
    seed = page.locator("#lab-seed input").input_value()
    assert seed.isdigit() and f"seed {seed}" in note.inner_text()
