"""Loading what the server needs from the bundle: manifest, verified weights, calibration, runner.

Every reason the model cannot be served (a corrupted bundle, a calibration made for other
weights, no GPU when one is required, a default budget the calibration cannot meet) is an
:class:`~exitwise.errors.ExitwiseError` raised here, before the server listens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from exitwise.bundle import Bundle, Calibration, load_bundle
from exitwise.runtime import StageRunner

from .backends import load_runner
from .budget.resolve import BudgetResolver
from .settings import Settings

log = logging.getLogger("exitwise.serving")


@dataclass
class LoadedModel:
    bundle: Bundle
    calibration: Calibration | None
    runner: StageRunner
    resolver: BudgetResolver


def load_model(settings: Settings) -> LoadedModel:
    bundle = load_bundle(settings.bundle)
    calibration = bundle.calibration() if bundle.has_calibration else None
    if calibration is None:
        log.warning(
            "%s has no calibration.json: budget_mflops is unavailable, requests run to the last "
            "exit unless they set max_exit (run `exitwise calibrate` to get operating points)",
            bundle.path,
        )
    resolver = BudgetResolver(
        bundle.manifest.exit_mflops,
        calibration,
        settings.default_budget_mflops,
        settings.default_max_exit,
    )
    runner = load_runner(bundle, settings)
    return LoadedModel(bundle=bundle, calibration=calibration, runner=runner, resolver=resolver)
