"""``python -m cli ...``: the ``exitwise`` command without its console script (e.g. under
``torchrun --nproc_per_node N -m cli train ...``)."""

import sys

from . import main

sys.exit(main())
