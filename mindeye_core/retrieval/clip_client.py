"""A client for services that speak clip-retrieval's ``/knn-service`` JSON API (an optional back end).

The paper queried LAION-5B through the public clip-retrieval service (``knn.laion.ai``), which has been
offline since 2024; the official code then silently returned blank images. This client has **no default
URL**: point it at a ``clip-retrieval back`` you host (or any server speaking the same API). It needs only
the standard library, and every failure raises :class:`ClipRetrievalError` naming the URL and what went wrong
(connection refused, timeout, HTTP status, a body that is not JSON or not a list of results, fewer results
than asked for, an image that cannot be fetched): it never pads results or returns blank images.

The API (as clip-retrieval's ``ClipClient`` sends it): ``POST <url>`` with a JSON object holding
``embedding_input`` (a list of floats), ``indice_name``, ``modality`` (``"image"``), ``num_images``,
``num_result_ids``, ``deduplicate``, ``use_safety_model``, ``use_violence_detector``, ``use_mclip``,
``aesthetic_score``, ``aesthetic_weight`` (and ``text`` / ``image`` / ``image_url`` set to null); the answer
is a JSON list of ``{"id", "similarity", "url", "caption"}`` objects, best first, where a back end that
serves images adds ``"image"`` (base64). ``GET <base>/indices-list`` lists the index names.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MindEyeError
from ..similarity import normalise

__all__ = ["ClipRetrievalClient", "ClipRetrievalError", "Hit"]


class ClipRetrievalError(MindEyeError):
    """The clip-retrieval service failed, timed out or answered something that is not a valid result."""


@dataclass(frozen=True)
class Hit:
    """One result: the service's item id, cosine similarity, image URL, caption and (optional) base64 image."""

    id: Any
    similarity: float
    url: str
    caption: str = ""
    image_b64: str | None = None


def _check_url(url: str, what: str) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} is required (the public knn.laion.ai service is offline since 2024: "
                         f"host a clip-retrieval back end and give its knn-service URL)")
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {url!r}")
    return url


class ClipRetrievalClient:
    """k-NN over a clip-retrieval back end's image embeddings.

    Args:
        url: the ``knn-service`` endpoint, e.g. ``"http://127.0.0.1:1234/knn-service"`` (required).
        indice_name: the back end's index name (required; e.g. ``"laion5B-L-14"`` on the old service).
        timeout: seconds per HTTP request.
        retries: extra attempts after a connection error, a timeout or an HTTP 5xx (not after a 4xx or a
            malformed answer); ``backoff * 2**attempt`` seconds apart.
        deduplicate, use_safety_model, use_violence_detector, aesthetic_score, aesthetic_weight, use_mclip:
            sent as they are (clip-retrieval's options).
        oversample: ask for ``k * oversample`` results (the service's filters may drop some), keep ``k``.
    """

    def __init__(self, url: str, indice_name: str, *, timeout: float = 30.0, retries: int = 2,
                 backoff: float = 0.5, deduplicate: bool = True, use_safety_model: bool = False,
                 use_violence_detector: bool = False, aesthetic_score: int = 9, aesthetic_weight: float = 0.0,
                 use_mclip: bool = False, oversample: int = 1) -> None:
        self.url = _check_url(url, "url")
        if not isinstance(indice_name, str) or not indice_name:
            raise ValueError("indice_name is required (the back end's index name)")
        if timeout <= 0 or retries < 0 or backoff < 0 or oversample < 1:
            raise ValueError(f"need timeout > 0, retries >= 0, backoff >= 0, oversample >= 1; got "
                             f"{timeout}, {retries}, {backoff}, {oversample}")
        self.indice_name = indice_name
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.oversample = int(oversample)
        self.options = {"deduplicate": bool(deduplicate), "use_safety_model": bool(use_safety_model),
                        "use_violence_detector": bool(use_violence_detector), "use_mclip": bool(use_mclip),
                        "aesthetic_score": int(aesthetic_score), "aesthetic_weight": float(aesthetic_weight)}

    # -------------------------------------------------------------------------------- transport
    def _request(self, url: str, body: bytes | None) -> bytes:
        """GET (``body`` None) or POST JSON with retries; the raw answer bytes."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "application/json"} if body is not None else {})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise ClipRetrievalError(f"{url} answered HTTP {exc.code} {exc.reason}: "
                                             f"{exc.read()[:200]!r}") from exc
                last = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = exc
        what = "timed out" if isinstance(last, TimeoutError) or "timed out" in str(last) else "failed"
        raise ClipRetrievalError(f"request to {url} {what} after {self.retries + 1} attempt(s) "
                                 f"(timeout {self.timeout:g} s): {last}") from last

    def _json(self, raw: bytes, url: str) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClipRetrievalError(f"{url} answered something that is not JSON: {raw[:200]!r}") from exc

    # -------------------------------------------------------------------------------- API
    def indices(self) -> list[str]:
        """Index names the back end serves (``GET <base>/indices-list``)."""
        base = self.url.rsplit("/", 1)[0]
        names = self._json(self._request(base + "/indices-list", None), base + "/indices-list")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ClipRetrievalError(f"{base}/indices-list did not answer a list of names: {names!r}")
        return names

    def query(self, embedding: Any, k: int) -> list[Hit]:
        """The ``k`` nearest images of one embedding ``(D,)`` (normalised here), best first.

        Raises:
            ClipRetrievalError: the request failed, or the answer is malformed or has fewer than ``k`` hits.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = normalise(np.asarray(embedding, np.float32).reshape(1, -1), "query embedding")[0]
        n = int(k) * self.oversample
        payload = {"text": None, "image": None, "image_url": None, "embedding_input": q.tolist(),
                   "indice_name": self.indice_name, "modality": "image", "num_images": n, "num_result_ids": n,
                   **self.options}
        answer = self._json(self._request(self.url, json.dumps(payload).encode()), self.url)
        if isinstance(answer, dict) and "error" in answer:
            raise ClipRetrievalError(f"{self.url} reported an error: {answer['error']}")
        if not isinstance(answer, list):
            raise ClipRetrievalError(f"{self.url} answered a {type(answer).__name__}, expected a list of results")
        hits = []
        for i, item in enumerate(answer):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"]:
                raise ClipRetrievalError(f"{self.url}: result {i} has no image url: {item!r}")
            try:
                sim = float(item["similarity"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ClipRetrievalError(f"{self.url}: result {i} has no numeric similarity: {item!r}") from exc
            if not np.isfinite(sim):
                raise ClipRetrievalError(f"{self.url}: result {i} has similarity {sim}")
            hits.append(Hit(item.get("id", i), sim, item["url"], str(item.get("caption") or ""), item.get("image")))
        if len(hits) < k:
            raise ClipRetrievalError(f"{self.url} returned {len(hits)} results for index {self.indice_name!r}, "
                                     f"asked for {k} (its filters dropped some: raise oversample)")
        hits.sort(key=lambda h: -h.similarity)
        return hits[: int(k)]

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:class:`~mindeye_core.retrieval.Retriever` protocol: ``(Q, D)`` -> ``(scores (Q, k), urls (Q, k))``."""
        q = normalise(queries, "queries")
        scores = np.empty((q.shape[0], int(k)), np.float32)
        urls = np.empty((q.shape[0], int(k)), dtype=object)
        for i, emb in enumerate(q):
            hits = self.query(emb, k)
            scores[i] = [h.similarity for h in hits]
            urls[i] = [h.url for h in hits]
        return scores, urls

    def fetch_image(self, hit: Hit | str) -> np.ndarray:
        """The image of a hit (its base64 ``image`` when the back end sent one, else its URL) as
        ``(H, W, 3)`` uint8.

        Raises:
            ClipRetrievalError: download failure or data that is not an image (never a blank stand-in).
        """
        from PIL import Image, UnidentifiedImageError

        url = hit if isinstance(hit, str) else hit.url
        if isinstance(hit, Hit) and hit.image_b64:
            try:
                raw = base64.b64decode(hit.image_b64, validate=True)
            except (ValueError, TypeError) as exc:
                raise ClipRetrievalError(f"result {hit.id}: its base64 image is corrupt") from exc
        else:
            raw = self._request(_check_url(url, "image url"), None)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise ClipRetrievalError(f"{url}: not a readable image ({len(raw)} bytes)") from exc
