"""Convert MindEye's released checkpoints into our folders; the ``mindeye convert-official`` command.

The official per-subject checkpoints live in the Hugging Face *dataset* repo
``pscotti/naturalscenesdataset`` under ``mindeye_models/`` (subjects 1, 2, 5, 7):

=============  ================================================================  ========  =====================
``--model``    file                                                              size      our class
=============  ================================================================  ========  =====================
``257x768``    ``prior_257_final_subj0X_bimixco_softclip_byol/last.pth``          ~12 GB    MindEyeHighLevel
``1x768``      ``prior_1x768_final_subj0X_bimixco_softclip_byol/last.pth``        ~2.9 GB   MindEyeHighLevel
``lowlevel``   ``autoencoder_subj0X_4x_locont_no_reconst/epoch120.pth``           ~2.4 GB   LowLevelModel
=============  ================================================================  ========  =====================

Conversion (:func:`convert_official_checkpoint`):

1. the file is hashed (SHA-256, streamed) and read with :func:`~.checkpoint.load_official_checkpoint`
   (weights-only, memory-mapped: the optimizer state is never read into memory);
2. :func:`~.layout.map_official_state` maps every model tensor onto our class, strictly (missing,
   extra, mis-shaped tensors and derived buffers that disagree are all listed in one error);
3. ``model.safetensors`` is written tensor by tensor in 64 MB pieces straight from the mapped file
   (no second copy of the weights in memory), then ``config.json`` (our constructor arguments, with
   the source file's hash and the dropped entries under ``_provenance``), into ``<out>.partial`` renamed
   to ``<out>`` at the end.

The result loads with ``MindEyeHighLevel.from_pretrained(out)`` / ``LowLevelModel.from_pretrained(out)``
and plugs into :mod:`mindeye_core.recon` through :func:`converted_nsd_spec`.

Downloads use ``huggingface_hub.hf_hub_download`` (progress bar, resumable, cached under
``$MINDEYE_CACHE/hf``) at :data:`OFFICIAL_REVISION`.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..configfile import dump_versioned_config
from ..errors import CheckpointError, MindEyeError
from ..io import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, write_sha256
from ..paths import cache_dir
from ..cli import output_folder_arg
from ..staging import begin
from .checkpoint import file_sha256, load_official_checkpoint, official_model_state
from .layout import OFFICIAL_MODELS, MappedCheckpoint, map_official_state

__all__ = [
    "OFFICIAL_REPO_ID",
    "OFFICIAL_REVISION",
    "OFFICIAL_SUBJECTS",
    "convert_official_checkpoint",
    "converted_nsd_spec",
    "default_output_dir",
    "download_official_checkpoint",
    "official_filename",
    "register",
    "write_safetensors",
]

OFFICIAL_REPO_ID = "pscotti/naturalscenesdataset"
OFFICIAL_REVISION = "main"
"""Revision of :data:`OFFICIAL_REPO_ID` downloads use. Not yet pinned to a commit (this project's build
machine has no network to read it); the commit actually resolved is written into the provenance, and
the file's SHA-256 identifies it in any case. Pass ``--revision <commit>`` to pin."""

OFFICIAL_SUBJECTS = (1, 2, 5, 7)
_FILES = {
    "257x768": "mindeye_models/prior_257_final_subj{s:02d}_bimixco_softclip_byol/last.pth",
    "1x768": "mindeye_models/prior_1x768_final_subj{s:02d}_bimixco_softclip_byol/last.pth",
    "lowlevel": "mindeye_models/autoencoder_subj{s:02d}_4x_locont_no_reconst/epoch120.pth",
}
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_choice(model: str, subject: int | None) -> None:
    if model not in OFFICIAL_MODELS:
        raise ValueError(f"model must be one of {OFFICIAL_MODELS}, got {model!r}")
    if subject is not None and subject not in OFFICIAL_SUBJECTS:
        raise ValueError(f"MindEye released models for subjects {OFFICIAL_SUBJECTS}, not {subject!r}")


def official_filename(model: str, subject: int) -> str:
    """Path of a released checkpoint inside :data:`OFFICIAL_REPO_ID` (e.g. ``mindeye_models/.../last.pth``)."""
    _check_choice(model, subject)
    return _FILES[model].format(s=subject)


def default_output_dir(subject: int, model: str) -> Path:
    """Where a conversion goes by default: ``$MINDEYE_CACHE/official/subj0X/<model>``."""
    _check_choice(model, subject)
    return cache_dir() / "official" / f"subj{subject:02d}" / model


def download_official_checkpoint(model: str, subject: int, *, revision: str = OFFICIAL_REVISION,
                                 cache: str | Path | None = None) -> Path:
    """Download one released checkpoint (only that file) and return its local path.

    ``huggingface_hub`` shows progress, resumes interrupted downloads and reuses its cache
    (default ``$MINDEYE_CACHE/hf``).
    """
    from huggingface_hub import hf_hub_download

    filename = official_filename(model, subject)
    try:
        path = hf_hub_download(repo_id=OFFICIAL_REPO_ID, repo_type="dataset", filename=filename, revision=revision,
                               cache_dir=str(cache if cache is not None else cache_dir() / "hf"))
    except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
        raise MindEyeError(f"could not download {OFFICIAL_REPO_ID}/{filename} (revision {revision!r}): {exc}") from exc
    return Path(path)


# ------------------------------------------------------------------------------------------ writing
def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None,
                      dtype: torch.dtype | None = None, chunk_bytes: int = 64 << 20) -> Path:
    """Write a ``.safetensors`` file tensor by tensor, ``chunk_bytes`` at a time.

    Unlike ``safetensors.torch.save_file`` (which first builds the bytes of every tensor) the peak extra
    memory is one chunk, so tensors memory-mapped from a checkpoint are streamed from disk to disk.

    Args:
        tensors: name -> tensor (any strides; floating tensors cast to ``dtype`` when given).
        metadata: string -> string stored in the header's ``__metadata__``.
    """
    path = Path(path)
    entries, offset = {}, 0
    plan: list[tuple[str, torch.Tensor, torch.dtype]] = []
    for name in sorted(tensors):
        t = tensors[name]
        out_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if out_dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"write_safetensors: {name} has unsupported dtype {out_dtype}")
        nbytes = t.numel() * torch.empty((), dtype=out_dtype).element_size()
        entries[name] = {"dtype": _SAFETENSORS_DTYPES[out_dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((name, t, out_dtype))
        offset += nbytes
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _, t, out_dtype in plan:
            flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
            step = max(1, chunk_bytes // max(1, flat.element_size()))
            for start in range(0, flat.numel(), step):
                piece = flat[start:start + step].to(out_dtype).contiguous()
                f.write(piece.view(torch.uint8).numpy().data if piece.numel() else b"")
    tmp.replace(path)
    return path


def _provenance(source: Path, model: str, subject: int | None, sha256: str, top: Mapping[str, Any],
                mapped: MappedCheckpoint, dtype: torch.dtype, source_info: Mapping[str, Any] | None) -> dict[str, Any]:
    epoch = top.get("epoch")
    return {
        "source": {"file": source.name, "sha256": sha256, "size_bytes": source.stat().st_size, **(source_info or {})},
        "official_model": model,
        "subject": subject,
        "epoch": epoch if isinstance(epoch, (int, float)) else None,
        "dropped_entries": sorted(str(k) for k in top if k != "model_state_dict"),
        "verified_buffers": len(mapped.verified),
        "dtype": str(dtype).removeprefix("torch."),
        "converter": f"mindeye_core {__version__} (mindeye_core.official)",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def convert_official_checkpoint(
    source: str | Path,
    model: str,
    out: str | Path,
    *,
    subject: int | None = None,
    dtype: torch.dtype | None = None,
    source_info: Mapping[str, Any] | None = None,
) -> Path:
    """Convert one released checkpoint file into ``out/config.json`` + ``out/model.safetensors``.

    Args:
        source: the ``.pth`` file (downloaded or local).
        model: ``"257x768"``, ``"1x768"`` or ``"lowlevel"``.
        out: destination folder, written via ``<out>.partial`` (:mod:`mindeye_core.staging`); an existing
            folder is replaced only if it holds a converted model of the same class (or nothing), once the new
            one is complete.
        subject: NSD subject, recorded in the provenance.
        dtype: store floating tensors in this dtype (default: as in the file, float32).
        source_info: extra provenance (repo id, filename, revision) recorded with the hash.

    Returns:
        ``out``.

    Raises:
        CheckpointError: unreadable/unsafe file or a state dict that does not map strictly.
    """
    _check_choice(model, subject)
    source, out = Path(source), Path(out)
    top = load_official_checkpoint(source)
    mapped = map_official_state(official_model_state(top, source), model, where=str(source))
    sha256 = file_sha256(source)
    stored = dtype or torch.float32
    with begin(out, kind=mapped.cls.__name__, manifest=CONFIG_NAME, overwrite=True, sources=[source]) as staging:
        weights = staging.partial / WEIGHTS_NAME
        write_safetensors(weights, mapped.tensors, dtype=dtype,
                          metadata={"format": "pt", "class": mapped.cls.__name__, "source_sha256": sha256})
        write_sha256(weights)
        provenance = _provenance(source, model, subject, sha256, top if "model_state_dict" in top else {}, mapped,
                                 stored, source_info)
        text = dump_versioned_config(mapped.cls.__name__, FORMAT_VERSION, mapped.cls.complete_config(mapped.config), meta={"provenance": provenance})
        staging.publish(text)
    return out


# ------------------------------------------------------------------------------------ pipeline spec
def converted_nsd_spec(subject: int = 1, root: str | Path | None = None, *, with_lowlevel: bool | None = None,
                       **overrides: Any) -> Any:
    """A :class:`mindeye_core.recon.ReconstructionSpec` for converted official models of ``subject``.

    Uses ``<root>/subj0X/257x768`` as the brain model and, when present (or ``with_lowlevel=True``),
    ``<root>/subj0X/lowlevel`` for the blurry image; ``root`` defaults to ``$MINDEYE_CACHE/official``
    (where ``mindeye convert-official`` writes). Everything else is :func:`mindeye_core.recon.nsd_spec`
    (CLIP ViT-L/14, Versatile Diffusion, paper settings); ``overrides`` replace any field.

    Raises:
        CheckpointError: the 257x768 conversion (or a requested low-level one) is missing.
    """
    from ..recon import nsd_spec

    _check_choice("257x768", subject)
    base = Path(root) if root is not None else cache_dir() / "official"
    folder = base / f"subj{subject:02d}"
    brain, lowlevel = folder / "257x768", folder / "lowlevel"
    if not (brain / CONFIG_NAME).is_file():
        raise CheckpointError(f"no converted 257x768 model in {brain}: run "
                              f"`mindeye convert-official --subject {subject} --model 257x768` first")
    use_low = (lowlevel / CONFIG_NAME).is_file() if with_lowlevel is None else with_lowlevel
    if use_low and not (lowlevel / CONFIG_NAME).is_file():
        raise CheckpointError(f"no converted low-level model in {lowlevel}: run "
                              f"`mindeye convert-official --subject {subject} --model lowlevel` first")
    return nsd_spec(str(brain), str(lowlevel) if use_low else None, **overrides)


# --------------------------------------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    """Add ``convert-official`` to the ``mindeye`` command."""
    p = subparsers.add_parser("convert-official", help="download and convert MindEye's released checkpoints")
    p.add_argument("--subject", type=int, required=True, choices=OFFICIAL_SUBJECTS, help="NSD subject")
    p.add_argument("--model", required=True, choices=OFFICIAL_MODELS, help="which released model")
    p.add_argument("--source", type=Path, default=None, help="a local .pth instead of downloading")
    p.add_argument("--out", type=output_folder_arg, default=None, help="output folder (default: $MINDEYE_CACHE/official/subj0X/MODEL)")
    p.add_argument("--revision", default=OFFICIAL_REVISION, help=f"revision of {OFFICIAL_REPO_ID} to download")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="store the weights in this dtype (default: as in the file)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else default_output_dir(args.subject, args.model)
    try:
        info: dict[str, Any] = {}
        if args.source is None:
            source = download_official_checkpoint(args.model, args.subject, revision=args.revision)
            info = {"repo_id": OFFICIAL_REPO_ID, "filename": official_filename(args.model, args.subject),
                    "revision": args.revision, "resolved_commit": _snapshot_commit(source)}
        else:
            source = args.source
        start = time.perf_counter()
        convert_official_checkpoint(source, args.model, out, subject=args.subject,
                                    dtype=_DTYPES[args.dtype] if args.dtype else None, source_info=info)
    except (MindEyeError, ValueError) as exc:
        print(f"mindeye convert-official: {exc}", file=sys.stderr)
        return 1
    print(f"converted {source} -> {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a ``huggingface_hub`` cache path (``.../snapshots/<commit>/...``), if it is one."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
