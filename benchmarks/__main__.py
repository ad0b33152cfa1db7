"""Entry point of ``python -m benchmarks``."""

import sys

_QUIET = {"-h", "--help", "--list", "--plan", "--no-progress"}
if not _QUIET & set(sys.argv[1:]) and "--target" not in " ".join(sys.argv[1:]):
    print("lossax benchmarks: starting (importing JAX) ...", file=sys.stderr, flush=True)

from .cli import main  # noqa: E402

raise SystemExit(main())
