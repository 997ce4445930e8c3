"""Shared fixtures: a session-wide folder of generated zoo models (made once, reused)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``zoo_model(name, int8=False) -> Path``: each zoo model built once per session.

    Building is seeded (seed 0), so every test sees the same bytes; the
    files live in one session tmp dir and are reused by every test.
    """
    from pipeit import zoo

    folder = tmp_path_factory.mktemp("zoo")
    cache: Dict[Tuple[str, bool], Path] = {}

    def zoo_model(name: str, int8: bool = False) -> Path:
        key = (name, bool(int8))
        if key not in cache:
            path = folder / f"{name}{'_int8' if int8 else ''}.tflite"
            path.write_bytes(zoo.build(name, int8=bool(int8), seed=0))
            cache[key] = path
        return cache[key]

    return zoo_model
