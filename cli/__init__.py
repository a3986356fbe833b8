"""The ``exitwise`` command line (typer).

This package sits above all the others: it imports the core (``exitwise``) and hands each
sub-command to its package (training, calibration, exports, serving, benchmarks), and nothing
imports it. Each sub-command lives in its own module and imports its package inside the command
body, so ``exitwise inspect`` never loads FastAPI or onnxruntime. A user mistake (an
:class:`~exitwise.errors.ExitwiseError`) becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys

import typer

from exitwise.errors import ExitwiseError

from . import bench, calibrate, export, inspect, serve, train

app = typer.Typer(
    name="exitwise",
    help="Train, calibrate, export and serve budgeted early-exit image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for module in (inspect, train, calibrate, export, serve):
    module.register(app)
app.add_typer(bench.app, name="bench")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    try:
        # Standalone mode: click prints usage errors and help itself and raises SystemExit.
        app(args=argv, prog_name="exitwise")
    except SystemExit as ex:
        code = ex.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except ExitwiseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
