"""Screenshots of the explorer for the docs, in a headless Debian chromium driven by Playwright.

    python -m app.screenshots --out docs/img                  # the shipped demo bundle
    python -m app.screenshots --results PATH --out docs/img   # any bundle

Writes ``app_trial.png``, ``app_umap.png``, ``app_retrieval.png``, ``app_metrics.png``, ``app_subjects.png``,
``app_brain.png`` and ``app_lab.png`` (after one live decode of the lab's default scene). Needs
``playwright`` (PyPI) and the system's chromium (``apt-get install chromium``); never downloads a browser.
:func:`launch_browser` is shared with the end-to-end tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "browser_problem", "launch_browser", "main", "take_screenshots"]

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (``apt-get install chromium``)."""
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run")
SHOTS = {"trial": "app_trial.png", "umap": "app_umap.png", "retrieval": "app_retrieval.png",
         "metrics": "app_metrics.png", "subjects": "app_subjects.png", "brain": "app_brain.png", "lab": "app_lab.png"}
LIVE_MS = 300_000
"""Upper bound of a wait for one live decode (the lab) on a loaded CPU."""


def browser_problem(executable: str = CHROMIUM) -> str | None:
    """Why the browser cannot run here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1)"
    if not Path(executable).is_file() and not shutil.which(executable):
        return f"no chromium at {executable} (apt-get install chromium)"
    return None


def launch_browser(playwright: Any, executable: str = CHROMIUM) -> Any:
    """Headless chromium from ``executable`` with the flags that make it run as root in a container."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    return playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))


def take_screenshots(url: str, out: str | Path, *, subject: str | None = None, trial: int = 0,
                     strength: float | None = None, width: int = 1400,
                     tabs: Sequence[str] | None = None) -> list[Path]:
    """Open one deep link per tab of the app at ``url`` (``tabs``: a subset of :data:`SHOTS`, default all) and
    save a full-page screenshot of each."""
    from playwright.sync_api import expect, sync_playwright

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": 2000})  # tall: lazy images load
            for tab, name in SHOTS.items():
                if tabs is not None and tab not in tabs:
                    continue
                query = [f"trial={trial}", f"tab={tab}"]
                if subject:
                    query.append(f"subject={subject}")
                if strength is not None:
                    query.append(f"strength={strength:g}")
                page.goto(url.rstrip("/") + "/?" + "&".join(query))
                expect(page.locator("#trial-header")).to_contain_text(f"trial {trial}", timeout=60_000)
                if tab == "umap":
                    expect(page.locator("#umap .point").first).to_be_visible(timeout=30_000)
                if tab == "metrics":
                    expect(page.locator("#chart .main-svg").first).to_be_visible(timeout=30_000)
                if tab == "brain":
                    expect(page.locator("#brain-plot .main-svg").first).to_be_visible(timeout=30_000)
                if tab == "subjects":
                    expect(page.locator("#subjects-table")).to_contain_text("subj", timeout=30_000)
                if tab == "lab" and page.locator("#lab-decode").count():
                    page.locator("#lab-decode").click()
                    expect(page.locator("#lab-note")).to_contain_text("Scene → reconstruction", timeout=LIVE_MS)
                    expect(page.locator("#lab-final img")).to_have_count(1, timeout=30_000)
                expect(page.locator("#final img")).to_have_count(1, timeout=30_000)
                if tab == "trial":  # the live parts: candidates of a light bundle, the single-trial decode
                    expect(page.locator("#candidates img").first).to_be_visible(timeout=LIVE_MS)
                    expect(page.locator("#single-final img")).to_have_count(1, timeout=LIVE_MS)
                page.wait_for_function("() => Array.from(document.images).filter(i => i.offsetParent !== null "
                                       "&& i.getAttribute('src')).every(i => i.complete && i.naturalWidth > 0)",
                                       timeout=60_000)  # loaded, not broken
                page.set_viewport_size({"width": width, "height": 800})  # full_page then takes the content height
                path = out / name
                page.screenshot(path=str(path), full_page=True)
                page.set_viewport_size({"width": width, "height": 2000})
                paths.append(path)
        finally:
            browser.close()
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=None, help="bundle folder or Hub repo id (default: the demo bundle)")
    parser.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    parser.add_argument("--subject", default=None)
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--tabs", nargs="+", choices=list(SHOTS), default=None, help="only these tabs (default all)")
    args = parser.parse_args(argv)
    problem = browser_problem()
    if problem:
        raise SystemExit(f"cannot take screenshots: {problem}")
    from .layout import build_demo, free_port, launch_kwargs
    from .store import ExplorerStore

    store = ExplorerStore.open(args.results)
    demo = build_demo(store)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    try:
        if not store.ready:
            print(f"no bundle ({store.problem}); nothing to screenshot")
            return 1
        for path in take_screenshots(url, args.out, subject=args.subject, trial=args.trial, strength=args.strength,
                                     tabs=args.tabs):
            print(path)
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
