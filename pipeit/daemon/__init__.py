"""The on-device daemon: a warm pipeline behind a Unix socket, re-planned as the board changes.

Modules: :mod:`~pipeit.daemon.protocol` (wire format), :mod:`~pipeit.daemon.sockets`
(safe socket creation), :mod:`~pipeit.daemon.state` (state directory, planning at
start), :mod:`~pipeit.daemon.engine` (pipeline holder and switch),
:mod:`~pipeit.daemon.replan` (drift detection, scaled times),
:mod:`~pipeit.daemon.server` (the server). Clients use :mod:`pipeit.client`.
"""

from __future__ import annotations

__all__ = ["protocol"]
