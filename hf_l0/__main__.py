"""``python -m hf_l0 COMMAND``: the ``hf-l0`` command (:mod:`hf_l0.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
