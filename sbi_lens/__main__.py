"""``python -m sbi_lens`` runs the command line."""

import sys

from sbi_lens.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
