"""The exception the library raises for problems the user can fix, and its warnings."""

__all__ = ["GpufocusError", "GpufocusWarning", "DamagedFileWarning"]


class GpufocusError(Exception):
    """Bad input, output or settings.

    ``str(error)`` is a single line that names the file (or option) and the problem,
    fit to show to a user as it is.
    """


class GpufocusWarning(UserWarning):
    """Something the user should know about a result (a frame not aligned, say); the
    message is one line that names the file or frame. (Warnings of ``gpufocus.kernels``,
    which sits below this module, say the same with a class attribute ``for_users``.)"""


class DamagedFileWarning(GpufocusWarning):
    """A file its decoder could read although it found it damaged (TIFF tags that
    contradict the data, say): the result may be wrong. An error under ``--strict``."""
