"""``python -m medsam_monai.cli``: the ``medsam`` command."""

import sys

from . import main

sys.exit(main())
