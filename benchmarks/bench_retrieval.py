"""Retrieval back ends at scale: build time, index memory, single-query latency p50/p95, recall@10 vs exact.

Data sets (``--data``):

* ``random768``: ``N`` random unit vectors in 768-d (CLIP ViT-L/14 final width), queries fresh random
  vectors: the hardest case for any approximate index (no cluster structure).
* ``pool``: the demo pool's tiny-CLIP embeddings (128-d), read from the shared vectors folder that
  ``mindeye retrieval build-pool --n N`` fills; queries are indexed items with the item itself left out of
  both the approximate and the exact lists.

Each kind (``--kinds``: ``flat`` = exact ``IndexFlatIP``, ``ivfpq``, ``ivfsq``, ``hnsw``, parameters as in
:func:`mindeye_core.retrieval.index.faiss_factory`, ``--param kind:name=value`` to change them) is built in
memory, then queried one query at a time (``--queries``) with faiss using ``--threads`` threads. Memory is
the serialised index size; "vs flat" is that over ``N * D * 4`` bytes. Targets (issue 15) at ``N = 10^6`` on 2
cores: p50 <= 10 ms, recall@10 >= 0.95, memory <= 1/4 of flat.

    nice -n 19 python benchmarks/bench_retrieval.py --sizes 100000 --data random768 pool
    nice -n 19 python benchmarks/bench_retrieval.py --sizes 1000000 --data pool --kinds flat ivfsq "IVF4096,PQ128x7" \
        --param "IVF4096,PQ128x7:nprobe=32"   # a raw factory string gets faiss' defaults (nprobe 1) unless given
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _random_unit(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _pool_vectors(n: int, root: str | None) -> np.ndarray:
    from mindeye_core.retrieval.pool import POOL_CHUNK, pool_dir

    dirs = sorted(pool_dir(root).glob("vectors-*"))
    if not dirs:
        raise SystemExit(f"no pool vectors under {pool_dir(root)}: run `mindeye retrieval build-pool --n {n}` first")
    parts = [np.load(dirs[0] / f"part-{i:05d}.npy") for i in range(-(-n // POOL_CHUNK))
             if (dirs[0] / f"part-{i:05d}.npy").is_file()]
    x = np.concatenate(parts)[:n] if parts else np.empty((0, 128), np.float32)
    if len(x) < n:
        raise SystemExit(f"only {len(x)} pool vectors embedded in {dirs[0]}, need {n}: run build-pool --n {n}")
    return x


def _params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        kind, _, rest = item.partition(":")
        name, _, value = rest.partition("=")
        out.setdefault(kind, {})[name] = float(value) if "." in value else int(value)
    return out


def _drop_self(lists: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    if own is None:
        return lists[:, :k]
    return np.stack([[r for r in row if r != o][:k] for row, o in zip(lists.tolist(), own.tolist())])


def bench_one(x: np.ndarray, q: np.ndarray, own: np.ndarray | None, kinds: list[str],
              params: dict[str, dict[str, Any]], k: int = 10) -> Iterator[dict[str, Any]]:
    """Build each kind over ``x`` (N, D) and time single queries ``q`` (Q, D); recall@k vs exact flat.
    Rows are yielded as each kind finishes (flat first: it is the exact reference)."""
    import faiss

    from mindeye_core.retrieval.index import apply_search_params, faiss_factory, index_memory_bytes, recall_at_k

    n, d = x.shape
    exact: np.ndarray | None = None
    for kind in ["flat"] + [kd for kd in kinds if kd != "flat"]:
        factory, search = faiss_factory(kind, n, params.get(kind))
        t0 = time.perf_counter()
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if "efConstruction" in search:
            faiss.downcast_index(index).hnsw.efConstruction = int(search["efConstruction"])
        if not index.is_trained:
            rng = np.random.default_rng(0)
            index.train(x[np.sort(rng.choice(n, min(n, 100_000), replace=False))])
        index.add(x)
        build_s = time.perf_counter() - t0
        apply_search_params(index, search)
        lat = []
        found = np.empty((len(q), k + 1), np.int64)
        for i in range(len(q)):
            t = time.perf_counter()
            _, ix = index.search(q[i : i + 1], k + 1)
            lat.append(time.perf_counter() - t)
            found[i] = ix[0]
        got = _drop_self(found, own, k)
        if kind == "flat":
            exact = got
        assert exact is not None
        mem = index_memory_bytes(index)
        row = {"kind": kind, "factory": factory, "search": search, "n": n, "dim": d, "build_s": build_s,
               "memory_mb": mem / 2**20, "vs_flat": mem / (n * d * 4),
               "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p95_ms": 1e3 * float(np.percentile(lat, 95)),
               "recall@10": recall_at_k(got, exact, k)}
        del index
        if kind in kinds:
            yield row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--data", nargs="+", default=["random768", "pool"], choices=["random768", "pool"])
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivfpq", "ivfsq", "hnsw"])
    ap.add_argument("--param", action="append", help="KIND:NAME=VALUE, e.g. ivfsq:nprobe=64")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool-root", default=None, help="pool index folder (default $MINDEYE_CACHE/demo_pool)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    params = _params(args.param)
    rows = []
    for data in args.data:
        for n in args.sizes:
            if data == "random768":
                x = _random_unit(n, 768, seed=0)
                q, own = _random_unit(args.queries, 768, seed=1), None
            else:
                x = _pool_vectors(n, args.pool_root)
                own = np.sort(np.random.default_rng(2).choice(n, args.queries, replace=False))
                q = x[own]
            for r in bench_one(x, q, own, args.kinds, params):
                r["data"] = data
                rows.append(r)
                print(json.dumps(r), flush=True)
            del x
    print()
    print(f"faiss {faiss.__version__}, {args.threads} threads, {args.queries} single queries, recall@10 vs exact")
    print("| data | N | kind | faiss | search | build s | memory MB | vs flat | p50 ms | p95 ms | recall@10 |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['n']:,} | {r['kind']} | {r['factory']} | {r['search'] or '-'} | {r['build_s']:.1f} | "
              f"{r['memory_mb']:.1f} | {r['vs_flat']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['recall@10']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
