"""Latency, start-up and memory of the explorer app, end to end through ``gradio_client`` on 127.0.0.1.

Starts ``python -m app`` as a separate process on a bundle and measures (issue 12's targets on 2 CPU cores),
through Gradio's HTTP API read as events arrive (and once through ``gradio_client``, which polls its
messages every 50 ms):

* cold start: process start -> the page is served, -> the first trial view answered (target <= 15 s), and
  -> live generation ready (its models load in the background while the page is served);
* slider -> new image, precomputed grid strength (p95 <= 150 ms) and generated live (p95 <= 1 s), each
  including the download of the new final image;
* trial change -> full page update (p95 <= 1 s);
* the server's resident memory with every subject loaded (<= 2 GB);
* issue 13: decoding lab, new scene -> reconstruction (respond + reconstruct + retrieval, p50 / p95, target
  <= 2 s on 2 CPU cores), and the single-trial toggle (one single trial decoded live, p95), each with the
  server's CPU seconds per request (wall time on an idle 2-core machine is at least CPU / 2); they need the
  demo world beside the bundle (``$MINDEYE_DEMO_WORLD`` or ``$MINDEYE_DATA/demo``);
* load: ``--clients`` concurrent sessions browsing (trial changes, grid slider moves) for ``--seconds``:
  errors and latencies.

    python benchmarks/bench_app.py                          # assets/demo_results (+ assets/demo_brain)
    python benchmarks/bench_app.py --results PATH
    python benchmarks/bench_app.py --synthetic [--light]    # a synthetic 4-subject bundle (600 x 4 candidates)
    python benchmarks/bench_app.py --quick                  # 10 interactions, 4 clients for 10 s

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def _synthetic(folder: Path, light: bool) -> tuple[Path, Path]:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from test_app import save_test_brains, write_test_bundle  # the tests' bundle writer, at demo scale

    subjects = ("subj01", "subj02", "subj05", "subj07")
    t0 = time.perf_counter()
    root = write_test_bundle(folder / "results", subjects=subjects, n=600, k=4, steps=10, light=light)
    brains = save_test_brains(folder / "brains", subjects)
    print(f"synthetic {'light ' if light else ''}bundle: 4 subjects x 600 samples x 4 candidates, 10 steps, "
          f"written in {time.perf_counter() - t0:.1f} s")
    return root, brains


def _serve(results: Path, brains: Path | None, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    if brains is not None:
        env["MINDEYE_DEMO_BRAIN"] = str(brains)
    return subprocess.Popen([sys.executable, "-m", "app", "--results", str(results), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_page(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the app did not serve {url} within {timeout} s")


def _rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


class Session:
    """One browsing user: a gradio_client session plus an HTTP client for the images."""

    def __init__(self, url: str) -> None:
        import httpx
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False)
        self.http = httpx.Client(timeout=60.0)

    def _fetch(self, image: Any) -> None:
        if isinstance(image, dict) and image.get("url"):
            self.http.get(image["url"]).raise_for_status()

    def trial(self, subject: str, trial: int, strength: float) -> list[Any]:
        out = self.client.predict(subject, trial, strength, api_name="/trial")
        for img in out[2:5]:  # seen, blurry, final
            self._fetch(img)
        return out

    def strength(self, subject: str, trial: int, strength: float) -> list[Any]:
        out = self.client.predict(subject, trial, strength, api_name="/strength")
        self._fetch(out[1])
        return out


def _wait_live(session: Session, subject: str, timeout: float) -> bool:
    """Poll an off-grid slider move until it is generated live (the models load in the background)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        note = str(session.strength(subject, 0, 0.42)[2])
        if "generated live" in note:
            return True
        if "still loading" not in note:
            print(f"live generation is off: {note}")
            return False
        time.sleep(0.5)
    return False


class RawSession(Session):
    """Gradio's documented HTTP API (``POST /gradio_api/call/<name>`` then its event stream), read as events
    arrive: what the app adds to a request, without gradio_client's 50 ms message polling."""

    def __init__(self, url: str) -> None:  # noqa: D107 (no gradio_client session)
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=60.0)

    def _call(self, api: str, data: list[Any]) -> list[Any]:
        r = self.http.post(f"{self.url}/gradio_api/call/{api}", json={"data": data})
        r.raise_for_status()
        event = None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{api}/{r.json()['event_id']}") as resp:
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(f"{api}: {line[5:].strip()}")
                    return list(json.loads(line[5:]))
        raise RuntimeError(f"{api}: the event stream ended without a result")

    def trial(self, subject: str, trial: int, strength: float) -> list[Any]:
        out = self._call("trial", [subject, trial, strength])
        for img in out[2:5]:
            self._fetch(img)
        return out

    def strength(self, subject: str, trial: int, strength: float) -> list[Any]:
        out = self._call("strength", [subject, trial, strength])
        self._fetch(out[1])
        return out

    def candidates(self, subject: str, trial: int) -> list[Any]:
        out = self._call("candidates", [subject, trial])
        for item in out[0] or []:
            self._fetch(item.get("image") if isinstance(item, dict) else None)
        return out

    def lab(self, subject: str, objects: list[list[Any]], background: str, seed: int, strength: float) -> list[Any]:
        """Decoding lab: compose -> respond -> reconstruct (noise 1, 3 repetitions); fetches the three images."""
        flat = [v for row in objects for v in row]
        out = self._call("lab_decode", [*flat, background, seed, subject, 1.0, 3, strength])
        for img in out[:3]:  # seen, blurry, final
            self._fetch(img)
        return out

    def single_trial(self, subject: str, trial: int, mode: str, strength: float) -> list[Any]:
        out = self._call("single_trial", [subject, trial, mode, strength])
        self._fetch(out[1])
        return out


def _lab_scene(rng: random.Random) -> tuple[list[list[Any]], str]:
    """1-3 random objects in distinct cells (the lab's rows: use, shape, colour, size, position), a background."""
    from mindeye_core.data.demo import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, POSITIONS, SIZE_NAMES

    cells = rng.sample(list(POSITIONS), 3)
    k = rng.randint(1, 3)
    rows = [[j < k, rng.choice(CATEGORIES), rng.choice(COLOUR_NAMES), rng.choice(SIZE_NAMES), cells[j]] for j in range(3)]
    return rows, rng.choice(BACKGROUNDS)


def _time_cpu(fn: Callable[[], Any], n: int, pid: int) -> tuple[list[float], list[float]]:
    """Wall seconds and the server's CPU seconds (user + system) of ``n`` calls."""
    import psutil

    proc = psutil.Process(pid)
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(sum(proc.cpu_times()[:2]) - c0)
    return wall, cpu


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _load(url: str, subjects: list[str], n_trials: int, stored: list[float], clients: int,
          seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def user(k: int) -> None:
        rng = random.Random(k)
        try:
            s = Session(url)
        except Exception as exc:  # a benchmark reports every failure instead of stopping  # noqa: BLE001
            with lock:
                errors.append(f"connect: {exc!r}")
            return
        while time.monotonic() < stop:
            subject, trial = rng.choice(subjects), rng.randrange(n_trials)
            t0 = time.perf_counter()
            try:
                r = rng.random()
                if r < 0.5:
                    s.trial(subject, trial, 0.15)
                elif r < 0.85:
                    s.strength(subject, trial, rng.choice(stored))
                else:
                    s.strength(subject, trial, round(rng.uniform(0.01, 0.99), 2))
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50, p95 = _pct(lat) if lat else (float("nan"), float("nan"))
    return {"clients": clients, "seconds": seconds, "requests": len(lat), "errors": len(errors),
            "error_examples": errors[:3], "p50_ms": p50, "p95_ms": p95}


def _measure_lab(session: RawSession, pid: int, subjects: list[str], n_trials: int, rng: random.Random,
                 args: argparse.Namespace, rows: dict[str, Any]) -> None:
    """Lab scene -> reconstruction and the single-trial toggle (issue 13), or why they are unavailable."""
    import httpx

    try:  # the first call waits for the subject's forward model if the background start-up has not built it
        t0 = time.perf_counter()
        session.lab(subjects[0], *_lab_scene(rng), 0, 0.15)
        rows["lab_first_s"] = time.perf_counter() - t0
    except (RuntimeError, httpx.HTTPError) as exc:  # no lab on this bundle (no demo world beside it)
        rows["lab_problem"] = str(exc)[:300]
        return

    def lab() -> None:
        session.lab(rng.choice(subjects), *_lab_scene(rng), rng.randrange(2**31), 0.15)

    wall, cpu = _time_cpu(lab, args.n_lab, pid)
    rows["lab"], rows["lab_cpu_s"] = _pct(wall), [x / 1000 for x in _pct(cpu)]
    modes = ["trial 1", "trial 2", "trial 3"]

    def toggle() -> None:
        session.single_trial(rng.choice(subjects), rng.randrange(n_trials), rng.choice(modes), 0.15)

    wall, cpu = _time_cpu(toggle, args.n_lab, pid)
    rows["toggle"], rows["toggle_cpu_s"] = _pct(wall), [x / 1000 for x in _pct(cpu)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=None, help="bundle folder (default assets/demo_results)")
    ap.add_argument("--brains", default=None, help="brain models folder (default assets/demo_brain)")
    ap.add_argument("--synthetic", action="store_true", help="benchmark a synthetic 4-subject bundle")
    ap.add_argument("--light", action="store_true", help="with --synthetic: a light bundle like the demo build's "
                                                         "(no candidates / prior samples; voxels)")
    ap.add_argument("--n", type=int, default=50, help="interactions per measurement")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    ap.add_argument("--live-timeout", type=float, default=300.0, help="seconds to wait for the live models")
    ap.add_argument("--n-lab", type=int, default=20, help="lab decodes and single-trial toggles measured")
    ap.add_argument("--no-lab", action="store_true", help="skip the decoding lab and single-trial measures")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.clients, args.seconds, args.n_lab = 10, 4, 10.0, 5

    tmp = tempfile.TemporaryDirectory(prefix="bench_app_")
    if args.synthetic:
        results, brains = _synthetic(Path(tmp.name), args.light)
        label = "synthetic light bundle" if args.light else "synthetic bundle"
    else:
        results = Path(args.results) if args.results else REPO / "assets" / "demo_results"
        brains = Path(args.brains) if args.brains else None
        if not (results / "manifest.json").is_file():
            raise SystemExit(f"no results bundle at {results}: build it with `mindeye build-demo`, or pass "
                             "--results PATH or --synthetic")
        label = str(results)

    from mindeye_core.results import open_results

    bundle = open_results(results)
    subjects = bundle.subjects
    n_trials = min(bundle.subject(s).n_samples for s in subjects)
    stored = sorted(set.intersection(*[set(bundle.subject(s).stored_strengths) for s in subjects]))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    proc = _serve(results, brains, port, args.threads)
    rows: dict[str, Any] = {"bundle": label, "subjects": subjects, "n_trials": n_trials, "stored_strengths": stored}
    try:
        _wait_page(url, proc)
        rows["start_page_s"] = time.perf_counter() - t0
        session = RawSession(url)
        session.trial(subjects[0], 0, 0.15)
        rows["start_first_view_s"] = time.perf_counter() - t0
        rows["live"] = _wait_live(session, subjects[0], args.live_timeout)
        rows["start_live_ready_s"] = time.perf_counter() - t0
        rng = random.Random(0)

        def pick() -> tuple[str, int]:
            return rng.choice(subjects), rng.randrange(n_trials)

        rows["slider_precomputed"] = _pct(_time(lambda: session.strength(*pick(), rng.choice(stored)), args.n))

        def off_grid() -> float:  # a strength whose final the bundle does not store
            while (s := round(rng.uniform(0.01, 0.99), 2)) in stored:
                pass
            return s

        if rows["live"]:
            rows["slider_live"] = _pct(_time(lambda: session.strength(*pick(), off_grid()), args.n))
            one = pick()  # moving the slider again on the same trial: its prior samples are memoised
            session.strength(*one, off_grid())
            rows["slider_live_same_trial"] = _pct(_time(lambda: session.strength(*one, off_grid()), args.n))
        rows["trial_change"] = _pct(_time(lambda: session.trial(*pick(), 0.15), args.n))
        client = Session(url)  # the same through gradio_client, whose message loop polls every 50 ms
        rows["slider_precomputed_gradio_client"] = _pct(_time(lambda: client.strength(*pick(), rng.choice(stored)),
                                                              args.n))
        if rows["live"]:
            rows["candidates"] = _pct(_time(lambda: session.candidates(*pick()), args.n))
        if rows["live"] and not args.no_lab:
            _measure_lab(session, proc.pid, subjects, n_trials, rng, args, rows)
        rows["memory_mb"] = _rss_mb(proc.pid)
        rows["load"] = _load(url, subjects, n_trials, stored, args.clients, args.seconds)
        rows["memory_after_load_mb"] = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()

    def fmt(key: str, target: float | None) -> str:
        goal = "—" if target is None else f"≤ {target:g} ms"
        if key not in rows:
            return f"| {key} | — | — | {goal} | live generation off |"
        p50, p95 = rows[key]
        verdict = "" if target is None else ("ok" if p95 <= target else "MISSED")
        return f"| {key} | {p50:.0f} ms | {p95:.0f} ms | {goal} | {verdict} |"

    load = os.getloadavg()[0]
    print(f"\nExplorer app, {label}: {len(subjects)} subjects x {n_trials} trials (finals stored at "
          f"{', '.join(f'{x:g}' for x in stored)}), {args.n} interactions each, server with {args.threads} torch "
          f"threads ({os.cpu_count()} CPUs visible, load average {load:.1f} at the end)\n")
    print("| measure | p50 | p95 | target (p95) | |\n|---|---|---|---|---|")
    print(fmt("slider_precomputed", 150))
    print(fmt("slider_live", 1000) + " first move on a trial (a light bundle's prior samples are drawn again)")
    if "slider_live_same_trial" in rows:
        print(fmt("slider_live_same_trial", 1000) + " later moves on the same trial")
    print(fmt("trial_change", 1000))
    print(fmt("slider_precomputed_gradio_client", 150))
    print(fmt("candidates", None))  # all K regenerated when the bundle stores none (a chained event)
    if "lab" in rows:
        print(fmt("lab", 2000) + f" (server CPU per decode: p50 {rows['lab_cpu_s'][0]:.2f} s, p95 "
              f"{rows['lab_cpu_s'][1]:.2f} s)")
        print(fmt("toggle", None) + f" single trial decoded live (server CPU p50 {rows['toggle_cpu_s'][0]:.2f} s, "
              f"p95 {rows['toggle_cpu_s'][1]:.2f} s)")
        print(f"| lab: first decode (forward model ready?) | {rows['lab_first_s']:.1f} s | | | |")
    else:
        print(f"| lab / single-trial toggle | — | — | ≤ 2000 ms | {rows.get('lab_problem', 'not measured')} |")
    print(f"| cold start: page served | {rows['start_page_s']:.1f} s | | | |")
    print(f"| cold start: first trial view | {rows['start_first_view_s']:.1f} s | | ≤ 15 s | "
          f"{'ok' if rows['start_first_view_s'] <= 15 else 'MISSED'} |")
    print(f"| cold start: live generation ready | {rows['start_live_ready_s']:.1f} s | | | "
          f"{'live' if rows['live'] else 'live generation off'} |")
    print(f"| server memory (RSS), all subjects | {rows['memory_mb']:.0f} MB | {rows['memory_after_load_mb']:.0f} MB "
          f"after load | ≤ 2048 MB | {'ok' if rows['memory_after_load_mb'] <= 2048 else 'MISSED'} |")
    ld = rows["load"]
    print(f"| load: {ld['clients']} clients x {ld['seconds']:.0f} s | {ld['p50_ms']:.0f} ms | {ld['p95_ms']:.0f} ms | "
          f"no errors | {ld['requests']} requests, {ld['errors']} errors |")
    if ld["error_examples"]:
        print("\nerrors:", *ld["error_examples"], sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if not ld["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
