"""Synthetic layer tables: plausible CNN-like costs for tests and the planning benchmark.

No runtime involved: each layer gets a work amount, a parallel fraction
(Amdahl) and a cluster affinity, and a setup ``c:k`` runs it in
``work / speed_c * affinity * ((1 - p) + p / k)`` ms. Activations shrink and
weights grow along the model, as in a CNN.
"""

from __future__ import annotations

import random
from typing import Dict

from cores.model import Cluster, Platform
from pipeit.layer_times import LayerTimes

__all__ = ["synthetic_platform", "synthetic_times"]


def synthetic_platform(sizes: Dict[str, tuple], source: str = "synthetic") -> Platform:
    """``{"big": (4, 1.0), "little": (4, 0.4)}`` -> a Platform with consecutive CPU ids and those speeds.

    A value may name a core type as third item (``(2, 1.0, "a76")``): clusters
    of one core type get the same per-layer affinity from :func:`synthetic_times`,
    as RK3588's two Cortex-A76 pairs have the same layer times. Without it,
    the cluster's name is its core type.
    """
    clusters = []
    cpu = 0
    for name, spec in sizes.items():
        size, speed = spec[0], spec[1]
        core_type = spec[2] if len(spec) > 2 else name
        clusters.append(Cluster(name, core_type, tuple(range(cpu, cpu + size)), speed=speed))
        cpu += size
    return Platform(tuple(clusters), source=source)


def synthetic_times(
    platform: Platform,
    num_layers: int,
    seed: int = 0,
    total_ms: float = 100.0,
    affinity_spread: float = 0.3,
    calibration=None,
) -> LayerTimes:
    """A CNN-like table for every setup of ``platform``, ``total_ms`` on one core of speed 1."""
    rng = random.Random(seed)
    work = [rng.lognormvariate(0.0, 1.0) for _ in range(num_layers)]
    scale = total_ms / sum(work)
    work = [w * scale for w in work]
    parallel = [rng.uniform(0.6, 0.98) for _ in range(num_layers)]
    affinity: Dict[str, list] = {}
    for cluster in platform.clusters:
        if cluster.core_type not in affinity:
            affinity[cluster.core_type] = [1.0 + rng.uniform(-affinity_spread, affinity_spread)
                                           for _ in range(num_layers)]
    times = {}
    for setup in platform.setups():
        cluster = platform.cluster(setup.cluster)
        times[setup] = tuple(
            w / cluster.speed * affinity[cluster.core_type][i] * ((1 - p) + p / setup.cores)
            for i, (w, p) in enumerate(zip(work, parallel))
        )
    cut = [int(600_000 * (0.02 ** (i / num_layers)) * rng.uniform(0.7, 1.3)) + 4000 for i in range(num_layers + 1)]
    cut[0] = 224 * 224 * 3 * 4
    cut[-1] = 4004
    weights = [int(rng.uniform(0.2, 1.0) * 200_000 * (1 + 10 * i / num_layers)) for i in range(num_layers)]
    kwargs = {} if calibration is None else {"calibration": calibration}
    return LayerTimes(num_layers, times, tuple(cut), tuple(weights), source=f"synthetic:{seed}", **kwargs)
