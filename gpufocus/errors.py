"""The one exception type the engine raises for problems the user can fix."""

__all__ = ["GpufocusError"]


class GpufocusError(Exception):
    """Bad input, output or settings.

    ``str(error)`` is a single line that names the file (or option) and the problem,
    fit to show to a user as it is.
    """
