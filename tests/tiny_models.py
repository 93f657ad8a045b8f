"""Small model configurations for tests that need a model only for its plumbing."""

from __future__ import annotations


def tiny_cals_config():
    """A CALS model of a few thousand parameters (runs in seconds on CPU)."""
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig
    from cals.models.l2f import LipToFaceConfig

    return CalsConfig(
        a2l=A2LConfig(unit_dim=8, layers=1, d_model=16, ffn=32, heads=2, dropout=0.0),
        l2f=LipToFaceConfig(unit_dim=8, widths=(8, 8, 8, 8, 8, 8), lip_channels=8),
        window=25,
    )
