"""The one place that builds TFLite interpreters.

Two backends sit behind the same function: ``ai-edge-litert`` (default;
TFLite's maintained successor) and ``tflite-runtime`` (the only choice on
32-bit ARM). The backend is chosen by argument or by the environment
variable ``PIPEIT_RUNTIME``. XNNPACK is left on (the default op resolver
applies it): without it everything runs about 3x slower.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pipeit.errors import ModelError, PipeitError

__all__ = ["BACKENDS", "RuntimeInfo", "backend_name", "runtime_info", "make_interpreter"]

#: backend name -> module that holds ``Interpreter``
BACKENDS = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}
_DIST_NAMES = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}
ENV_VAR = "PIPEIT_RUNTIME"


@dataclass(frozen=True)
class RuntimeInfo:
    """Which backend runs the models, and its version (part of fingerprints)."""

    backend: str
    version: str

    def __str__(self) -> str:
        return f"{self.backend}=={self.version}"


def backend_name(backend: Optional[str] = None) -> str:
    """Resolve the backend: explicit argument, else ``$PIPEIT_RUNTIME``, else ai-edge-litert."""
    name = backend or os.environ.get(ENV_VAR) or "ai-edge-litert"
    if name not in BACKENDS:
        raise PipeitError(
            f"unknown runtime {name!r}; choose one of {', '.join(sorted(BACKENDS))}"
        )
    return name


def _interpreter_class(backend: str) -> Any:
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as err:
        raise PipeitError(
            f"runtime {backend!r} is not installed (pip install {_DIST_NAMES[backend]}): {err}"
        ) from err
    return module.Interpreter


def runtime_info(backend: Optional[str] = None) -> RuntimeInfo:
    """Name and installed version of the backend."""
    from importlib import metadata

    name = backend_name(backend)
    try:
        version = metadata.version(_DIST_NAMES[name])
    except metadata.PackageNotFoundError:
        version = "unknown"
    return RuntimeInfo(name, version)


def make_interpreter(
    model: Union[str, Path, bytes, bytearray],
    num_threads: int = 1,
    backend: Optional[str] = None,
    allocate: bool = True,
) -> Any:
    """Build an interpreter from a path or from model bytes, tensors allocated.

    ``num_threads`` should equal the number of cores the calling process is
    pinned to: more threads than cores only adds contention.
    """
    if num_threads < 1:
        raise PipeitError(f"num_threads must be >= 1, got {num_threads}")
    cls = _interpreter_class(backend_name(backend))
    kwargs: dict = {"num_threads": int(num_threads)}
    if isinstance(model, (bytes, bytearray)):
        kwargs["model_content"] = bytes(model)
        where = "model bytes"
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        kwargs["model_path"] = str(path)
        where = str(path)
    try:
        interpreter = cls(**kwargs)
        if allocate:
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{where}: the runtime cannot load this model: {first}") from err
    return interpreter
