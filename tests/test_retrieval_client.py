"""The clip-retrieval client against a local 127.0.0.1 server speaking clip-retrieval's JSON API: a good
back end (results, images, index list), a failing one (HTTP 500, then recovering), a slow one (timeout), a
malformed one (not JSON, wrong shapes, too few results) and a 4xx; no default URL; never blank images."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from mindeye_core.retrieval import ClipRetrievalClient, ClipRetrievalError, ExactRetriever, Retriever

DB = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), i * 8, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class _Backend(BaseHTTPRequestHandler):
    """clip-retrieval's ``/knn-service`` and ``/indices-list``; ``server.mode`` picks the behaviour."""

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        srv: Any = self.server
        if self.path == "/indices-list":
            self._send(200, json.dumps(["pool"]).encode())
        elif self.path.startswith("/img/"):
            i = int(self.path.rsplit("/", 1)[1])
            self._send(200, _png(i) if i < 100 else b"<html>gone</html>", "image/png")
        else:
            self._send(404, b"{}")
        srv.requests.append(("GET", self.path, None))

    def do_POST(self) -> None:  # noqa: N802
        srv: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(("POST", self.path, body))
        mode = srv.mode
        if mode == "fail-once" and sum(r[0] == "POST" for r in srv.requests) == 1 or mode == "fail":
            self._send(500, b"internal error")
            return
        if mode == "slow":  # answers only when the test is over: a timeout is certain, whatever the load
            srv.release.wait(30)
        if mode == "not-json":
            self._send(200, b"<html>maintenance</html>", "text/html")
            return
        if mode == "bad-request":
            self._send(400, b'{"message": "unknown indice"}')
            return
        if mode == "error-object":
            self._send(200, json.dumps({"error": "index not loaded"}).encode())
            return
        q = np.asarray(body["embedding_input"], np.float32)
        sims = DB @ q / np.linalg.norm(DB, axis=1)
        order = np.argsort(-sims)[: body["num_images"]]
        hits = [{"id": int(i), "similarity": float(sims[i]), "url": f"http://127.0.0.1:{srv.server_port}/img/{i}",
                 "caption": f"item {i}"} for i in order]
        if mode == "with-images":
            for h in hits:
                h["image"] = base64.b64encode(_png(h["id"])).decode()
        if mode == "no-url":
            hits[1].pop("url")
        if mode == "few":
            hits = hits[:2]
        self._send(200, json.dumps(hits).encode())


@pytest.fixture()
def server() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    srv.mode, srv.requests, srv.release = "ok", [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _client(srv: Any, **kw: Any) -> ClipRetrievalClient:
    kw.setdefault("backoff", 0.0)
    return ClipRetrievalClient(f"http://127.0.0.1:{srv.server_port}/knn-service", "pool", **kw)


def test_results_match_brute_force_and_request_follows_the_api(server: Any) -> None:
    client = _client(server)
    assert isinstance(client, Retriever)
    q = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    scores, urls = client.search(q, 5)
    want_scores, want = ExactRetriever(DB).search(q, 5)
    assert urls.shape == (3, 5)
    assert [[int(u.rsplit("/", 1)[1]) for u in row] for row in urls] == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    method, path, body = server.requests[0]
    assert (method, path) == ("POST", "/knn-service")
    assert body["indice_name"] == "pool" and body["modality"] == "image" and body["num_images"] == 5
    assert body["num_result_ids"] == 5 and body["text"] is None and body["image"] is None
    assert np.linalg.norm(body["embedding_input"]) == pytest.approx(1.0, abs=1e-6)  # normalised query
    assert client.indices() == ["pool"]
    hits = client.query(q[0], 3)
    assert hits[0].caption.startswith("item ") and hits[0].similarity >= hits[1].similarity
    assert client.fetch_image(hits[0]).shape == (6, 6, 3)


def test_images_sent_inline_are_decoded(server: Any) -> None:
    server.mode = "with-images"
    hit = _client(server).query(DB[4], 2)[0]
    assert hit.id == 4 and hit.image_b64
    np.testing.assert_array_equal(_client(server).fetch_image(hit), np.full((6, 6, 3), 32, np.uint8))
    assert not any(r[0] == "GET" for r in server.requests)  # no download needed


def test_failing_service_is_retried_then_reported(server: Any) -> None:
    server.mode = "fail-once"
    scores, _ = _client(server, retries=1).search(DB[:1], 3)  # the retry succeeds
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    server.mode, server.requests = "fail", []
    with pytest.raises(ClipRetrievalError, match=r"knn-service failed after 3 attempt\(s\).*500"):
        _client(server, retries=2).search(DB[:1], 3)
    assert len(server.requests) == 3


def test_slow_service_times_out(server: Any) -> None:
    server.mode = "slow"
    with pytest.raises(ClipRetrievalError, match=r"timed out after 1 attempt\(s\) \(timeout 0.2 s\)"):
        _client(server, timeout=0.2, retries=0).search(DB[:1], 3)


@pytest.mark.parametrize("mode, message", [
    ("not-json", "answered something that is not JSON"),
    ("error-object", "reported an error: index not loaded"),
    ("no-url", "result 1 has no image url"),
    ("few", "returned 2 results for index 'pool', asked for 4"),
    ("bad-request", "answered HTTP 400"),
])
def test_malformed_answers_raise_clear_errors(server: Any, mode: str, message: str) -> None:
    server.mode = mode
    with pytest.raises(ClipRetrievalError, match=message):
        _client(server, retries=3).search(DB[:1], 4)
    assert len([r for r in server.requests if r[0] == "POST"]) == 1  # malformed answers are not retried


def test_never_a_blank_image(server: Any) -> None:
    client = _client(server)
    with pytest.raises(ClipRetrievalError, match="img/150: not a readable image"):
        client.fetch_image(f"http://127.0.0.1:{server.server_port}/img/150")
    with pytest.raises(ClipRetrievalError, match="answered HTTP 404"):
        client.fetch_image(f"http://127.0.0.1:{server.server_port}/missing")


def test_connection_refused_and_no_default_url() -> None:
    with pytest.raises(TypeError):
        ClipRetrievalClient()  # type: ignore[call-arg]  # no default URL: the public service is gone
    with pytest.raises(ValueError, match="url is required .*offline since 2024"):
        ClipRetrievalClient("", "laion5B-L-14")
    with pytest.raises(ValueError, match="must be an http"):
        ClipRetrievalClient("knn.laion.ai/knn-service", "laion5B-L-14")
    with pytest.raises(ValueError, match="indice_name is required"):
        ClipRetrievalClient("http://127.0.0.1:9/knn-service", "")
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    port = closed.server_port
    closed.server_close()  # nothing listens there now
    with pytest.raises(ClipRetrievalError, match=f"127.0.0.1:{port}/knn-service failed after 2 attempt"):
        ClipRetrievalClient(f"http://127.0.0.1:{port}/knn-service", "pool", retries=1, backoff=0.0).search(DB[:1], 2)
