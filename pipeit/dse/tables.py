"""Dense stage-cost matrices the exact search works on (built once per search).

For ``n`` layers every matrix is ``(n + 1) x (n + 1)``: entry ``[a, b]`` is
about the stage ``[a, b)`` and only ``a < b`` is meaningful. Costs are the
same as :class:`pipeit.dse.cost.CostModel`'s, computed from prefix sums so
that one numpy operation evaluates every stage at once. The search compares
rates with a relative tolerance (:data:`TOL`) because prefix sums and the
cost model's ``fsum`` may differ in the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from cores.model import CoreSetup
from pipeit.dse.cost import CostModel
from pipeit.transfer import coordinator_stage

__all__ = ["TOL", "Group", "GroupTables", "StageTables"]

#: relative tolerance under which two throughputs count as equal (ties are broken by latency)
TOL = 1e-9

#: a group of workers serving one stage: ((setup, count), ...) sorted by setup
Group = Tuple[Tuple[CoreSetup, int], ...]


@dataclass(frozen=True)
class GroupTables:
    """Stage matrices for one group: ``rate`` (fps; -1 where a >= b, 0 where a worker cannot run
    a layer; with the executor's coordinator term, what is left once it took its CPU share),
    ``tmax`` (the stage's share of the latency path: the largest worker time -- slowed by the
    coordinator where it shares the worker's CPUs -- plus that worker's throttle jitter, ms; inf
    where invalid) and ``mem`` (bytes held). ``jitter`` is the
    group's largest throttle jitter (for the queue term of the latency)."""

    rate: np.ndarray
    tmax: np.ndarray
    mem: np.ndarray
    workers: int
    jitter: float = 0.0


class StageTables:
    """Per-setup worker-time matrices and a cache of per-group tables."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        n = cost.num_layers
        self.n = n
        cal = cost.times.calibration
        hops = np.asarray(cost.hops, dtype=float)
        idx = np.arange(n + 1)
        self.valid = idx[:, None] < idx[None, :]
        edge = 0.5 * hops[:, None] + 0.5 * hops[None, :] + cal.stage_ms
        self.time: Dict[CoreSetup, np.ndarray] = {}
        for setup, row in cost.times.times.items():
            values = np.asarray(row, dtype=float)
            bad = np.isinf(values)
            prefix = np.concatenate(([0.0], np.cumsum(np.where(bad, 0.0, values))))
            bad_prefix = np.concatenate(([0], np.cumsum(bad)))
            t = cal.scale * (prefix[None, :] - prefix[:, None]) + edge
            copies = cost.copies.get(setup.cluster)
            if copies is not None:  # a GPU worker also moves its input up and its output down
                c = np.asarray(copies, dtype=float)
                t = t + c[:, None] + c[None, :]
            t[(bad_prefix[None, :] - bad_prefix[:, None]) > 0] = np.inf
            t[~self.valid] = np.inf
            self.time[setup] = t
        wprefix = np.concatenate(([0.0], np.cumsum(np.asarray(cost.times.weight_bytes, dtype=float))))
        weights = wprefix[None, :] - wprefix[:, None] + cost.worker_bytes
        weights[~self.valid] = np.inf
        self.weights = weights
        self._groups: Dict[Group, GroupTables] = {}

    def group(self, group: Group) -> GroupTables:
        cached = self._groups.get(group)
        if cached is not None:
            return cached
        off = np.zeros((self.n + 1, self.n + 1))
        on = np.zeros((self.n + 1, self.n + 1))
        workers = 0
        jitter = 0.0
        with np.errstate(divide="ignore"):
            for setup, count in group:
                if self.cost.on_coordinator(setup):
                    on += count * (1000.0 / self.time[setup])
                else:
                    off += count * (1000.0 / self.time[setup])
        slow = None
        if self.cost.coordinating:  # (also caps stages with no worker on its CPUs: it passes every frame)
            # the coordinator's CPU share, per stage (pipeit.transfer.coordinator_stage): exact for the search
            names, cores, spare = self.cost.coordinator
            rate, slow = coordinator_stage(off, on, self.cost.overhead.coordinator_ms, cores, spare)
        else:
            rate = off + on
        tmax = np.zeros((self.n + 1, self.n + 1))
        for setup, count in group:
            t = self.time[setup]
            if slow is not None and self.cost.on_coordinator(setup):
                t = t / slow
            j = self.cost.jitter_ms(setup)
            np.maximum(tmax, t + j if j else t, out=tmax)
            workers += count
            jitter = max(jitter, j)
        rate[np.isinf(tmax)] = 0.0
        rate[~self.valid] = -1.0
        tables = GroupTables(rate=rate, tmax=tmax, mem=workers * self.weights, workers=workers, jitter=jitter)
        self._groups[group] = tables
        return tables
