"""Replaceable kernels for the hot steps of the fusion.

Each kernel has a torch reference implementation here; faster device-specific
versions (Triton) slot in behind the same functions.
"""

from .select import RunningMax, fold_max

__all__ = ["RunningMax", "fold_max"]
