"""Image -> retrieval embedding, with the identity of the model that made it.

An index remembers which model embedded its items (:class:`ModelInfo`: a name, the embedding space and a
sha256 over the weights), and a query made in another model's space is refused
(:meth:`ModelInfo.check_same`). :class:`ImageEmbedder` wraps any :class:`~mindeye_core.encoders.ImageEncoder`
whose target is the final CLIP embedding ``(D,)``, or a hidden-token one ``(T, D)`` whose token 0 is used:
with the CLIP hidden target of this project (every token divided by token 0's norm) token 0 *is* the
L2-normalised final embedding, so one forward pass gives both the index vector and, for the paper's second
stage, the hidden tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..errors import ConfigMismatchError, DataFormatError

if TYPE_CHECKING:
    import torch

__all__ = ["ImageEmbedder", "ModelInfo", "ModelMismatchError", "as_image_batch", "weight_hash"]


class ModelMismatchError(ConfigMismatchError):
    """A query was embedded by another model (or in another space) than the index it is sent to."""


def weight_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, sorted by name).

    The same definition as the results bundle's ``provenance.encoder.sha256`` (written by ``build-demo``),
    so a bundle's brain embeddings can be checked against an index built with the same encoder.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """Who embedded the vectors of an index (or a query).

    Attributes:
        name: the model's name (e.g. ``"tiny-clip"``, ``"ViT-L-14/openai"``).
        sha256: hash of its weights (:func:`weight_hash`), or of whatever identifies them exactly.
        space: which of its embeddings (``"final"``: the final image embedding; ``"hidden"``...).
        dim: vector dimension ``D``.
    """

    name: str
    sha256: str
    space: str = "final"
    dim: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "space": self.space, "dim": int(self.dim)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        for key in ("name", "sha256"):
            if not isinstance(data.get(key), str) or not data.get(key):
                raise DataFormatError(f"embedding model description lacks a {key!r} string: {dict(data)!r}")
        return cls(name=str(data["name"]), sha256=str(data["sha256"]), space=str(data.get("space", "final")),
                   dim=int(data.get("dim", 0)))

    def check_same(self, other: ModelInfo, *, what: str = "index") -> None:
        """Raise :class:`ModelMismatchError` unless ``other`` has the same weights hash, space and dimension."""
        problems = []
        if other.sha256 != self.sha256:
            problems.append(f"weights sha256 {other.sha256[:12]}... != {self.sha256[:12]}...")
        if other.space != self.space:
            problems.append(f"space {other.space!r} != {self.space!r}")
        if self.dim and other.dim and other.dim != self.dim:
            problems.append(f"dimension {other.dim} != {self.dim}")
        if problems:
            raise ModelMismatchError(
                f"query embedded with {other.name!r} ({other.space}) but the {what} was built with "
                f"{self.name!r} ({self.space}): " + "; ".join(problems)
                + ". Embed the query with the index's model or rebuild the index with the query's model.")


def as_image_batch(images: Any) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 (or ``(B, 3, H, W)`` float in [0, 1]) -> ``(B, 3, H, W)`` float32 in [0, 1]."""
    import torch

    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3:
        return images.float()
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise DataFormatError(f"images must be (B, H, W, 3) uint8 or (B, 3, H, W) float, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise DataFormatError(f"channels-last images must be uint8, got {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div_(255.0)


class ImageEmbedder:
    """Images -> L2-normalised retrieval vectors ``(B, D)`` float32 (and, for hidden encoders, the tokens).

    Args:
        encoder: an :class:`~mindeye_core.encoders.ImageEncoder`; target ``(D,)`` (final) or ``(T, D)``
            (hidden tokens; token 0 is used as the vector, see the module docstring).
        name: the model's name recorded in indexes (default: the encoder's ``name``).
        batch_size: images per forward pass.
    """

    def __init__(self, encoder: Any, *, name: str | None = None, batch_size: int = 256) -> None:
        shape = tuple(int(s) for s in encoder.target_shape)
        if len(shape) not in (1, 2):
            raise ConfigMismatchError(f"encoder {encoder.name} has targets {shape}: need (D,) or (T, D)")
        self.encoder = encoder.eval()
        self.hidden = len(shape) == 2
        self.dim = shape[-1]
        self.batch_size = int(batch_size)
        self.info = ModelInfo(name=name or str(encoder.name), sha256=weight_hash(encoder), space="final",
                              dim=self.dim)

    def encode(self, images: Any, *, return_hidden: bool = False) -> Any:
        """Embed a batch.

        Args:
            images: ``(B, H, W, 3)`` uint8 or ``(B, 3, H, W)`` float in [0, 1] (resized by the encoder).
            return_hidden: also return the hidden tokens ``(B, T, D)`` (hidden encoders only).

        Returns:
            ``(B, D)`` float32 unit rows, or ``(vectors, hidden (B, T, D) float32)``.
        """
        import torch

        x = as_image_batch(images)
        vecs, hid = [], []
        for s in range(0, x.shape[0], self.batch_size):
            with torch.no_grad():
                out = self.encoder.encode(x[s : s + self.batch_size]).float()
            if self.hidden:
                hid.append(out.numpy())
                out = out[:, 0]
            vecs.append(torch.nn.functional.normalize(out, dim=-1).numpy())
        v = np.concatenate(vecs).astype(np.float32)
        if return_hidden:
            if not self.hidden:
                raise ConfigMismatchError(f"encoder {self.info.name} gives final embeddings only, no hidden tokens")
            return v, np.concatenate(hid).astype(np.float32)
        return v
