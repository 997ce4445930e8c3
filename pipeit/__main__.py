"""``python -m pipeit`` is the same as the ``pipeit`` command."""

import sys

from pipeit.cli import main

sys.exit(main())
