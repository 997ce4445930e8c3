"""The multiprocess pipelined executor: pinned stage workers and shared-memory rings.

``with Pipeline(plan, model_path) as p: p.map(frames)`` streams frames through
one process per stage worker. The names here are loaded lazily on purpose: a
spawned worker imports :mod:`pipeit.executor.worker`, which imports this
package first, and nothing heavy (numpy, the runtime) may be imported before
the worker has pinned itself to its CPUs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Pipeline",
    "PipelineStats",
    "StageStats",
    "EdgeLayout",
    "StageRoute",
    "plan_routes",
    "ShmRing",
]

_LAZY = {
    "Pipeline": "pipeit.executor.pipeline",
    "PipelineStats": "pipeit.executor.stats",
    "StageStats": "pipeit.executor.stats",
    "EdgeLayout": "pipeit.executor.routes",
    "StageRoute": "pipeit.executor.routes",
    "plan_routes": "pipeit.executor.routes",
    "ShmRing": "pipeit.executor.ring",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
