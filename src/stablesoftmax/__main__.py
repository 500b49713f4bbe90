"""``python -m stablesoftmax``: the same as the ``stablesoftmax`` command."""

import sys

from .cli import main

sys.exit(main())
