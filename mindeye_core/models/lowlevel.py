"""MindEye's low-level (perceptual) model: voxels -> Stable Diffusion VAE latents (blurry reconstructions).

Architecture (official ``Voxel2StableDiffusionModel``, ``ups_mode='4x'``)::

    h      = residual MLP backbone(x)                       (B, n_voxels) -> (B, hidden)
             (lin0 and blocks: Linear(no bias) -> LayerNorm -> SiLU -> Dropout 0.5 / 0.25)
    z      = GroupNorm_1( reshape(W1 h, (B, C, S, S)) )      C x S x S = 64 x 16 x 16, W1 without bias
    latent = Decoder(z)                                      diffusers VAE Decoder, up blocks [64, 128, 256],
                                                             one ResNet per block -> (B, 4, 4S, 4S) = (B, 4, 64, 64)
    feats  = 1x1 convs C -> 512 -> 512 -> 512 (GroupNorm_1 + ReLU between), flattened to (B, S*S, 512)

``latent`` is trained with L1 against ``0.18215 * VAE.encode(image)`` and ``feats`` with
:func:`mindeye_core.losses.soft_cont_loss` (temperature 0.075, weight 0.1) against the VICRegL
teacher's per-location features. The paper gives the shapes; the activation (SiLU), the bias-free
linear layers and the dropout 0.25 in the blocks come from the official code.

The number of up blocks ``len(block_out_channels)`` fixes the upsampling factor ``2^(blocks-1)``
(the diffusers Decoder upsamples after every block but the last), so ``latent_size * 2^(blocks-1)``
must equal the VAE latent size (16 * 4 = 64 for NSD).
"""

from __future__ import annotations

import torch
from torch import nn

from ..io import ConfigModule
from .brain import ResidualMLPBackbone, check_voxels

__all__ = ["LowLevelModel"]


class LowLevelModel(ConfigModule):
    """Voxels -> VAE latents ``(B, out_channels, 4S, 4S)`` + contrastive features ``(B, S*S, proj_dim)``.

    Args:
        n_voxels: voxels of the subject.
        hidden: MLP width (4096).
        n_blocks: residual blocks (4).
        latent_channels: ``C`` of the backbone's spatial map (64).
        latent_size: ``S`` of the backbone's spatial map (16).
        out_channels: VAE latent channels (4).
        block_out_channels: Decoder up-block widths (``[64, 128, 256]``).
        layers_per_block: ResNet layers per Decoder block (1).
        norm_num_groups: GroupNorm groups inside the Decoder (32; must divide every width).
        use_projector: build the contrastive 1x1-conv projector (True).
        proj_dim: projector width (512).
        dropout_in, dropout_block: backbone dropouts (0.5, 0.25).
    """

    def __init__(
        self,
        n_voxels: int = 15724,
        hidden: int = 4096,
        n_blocks: int = 4,
        latent_channels: int = 64,
        latent_size: int = 16,
        out_channels: int = 4,
        block_out_channels: list[int] | tuple[int, ...] = (64, 128, 256),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        use_projector: bool = True,
        proj_dim: int = 512,
        dropout_in: float = 0.5,
        dropout_block: float = 0.25,
    ) -> None:
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder

        block_out_channels = tuple(int(c) for c in block_out_channels)
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"LowLevelModel: norm_num_groups={norm_num_groups} must divide every block width, not {bad}")
        self.n_voxels = n_voxels
        self.latent_channels, self.latent_size = latent_channels, latent_size
        self.backbone = ResidualMLPBackbone(n_voxels, hidden, n_blocks, nn.SiLU, dropout_in, dropout_block, bias=False)
        self.lin1 = nn.Linear(hidden, latent_channels * latent_size * latent_size, bias=False)
        self.norm = nn.GroupNorm(1, latent_channels)
        self.upsampler = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.projector: nn.Module | None = None
        if use_projector:
            self.projector = nn.Sequential(
                nn.Conv2d(latent_channels, proj_dim, 1, bias=False),
                nn.GroupNorm(1, proj_dim),
                nn.ReLU(),
                nn.Conv2d(proj_dim, proj_dim, 1, bias=False),
                nn.GroupNorm(1, proj_dim),
                nn.ReLU(),
                nn.Conv2d(proj_dim, proj_dim, 1),
            )

    @property
    def output_size(self) -> int:
        """Spatial size of the predicted latents: ``latent_size * 2**(len(block_out_channels) - 1)``."""
        return self.latent_size * 2 ** (len(self.config["block_out_channels"]) - 1)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "LowLevelModel":
        """Checkpoint the residual blocks and the diffusers Decoder."""
        self.backbone.gradient_checkpointing = bool(enabled)
        self.upsampler.gradient_checkpointing = bool(enabled)
        return self

    def forward_map(self, voxels: torch.Tensor) -> torch.Tensor:
        """``(B, n_voxels) -> (B, C, S, S)`` normalised backbone map."""
        check_voxels(voxels, self.n_voxels, type(self).__name__)
        h = self.lin1(self.backbone(voxels))
        return self.norm(h.reshape(voxels.shape[0], self.latent_channels, self.latent_size, self.latent_size))

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(latents (B, out_channels, 4S, 4S), features (B, S*S, proj_dim) or None)``."""
        z = self.forward_map(voxels)
        latents = self.upsampler(z)
        feats = None
        if self.projector is not None:
            feats = self.projector(z).flatten(2).transpose(1, 2)
        return latents, feats
