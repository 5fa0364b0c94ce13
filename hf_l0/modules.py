"""Stand-ins for sublayers that pruning removed whole (no heads or no neurons left).

They live in :mod:`hf_l0.compact` (a standalone module that is also written next to saved compact models as their
``trust_remote_code`` modeling file), so a model rebuilt from a saved directory uses the very same classes.
"""

from .compact import ConstantProjection, EmptySelfAttention, RemovedAttention, RemovedMLP

__all__ = ["ConstantProjection", "EmptySelfAttention", "RemovedAttention", "RemovedMLP"]
