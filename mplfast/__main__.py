"""``python -m mplfast ...`` (and ``torchrun ... -m mplfast train ...``): same as the ``mplfast`` script."""
import sys

from mplfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
