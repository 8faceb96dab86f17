"""Per-channel image normalisation constants shared by encoders and metric feature networks.

Images in this library are float RGB in ``[0, 1]``; networks trained on ImageNet or by OpenAI's CLIP
expect ``(x - mean) / std`` per channel with these values.
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
