"""exitwise's benchmarks: what ``exitwise bench ...`` measures.

Training steps (``train_step``), calibration's solver (``calibration_time``), torch against
onnxruntime (``backends``), the serving engine (``engine``), a running server over HTTP (``http``,
``wrk``, ``wrk_load``, ``overload``, ``deadline_sweep``), a peer server (``peer``,
``litserve_peer``) and traffic drift (``drift``, ``shifts``). ``machine`` and ``tables`` are what
they share. The package sits above ``training``, ``calibration``, ``exports`` and ``serving``
(it may import their internals); none of them imports it, and it never imports ``cli``.
"""
