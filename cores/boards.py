"""Known boards as data files (``cores/boards/NAME.json``), for planning away from the board.

A board file is a platform document (``Platform.to_json`` layout) plus
``description``, ``soc`` and ``sources`` keys saying where the figures come
from. Cluster names follow detection (``little``/``big``, ``big0``/``big1``
for a third cluster, ``cpu`` for a homogeneous board), so a plan made for
``board:rk3588`` on a laptop names the same clusters the board detects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

from cores.errors import PlatformError
from cores.model import Platform

__all__ = ["BOARD_DIR", "list_boards", "board_document", "load_board"]

BOARD_DIR = Path(__file__).resolve().parent / "boards"


def list_boards() -> Tuple[str, ...]:
    """Names of the known boards, sorted."""
    return tuple(sorted(p.stem for p in BOARD_DIR.glob("*.json")))


def board_document(name: str) -> dict:
    """The raw board file as a dict; :class:`PlatformError` naming the known boards if unknown."""
    path = BOARD_DIR / f"{name}.json"
    if not name or "/" in name or not path.is_file():
        known = ", ".join(list_boards())
        raise PlatformError(f"unknown board {name!r}; known boards: {known}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlatformError(f"board file {path} is unreadable: {err}") from err


def load_board(name: str) -> Platform:
    """The platform of a known board, with ``source`` ``board:NAME``."""
    doc = board_document(name)
    platform = Platform.from_json(doc)
    return Platform(clusters=platform.clusters, source=f"board:{name}",
                    extra=(("soc", str(doc.get("soc", ""))),))
