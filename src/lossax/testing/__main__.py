"""``python -m lossax.testing adversarial-table``: the adversarial table as markdown."""

from .adversarial import main

if __name__ == "__main__":
    raise SystemExit(main())
