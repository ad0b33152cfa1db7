"""lossax benchmarks: ``python -m benchmarks`` (see ``python -m benchmarks --help``).

Modules: ``shapes`` (named sizes), ``ops`` (ops, implementations and peers), ``plan``
(the default and ``--quick`` suites), ``harness`` (AOT compile, memory analysis,
interleaved timing), ``floor`` (the backend's own bandwidth and exp throughput),
``headline`` (the project's targets), ``report`` (table, JSON, markdown, plot) and
``cli`` (the command line).
"""

from .cli import main as main

__all__ = ["main"]
