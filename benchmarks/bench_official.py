"""Benchmark the cost of exact compatibility with MindEye's released checkpoints.

Two measurements:

``prior``   one diffusion-prior training step (forward + backward) of our standard prior and of the
            official-structure prior (:data:`~mindeye_core.models.prior.OFFICIAL_257X768_STRUCTURE`)
            on the same inputs in one run, interleaved (NSD size: 257 x 768 tokens, depth 6, 12 heads).
``convert`` peak memory and time of ``convert_official_checkpoint`` on a synthetic full-size
            257 x 768 checkpoint written to disk in the official key layout *with* AdamW state
            (exp_avg + exp_avg_sq per parameter) and a torch-2.0-style OneCycleLR entry, i.e. ~12 GB.
            The file is built from a memory-mapped scratch file, so building it needs disk, not RAM.
            The conversion runs in a fresh process; memory is sampled every 20 ms from
            ``/proc/self/status`` (``VmRSS`` includes file pages of the memory-mapped checkpoint,
            which the kernel can drop; ``RssAnon`` is the process's own memory).

Usage::

    python benchmarks/bench_official.py prior --quick          # batch 2, depth 2: seconds
    python benchmarks/bench_official.py prior                  # NSD size, batch 4, 2 timed steps
    python benchmarks/bench_official.py convert --workdir /tmp/bench_official   # ~28 GB of disk
    python benchmarks/bench_official.py convert --hidden 1024 --n-voxels 4000     # a smaller file

Measured (2-core shared dev box, CPU, 1 thread, float32):

- prior step, NSD size, batch 4: standard 57.9 M parameters, 22.1 s / 19.5 s (two runs, median of 2 and
  3 steps); official structure 56.1 M parameters, 23.2 s / 19.1 s, i.e. 1.05x / 0.97x: the same cost
  within run-to-run noise (the shared K/V head saves projection FLOPs; rotary, the bias mask, the
  extra norms and the time MLP spend about as much).
- conversion of a synthetic full-size 257x768 checkpoint (11.2 GiB: 1,003,635,072 model parameters
  + AdamW moments + OneCycleLR state): 91 s including the SHA-256 of the whole file; output 3.74 GiB;
  peak RssAnon 0.38 GiB (0.28 GiB at process start), peak VmRSS 4.5 GiB including the reclaimable
  file pages of the memory-mapped checkpoint. Building the file took 156 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


# ------------------------------------------------------------------------------------- prior step
def bench_prior(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mindeye_core.models.prior import OFFICIAL_257X768_STRUCTURE, DiffusionPrior

    torch.set_num_threads(args.threads)
    size = dict(dim=768, num_tokens=257, depth=2 if args.quick else 6, heads=12, dim_head=64, timesteps=100)
    batch = args.batch or (2 if args.quick else 4)
    steps = args.steps or (1 if args.quick else 2)
    torch.manual_seed(0)
    priors = {"standard": DiffusionPrior(**size).train(),
              "official structure": DiffusionPrior(**size, **OFFICIAL_257X768_STRUCTURE).train()}
    brain = torch.randn(batch, 257, 768)
    target = torch.randn(batch, 257, 768) / 768**0.5

    def step(prior: DiffusionPrior) -> float:
        gen = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        loss, _ = prior(brain, target, generator=gen)
        loss.backward()
        elapsed = time.perf_counter() - t0
        prior.zero_grad(set_to_none=True)
        return elapsed

    times: dict[str, list[float]] = {name: [] for name in priors}
    for name, prior in priors.items():
        step(prior)  # warm-up
    for _ in range(steps):
        for name, prior in priors.items():
            times[name].append(step(prior))
    return {
        "size": size, "batch": batch, "steps": steps, "threads": torch.get_num_threads(),
        "rows": {name: {"params": sum(p.numel() for p in priors[name].parameters()),
                        "step_s": statistics.median(times[name]), "all_s": times[name]} for name in priors},
    }


def print_prior(r: dict[str, Any]) -> None:
    s = r["size"]
    print(f"### prior training step (fwd+bwd), {s['num_tokens']} x {s['dim']} tokens, depth {s['depth']}, "
          f"{s['heads']} heads, batch {r['batch']}, CPU {r['threads']} thread(s); median of {r['steps']} step(s)")
    print()
    print("| prior | parameters | step (s) | per sample (s) | vs standard |")
    print("|---|---|---|---|---|")
    base = r["rows"]["standard"]["step_s"]
    for name, row in r["rows"].items():
        print(f"| {name} | {row['params']:,} | {row['step_s']:.2f} | {row['step_s'] / r['batch']:.2f} | "
              f"{row['step_s'] / base:.2f}x |")


# ---------------------------------------------------------------------------- synthetic checkpoint
_OURS_TO_OFFICIAL = [  # inverse of mindeye_core.official.layout for the 257x768 model (benchmark input only)
    (r"^brain\.backbone\.lin0\.", "voxel2clip.lin0."), (r"^brain\.backbone\.blocks\.", "voxel2clip.mlp."),
    (r"^brain\.", "voxel2clip."), (r"^prior\.pos_emb$", "net.learned_query"),
    (r"^prior\.null_brain_embed$", "net.null_brain_embeds"), (r"^prior\.null_image_embed$", "net.null_image_embed"),
    (r"^prior\.time_embed\.net\.0\.", "net.to_time_embeds.0.1.net.0.0."),
    (r"^prior\.time_embed\.net\.2\.", "net.to_time_embeds.0.1.net.1.0."),
    (r"^prior\.time_embed\.net\.4\.", "net.to_time_embeds.0.1.net.2."),
    (r"^prior\.transformer\.rel_pos_bias\.weight$", "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight"),
    (r"\.0\.norm\.weight$", ".0.norm.g"), (r"\.0\.to_out\.weight$", ".0.to_out.0.weight"),
    (r"\.0\.out_norm\.weight$", ".0.to_out.1.g"), (r"\.1\.norm\.weight$", ".1.0.g"),
    (r"\.1\.proj_in\.weight$", ".1.1.weight"), (r"\.1\.proj_out\.weight$", ".1.5.weight"),
    (r"^prior\.transformer\.norm\.weight$", "net.causal_transformer.norm.g"),
    (r"^prior\.transformer\.", "net.causal_transformer."),
]


def official_257_shapes(n_voxels: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of a released 257x768 ``model_state_dict`` (+ rotary and schedule buffers)."""
    import torch

    from mindeye_core.models import MindEyeHighLevel
    from mindeye_core.models.prior import OFFICIAL_257X768_STRUCTURE

    with torch.device("meta"):
        ours = MindEyeHighLevel(n_voxels=n_voxels, hidden=hidden, prior_options=dict(OFFICIAL_257X768_STRUCTURE)).state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for key, t in ours.items():
        name = key
        for pattern, repl in _OURS_TO_OFFICIAL:
            name = re.sub(pattern, repl, name)
        shape = tuple(t.shape)
        if name.endswith(".0.null_kv"):
            shape = (2, shape[-1])
        shapes[name] = shape
    for i in range(6):
        shapes[f"net.causal_transformer.layers.{i}.0.rotary_emb.freqs"] = (16,)
    from mindeye_core.official.layout import schedule_buffers

    for name in schedule_buffers(torch.linspace(0.1, 0.2, 100, dtype=torch.float64)):
        shapes["noise_scheduler." + name] = (100,)
    return shapes


def _derived_values(name: str) -> Any:
    """Correct values for the derived buffers (the converter checks them)."""
    from mindeye_core.models.prior import cosine_beta_schedule, rotary_frequencies
    from mindeye_core.official.layout import schedule_buffers

    if name.endswith("rotary_emb.freqs"):
        return rotary_frequencies(32)
    return schedule_buffers(cosine_beta_schedule(100))[name.split(".")[-1]]


def build_checkpoint(path: Path, n_voxels: int, hidden: int) -> dict[str, Any]:
    """Write a synthetic released-style 257x768 checkpoint (model + AdamW moments) without holding it in RAM."""
    import numpy as np
    import torch

    shapes = official_257_shapes(n_voxels, hidden)
    params = {k: s for k, s in shapes.items() if not k.startswith("noise_scheduler.") and "rotary_emb" not in k}
    n_model = sum(int(np.prod(s)) for s in params.values())
    scratch = path.with_suffix(".scratch")
    t0 = time.perf_counter()
    mm = np.memmap(scratch, dtype=np.float32, mode="w+", shape=(3 * n_model,))
    rng = np.random.default_rng(0)
    chunk = 1 << 24
    for start in range(0, n_model, chunk):  # weights: small random values; moments stay zero pages
        stop = min(n_model, start + chunk)
        mm[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * 0.02
    flat = torch.from_numpy(mm)
    model_state, exp_avg, exp_avg_sq, offset = {}, {}, {}, 0
    for i, (k, s) in enumerate(params.items()):
        n = int(np.prod(s))
        model_state[k] = flat[offset:offset + n].view(s)
        exp_avg[i] = flat[n_model + offset:n_model + offset + n].view(s)
        exp_avg_sq[i] = flat[2 * n_model + offset:2 * n_model + offset + n].view(s)
        offset += n
    for k in shapes:
        if k not in params:
            model_state[k] = _derived_values(k)
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(lin.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=10)
    lr_state = {**sched.state_dict(), "anneal_func": sched._anneal_func}  # torch-2.0 layout: a bound method
    optimizer_state = {"state": {i: {"step": torch.tensor(1000.0), "exp_avg": exp_avg[i], "exp_avg_sq": exp_avg_sq[i]}
                                 for i in exp_avg},
                       "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                                         "amsgrad": False, "params": list(exp_avg)}]}
    torch.save({"epoch": 239, "model_state_dict": model_state, "optimizer_state_dict": optimizer_state,
                "lr_scheduler": lr_state, "train_losses": [0.0] * 1000, "val_losses": [0.0] * 100, "lrs": [3e-4] * 1000}, path)
    built_s = time.perf_counter() - t0
    del flat, model_state, exp_avg, exp_avg_sq, optimizer_state, mm
    scratch.unlink()
    return {"model_params": n_model, "file_bytes": path.stat().st_size, "build_s": built_s}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def convert_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a fresh process: convert, sampling memory every 20 ms."""
    from mindeye_core.official.convert import convert_official_checkpoint

    peak = {"VmRSS": 0, "RssAnon": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for f in peak:
                peak[f] = max(peak[f], _status_kib(f))
            time.sleep(0.02)

    base = {f: _status_kib(f) for f in peak}
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = convert_official_checkpoint(Path(args.source), "257x768", Path(args.out), subject=1)
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"convert_s": elapsed, "peak_rss_gib": peak["VmRSS"] / 2**20, "peak_anon_gib": peak["RssAnon"] / 2**20,
            "start_rss_gib": base["VmRSS"] / 2**20, "start_anon_gib": base["RssAnon"] / 2**20, "out_bytes": size}


def bench_convert(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, out = work / "last.pth", work / "converted"
    info = build_checkpoint(ckpt, args.n_voxels, args.hidden)
    cmd = [sys.executable, os.path.abspath(__file__), "convert-worker", "--source", str(ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"conversion worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 1
    r = json.loads(lines[-1][len("RESULT "):])
    print(f"### converting a synthetic 257x768 checkpoint (n_voxels {args.n_voxels}, hidden {args.hidden}), CPU")
    print()
    print(f"- checkpoint: {info['file_bytes'] / 2**30:.2f} GiB on disk ({info['model_params']:,} model parameters "
          f"+ AdamW exp_avg/exp_avg_sq + OneCycleLR state); built in {info['build_s']:.0f} s")
    print(f"- conversion (SHA-256 of the whole file + weights-only mmap load + strict mapping + streamed "
          f"safetensors write): {r['convert_s']:.1f} s; output {r['out_bytes'] / 2**30:.2f} GiB")
    print(f"- peak process memory: RssAnon {r['peak_anon_gib']:.2f} GiB (at start {r['start_anon_gib']:.2f}), "
          f"VmRSS {r['peak_rss_gib']:.2f} GiB incl. reclaimable file pages of the mapped checkpoint")
    if not args.keep:
        shutil.rmtree(work)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prior", help="training step: official structure vs standard")
    p.add_argument("--quick", action="store_true", help="depth 2, batch 2, one timed step")
    p.add_argument("--batch", type=int, default=None, help="default 4 (2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per prior after one warm-up (default 2)")
    p.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("convert", help="peak memory/time of converting a synthetic full-size checkpoint")
    c.add_argument("--workdir", default="/tmp/bench_official", help="scratch folder (needs ~2.4x the file size)")
    c.add_argument("--n-voxels", type=int, default=15724)
    c.add_argument("--hidden", type=int, default=4096)
    c.add_argument("--keep", action="store_true", help="keep the checkpoint and the converted folder")
    w = sub.add_parser("convert-worker")
    w.add_argument("--source", required=True)
    w.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.what == "prior":
        print_prior(bench_prior(args))
        return 0
    if args.what == "convert-worker":
        print("RESULT " + json.dumps(convert_worker(args)))
        return 0
    return bench_convert(args)


if __name__ == "__main__":
    raise SystemExit(main())
