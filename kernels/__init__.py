"""Replaceable kernels for the hot steps of the fusion.

Each kernel is a function with a torch implementation (the reference, used on the CPU)
and, where Triton runs (CUDA, or its interpreter), a fused Triton twin that gives the
same result bit for bit; ``dispatch.use_triton`` chooses.
"""

from .pyramid_level import laplacian_level, laplacian_pyramid
from .select import RunningMax, energy_fold, fold_max, mask_unusable

__all__ = ["RunningMax", "energy_fold", "fold_max", "laplacian_level", "laplacian_pyramid", "mask_unusable"]
