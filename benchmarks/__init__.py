"""lossax benchmarks: ``python -m benchmarks`` (see ``python -m benchmarks --help``).

Modules: ``shapes`` (named sizes), ``ops`` (ops, implementations and peers), ``plan``
(the default and ``--quick`` suites), ``harness`` (AOT compile, memory analysis,
interleaved timing), ``floor`` (the backend's own bandwidth and exp throughput),
``headline`` (the project's targets), ``report`` (table, JSON, markdown, plot) and
``cli`` (the command line).
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks`` (imported lazily: the command prints before JAX loads)."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
