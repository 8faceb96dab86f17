"""MindEye Explorer core library.

fMRI-to-image retrieval and reconstruction following MindEye (Scotti et al., NeurIPS 2023).
Sub-packages:

- :mod:`mindeye_core.data`: canonical dataset format, the offline demo world, NSD import.
- :mod:`mindeye_core.models`: brain MLP + projector, diffusion prior, low-level model, ridge baseline.
- :mod:`mindeye_core.losses`: BiMixCo, SoftCLIP, soft contrastive loss.
- :mod:`mindeye_core.encoders` / :mod:`mindeye_core.generators`: image models (real and tiny).
- :mod:`mindeye_core.metrics`: the paper's evaluation protocol.
"""

__version__ = "0.1.0"
