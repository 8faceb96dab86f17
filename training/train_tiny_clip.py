"""Train the tiny demo-world CLIP (open_clip) contrastively on demo training images + captions.

Model (a custom open_clip config, :data:`DEFAULT_MODEL_CFG`): ViT image tower on 64 x 64 images,
patch 8 -> 64 patches + CLS = 65 tokens, width 128, depth 4; text transformer width 128, depth 3,
context 40 tokens with open_clip's bundled BPE tokenizer (offline); joint embedding 128.
The brain model's hidden target is therefore ``(65, 128)`` and the final target ``(128,)``.

Loss: the symmetric InfoNCE of CLIP with a learned temperature,
``L = (CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2`` over L2-normalised image / text embeddings.
Augmentation (light, position-preserving, because captions name positions and colours): random
translation by up to ``--max-shift`` pixels (reflect padding) and a brightness jitter of +-5 %.

Only the training images of the demo world are used; the shared test images stay held out for the
evaluation written to ``OUT/metrics.json`` (zero-shot category accuracy, image <-> caption top-1).

    python training/train_tiny_clip.py --out assets/demo_models/tiny-clip --fp16
    python training/train_tiny_clip.py --steps 20 --resume      # continue / extend a run
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Clock,
    add_common_args,
    load_demo_split,
    lr_lambda,
    parse_with_config,
    setup_run,
    to_float_images,
    train_loop,
    write_json,
)

NAME = "tiny-clip"
DEFAULT_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, name=NAME, steps=1500, batch_size=128, lr=1e-3)
    ap.add_argument("--width", type=int, default=None, help="override vision and text width")
    ap.add_argument("--vision-layers", type=int, default=None)
    ap.add_argument("--text-layers", type=int, default=None)
    ap.add_argument("--embed-dim", type=int, default=None)
    ap.add_argument("--max-shift", type=int, default=4, help="random translation in pixels (augmentation)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--eval-batch", type=int, default=200)
    return ap


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULT_MODEL_CFG)
    if args.width:
        cfg["vision_cfg"]["width"] = cfg["text_cfg"]["width"] = int(args.width)
    if args.vision_layers:
        cfg["vision_cfg"]["layers"] = int(args.vision_layers)
    if args.text_layers:
        cfg["text_cfg"]["layers"] = int(args.text_layers)
    if args.embed_dim:
        cfg["embed_dim"] = int(args.embed_dim)
    return cfg


def augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation (reflect padding, up to ``max_shift`` px) and brightness x U(0.95, 1.05).

    ``x``: ``(B, 3, H, W)`` in [0, 1] -> same shape, in [0, 1].
    """
    b, _, h, w = x.shape
    if max_shift > 0:
        p = int(max_shift)
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    gain = 0.95 + 0.1 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x * gain.to(x.device)).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    import open_clip

    from mindeye_core.encoders import clip_preprocess, save_open_clip_folder

    args = parse_with_config(build_parser(), argv)
    out = setup_run(args, NAME)
    dev = torch.device(args.device)
    clock = Clock(args.max_minutes)
    split = load_demo_split(args.world, max_train=args.max_train_images, progress=not args.no_progress)
    cfg = model_config(args)
    cfg["vision_cfg"]["image_size"] = int(split.train_images.shape[1])
    model = open_clip.CLIP(**cfg).to(dev)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    tokens = tokenizer(split.train_captions)  # (N, ctx) int64
    images = torch.from_numpy(split.train_images)  # uint8 (N, H, W, 3), kept on the CPU
    n = images.shape[0]
    bs = min(int(args.batch_size), n)
    size = cfg["vision_cfg"]["image_size"]
    print(f"tiny CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{n} training images, batch {bs}, {args.steps} steps, device {dev}")

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps, clock))
    data_rng = torch.Generator().manual_seed(args.seed + 1)
    model.train()

    def step_fn(step: int) -> dict[str, float]:
        idx = torch.randperm(n, generator=data_rng)[:bs]
        x = augment(to_float_images(images[idx]), args.max_shift, data_rng).to(dev)
        t = tokens[idx].to(dev)
        img = F.normalize(model.encode_image(clip_preprocess(x, size)), dim=-1)
        txt = F.normalize(model.encode_text(t), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        target = torch.arange(len(idx), device=dev)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        return {"loss": float(loss.detach()), "scale": float(scale.detach())}

    summary = train_loop(args, step_fn=step_fn, modules={"model": model}, optimizers={"opt": opt,
                         "sched": sched}, clock=clock, data_rng=data_rng, desc="tiny-clip")
    model.eval().cpu()
    if args.fp16:
        model_to_save = copy.deepcopy(model).half()
    else:
        model_to_save = model
    save_open_clip_folder(model_to_save, out, cfg)
    # evaluation on the held-out test images, with the weights exactly as saved
    from evaluate_demo_models import evaluate_clip

    reloaded = open_clip.create_model(f"local-dir:{out}")
    metrics = evaluate_clip(reloaded.float().eval(), split, batch=args.eval_batch)
    summary.update({"metrics": metrics, "model_cfg": cfg, "n_parameters": sum(p.numel() for p in model.parameters()),
                    "args": {k: str(v) for k, v in vars(args).items()}})
    write_json(out / "training_summary.json", summary)
    print(f"saved {out}; metrics: {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
