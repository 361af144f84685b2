"""``python -m medsam_monai``: the ``medsam`` command."""

import sys

from .cli import main

sys.exit(main())
