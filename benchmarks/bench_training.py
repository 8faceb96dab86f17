"""Training throughput of the high-level model (backbone + projector + prior, full MindEye objective).

    python benchmarks/bench_training.py                 # demo size (training/configs/demo.yaml), CPU
    python benchmarks/bench_training.py --nsd           # also NSD subj01 size (947 M + prior; ~16 GB RAM in fp32)
    python benchmarks/bench_training.py --device cuda   # on a GPU (bf16 autocast)

Prints a Markdown table: seconds per optimizer step (median of ``--steps`` after ``--warmup``), samples/s,
the FLOPs of one step estimated from the linear layers (2 x multiply-adds x 3 for forward + backward), and that
as a fraction of the machine's plain fp32 matmul throughput measured in the same run (a 2048^3 GEMM), i.e. how
close the step comes to what the hardware does on the easiest possible work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mindeye_core.models import create_model
from mindeye_core.schedule import TrainingSchedule, build_optimizer, highlevel_loss


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def linear_macs(model: torch.nn.Module, voxels: torch.Tensor) -> int:
    """Multiply-adds of every nn.Linear in one forward pass (hooks count rows x in x out)."""
    total = 0

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        backbone, _ = model(voxels)
        if model.prior is not None:
            model.prior_loss(backbone, torch.randn_like(backbone))
    for h in handles:
        h.remove()
    return total


def bench(name: str, model: torch.nn.Module, batch: int, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    model.to(device).train()
    sched = TrainingSchedule(steps_per_epoch=10, num_epochs=10)
    opt = build_optimizer(model, sched)
    x = torch.randn(batch, model.n_voxels, device=device)
    t = torch.randn(batch, model.brain.n_tokens, model.brain.dim, device=device)
    macs = linear_macs(model, x)
    times = []
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for i in range(warmup + steps):
        plan = sched.at(0 if i % 2 else 9)  # alternate BiMixCo / SoftCLIP
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            out = highlevel_loss(model, x, t, plan, schedule=sched)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"name": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch,
            "step_s": step, "samples_s": batch / step, "gflop_step": 6 * macs / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--nsd", action="store_true", help="also the NSD-size 257 x 768 model")
    ap.add_argument("--nsd-batch", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup = 3, 1
    dev = torch.device(args.device)
    peak = matmul_flops(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    rows = [bench("demo (configs/demo.yaml)", create_model("demo-highlevel", hidden=256, prior_depth=1,
                                                           prior_options={"ff_mult": 2}), 64, dev, args.steps, args.warmup)]
    if args.nsd:
        model = create_model("nsd-257x768").enable_gradient_checkpointing()
        rows.append(bench("NSD subj01 257x768 (grad. checkpointing)", model, args.nsd_batch, dev, args.steps, args.warmup))
    print(f"device {dev}, torch threads {torch.get_num_threads()}, plain matmul {peak / 1e9:.1f} GFLOP/s\n")
    print("| model | params (M) | batch | s / step | samples / s | GFLOP / step (linear) | fraction of matmul |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        frac = r["gflop_step"] * 1e9 / r["step_s"] / peak
        print(f"| {r['name']} | {r['params_m']:.1f} | {r['batch']} | {r['step_s']:.3f} | {r['samples_s']:.1f} | "
              f"{r['gflop_step']:.2f} | {frac:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
