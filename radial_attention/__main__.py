"""``python -m radial_attention ...``: the ``radial-attention`` command (also under ``torchrun -m``)."""

import sys

from radial_attention.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
