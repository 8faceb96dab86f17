"""Generator interface: target embeddings (+ optional init image) -> images.

A :class:`Generator` maps image-embedding tokens ``(B, T, D)`` (e.g. MindEye's aligned CLIP
hidden embeddings, 257 x 768) to ``n_samples`` images per input, ``(B, n, 3, H, W)`` in ``[0, 1]``.

img2img strength follows the *paper's* convention (Table 5): ``strength = 0`` is pure high-level
generation (the init image is ignored), ``strength = 1`` returns only the init image (after the
VAE round trip), MindEye's default is 0.15. The official code uses the complementary number
(``img2img_strength = 0.85``); internally both mean "run the last ``round((1 - strength) * steps)``
of the ``steps`` denoising steps, starting from the init latents noised to that level".
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch

from ..errors import ConfigMismatchError, DataFormatError

__all__ = ["Generator", "check_count", "check_finite", "check_sampling", "check_strength", "img2img_steps",
           "check_embeddings", "seed_generators"]


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int after checking it is an integer (not a bool, not NaN) ``>= minimum``.

    Raises:
        ValueError: naming ``name`` and the value.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok = True
    if not ok or int(value) < minimum:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_finite(value: object, name: str) -> float:
    """``value`` as a float after checking it is a finite real number (NaN / inf / strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_sampling(n_samples: object, steps: object, guidance: object) -> tuple[int, int | None, float | None]:
    """Validate the sampling parameters of :meth:`Generator.generate` at the API boundary.

    Returns:
        ``(n_samples, steps, guidance)``; ``steps`` / ``guidance`` stay ``None`` (generator default) when None.

    Raises:
        ValueError: ``n_samples < 1``, ``steps < 1`` or non-integer, NaN/inf guidance (naming the parameter).
    """
    n = check_count(n_samples, "n_samples")
    s = None if steps is None else check_count(steps, "steps")
    g = None if guidance is None else check_finite(guidance, "guidance")
    return n, s, g


def check_strength(strength: float) -> float:
    """Validate an img2img strength in the paper's convention; returns it as a float."""
    s = check_finite(strength, "img2img strength")
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"img2img strength must be in [0, 1] (0 = pure high-level, 1 = only the init image), "
                         f"got {strength}")
    return s


def img2img_steps(strength: float, steps: int) -> int:
    """Number of denoising steps actually run: ``round((1 - strength) * steps)``.

    ``strength`` uses the paper's convention (0 = all ``steps``, 1 = none). Examples: 20 steps at
    strength 0.15 -> 17 steps (the official code's ``int(20 * 0.85)``); strength 1 -> 0.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return int(round((1.0 - check_strength(strength)) * int(steps)))


def check_embeddings(embeddings: torch.Tensor, expected: tuple[int, ...] | None, *, who: str) -> torch.Tensor:
    """Check ``(B, T, D)`` embeddings (finite; ``(T, D) == expected`` when ``expected`` is given)."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise DataFormatError(f"{who}: embeddings must have shape (B, T, D), got {shape}")
    if embeddings.shape[0] == 0:
        raise DataFormatError(f"{who}: empty batch of embeddings")
    if expected is not None and tuple(embeddings.shape[1:]) != tuple(expected):
        raise DataFormatError(f"{who}: expected embeddings of shape (B, {', '.join(map(str, expected))}), "
                              f"got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise DataFormatError(f"{who}: embeddings contain NaN or infinite values")
    return embeddings


def seed_generators(seed: int | Sequence[int], batch: int, *, who: str = "generate") -> torch.Generator | list[torch.Generator]:
    """CPU random generators for ``seed``: one for an int, one per input row for a sequence.

    Args:
        seed: an int (one generator for the whole batch) or ``batch`` ints (generator ``i`` =
            ``torch.Generator().manual_seed(seed[i])`` draws all of row ``i``'s noise, so a row's
            output does not depend on the other rows of its batch).
        batch: the number of input rows ``B``.
        who: caller, for error messages.

    Raises:
        ValueError: a sequence whose length is not ``batch``, or a seed that is not an integer.
    """
    if isinstance(seed, numbers.Integral) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        return torch.Generator().manual_seed(int(seed))
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Iterable):
        if isinstance(seed, float) and seed.is_integer():
            return torch.Generator().manual_seed(int(seed))
        raise ValueError(f"{who}: seed must be an int or a sequence of {batch} ints, got {seed!r}")
    values = list(seed)
    if any(not isinstance(s, numbers.Integral) and not (isinstance(s, torch.Tensor) and s.ndim == 0
                                                         and not s.is_floating_point()) for s in values):
        raise ValueError(f"{who}: seeds must be integers, got {values[:8]}")
    if len(values) != batch:
        raise ValueError(f"{who}: got {len(values)} seeds for {batch} input rows (seed must be an int or one "
                         f"int per input row)")
    return [torch.Generator().manual_seed(int(s)) for s in values]


class Generator(ABC):
    """Abstract embedding -> image generator.

    Attributes:
        embedding_shape: ``(T, D)`` of one conditioning embedding, or ``None`` if any ``T`` works.
        image_size: side length of generated images.
        default_steps, default_guidance: the sampling defaults of this generator.
    """

    embedding_shape: tuple[int, int] | None
    image_size: int
    default_steps: int = 20
    default_guidance: float = 3.5

    def check_embedding_shape(self, expected: tuple[int, ...] | None, *, where: str) -> None:
        """Raise :class:`ConfigMismatchError` unless ``expected`` (if given) equals :attr:`embedding_shape`.

        Args:
            expected: the ``(T, D)`` a caller (e.g. a brain model's config) will feed, or ``None`` (no check).
            where: what was loaded, for the message (e.g. ``"generator in /path"``).
        """
        if expected is not None and self.embedding_shape != tuple(expected):
            raise ConfigMismatchError(f"{where} takes embeddings {self.embedding_shape}, expected {tuple(expected)}")

    @abstractmethod
    def generate(
        self,
        embeddings: torch.Tensor,
        init_images: torch.Tensor | None = None,
        strength: float = 0.0,
        n_samples: int = 1,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | Sequence[int] = 0,
    ) -> torch.Tensor:
        """Generate images.

        Args:
            embeddings: ``(B, T, D)`` conditioning tokens.
            init_images: optional ``(B, 3, H, W)`` in ``[0, 1]`` (e.g. MindEye's blurry
                reconstructions) for img2img.
            strength: img2img strength, paper convention (0 = ignore ``init_images``, 1 = return
                them); must be 0 without ``init_images``.
            n_samples: images per input (MindEye: 16, then best-of-N by CLIP similarity).
            steps: denoising steps (default :attr:`default_steps`).
            guidance: classifier-free guidance scale (default :attr:`default_guidance`; 1 disables).
            seed: seeds all randomness; equal seeds and inputs give equal outputs. A sequence gives
                one seed per input row (``B`` of them, see :func:`seed_generators`): row ``i``'s noise
                is drawn from its own generator, so its images equal those of row ``i`` run alone.

        Returns:
            ``(B, n_samples, 3, image_size, image_size)`` in ``[0, 1]``.
        """
