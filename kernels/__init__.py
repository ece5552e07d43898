"""Replaceable kernels for the hot steps of the fusion.

Each kernel is a function with a torch implementation (the reference, used on the CPU)
and, where Triton runs (CUDA, or its interpreter), a fused Triton twin that gives the
same result bit for bit; ``dispatch.use_triton`` chooses, and a Triton kernel that
cannot compile or launch falls back to its twin with one warning. Every kernel and
specialization compiles ahead of time, without a GPU: ``python -m gpufocus.kernels.compile``.
"""

if __name__ != "gpufocus.kernels":  # the checkout's kernels/ is on sys.path when run from there
    raise ImportError(f"kernels/ is the package gpufocus.kernels; import it as such, not as {__name__}")

from .dispatch import KernelFallbackWarning, use_triton  # noqa: E402
from .noise import noise_samples  # noqa: E402
from .pyramid_level import DETAIL, LUMA, MEAN, detail, downsample, downsample_luminance, measure_of  # noqa: E402
from .select import Level, RunningMax, energy_fold, fold_max, halo_fold, mask_unusable, window_energies  # noqa: E402
from .warp import sampling_grid  # noqa: E402

__all__ = [
    "DETAIL", "LUMA", "MEAN", "KernelFallbackWarning", "Level", "RunningMax", "detail", "downsample",
    "downsample_luminance", "energy_fold", "fold_max", "halo_fold", "mask_unusable", "measure_of", "noise_samples",
    "sampling_grid", "use_triton", "window_energies",
]
