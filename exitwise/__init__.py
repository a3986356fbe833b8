"""exitwise: budgeted early-exit image classifiers (L2W-DEN): train, calibrate, export, serve.

The core package holds what every other part shares: the architectures and their staged
forward pass, FLOPs accounting, the exit rule, preprocessing, and the bundle format. It never
imports ``training``, ``calibration``, ``exports`` or ``serving`` (only ``exitwise.cli``
dispatches to them).
"""

__version__ = "0.1.0"
