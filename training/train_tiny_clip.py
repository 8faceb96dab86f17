"""Train the tiny demo-world CLIP (open_clip) contrastively on demo training images + captions.

Model (a custom open_clip config, :data:`DEFAULT_MODEL_CFG`): ViT image tower on 64 x 64 images,
patch 8 -> 64 patches + CLS = 65 tokens, width 128, depth 4, whose patch embedding is a small
convolutional stem (:class:`mindeye_core.encoders.ConvStem`, ``--conv-stem 24 48 96``: three 3 x 3
stride-2 convolutions, then 1 x 1 to the width; same 8 x 8 token grid) instead of a linear projection
of 8 x 8 patches, because a from-scratch ViT with linear patches learns silhouettes far too slowly for
a CPU budget; text transformer width 128, depth 3, context 40 tokens with open_clip's bundled BPE
tokenizer (offline); joint embedding 128.
The brain model's hidden target is therefore ``(65, 128)`` and the final target ``(128,)``.

Loss: the symmetric InfoNCE of CLIP with a learned temperature,
``L = (CE(s * I [T; N]^T, diag) + CE(s * T I^T, diag)) / 2`` over L2-normalised image / text embeddings,
where ``N`` holds ``--hard-negatives`` extra captions per image that differ from the true one only in the
category of one object (NegCLIP-style hard negatives, Yuksekgonul et al. 2023). Without them the
contrastive task is solvable from colours, sizes, positions and backgrounds alone, and the model does not
learn the silhouettes (zero-shot category accuracy near chance).
Augmentation (light, position-preserving, because captions name positions and colours): random
translation by up to ``--max-shift`` pixels (reflect padding) and a brightness jitter of +-5 %.

Only the training images of the demo world are used; the shared test images stay held out for the
evaluation written to ``OUT/metrics.json`` (zero-shot category accuracy, image <-> caption top-1).

    python -m training.train_tiny_clip.py --out assets/demo_models/tiny-clip --fp16
    python -m training.train_tiny_clip.py --steps 20 --resume      # continue / extend a run
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.common import (
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
    ap.add_argument("--conv-stem", type=int, nargs="+", default=[24, 48, 96],
                    help="channels of the convolutional patch embedding's stride-2 stages, log2(patch) of them "
                         "(0 = open_clip's linear patch embedding)")
    ap.add_argument("--hard-negatives", type=int, default=1,
                    help="captions per image with one object's category swapped, added as extra negatives "
                         "of the image -> text loss (0 = plain CLIP loss)")
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


def category_swapped_captions(labels: Any, rows: np.ndarray, gen: torch.Generator) -> list[str]:
    """One hard-negative caption per row: the true caption with the category of one object replaced.

    The object is drawn uniformly among the image's objects that are at least 30 % visible (the first,
    largest object when none is); its new category is drawn uniformly among the other categories.

    Args:
        labels: the world's :class:`~mindeye_core.data.demo.stimuli.StimulusLabels`.
        rows: ``(B,)`` dataset rows.
        gen: torch generator (the run's data RNG, so ``--resume`` replays the same captions).

    Returns:
        ``B`` captions in the caption grammar.
    """
    from mindeye_core.data.demo import CATEGORIES
    from mindeye_core.data.demo.stimuli import caption_from_labels

    n_cat = len(CATEGORIES)
    draws = torch.rand(len(rows), 2, generator=gen).numpy()
    out = []
    for r, (u_obj, u_cat) in zip(rows, draws):
        k = int(labels.n_objects[r])
        objs = [[int(labels.category[r, j]), int(labels.colour[r, j]), int(labels.size[r, j]),
                 int(labels.position[r, j])] for j in range(k)]
        visible = [j for j in range(k) if labels.visible[r, j] >= 0.3] or [0]
        j = visible[min(int(u_obj * len(visible)), len(visible) - 1)]
        shift = 1 + min(int(u_cat * (n_cat - 1)), n_cat - 2)
        objs[j][0] = (objs[j][0] + shift) % n_cat
        out.append(caption_from_labels([tuple(o) for o in objs], int(labels.background[r])))
    return out


def main(argv: list[str] | None = None) -> int:
    import open_clip

    from mindeye_core.encoders import build_open_clip_model, clip_preprocess, load_open_clip_folder, save_open_clip_folder

    args = parse_with_config(build_parser(), argv)
    out = setup_run(args, NAME)
    dev = torch.device(args.device)
    clock = Clock(args.max_minutes)
    split = load_demo_split(args.world, max_train=args.max_train_images, progress=not args.no_progress)
    cfg = model_config(args)
    cfg["vision_cfg"]["image_size"] = int(split.train_images.shape[1])
    conv_stem = [int(c) for c in args.conv_stem if int(c) > 0] or None
    model = build_open_clip_model(cfg, conv_stem).to(dev)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    tokens = tokenizer(split.train_captions)  # (N, ctx) int64
    labels = None
    if args.hard_negatives > 0:
        from mindeye_core.data.demo import load_demo_labels

        labels = load_demo_labels(split.root)
    images = torch.from_numpy(split.train_images)  # uint8 (N, H, W, 3), kept on the CPU
    n = images.shape[0]
    bs = min(int(args.batch_size), n)
    size = cfg["vision_cfg"]["image_size"]
    stem = f"conv stem {conv_stem}" if conv_stem else "linear patches"
    print(f"tiny CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters ({stem}), "
          f"{n} training images, batch {bs}, {args.hard_negatives} hard negative(s) per image, "
          f"{args.steps} steps, device {dev}")

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps))
    data_rng = torch.Generator().manual_seed(args.seed + 1)
    model.train()

    def step_fn(step: int) -> dict[str, float]:
        idx = torch.randperm(n, generator=data_rng)[:bs]
        x = augment(to_float_images(images[idx]), args.max_shift, data_rng).to(dev)
        t = tokens[idx]
        if labels is not None:
            rows = split.train_rows[idx.numpy()]
            negs = [tokenizer(category_swapped_captions(labels, rows, data_rng)) for _ in range(args.hard_negatives)]
            t = torch.cat([t, *negs])
        img = F.normalize(model.encode_image(clip_preprocess(x, size)), dim=-1)
        txt = F.normalize(model.encode_text(t.to(dev)), dim=-1)  # (B * (1 + hard negatives), D)
        scale = model.logit_scale.exp().clamp(max=100)
        b = len(idx)
        target = torch.arange(b, device=dev)
        i2t = scale * img @ txt.T  # (B, B * (1 + hard negatives)): true captions first
        t2i = scale * txt[:b] @ img.T  # (B, B)
        loss = (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target)) / 2
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
    save_open_clip_folder(model_to_save, out, cfg, conv_stem=conv_stem)
    # evaluation on the held-out test images, with the weights exactly as saved
    from training.evaluate_demo_models import evaluate_clip

    reloaded, _ = load_open_clip_folder(out)
    metrics = evaluate_clip(reloaded, split, batch=args.eval_batch)
    summary.update({"metrics": metrics, "model_cfg": cfg, "conv_stem": conv_stem, "n_parameters": sum(p.numel() for p in model.parameters()),
                    "args": {k: str(v) for k, v in vars(args).items()}})
    write_json(out / "training_summary.json", summary)
    print(f"saved {out}; metrics: {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
