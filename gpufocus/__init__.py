"""gpufocus: focus stacking by Laplacian-pyramid fusion on torch, CUDA or CPU.

The public surface: ``fuse`` for a whole stack, ``StackFuser`` for frames fed by
the caller, reading and writing helpers, and the pyramid functions. Names are
loaded on first use, so ``import gpufocus`` (and the command line's ``--help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib

from .errors import GpufocusError

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "METHODS": "options",
    "AlignOptions": "options",
    "FuseOptions": "options",
    "OutputOptions": "options",
    "OptionError": "options",
    "align_stack": "engine",
    "FrameStack": "load",
    "StackFuser": "engine",
    "build_laplacian_pyramid": "pyramid",
    "collapse_laplacian_pyramid": "pyramid",
    "fuse": "engine",
    "list_frames": "load",
    "probe_image": "decode",
    "read_image": "decode",
    "write_image": "write",
}

__all__ = ["GpufocusError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpufocus' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
