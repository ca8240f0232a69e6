"""``python -m gpu_deconv ...`` runs the command-line tool (see gpu_deconv.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
