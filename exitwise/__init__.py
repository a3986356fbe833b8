"""exitwise: budgeted early-exit image classifiers (L2W-DEN): train, calibrate, export, serve.

The core package holds what every other part shares: the architectures and their staged
forward pass, FLOPs accounting, the exit rule, preprocessing, and the bundle format. It imports
none of the packages built on it (``training``, ``calibration``, ``exports``, ``serving``, and
``cli``, the ``exitwise`` command).
"""

__version__ = "0.1.0"
