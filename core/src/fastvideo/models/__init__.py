"""Shared plumbing of the model families: the :class:`~fastvideo.models.dit.DiT` base class, and the
device, dtypes and latent geometry every pipeline builder needs (:mod:`fastvideo.models.components`).

Importing this package imports torch; plugins import it inside their model and pipeline modules.
"""

from fastvideo.models.components import LatentGeometry, default_dtypes, pick_device
from fastvideo.models.dit import DiT, matches_module
from fastvideo.parallel.plan import SequenceParallelPlan

__all__ = ["DiT", "LatentGeometry", "SequenceParallelPlan", "default_dtypes", "matches_module", "pick_device"]
