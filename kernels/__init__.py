"""Replaceable kernels for the hot steps of the fusion.

Each kernel is a function with a torch implementation (the reference, used on the CPU)
and, where Triton runs (CUDA, or its interpreter), a fused Triton twin that gives the
same result bit for bit; ``dispatch.use_triton`` chooses.
"""

if __name__ != "gpufocus.kernels":  # the checkout's kernels/ is on sys.path when run from there
    raise ImportError(f"kernels/ is the package gpufocus.kernels; import it as such, not as {__name__}")

from .pyramid_level import laplacian_level  # noqa: E402
from .select import RunningMax, energy_fold, fold_max, mask_unusable  # noqa: E402

__all__ = ["RunningMax", "energy_fold", "fold_max", "laplacian_level", "mask_unusable"]
