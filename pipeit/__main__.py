"""``python -m pipeit`` is the same as the ``pipeit`` command."""

import sys

from pipeit.console import main

sys.exit(main())
