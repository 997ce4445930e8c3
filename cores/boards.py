"""Known boards as data files (``cores/boards/NAME.json``), for planning away from the board.

A board file is a platform document (``Platform.to_json`` layout) plus
``description``, ``soc`` and ``sources`` keys saying where the figures come
from. Cluster names follow detection (``little``/``big``, ``big0``/``big1``
for a third cluster, ``cpu`` for a homogeneous board), so a plan made for
``board:rk3588`` on a laptop names the same clusters the board detects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from cores.errors import PlatformError
from cores.jsonfile import JsonFileError, read_json
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
        doc = read_json(path, "board")
    except JsonFileError as err:
        raise PlatformError(str(err)) from None
    if not isinstance(doc, dict):
        raise PlatformError(f"{path}: a board file must be a JSON object")
    return doc


def load_board(name: str) -> Platform:
    """The platform of a known board, with ``source`` ``board:NAME``."""
    doc = board_document(name)
    platform = Platform.from_json(doc, where=str(BOARD_DIR / f"{name}.json"))
    return Platform(clusters=platform.clusters, source=f"board:{name}",
                    extra=(("soc", str(doc.get("soc", ""))),))
