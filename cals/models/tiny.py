"""Small widths of every model: ``cals-train --tiny`` (the whole recipe as a smoke test on a CPU)
and the tests that need a model only for its plumbing. Each model keeps its own architecture;
only sizes shrink (a few thousand to a few hundred thousand parameters)."""

from __future__ import annotations

from cals.models.a2l import A2LConfig
from cals.models.cals_model import CalsConfig
from cals.models.discriminator import DiscriminatorConfig
from cals.models.l2f import LipToFaceConfig
from cals.models.sync_critic import SyncCriticConfig

#: Frames per window of the tiny CALS model (its training window in the recipe).
TINY_WINDOW = 10
#: Sync critic: 16-dim embeddings of a 32x64 mouth.
TINY_CRITIC = SyncCriticConfig(embed_dim=16, mouth_size=(32, 64), video_channels=(8, 8, 8, 8, 16), audio_channels=(8, 8, 8, 8, 16))
#: PatchGAN discriminator widths.
TINY_DISCRIMINATOR = DiscriminatorConfig((8, 16, 16, 32))


def tiny_a2l_config(unit_dim: int) -> A2LConfig:
    """Audio-to-Lip of one layer, d_model 32, predicting ``unit_dim``-sized lip units."""
    return A2LConfig(unit_dim=unit_dim, layers=1, d_model=32, ffn=64, heads=2)


def tiny_cals_config(unit_dim: int, window: int = TINY_WINDOW) -> CalsConfig:
    """CALS (tiny A2L + Lip-to-Face) for ``unit_dim``-sized lip units, ``window`` frames at a time."""
    a2l = tiny_a2l_config(unit_dim)
    return CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=unit_dim, widths=(8, 16, 16, 32, 32, 32), lip_channels=16), window=window)
