"""Errors that carry a message meant for a user.

Every module raises a subclass of :class:`ExitwiseError` for a problem the user can fix (a missing
file, a bad value); the CLI prints its message as one line and exits non-zero, without a traceback.
Anything else is a bug and keeps its traceback.
"""


class ExitwiseError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole message."""


class UnknownModelError(ExitwiseError, KeyError):
    """An architecture or preset name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BundleError(ExitwiseError):
    """A bundle that is missing, incomplete, corrupted or of an unknown format."""


class CalibrationMismatchError(BundleError):
    """A calibration (or ONNX export) that was made for other weights than the bundle's."""
