"""Quality numbers of the tiny demo-world models, on the held-out shared test images.

- tiny CLIP: zero-shot category accuracy with prompts written in the caption grammar (64 random
  one-object captions per category, ``"a {size} {colour} {category} at the {position} {background}"``,
  averaged after L2 normalisation, as CLIP's prompt ensembling, see :func:`zero_shot_prompts`); a prediction counts as correct if the category is
  one of the image's objects (``any``), and separately on single-object images (``single``) and for
  the largest object (``largest``; objects are drawn largest first). Image <-> caption retrieval
  top-1 among all test images (chance = 1 / N_test), counted correct when the retrieved caption's
  text equals the true one (identical captions are indistinguishable).
- tiny VAE: PSNR (dB) of ``decode(encode(x))`` over the test images, ``10 log10(1 / MSE)`` per image,
  averaged; also the mean absolute error.
- generator: 2-way identification, with the tiny CLIP's final embedding as the feature, of images
  generated from the ground-truth hidden embeddings of test images (the ceiling for brain-decoded
  reconstructions), via :func:`mindeye_core.metrics.two_way_identification`; plus PSNR vs ground truth.

    python -m training.evaluate_demo_models                       # shipped assets, default world
    python -m training.evaluate_demo_models --models assets/demo_models --world /tmp/world --n-gen 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.common import DemoSplit, load_demo_split, to_float_images, write_json


@torch.no_grad()
def clip_image_features(model: Any, images: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """L2-normalised image embeddings ``(N, D)`` for images ``(N, 3, H, W)`` in [0, 1]."""
    from mindeye_core.encoders import OpenClipEncoder

    enc = OpenClipEncoder(model, target="final", normalize=True)
    return enc.encode_batches(images, batch_size=batch)


@torch.no_grad()
def clip_text_features(model: Any, texts: list[str], batch: int = 500) -> torch.Tensor:
    """L2-normalised text embeddings ``(N, D)``."""
    import open_clip

    ctx = int(model.context_length)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    dev = next(model.parameters()).device
    parts = [F.normalize(model.encode_text(tok(texts[i:i + batch]).to(dev)).float(), dim=-1).cpu()
             for i in range(0, len(texts), batch)]
    return torch.cat(parts)


_FIELDS = ("category", "colour", "size", "position")


def zero_shot_prompts(per_class: int = 64, seed: int = 0, field: str = "category") -> list[str]:
    """``per_class`` prompts per value of ``field`` (class-major order), written with the caption
    grammar: one object whose ``field`` is the class and whose other attributes and background are
    random, e.g. ``"a large red star at the top left above green ground"``."""
    from mindeye_core.data.demo import BACKGROUNDS, CATEGORIES, COLOUR_NAMES, POSITIONS, SIZE_NAMES
    from mindeye_core.data.demo.stimuli import caption_from_labels

    sizes = {"category": len(CATEGORIES), "colour": len(COLOUR_NAMES), "size": len(SIZE_NAMES),
             "position": len(POSITIONS)}
    rng = np.random.default_rng(seed)
    out = []
    for k in range(sizes[field]):
        for _ in range(per_class):
            obj = {f: int(rng.integers(sizes[f])) for f in _FIELDS}
            obj[field] = k
            out.append(caption_from_labels([(obj["category"], obj["colour"], obj["size"], obj["position"])],
                                           int(rng.integers(len(BACKGROUNDS)))))
    return out


@torch.no_grad()
def zero_shot_classifier(model: Any, field: str = "category", per_class: int = 64) -> torch.Tensor:
    """Class embeddings ``(n_classes, D)`` for zero-shot classification of ``field``: the L2-normalised
    mean of the normalised text embeddings of :func:`zero_shot_prompts` (CLIP's prompt ensembling)."""
    prompts = zero_shot_prompts(per_class, field=field)
    feats = clip_text_features(model, prompts)
    return F.normalize(feats.view(len(prompts) // per_class, per_class, -1).mean(1), dim=-1)


@torch.no_grad()
def evaluate_clip(model: Any, split: DemoSplit, *, batch: int = 200, per_category: int = 64) -> dict[str, float]:
    """Zero-shot category accuracy and image <-> caption top-1 retrieval on the test images."""
    from mindeye_core.data.demo import CATEGORIES, load_demo_labels

    model.eval()
    img = clip_image_features(model, to_float_images(split.test_images), batch)
    labels = load_demo_labels(split.root)
    n_obj = labels.n_objects[split.test_rows]
    single = n_obj == 1
    res: dict[str, float] = {}
    for field in _FIELDS:
        txt = zero_shot_classifier(model, field, per_category)
        n_cls = txt.shape[0]
        p = (img @ txt.T).argmax(1).numpy()
        truth = getattr(labels, field)[split.test_rows]
        if field != "category":
            res[f"zero_shot_{field}_single"] = float((p[single] == truth[single, 0]).mean())
            res[f"zero_shot_{field}_chance"] = 1.0 / n_cls
        else:
            pred, cats = p, truth
    caps = split.test_captions
    cap = clip_text_features(model, caps)
    sim = img @ cap.T  # (N images, N captions)
    i2t = sim.argmax(1).numpy()
    t2i = sim.argmax(0).numpy()
    n = len(caps)
    any_hit = np.array([q in set(c[c >= 0].tolist()) for q, c in zip(pred, cats)])
    return {
        **res,
        "zero_shot_any": float(any_hit.mean()),
        "zero_shot_single": float((pred[single] == cats[single, 0]).mean()) if single.any() else float("nan"),
        "zero_shot_largest": float((pred == cats[:, 0]).mean()),
        "zero_shot_chance_single": 1.0 / len(CATEGORIES),
        "image_to_caption_top1": float(np.mean([caps[i2t[i]] == caps[i] for i in range(n)])),
        "caption_to_image_top1": float(np.mean([caps[t2i[j]] == caps[j] for j in range(n)])),
        "retrieval_candidates": n,
        "n_test_images": n,
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(1 / mean((a - b)^2))``, for images in [0, 1]: ``(N,)``."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def evaluate_vae(vae: Any, split: DemoSplit, *, batch: int = 100, device: str = "cpu") -> dict[str, float]:
    """Reconstruction PSNR of the VAE (posterior mode) on the test images."""
    from mindeye_core.encoders import VaeLatentEncoder

    x = to_float_images(split.test_images)
    enc = VaeLatentEncoder(vae, image_size=x.shape[-1]).to(device)
    vals, maes = [], []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].to(device)
        rec = enc.decode(enc.encode(xb))
        vals.append(psnr(rec, xb).cpu())
        maes.append((rec - xb).abs().flatten(1).mean(1).cpu())
    v = torch.cat(vals)
    return {"psnr_db": float(v.mean()), "psnr_db_median": float(v.median()),
            "mae": float(torch.cat(maes).mean()), "n_test_images": int(x.shape[0]),
            "latent_shape": list(enc.target_shape)}


@torch.no_grad()
def evaluate_generator(generator: Any, clip_model: Any, split: DemoSplit, *, n: int = 100, steps: int = 20,
                       guidance: float | None = None, seed: int = 0, batch: int = 25,
                       grid_path: Path | None = None, grid_n: int = 8) -> dict[str, float]:
    """Generate from the ground-truth hidden tiny-CLIP embeddings of the first ``n`` test images and
    score with 2-way identification on the tiny CLIP's final embedding.

    ``clip_model`` is the full tiny CLIP (image and text towers). Silhouettes are scored too: the tiny
    CLIP's zero-shot category (see :func:`evaluate_clip`) of the generated vs the ground-truth images among
    the one-object test scenes (``category_accuracy_generated_single`` / ``..._ground_truth_single``: the
    latter is the ceiling) and how often the two predictions agree (``category_agreement_single``).
    """
    from mindeye_core.encoders import OpenClipEncoder
    from mindeye_core.metrics import two_way_identification

    x = to_float_images(split.test_images[:n])
    hidden = OpenClipEncoder(clip_model, target="hidden").encode_batches(x, batch_size=100)
    t0 = time.perf_counter()
    outs = [generator.generate(hidden[i:i + batch], steps=steps, guidance=guidance, seed=seed + i)[:, 0].cpu()
            for i in range(0, n, batch)]
    secs = time.perf_counter() - t0
    gen = torch.cat(outs)
    f_gt = clip_image_features(clip_model, x)
    f_gen = clip_image_features(clip_model, gen)
    ident = two_way_identification(f_gt.numpy(), f_gen.numpy())
    if grid_path is not None:
        save_grid(x[:grid_n], gen[:grid_n], grid_path)
    from mindeye_core.data.demo import load_demo_labels

    labels = load_demo_labels(split.root)
    rows = split.test_rows[:n]
    single = labels.n_objects[rows] == 1
    txt = zero_shot_classifier(clip_model, "category")
    p_gt, p_gen = (f_gt @ txt.T).argmax(1).numpy(), (f_gen @ txt.T).argmax(1).numpy()
    truth = labels.category[rows, 0]
    extra: dict[str, float] = {}
    if single.any():
        extra = {"category_accuracy_generated_single": float((p_gen[single] == truth[single]).mean()),
                 "category_accuracy_ground_truth_single": float((p_gt[single] == truth[single]).mean()),
                 "category_agreement_single": float((p_gen[single] == p_gt[single]).mean()),
                 "n_single_object": int(single.sum())}
    return {"two_way_identification_clip": float(ident), **extra, "n_images": int(n), "steps": int(steps),
            "guidance": float(generator.default_guidance if guidance is None else guidance),
            "psnr_db_vs_ground_truth": float(psnr(gen, x).mean()),
            "seconds_per_image": round(secs / n, 3), "threads": torch.get_num_threads()}


def save_grid(gt: torch.Tensor, gen: torch.Tensor, path: Path, scale: int = 2) -> Path:
    """Two rows (ground truth over generated), ``(K, 3, H, W)`` each, upscaled x``scale``, to PNG."""
    from PIL import Image

    k, _, h, w = gt.shape
    pad = 2
    canvas = np.full((2 * h + 3 * pad, k * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate((gt, gen)):
        arr = (row.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for i in range(k):
            y, x0 = pad + r * (h + pad), pad + i * (w + pad)
            canvas[y:y + h, x0:x0 + w] = arr[i]
    img = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None, help="folder holding tiny-clip/ tiny-vae/ tiny-generator/")
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--n-gen", type=int, default=100, help="test images to generate from")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, default=None, help="write a ground truth / generated PNG grid here")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    ap.add_argument("--skip", nargs="*", default=[], choices=["clip", "vae", "generator"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mindeye_core import demo_models

    split = load_demo_split(args.world)
    res: dict[str, Any] = {}
    clip_model = demo_models.load_demo_clip_model(args.models)[0]
    if "clip" not in args.skip:
        res["clip"] = evaluate_clip(clip_model, split)
        print("clip", res["clip"])
    if "vae" not in args.skip:
        res["vae"] = evaluate_vae(demo_models.load_demo_vae(args.models).vae.float(), split)
        print("vae", res["vae"])
    if "generator" not in args.skip:
        gen = demo_models.load_demo_generator(args.models)
        res["generator"] = evaluate_generator(gen, clip_model, split, n=args.n_gen, steps=args.steps,
                                              guidance=args.guidance, grid_path=args.grid)
        print("generator", res["generator"])
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
