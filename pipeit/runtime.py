"""The one place that builds TFLite interpreters.

Two backends sit behind the same function: ``ai-edge-litert`` (default;
TFLite's maintained successor) and ``tflite-runtime`` (the only choice on
32-bit ARM). The backend is chosen by argument or by the environment
variable ``PIPEIT_RUNTIME``. XNNPACK is left on (the default op resolver
applies it): without it everything runs about 3x slower.

:func:`check_loads` builds a model's interpreter once, quietly, to learn
whether the runtime accepts it at all: op codes and versions it does not
register, and shapes or options its kernels reject when preparing (a
stride of 0, a RESHAPE of a 0-element tensor, a tensor that is both input
and output of one op), are known only to the runtime. Commands that are
about to rely on the model running (``profile``, ``split``, ``inspect``)
call it once up front; :func:`pipeit.graph.load_graph` does not, because it
is called often and on big models.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from cores.errors import first_line, process_limit_hint
from pipeit.descriptor import TensorInfo
from pipeit.errors import ModelError, PipeitError

__all__ = [
    "BACKENDS",
    "RuntimeInfo",
    "backend_name",
    "runtime_info",
    "make_interpreter",
    "SlowedInterpreter",
    "check_loads",
    "native_stderr_silenced",
]

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
    where: Optional[str] = None,
    slow: Any = None,
    delegates: bool = True,
) -> Any:
    """Build an interpreter from a path or from model bytes, tensors allocated.

    ``num_threads`` should equal the number of cores the calling process is
    pinned to: more threads than cores only adds contention. ``where`` names
    the model in error messages (default: its path, or "model bytes"); pass
    ``""`` for no name, where the caller's message already says which model.
    ``slow`` (a :class:`cores.emulation.SlowCore`): the process runs on an
    emulated slowed cluster, and every ``invoke`` is padded to its speed
    (:class:`SlowedInterpreter`). ``delegates=False``: the builtin kernels
    alone, no XNNPACK, every operator prepared by its own kernel (a backend
    that cannot say so is a :class:`ModelError`).
    """
    if num_threads < 1:
        raise PipeitError(f"num_threads must be >= 1, got {num_threads}")
    cls = _interpreter_class(backend_name(backend))
    kwargs: dict = {"num_threads": int(num_threads)}
    if not delegates:
        resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
        if resolver is None:
            raise ModelError(f"runtime {backend_name(backend)!r} cannot build an interpreter without delegates")
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        kwargs["model_content"] = bytes(model)
        name = "model bytes"
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{where or path}: no such model file")
        name = str(path)
        try:
            name.encode("utf-8")  # the runtime takes the path as UTF-8 text only
            kwargs["model_path"] = name
        except UnicodeEncodeError:  # a file name with bytes that are not UTF-8: hand over the bytes
            try:
                kwargs["model_content"] = path.read_bytes()
            except OSError as err:
                raise ModelError(f"{where or path}: cannot read the model: {err.strerror or err}") from err
    if where is not None:
        name = where
    try:
        interpreter = cls(**kwargs)
        if allocate:
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError, MemoryError) as err:  # MemoryError: std::bad_alloc on absurd shapes
        first = first_line(err)
        prefix = f"{name}: " if name else ""
        # under ulimit -v the runtime says an allocation it could not make as a node that "failed to prepare",
        # which reads as the model's fault: the limit is named beside it
        limit = process_limit_hint(resource.RLIMIT_AS, "ulimit -v")
        raise ModelError(f"{prefix}the runtime cannot load this model: {first}{limit}") from err
    if slow is not None:
        return SlowedInterpreter(interpreter, slow, int(num_threads))
    return interpreter


class SlowedInterpreter:
    """An interpreter on an emulated slowed cluster: ``invoke`` padded, everything else its own.

    Why a wrapper and not a cgroup quota: a quota lets a job that follows an
    idle spell run at full speed (``cores.emulation``), a slow core does not.
    Every caller of ``invoke`` -- the profiler, a pipeline stage, the bare
    runs of the ideal -- then sees the same slow core.
    """

    def __init__(self, interpreter: Any, slow: Any, num_threads: int) -> None:
        from cores.emulation import PaddedInvoke

        self._interpreter = interpreter
        self.invoke = PaddedInvoke(interpreter.invoke, slow, num_threads)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._interpreter, name)


def tensor_infos(details: Sequence[Mapping[str, Any]]) -> Tuple[TensorInfo, ...]:
    """The runtime's ``get_input_details()``/``get_output_details()`` as TensorInfo records."""
    return tuple(TensorInfo(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                 for d in details)


def invoke_frames(interpreter: Any, frames: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Each frame (inputs by tensor name) through ``interpreter``, one after another: outputs by name.

    The reference a split or a GPU stage is held to: the whole model, frame
    by frame, in the runtime (``get_tensor`` copies, so results outlive the
    next invoke).
    """
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    results = []
    for number, frame in enumerate(frames):
        try:
            for name, value in frame.items():
                interpreter.set_tensor(inputs[name], value)
            interpreter.invoke()
        except (ValueError, RuntimeError) as err:  # a frame the model cannot take (a GATHER index out of range)
            first = first_line(err)
            raise ModelError(f"the whole model fails on frame {number}: {first}") from None
        results.append({name: interpreter.get_tensor(index) for name, index in outputs.items()})
    return results


def check_loads(
    model: Union[str, Path, bytes, bytearray],
    where: Optional[str] = None,
    backend: Optional[str] = None,
) -> None:
    """Raise one :class:`ModelError` line if the runtime cannot build and allocate ``model``.

    One interpreter on one thread, its native log lines muted (they are
    noise in a check). Tensors are allocated because kernels check shapes
    and options only then; nothing is invoked. Give a path rather than
    bytes for a big model: the runtime maps the file instead of copying it.
    """
    with native_stderr_silenced():
        # shapes first: XNNPACK allocates (and touches) the stored sizes, so a stale shape of gigabytes
        # cost that much memory and a minute before the same one-line refusal
        _check_stored_shapes(model, where, backend)
        interpreter = make_interpreter(model, num_threads=1, backend=backend, where=where)
        del interpreter


def _check_stored_shapes(model: Union[str, Path, bytes, bytearray], where: Optional[str],
                         backend: Optional[str]) -> None:
    """Every computed tensor's stored shape must be the one the runtime computes.

    pipeit sizes cuts, rings and stage inputs from the shapes stored in the
    file, while the runtime recomputes them when it prepares each operator,
    and XNNPACK does not look at the stored ones of the tensors it runs. A
    model whose stored shape is missing or stale therefore runs whole, but
    its stages would not load. The runtime's own shapes come from an
    interpreter without delegates, in which every operator is prepared.
    """
    from ai_edge_litert import schema_py_generated as schema

    try:
        plain = make_interpreter(model, num_threads=1, backend=backend, where=where, delegates=False)
    except ModelError:  # the delegated build is what must load; this one only checks shapes where it can
        return
    computed = {int(d["index"]): [int(x) for x in d["shape"]] for d in plain.get_tensor_details()}
    del plain
    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    name = where if where is not None else ("model bytes" if isinstance(model, (bytes, bytearray)) else str(model))
    graph = schema.Model.GetRootAs(bytes(data), 0).Subgraphs(0)
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        for t in (int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ():
            if t < 0 or t not in computed:
                continue
            tensor = graph.Tensors(t)
            if tensor.ShapeSignatureLength() and any(int(x) < 0 for x in tensor.ShapeSignatureAsNumpy()):
                continue  # a dynamic dimension: the runtime settles it per invoke, not when it prepares
            stored = [int(x) for x in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            if stored != computed[t] and int(np.prod(computed[t])) > 0:
                label = (tensor.Name() or b"").split(b"\x00", 1)[0].decode("utf-8", "replace")
                prefix = f"{name}: " if name else ""
                raise ModelError(f"{prefix}tensor {t} {label!r} is stored with shape {stored}, but the runtime "
                                 f"computes {computed[t]}; pipeit cuts models at their stored shapes, so "
                                 "re-export the model with its shapes")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2 while probing: the runtime's C++ log lines
    ("INFO: Created ... delegate") are noise in a check, not news for the user."""
    try:
        if sys.stderr is not None:  # None where the process was started with fd 2 closed
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (closed, or embedded interpreters): just run
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
