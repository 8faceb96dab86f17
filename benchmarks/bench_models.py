"""Benchmark one MindEye training step (BrainMLP + diffusion prior, forward + backward).

Prints a Markdown table: per precision, the step time, the step's FLOPs (counted with
``torch.utils.flop_counter``), achieved FLOP/s, the throughput of a plain square matmul in the same
precision on the same device, the ratio of the two, and peak memory (CUDA: ``max_memory_allocated``;
CPU: the worker process's peak RSS, so it includes ~0.5 GB of Python/torch libraries).

Each precision runs in a fresh worker process so that peak memory is per configuration.

Usage::

    python benchmarks/bench_models.py                       # NSD size, batch 32, CPU, fp32 + bf16
    python benchmarks/bench_models.py --quick               # batch 4, one timed step
    python benchmarks/bench_models.py --device cuda --steps 5
    python benchmarks/bench_models.py --variant test-highlevel --quick   # smoke test in seconds

Memory note: the NSD model has ~1.0 B parameters (4 GB of fp32 weights + 4 GB of gradients; add
8 GB with ``--optimizer`` for AdamW's moments).

Measured (2026-11-25, ``nsd-257x768``, batch 32, fwd+bwd, 6.2-6.7 TFLOP per step; the FLOP counter
counts CUDA's attention backward slightly higher than the CPU path):

=====================================  =========  ==========  ===============  ===========
device                                 precision  step (s)    fraction of mm   peak (GiB)
=====================================  =========  ==========  ===============  ===========
dev box CPU, 1 thread                  fp32       134.5       74%              13.2 (RSS)
dev box CPU, 1 thread                  bf16       85.3        72%              11.0 (RSS)
H100 80GB                              fp32       0.163       80%              12.4
H100 80GB                              bf16       0.034       25%              10.4
H100 80GB, + AdamW step                fp32/bf16  0.194/0.065 67% / 14%        19.1 / 18.9
H100 80GB, gradient checkpointing      fp32/bf16  0.167/0.039 79% / 23%        11.9 / 9.9
=====================================  =========  ==========  ===============  ===========

About 97% of the FLOPs are in the diffusion prior (515 tokens x 32 samples through a 58 M-parameter
transformer), not in the 948 M-parameter MLP, whose cost is dominated by moving its weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _matmul_flops(device: str, dtype_name: str, n: int, reps: int) -> float:
    """Achieved FLOP/s of ``(n x n) @ (n x n)`` in ``dtype`` on ``device``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mindeye_core.models import create_model
    from mindeye_core.schedule import TrainingSchedule, autocast, build_optimizer, highlevel_loss

    torch.manual_seed(0)
    device = args.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # report true fp32
        torch.cuda.reset_peak_memory_stats()
    model = create_model(args.variant).to(device).train()
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    x = torch.randn(args.batch, cfg["n_voxels"], device=device)
    t = torch.randn(args.batch, cfg["n_tokens"], cfg["dim"], device=device)
    t = t / t[:, :1].norm(dim=-1, keepdim=True)  # like normalised CLIP hidden tokens
    schedule = TrainingSchedule(steps_per_epoch=1, num_epochs=3, warmup_epochs=1)
    plan = schedule.at(2)  # SoftCLIP phase (no MixCo randomness)
    opt = build_optimizer(model, schedule) if args.optimizer else None
    gen = torch.Generator(device=device).manual_seed(0)
    precision = args.worker

    def step() -> float:
        with autocast(device, precision):
            out = highlevel_loss(model, x, t, plan, schedule=schedule, generator=gen)
        out["loss"].backward()
        if opt is not None:
            opt.step()
        for p in model.parameters():
            p.grad = None
        return float(out["loss"])

    counter = FlopCounterMode(display=False)
    with counter:  # warm-up step doubles as the FLOP count
        loss = step()
    flops = counter.get_total_flops()
    _sync(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    n = 2048 if device == "cpu" else 8192
    mm = _matmul_flops(device, "fp32" if precision == "fp32" else precision, n, 3 if device == "cpu" else 20)
    return {
        "precision": precision,
        "params": n_params,
        "step_s": step_s,
        "flops": flops,
        "achieved": flops / step_s,
        "matmul": mm,
        "peak_gib": peak,
        "loss": loss,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="nsd-257x768", help="registry name of a MindEyeHighLevel variant")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32; 4 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 3; 1 with --quick)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16,fp16")
    parser.add_argument("--optimizer", action="store_true", help="include the AdamW step (+8 GB at NSD size)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="checkpoint residual blocks and projector")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4, one timed step")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = args.steps or (1 if args.quick else 3)

    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("CUDA requested but not available", file=sys.stderr)
            return 2
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"CPU ({os.cpu_count()} cores visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"

    rows = []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", precision, "--variant", args.variant,
               "--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps)]
        if args.optimizer:
            cmd.append("--optimizer")
        if args.grad_checkpointing:
            cmd.append("--grad-checkpointing")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"worker for {precision} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(lines[-1][len("RESULT "):]))

    what = "fwd+bwd+AdamW" if args.optimizer else "fwd+bwd"
    print(f"### {args.variant} training step ({what}), batch {args.batch}, {device_name}")
    print(f"parameters: {rows[0]['params']:,}; median of {args.steps} timed step(s) after 1 warm-up"
          + ("; gradient checkpointing on" if args.grad_checkpointing else ""))
    print()
    print("| precision | step time (s) | TFLOP / step | achieved TFLOP/s | plain matmul TFLOP/s | fraction of matmul | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['precision']} | {r['step_s']:.3f} | {r['flops'] / 1e12:.2f} | {r['achieved'] / 1e12:.3f} | "
            f"{r['matmul'] / 1e12:.3f} | {r['achieved'] / r['matmul']:.0%} | {r['peak_gib']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
