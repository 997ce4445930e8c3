"""Shared fixtures: generated models made once per session, a bench profile cache, the CLI in process."""

from __future__ import annotations

import subprocess
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


@pytest.fixture(scope="session")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small conv model every ``pipeit bench`` test streams (built once, seeded)."""
    from tests.daemon_helpers import build_model

    return build_model(tmp_path_factory.mktemp("bench-model") / "tiny.tflite", layers=6, size=40, channels=16)


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``--cache-dir`` for every bench test: bench keys its profiles by platform and model hash, so
    the tests that stream :func:`bench_model` on the same platform profile it once per session, and
    whatever a test asserts about the profile itself holds whichever test made it."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def pipeit_in_process(capfd: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    """``run(*args)``: ``pipeit ARGS`` through :func:`pipeit.cli.main` in this process, as a
    CompletedProcess (returncode, stdout, stderr).

    For the many calls that are refused before any work: a fresh interpreter costs 0.45 s each, and the
    entry point itself is tested in test_cli_basics. ``capfd`` captures at the file descriptors, so a
    line the runtime's C++ code prints counts against "one line" as it would in a shell; an exception
    main() lets through fails the test with its traceback, as a traceback on stderr would.
    """
    from pipeit.cli import main

    def run(*args: object) -> subprocess.CompletedProcess:
        capfd.readouterr()
        argv = [str(a) for a in args]
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own refusals
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run
