"""gpufocus: focus stacking by Laplacian-pyramid fusion on torch, CUDA or CPU.

The public surface: ``fuse`` for a whole stack, ``StackFuser`` for frames fed by
the caller, reading and writing helpers, and the pyramid functions.
"""

from .align import AlignOptions
from .engine import StackFuser, align_stack, fuse
from .errors import GpufocusError
from .load import FrameStack, list_frames, probe_image, read_image
from .pyramid import build_laplacian_pyramid, collapse_laplacian_pyramid
from .rules import METHODS
from .write import write_image

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AlignOptions",
    "align_stack",
    "FrameStack",
    "GpufocusError",
    "StackFuser",
    "build_laplacian_pyramid",
    "collapse_laplacian_pyramid",
    "fuse",
    "list_frames",
    "probe_image",
    "read_image",
    "write_image",
    "__version__",
]
