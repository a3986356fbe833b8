"""Errors of the calibration step, each a one-line message for the user."""

from __future__ import annotations

from exitwise.errors import ExitwiseError


class CalibrationError(ExitwiseError):
    """A calibration that cannot be made as asked (bad bundle, data set or option)."""


class BudgetError(CalibrationError):
    """A budget or fraction that is not a number inside the valid range."""


class DataMismatchError(CalibrationError):
    """A data set that does not fit the bundle (other classes, image size or number of images)."""
