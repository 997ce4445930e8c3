"""Shared fixtures: generated models made once per session, a bench profile cache, the CLI in process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import pytest


@pytest.fixture(scope="session", autouse=True)
def own_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$PIPEIT_STATE_DIR`` for the whole session, in the session's tmp dir, for this process and every
    process it starts.

    Without it a test that profiles, plans or serves with no state directory of its own would read the
    developer's ``~/.local/state/pipeit`` (a cached plan, a tuning file, layer times) and write into it; a
    test that needs its own still sets one.
    """
    folder = tmp_path_factory.mktemp("state")
    before = os.environ.get("PIPEIT_STATE_DIR")
    os.environ["PIPEIT_STATE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("PIPEIT_STATE_DIR", None)
    else:
        os.environ["PIPEIT_STATE_DIR"] = before


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
