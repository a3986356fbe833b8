"""The error a benchmark reports as one line (``error: ...``, exit status 1)."""

from __future__ import annotations

from exitwise.errors import ExitwiseError


class BenchError(ExitwiseError):
    pass
