"""A forked child trying its parent's pipeline or client: what the fork tests of both share."""

from __future__ import annotations

import os
from typing import Callable


def refused_in_a_fork(use: Callable[[], object], close: Callable[[], object]) -> int:
    """Fork; the child calls ``use()``, which must be refused as belonging to the parent, then ``close()``s
    and leaves without running exit handlers. Returns the child's exit code: 0 refused as it should be, 1 not
    refused, 2 refused for another reason."""
    from pipeit.errors import PipeitError

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            use()
        except PipeitError as err:
            code = 0 if "belongs to process" in str(err) else 2
        close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
