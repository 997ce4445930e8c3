"""A platform fingerprint for profiles and plans: what must match for times to be comparable.

It covers each CPU cluster's core type, CPU count, max frequency and
emulation speed, plus the runtime backend and version; not cluster names or
CPU ids (renumbering does not change speed) and not the current frequency
(that is a reading, see :mod:`cores.monitor`). The hash is the first 16 hex
digits of a SHA-256 over the canonical JSON of the readable dict.

GPU clusters are left out unless asked for (``with_gpus``): a CPU layer's
time does not depend on whether the platform spec names the board's GPU,
and GPU.md's workflow adds ``gpu:1`` rows, measured on ``...,gpu=0``, to a
profile of the same board's CPUs (with them in, that profile was "another
platform"). What holds a whole platform's plan -- the daemon's cache --
keys on them too: there a platform with a GPU must not reuse CPU-only times.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from cores.model import Platform

__all__ = ["fingerprint_dict", "platform_fingerprint"]


def _runtime_text(runtime_info: Any) -> Optional[str]:
    if runtime_info is None:
        return None
    backend = getattr(runtime_info, "backend", None)
    version = getattr(runtime_info, "version", None)
    if backend is not None:
        return f"{backend}=={version}"
    return str(runtime_info)


def fingerprint_dict(platform: Platform, runtime_info: Any = None, with_gpus: bool = False) -> dict:
    """The readable fingerprint: clusters (sorted by core type and speed; GPUs only ``with_gpus``) and runtime."""
    clusters = sorted(
        (
            {
                "core_type": c.core_type,
                "cores": c.size,
                "max_freq_khz": c.max_freq_khz,
                "speed": round(float(c.speed), 4),
                "kind": c.kind,
            }
            for c in platform.clusters
            if with_gpus or c.kind != "gpu"
        ),
        key=lambda d: json.dumps(d, sort_keys=True),
    )
    return {"clusters": clusters, "runtime": _runtime_text(runtime_info)}


def platform_fingerprint(platform: Platform, runtime_info: Any = None, with_gpus: bool = False) -> str:
    """A short, stable hash of :func:`fingerprint_dict` (16 hex digits)."""
    doc = fingerprint_dict(platform, runtime_info, with_gpus)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
