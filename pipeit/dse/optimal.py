"""The exact search over stages x workers: highest throughput under latency/memory limits.

Space: an ordered sequence of *groups*; group ``j`` serves stage ``j``; a
group is a multiset of workers, a worker is ``k`` cores of one cluster
(``CoreSetup(cluster, k)``); the cores all groups use never exceed a
cluster's. Each stage runs a contiguous, non-empty layer range.

Algorithm (docs/DSE.md has the argument for exactness):

1. Depth-first over sequences of groups. A node is a prefix ``g_1..g_j``
   with the cores left over. It carries, for every layer position ``b``,
   three dynamic-programming values for covering ``[0, b)`` with exactly
   those ``j`` stages: the best bottleneck rate (max over partitions of the
   min stage rate), the least latency and the least memory. Adding a group
   is one vectorised step over all ``(a, b)`` stage matrices.
2. A node is pruned when no completion can beat the incumbent: the
   remaining cores' *fluid bound* (no plan of those workers over ``[b, n)``
   can exceed ``1000 * capacity / work(b, n)``, a bound that holds for any
   grouping and partition) limits the throughput, and suffix sums of the
   fastest usable setup's per-layer times bound latency and memory from
   below. Children are visited best bound first.
3. At every complete sequence the best contiguous partition is solved
   exactly: the unconstrained optimum is the max-min DP; under limits a
   parametric search over the finite set of stage-rate values (median
   pivots) with a feasibility DP -- least latency with every stage rate at
   least ``R`` (a Pareto label DP over (latency, memory) when a memory limit
   is given) -- finds the largest feasible rate. Ties (rates within
   :data:`~pipeit.dse.tables.TOL`) go to the lower latency.

Symmetry: a group is a multiset, so interchangeable workers (equal
cluster and core count) are never permuted; stage order is part of the
space, so ordered sequences of groups are enumerated. Clusters no plan can
tell apart (same size, times and jitter: RK3588's two A76 pairs) are
enumerated in one order only (:func:`interchangeable_clusters`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cores.model import CoreSetup, Platform
from pipeit.dse.cost import MB, Candidate, CostModel, Limits, StagePlan
from pipeit.dse.tables import TOL, Group, GroupTables, StageTables
from pipeit.errors import PlanError

__all__ = ["SearchStats", "SearchTooLarge", "optimal_plan", "min_latency_ms", "lowest_latency_ms", "cluster_budgets",
           "unit_cores", "MAX_UNITS_PER_CLUSTER", "MAX_CLUSTER_STATES"]

_TINY = np.nextafter(0.0, 1.0)


@dataclass
class SearchStats:
    """What the search did (for the benchmark and for curiosity; not part of any result)."""

    nodes: int = 0
    pruned: int = 0
    leaves: int = 0
    solved: int = 0
    notes: List[str] = field(default_factory=list)


#: the most worker sizes the search enumerates in one cluster: a bigger cluster (a 64-core server)
#: is planned in units of ``ceil(size / MAX_UNITS_PER_CLUSTER)`` cores, as one of 16 cores is. The
#: number of ways to share ``u`` units among workers grows like the partitions of ``u`` (22 for 8,
#: 231 for 16, 1.7 million for 64), and every stage of every plan draws from them.
MAX_UNITS_PER_CLUSTER = 16

#: the most cluster states (cores left in each cluster, the product over clusters of ``units + 1``)
#: the exact search and its latency bound may visit; beyond it (many clusters: 8 clusters of 4 is
#: 390,625) :class:`SearchTooLarge` is raised before any work. Four clusters of 4 (625 states, an
#: RK3588-like board has 45) plan in a few seconds.
MAX_CLUSTER_STATES = 5_000


class SearchTooLarge(PlanError):
    """The platform has more clusters than the exact search can enumerate in reasonable time."""


def unit_cores(size: int) -> int:
    """Cores per worker-size unit in a cluster of ``size`` cores (1 up to :data:`MAX_UNITS_PER_CLUSTER`)."""
    return max(1, -(-size // MAX_UNITS_PER_CLUSTER))


def cluster_budgets(cost: CostModel, platform: Platform) -> Tuple[Tuple[str, int, Tuple[int, ...]], ...]:
    """``(cluster, cores, usable core counts)`` for each cluster the table has times for.

    Usable counts are the setups the table has times for, in multiples of
    the cluster's :func:`unit_cores` (and the whole cluster). Raises
    :class:`SearchTooLarge` when the clusters' states exceed
    :data:`MAX_CLUSTER_STATES`.
    """
    out = []
    states = 1
    for cluster in platform.clusters:
        top = 1 if cluster.kind == "gpu" else cluster.size
        unit = unit_cores(top)
        ks = tuple(k for k in range(1, top + 1)
                   if (k % unit == 0 or k == top) and CoreSetup(cluster.name, k) in cost.times.times)
        if ks:
            out.append((cluster.name, top, ks))
            states *= len({top - sum(parts) for parts in _partitions(top, tuple(sorted(ks, reverse=True)))})
    if not out:
        raise PlanError(
            f"the layer times cover no setup of platform {platform.source!r} "
            f"(times for {', '.join(map(str, cost.times.setups))})"
        )
    if states > MAX_CLUSTER_STATES:
        cores = sum(size for _, size, _ in out)
        raise SearchTooLarge(
            f"platform {platform.source!r} has {len(out)} clusters ({cores} cores): more than the exact "
            f"search can enumerate ({states:,} cluster states, at most {MAX_CLUSTER_STATES:,})"
        )
    return tuple(out)


def interchangeable_clusters(cost: CostModel, budgets) -> Tuple[Tuple[int, int], ...]:
    """Pairs ``(i, k)`` of budget positions whose clusters no plan can tell apart.

    Two clusters are interchangeable when they have the same number of cores
    and, for every core count, the same per-layer times and throttle jitter
    (RK3588's two Cortex-A76 pairs), and neither or both share their CPUs with
    the executor's coordinator. Swapping them maps every plan onto one
    of equal throughput, latency and memory, so the search keeps only plans
    whose stage-by-stage use of ``i`` is lexicographically at least that of
    ``k``: at the first stage that uses them differently, ``i`` gets the
    larger worker sizes. Pairs are consecutive members of each class, which
    orders a class of three or more.
    """
    times = cost.times.times
    classes: List[List[int]] = []
    for index, (name, size, ks) in enumerate(budgets):
        signature = (size, ks, tuple((times[CoreSetup(name, k)], cost.jitter_ms(CoreSetup(name, k))) for k in ks),
                     cost.copies.get(name),  # a GPU's host<->device copies set it apart
                     cost.on_coordinator(CoreSetup(name, 1)))  # so does the coordinator's CPU share
        for members in classes:
            first_name, first_size, first_ks = budgets[members[0]]
            first = (first_size, first_ks,
                     tuple((times[CoreSetup(first_name, k)], cost.jitter_ms(CoreSetup(first_name, k))) for k in first_ks),
                     cost.copies.get(first_name), cost.on_coordinator(CoreSetup(first_name, 1)))
            if first == signature:
                members.append(index)
                break
        else:
            classes.append([index])
    return tuple((a, b) for members in classes for a, b in zip(members, members[1:]))


def _partitions(total: int, parts: Tuple[int, ...]) -> List[Tuple[int, ...]]:
    """Multisets (non-increasing tuples) of ``parts`` summing to at most ``total``."""
    out: List[Tuple[int, ...]] = []

    def rec(left: int, top_index: int, acc: Tuple[int, ...]) -> None:
        out.append(acc)
        for i in range(top_index, len(parts)):
            if parts[i] <= left:
                rec(left - parts[i], i, acc + (parts[i],))

    rec(total, 0, ())
    return out


class _Search:
    def __init__(self, cost: CostModel, platform: Platform, limits: Limits) -> None:
        self.cost = cost
        self.limits = limits
        self.n = cost.num_layers
        self.budgets = cluster_budgets(cost, platform)
        self.names = tuple(b[0] for b in self.budgets)
        self.tables = StageTables(cost)
        self.L = math.inf if limits.latency_ms is None else float(limits.latency_ms)
        self.M = math.inf if limits.memory_mb is None else float(limits.memory_mb) * MB
        self.stats = SearchStats()
        self.best: Optional[Tuple[float, float, Tuple[Group, ...], Tuple[int, ...]]] = None
        self._group_options: Dict[Tuple[int, ...], List[Tuple[Group, Tuple[int, ...], Tuple[Tuple[int, ...], ...]]]] = {}
        self.mirrors = interchangeable_clusters(cost, self.budgets)
        self._rest: Dict[Tuple[int, ...], Tuple[np.ndarray, np.ndarray]] = {}
        self._prepare_bounds()
        self._tmax_at: Dict[Group, Tuple[float, np.ndarray]] = {}
        self._stage_ms = cost.times.calibration.stage_ms
        self._prefix = {}
        self._hf_terms: Dict[Tuple[CoreSetup, int], np.ndarray] = {}
        for setup, row in cost.times.times.items():
            values = np.asarray(row, dtype=float)
            bad = np.isinf(values)
            self._prefix[setup] = (
                np.concatenate(([0.0], np.cumsum(np.where(bad, 0.0, values)))),
                np.concatenate(([0], np.cumsum(bad))),
            )

    # ---- bounds ------------------------------------------------------------------------
    def _prepare_bounds(self) -> None:
        times = self.cost.times
        n = self.n
        self.scale = times.calibration.scale
        self.hops = np.asarray(self.cost.hops, dtype=float)
        refs = [np.asarray(r, dtype=float) for r in times.times.values() if all(math.isfinite(v) for v in r)]
        refs = [r for r in refs if r.sum() > 0]
        self.refs = []  # (suffix work, {setup: 1/c})
        for u in refs:
            suffix = np.concatenate((np.cumsum(u[::-1])[::-1], [0.0]))
            inv_c = {}
            for setup, row in times.times.items():
                t = np.asarray(row, dtype=float)
                pos = u > 0
                ratio = np.where(pos, t / np.where(pos, u, 1.0), np.inf)
                c = float(ratio.min()) if pos.any() else math.inf
                inv_c[setup] = math.inf if c == 0 else (0.0 if math.isinf(c) else 1.0 / c)
            self.refs.append((suffix, inv_c))
        wsuffix = np.concatenate((np.cumsum(np.asarray(times.weight_bytes, dtype=float)[::-1])[::-1], [0.0]))
        self.mem_rest = wsuffix + self.cost.worker_bytes
        self.mem_rest[n] = math.inf

    def _rest_bounds(self, budget: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """For leftover cores ``budget``: (fps upper bound, latency lower bound) of covering ``[b, n)``."""
        cached = self._rest.get(budget)
        if cached is not None:
            return cached
        n = self.n
        usable = [
            CoreSetup(name, k)
            for (name, _, ks), left in zip(self.budgets, budget)
            for k in ks
            if k <= left
        ]
        if not usable:
            result = (np.full(n + 1, -math.inf), np.full(n + 1, math.inf))
            self._rest[budget] = result
            return result
        ub = np.minimum(self._capacity_bound(budget), self._dual_bound(budget))
        ub[n] = -math.inf
        per_layer = np.min(np.stack([self._row(s) for s in usable]), axis=0)
        bad = np.isinf(per_layer)
        work = np.concatenate((np.cumsum(np.where(bad, 0.0, per_layer)[::-1])[::-1], [0.0]))
        bad_suffix = np.concatenate((np.cumsum(bad[::-1])[::-1], [0]))
        least_jitter = min(self.cost.jitter_ms(s) for s in usable)
        lat = self.scale * work + self.cost.times.calibration.stage_ms + 0.5 * self.hops + 0.5 * self.hops[n] + least_jitter
        lat[bad_suffix > 0] = math.inf
        lat[n] = math.inf
        self._rest[budget] = (ub, lat)
        return ub, lat

    def _row(self, setup: CoreSetup) -> np.ndarray:
        return np.asarray(self.cost.times.times[setup], dtype=float)

    def _capacity_bound(self, budget: Tuple[int, ...]) -> np.ndarray:
        """Fluid bound with one reference row per setup: rate <= 1000 * sum(1/c_w) / work(b, n)."""
        ub = np.full(self.n + 1, math.inf)
        for suffix, inv_c in self.refs:
            capacity = 0.0
            for (name, _, ks), left in zip(self.budgets, budget):
                capacity += _knapsack(left, [(k, inv_c[CoreSetup(name, k)]) for k in ks])
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = np.where(suffix > 0, 1000.0 * capacity / (self.scale * np.where(suffix > 0, suffix, 1.0)), math.inf)
            ub = np.minimum(ub, bound)
        return ub

    def _dual_bound(self, budget: Tuple[int, ...]) -> np.ndarray:
        """LP-duality bound, max over the worker multisets the budget allows.

        For workers of setup types ``s`` (``m_s`` of each) any plan's rate
        ``R`` over ``[b, n)`` obeys ``1000 / R >= sum_i min_s(lambda_s * t_si / m_s)``
        for every distribution ``lambda`` (it lower-bounds the fractional
        makespan of the layers over the workers). A few ``lambda`` are tried
        and the smallest bound kept; adding workers only raises the bound, so
        only multisets no further worker fits into are considered.
        """
        n = self.n
        per_cluster = []
        for (name, _, ks), left in zip(self.budgets, budget):
            smallest = min(ks)
            options = [parts for parts in _partitions(left, tuple(sorted(ks, reverse=True)))
                       if left - sum(parts) < smallest]
            per_cluster.append([(name, parts) for parts in options])
        best = np.full(n + 1, -math.inf)
        for combo in itertools.product(*per_cluster):
            counts: Dict[CoreSetup, int] = {}
            for name, parts in combo:
                for k in parts:
                    counts[CoreSetup(name, k)] = counts.get(CoreSetup(name, k), 0) + 1
            if not counts:
                continue
            setups = sorted(counts)
            t = np.stack([self._row(s) for s in setups])
            m = np.array([counts[s] for s in setups], dtype=float)
            finite_sum = np.where(np.isinf(t), 0.0, t).sum(axis=1)
            lam = np.where(finite_sum > 0, m / np.where(finite_sum > 0, finite_sum, 1.0), 1.0)
            bound = np.full(n + 1, math.inf)
            for _ in range(4):
                lam = lam / lam.sum()
                weighted = (lam / m)[:, None] * t
                cheapest = weighted.min(axis=0)
                suffix = np.concatenate((np.cumsum(cheapest[::-1])[::-1], [0.0]))
                with np.errstate(divide="ignore"):
                    bound = np.minimum(bound, 1000.0 / (self.scale * suffix))
                # multiplicative update: weigh overloaded setup types more
                choice = weighted.argmin(axis=0)
                load = np.array([t[j, choice == j].sum() / m[j] for j in range(len(setups))])
                if not np.all(np.isfinite(load)) or load.max() <= 0:
                    break
                lam = lam * np.sqrt(np.maximum(load, 1e-12 * load.max()) / load.max())
            best = np.maximum(best, bound)
        return best

    # ---- enumeration -------------------------------------------------------------------
    def _groups_for(self, budget: Tuple[int, ...]) -> List[Tuple[Group, Tuple[int, ...], Tuple[Tuple[int, ...], ...]]]:
        """``(group, cores left, worker sizes per cluster)`` for every group the budget allows."""
        cached = self._group_options.get(budget)
        if cached is not None:
            return cached
        per_cluster = [_partitions(left, tuple(sorted(ks, reverse=True))) for (_, _, ks), left in zip(self.budgets, budget)]
        options = []
        for combo in itertools.product(*per_cluster):
            if not any(combo):
                continue
            counts: Dict[CoreSetup, int] = {}
            for name, parts in zip(self.names, combo):
                for k in parts:
                    counts[CoreSetup(name, k)] = counts.get(CoreSetup(name, k), 0) + 1
            group: Group = tuple(sorted(counts.items()))
            left = tuple(b - sum(parts) for b, parts in zip(budget, combo))
            options.append((group, left, combo))
        self._group_options[budget] = options
        return options

    def seed(self, candidate: Candidate) -> None:
        """Offer a known plan as incumbent (prunes from the start; never changes the optimum)."""
        groups = []
        for stage in candidate.stages:
            counts: Dict[CoreSetup, int] = {}
            for w in stage.workers:
                counts[w] = counts.get(w, 0) + 1
            groups.append(tuple(sorted(counts.items())))
        left = dict(zip(self.names, (b[1] for b in self.budgets)))
        for group in groups:
            for setup, count in group:
                if setup.cluster not in left or setup not in self.tables.time:
                    return  # not a point of this space (e.g. all-cores' cross-cluster worker)
                left[setup.cluster] -= setup.cores * count
        if any(v < 0 for v in left.values()):
            return
        cuts = (candidate.stages[0].start,) + tuple(st.end for st in candidate.stages)
        mats = [self.tables.group(g) for g in groups]
        mem = sum(float(m.mem[a, b]) for m, a, b in zip(mats, cuts[:-1], cuts[1:]))
        fps = self._rate_of(mats, cuts)
        lat = self._latency(mats, cuts, fps)
        if fps > 0 and lat <= self.L and mem <= self.M and self._better(fps, lat):
            self.best = (fps, lat, tuple(groups), cuts)

    def run(self) -> None:
        n = self.n
        rate0 = np.full(n + 1, -1.0)
        rate0[0] = math.inf
        lat0 = np.full(n + 1, math.inf)
        lat0[0] = 0.0
        mem0 = np.full(n + 1, math.inf)
        mem0[0] = 0.0
        budget = tuple(b[1] for b in self.budgets)
        self._expand((), budget, rate0, lat0, mem0, 0, 0.0, self.mirrors)

    def _reach(self, group: Group, start: int, theta: float) -> int:
        """Last end ``b`` a stage of ``group`` from ``start`` can reach at rate >= ``theta``.

        Uses the hop-free rate, which is an upper bound of the real one and
        decreasing in ``b``; ends are non-decreasing in the start, so the
        last reachable start bounds every row's window.
        """
        return start + int(np.count_nonzero(self._hopfree(group, start) >= theta))

    def _hopfree(self, group: Group, start: int) -> np.ndarray:
        """Hop-free rate of ``group`` on ``[start, b)`` for ``b = start+1 .. n``.

        An upper bound of the stage rate from any start ``a <= start`` (a
        longer stage is no faster, hops only add time).
        """
        rate = np.zeros(self.n - start)
        for setup, count in group:
            term = self._hf_terms.get((setup, start))
            if term is None:
                prefix, bad = self._prefix[setup]
                with np.errstate(divide="ignore"):
                    term = 1000.0 / (self.scale * (prefix[start + 1:] - prefix[start]) + self._stage_ms)
                term[bad[start + 1:] > bad[start]] = 0.0  # cannot run a layer: contributes nothing
                self._hf_terms[(setup, start)] = term
            rate += count * term
        return rate

    def _fast_tmax(self, group: Group, theta: float) -> np.ndarray:
        """The group's slowest-worker times where its rate reaches ``theta`` (inf elsewhere), cached per theta."""
        cached = self._tmax_at.get(group)
        if cached is not None and cached[0] == theta:
            return cached[1]
        g = self.tables.group(group)
        masked = np.where(g.rate >= theta, g.tmax, math.inf)
        self._tmax_at[group] = (theta, masked)
        return masked

    def _theta(self) -> float:
        """Least stage rate a plan needs to still matter: the incumbent's, less the tie tolerance."""
        return _TINY if self.best is None else self.best[0] * (1 - TOL)

    def _queue_floor(self, workers: int, jitter: float) -> float:
        """Least throughput at which ``workers`` frames in flight meet the latency limit (queue term)."""
        if self.L == math.inf or self.cost.gated:
            return 0.0
        room = self.L - jitter
        return math.inf if room <= 0 else workers * 1000.0 / room

    def _expand(self, prefix: Tuple[Group, ...], budget, rate, lat, mem, workers: int, jitter: float,
                tied: Tuple[Tuple[int, int], ...] = ()) -> None:
        """Extend ``prefix`` by every group the leftover ``budget`` allows, best bound first.

        ``tied``: pairs of interchangeable clusters that every group of the
        prefix used alike; a child may not use the second more than the
        first (see :func:`interchangeable_clusters`).
        """
        n = self.n
        theta = self._theta()
        rows = np.flatnonzero(rate[:n] >= theta)
        if rows.size == 0:
            return
        c0 = int(rows[0]) + 1
        last = int(rows[-1])
        # the band of starts rows[0]..last as slices (views, no copies of the stage matrices);
        # starts inside the band that are too slow get rate -1 and latency/memory inf, so they
        # take part in no maximum or minimum below
        band = slice(c0 - 1, last + 1)
        usable = rate[band] >= theta
        head_rate = np.where(usable, rate[band], -1.0)[:, None]
        head_top = float(rate[rows].max())
        head_lat = np.where(usable, lat[band], math.inf)[:, None]
        head_mem = np.where(usable, mem[band], math.inf)[:, None]
        children = []
        for group, left, sizes in self._groups_for(budget):
            if tied and any(sizes[i] < sizes[k] for i, k in tied):
                continue  # the mirror image of a group that is enumerated
            self.stats.nodes += 1
            # only stages fast enough to matter (rate >= theta) may extend a prefix: any plan that
            # can still beat or tie the incumbent has every stage that fast, and theta only grows
            hopfree = self._hopfree(group, last)
            c1 = last + int(np.count_nonzero(hopfree >= theta)) + 1
            if c1 <= c0:
                self.stats.pruned += 1
                continue
            w = workers + g_workers(group)
            j = max(jitter, self._group_jitter(group))
            if self._cheap_hopeless(head_top, hopfree, c0, c1, last, left, w, j):
                self.stats.pruned += 1
                continue
            g = self.tables.group(group)
            new_rate = np.full(n + 1, -1.0)
            new_rate[c0:c1] = np.minimum(head_rate, g.rate[band, c0:c1]).max(axis=0)
            new_lat = np.full(n + 1, math.inf)
            new_lat[c0:c1] = (head_lat + self._fast_tmax(group, theta)[band, c0:c1]).min(axis=0)
            if self.M < math.inf:
                masked = np.where(g.rate[band, c0:c1] >= theta, g.mem[band, c0:c1], math.inf)
                new_mem = np.full(n + 1, math.inf)
                new_mem[c0:c1] = (head_mem + masked).min(axis=0)
            else:
                new_mem = mem
            bound, lat_lb = self._bound(left, new_rate, new_lat, new_mem, w, j)
            if self._hopeless(bound, lat_lb):
                self.stats.pruned += 1
                continue
            still_tied = tuple((i, k) for i, k in tied if sizes[i] == sizes[k])
            children.append((bound, -lat_lb, group, left, new_rate, new_lat, new_mem, w, j, still_tied))
        children.sort(key=lambda c: (c[0], c[1]), reverse=True)
        for bound, neg_lat, group, left, new_rate, new_lat, new_mem, w, j, still_tied in children:
            if self._hopeless(bound, -neg_lat):  # the incumbent may have improved meanwhile
                self.stats.pruned += 1
                continue
            seq = prefix + (group,)
            if new_rate[self.n] > 0:
                self._leaf(seq, new_rate[self.n], new_lat[self.n], new_mem[self.n], w, j)
            if any(left):
                self._expand(seq, left, new_rate, new_lat, new_mem, w, j, still_tied)

    def _group_jitter(self, group: Group) -> float:
        return max(self.cost.jitter_ms(setup) for setup, _ in group)

    def _cheap_hopeless(self, head_top: float, hopfree: np.ndarray, c0: int, c1: int, last: int,
                        left, workers: int, jitter: float) -> bool:
        """An O(n) test, before the O(n^2) step, that no completion of the child can win.

        A child's rate at end ``b`` is at most the prefix's best rate, at most
        the group's hop-free rate from the last usable start (for ``b`` past
        it), and, if it goes on, at most the leftover cores' bound; it must
        reach theta and the queue floor (docs/DSE.md, "Bounds").
        """
        n = self.n
        cap = np.full(c1 - c0, head_top)
        lo = max(c0, last + 1)
        cap[lo - c0:] = np.minimum(cap[lo - c0:], hopfree[lo - last - 1:c1 - last - 1])
        ub, _ = self._rest_bounds(left)
        need_go_on = max(self._theta(), self._queue_floor(workers + 1, jitter))
        ends = np.arange(c0, c1)
        go_on = (ends < n) & (np.minimum(cap, ub[c0:c1]) >= need_go_on)
        if go_on.any():
            return False
        if c1 == n + 1:
            need_stop = max(self._theta(), self._queue_floor(workers, jitter))
            return not cap[-1] >= need_stop
        return True

    def _bound(self, left, rate, lat, mem, workers: int, jitter: float) -> Tuple[float, float]:
        """(throughput upper bound, latency lower bound) over every completion of a node.

        ``workers``/``jitter``: the prefix's worker count and largest jitter. A
        completion that goes on adds at least one worker, and its queue term
        ``W * 1000 / fps + J`` must fit the limit: its throughput must reach
        :meth:`_queue_floor` -- a bound that cuts deep under tight limits.
        """
        n = self.n
        ub, lat_rest = self._rest_bounds(left)
        path = lat[:n] + lat_rest[:n]
        cont = (rate[:n] > 0) & (path <= self.L)
        if self.M < math.inf:
            cont &= mem[:n] + self.mem_rest[:n] <= self.M
        bound = -math.inf
        lat_lb = math.inf
        reach = np.minimum(rate[:n], ub[:n])
        cont &= reach >= max(self._theta(), self._queue_floor(workers + 1, jitter))
        if cont.any():
            bound = float(reach[cont].max())
            if self.cost.gated:
                lat_lb = float(path[cont].min())
            else:
                with np.errstate(divide="ignore"):
                    queue = (workers + 1) * 1000.0 / reach[cont] + jitter
                lat_lb = float(np.maximum(path[cont], queue).min())
        if rate[n] > 0 and lat[n] <= self.L and mem[n] <= self.M and rate[n] >= self._queue_floor(workers, jitter):
            bound = max(bound, float(rate[n]))
            lat_lb = min(lat_lb, max(float(lat[n]), self.cost.queue_ms(workers, float(rate[n]), jitter)))
        return bound, lat_lb

    def _hopeless(self, bound: float, lat_lb: float) -> bool:
        if bound <= 0:
            return True
        if self.best is None:
            return False
        best_fps, best_lat = self.best[0], self.best[1]
        if bound < best_fps * (1 - TOL):
            return True
        return bound <= best_fps * (1 + TOL) and lat_lb >= best_lat

    # ---- exact partition for one sequence ---------------------------------------------
    def _leaf(self, seq: Tuple[Group, ...], top_rate: float, least_lat: float, least_mem: float,
              workers: int, jitter: float) -> None:
        self.stats.leaves += 1
        if least_lat > self.L or least_mem > self.M:
            return
        queue_floor = self._queue_floor(workers, jitter)
        if top_rate < queue_floor:  # even the fastest partition keeps frames queued too long
            return
        if self.best is not None and top_rate < self.best[0] * (1 - TOL):
            return
        self.stats.solved += 1
        mats = [self.tables.group(g) for g in seq]
        limited = self.L < math.inf or self.M < math.inf
        if not limited:
            found = self._feasible(mats, seq, top_rate * (1 - TOL))
        else:
            found = self._feasible(mats, seq, top_rate)
            if found is None:
                floor = _TINY if self.best is None else self.best[0] * (1 - TOL)
                low = self._feasible(mats, seq, max(floor, queue_floor))
                if low is None:
                    return
                r_ok = self._rate_of(mats, low[1])
                values = np.concatenate([m.rate[(m.rate > r_ok) & (m.rate < top_rate)] for m in mats])
                while values.size:
                    pivot = float(np.partition(values, values.size // 2)[values.size // 2])
                    trial = self._feasible(mats, seq, pivot)
                    if trial is None:
                        values = values[values < pivot]
                    else:
                        r_ok = self._rate_of(mats, trial[1])
                        values = values[values > r_ok]
                top_rate = r_ok
            found = self._feasible(mats, seq, top_rate * (1 - TOL))
            if found is not None and self._latency(mats, found[1], self._rate_of(mats, found[1])) > self.L:
                found = self._feasible(mats, seq, top_rate)  # the TOL relaxation cost the queue term its margin
        if found is None:  # cannot happen: the rate just proved feasible is relaxed by TOL
            return
        cuts = found[1]
        fps = self._rate_of(mats, cuts)
        lat = self._latency(mats, cuts, fps)
        if lat > self.L:
            return
        if self._better(fps, lat):
            self.best = (fps, lat, seq, cuts)

    def _better(self, fps: float, lat: float) -> bool:
        if self.best is None:
            return True
        best_fps, best_lat = self.best[0], self.best[1]
        if fps > best_fps * (1 + TOL):
            return True
        return fps >= best_fps * (1 - TOL) and lat < best_lat * (1 - 1e-12)

    def _latency(self, mats: Sequence[GroupTables], cuts: Tuple[int, ...], fps: float) -> float:
        """The cost model's latency of a partition: max(path, queue) (see :mod:`pipeit.dse.cost`)."""
        path = sum(float(m.tmax[a, b]) for m, a, b in zip(mats, cuts[:-1], cuts[1:]))
        workers = sum(m.workers for m in mats)
        jitter = max(m.jitter for m in mats)
        return max(path, self.cost.queue_ms(workers, fps, jitter))

    @staticmethod
    def _rate_of(mats: Sequence[GroupTables], cuts: Tuple[int, ...]) -> float:
        return float(min(m.rate[a, b] for m, a, b in zip(mats, cuts[:-1], cuts[1:])))

    def _feasible(self, mats: Sequence[GroupTables], seq: Sequence[Group], min_rate: float) -> Optional[Tuple[float, Tuple[int, ...]]]:
        """Least-latency partition with every stage rate >= ``min_rate`` within the limits, or None."""
        min_rate = max(min_rate, _TINY)
        if self.M < math.inf:
            return self._feasible_labels(mats, min_rate)
        n = self.n
        lat = np.full(n + 1, math.inf)
        lat[0] = 0.0
        back = []
        for j, (m, group) in enumerate(zip(mats, seq)):
            rows = np.flatnonzero(lat[:n] < math.inf)
            if rows.size == 0:
                return None
            later = len(mats) - 1 - j  # every later stage needs a layer
            c0 = int(rows[0]) + 1
            c1 = min(self._reach(group, int(rows[-1]), min_rate), n - later) + 1
            if later == 0:
                c0 = max(c0, n)
            if c1 <= c0:
                return None
            rate = m.rate[rows, c0:c1]
            total = lat[rows, None] + np.where(rate >= min_rate, m.tmax[rows, c0:c1], math.inf)
            arg = total.argmin(axis=0)
            best = total[arg, np.arange(c1 - c0)]
            best[best > self.L] = math.inf  # latency only grows along the pipeline
            lat = np.full(n + 1, math.inf)
            lat[c0:c1] = best
            back.append((rows[arg], c0))
        if not lat[n] <= self.L:
            return None
        cuts = [n]
        for parents, c0 in reversed(back):
            cuts.append(int(parents[cuts[-1] - c0]))
        return float(lat[n]), tuple(reversed(cuts))

    def _feasible_labels(self, mats: Sequence[GroupTables], min_rate: float) -> Optional[Tuple[float, Tuple[int, ...]]]:
        """Pareto labels (latency, memory) per position: exact under a memory limit."""
        n = self.n
        pos = np.array([0])
        lat = np.array([0.0])
        mem = np.array([0.0])
        history = []
        stages_left = len(mats)
        for m in mats:
            stages_left -= 1
            allowed = (m.rate[pos] >= min_rate)
            allowed[:, n - stages_left + 1:] = False  # leave a layer for every later stage
            k, b = np.nonzero(allowed)
            if k.size == 0:
                return None
            new_lat = lat[k] + m.tmax[pos[k], b]
            new_mem = mem[k] + m.mem[pos[k], b]
            ok = (new_lat <= self.L) & (new_mem <= self.M)
            k, b, new_lat, new_mem = k[ok], b[ok], new_lat[ok], new_mem[ok]
            if k.size == 0:
                return None
            order = np.lexsort((new_mem, new_lat, b))
            k, b, new_lat, new_mem = k[order], b[order], new_lat[order], new_mem[order]
            big = float(new_mem.max()) + 1.0
            key = new_mem - b * big
            running = np.minimum.accumulate(key)
            keep = np.ones(key.size, dtype=bool)
            keep[1:] = key[1:] < running[:-1]
            history.append((pos, k[keep]))
            pos, lat, mem = b[keep], new_lat[keep], new_mem[keep]
        final = np.flatnonzero(pos == n)
        if final.size == 0:
            return None
        label = int(final[np.argmin(lat[final])])
        best_lat = float(lat[label])
        cuts = [n]
        for prev_pos, parents in reversed(history):
            label = int(parents[label])
            cuts.append(int(prev_pos[label]))
        return best_lat, tuple(reversed(cuts))

    # ---- result ------------------------------------------------------------------------
    def candidate(self) -> Optional[Candidate]:
        if self.best is None:
            return None
        _, _, seq, cuts = self.best
        stages = tuple(
            StagePlan(a, b, tuple(s for s, count in group for _ in range(count)))
            for group, a, b in zip(seq, cuts[:-1], cuts[1:])
        )
        return self.cost.evaluate(stages)


def g_workers(group: Group) -> int:
    """How many workers a group has."""
    return sum(count for _, count in group)


def _knapsack(capacity: int, items: Sequence[Tuple[int, float]]) -> float:
    """Max total value of items (weight, value), each usable any number of times, weight <= capacity."""
    best = [0.0] * (capacity + 1)
    for c in range(1, capacity + 1):
        best[c] = best[c - 1]
        for w, v in items:
            if w <= c:
                best[c] = max(best[c], best[c - w] + v)
    return best[capacity]


def min_latency_ms(cost: CostModel, platform: Platform) -> float:
    """A lower bound on any plan's latency: the least *path* (single-worker stages, jitter included).

    More workers in a stage only add a max to the path; the queue term can
    only add (see :func:`lowest_latency_ms` for the achievable figure).
    Dynamic programming over (position, cores left): ``V[B][b]`` is the least
    time to run layers ``[b, n)`` with the cores in ``B``.
    """
    budgets = cluster_budgets(cost, platform)
    tables = StageTables(cost)
    n = cost.num_layers
    memo: Dict[Tuple[int, ...], np.ndarray] = {}

    def solve(budget: Tuple[int, ...]) -> np.ndarray:
        if budget in memo:
            return memo[budget]
        value = np.full(n + 1, math.inf)
        value[n] = 0.0
        for i, (name, _, ks) in enumerate(budgets):
            for k in ks:
                if k > budget[i]:
                    continue
                rest = solve(budget[:i] + (budget[i] - k,) + budget[i + 1:])
                setup = CoreSetup(name, k)
                value = np.minimum(value, (tables.time[setup] + cost.jitter_ms(setup) + rest[None, :]).min(axis=1))
        value[n] = 0.0
        memo[budget] = value
        return value

    return float(solve(tuple(b[1] for b in budgets))[0])


def lowest_latency_ms(cost: CostModel, platform: Platform, memory_mb: Optional[float] = None,
                      rel: float = 1e-3) -> float:
    """The lowest latency a plan achieves (within ``rel``), for messages: inf if none runs.

    :func:`min_latency_ms` bounds the path from below; with the queue term
    a plan may need more, so the bound is tried as a limit and, when no plan
    meets it, the answer is bisected between it and the best one-worker plan.
    """
    low = min_latency_ms(cost, platform)
    if not math.isfinite(low):
        return low

    def meets(limit: float) -> Optional[float]:
        search = _Search(cost, platform, Limits(limit, memory_mb))
        search.run()
        found = search.candidate()
        return None if found is None else found.latency_ms

    hit = meets(low * (1 + 1e-9))
    if hit is not None:
        return hit
    high = min((cost.evaluate((StagePlan(0, cost.num_layers, (CoreSetup(name, top),)),)).latency_ms
                for name, top, ks in cluster_budgets(cost, platform) if top in ks), default=math.inf)
    if not math.isfinite(high) or meets(high * (1 + 1e-9)) is None:
        return high
    for _ in range(40):
        if high <= low * (1 + rel):
            break
        mid = 0.5 * (low + high)
        got = meets(mid)
        if got is None:
            low = mid
        else:
            high = got
    return high


def optimal_plan(
    cost: CostModel,
    platform: Platform,
    limits: Limits = Limits(),
    stats: Optional[SearchStats] = None,
    seeds: Sequence[Candidate] = (),
) -> Candidate:
    """The highest-throughput plan within ``limits`` (ties: lowest latency); exact.

    ``seeds`` are plans already known (other strategies' answers): the best
    of them that meets the limits starts as the incumbent, so the search
    prunes from its first node; the result is the same with or without them.
    Raises :class:`PlanError` naming the best achievable latency (or the
    least memory) when the limits cannot be met.
    """
    search = _Search(cost, platform, limits)
    for candidate in seeds:
        search.seed(candidate)
    if limits.memory_mb is not None:
        least = sum(cost.times.weight_bytes) + cost.worker_bytes
        if least > limits.memory_mb * MB:
            raise PlanError(
                f"no plan fits in {limits.memory_mb:g} MiB: the model's weights alone need {least / MB:.2f} MiB "
                "in one worker (fp16 or pruned weights count twice: stored, and dense as the runtime holds them)"
            )
    search.run()
    if stats is not None:
        stats.nodes, stats.pruned, stats.leaves, stats.solved = (
            search.stats.nodes, search.stats.pruned, search.stats.leaves, search.stats.solved,
        )
    found = search.candidate()
    if found is None:
        best_latency = lowest_latency_ms(cost, platform, limits.memory_mb)
        if limits.latency_ms is not None and best_latency > limits.latency_ms:
            raise PlanError(
                f"no plan meets the {limits.latency_ms:g} ms latency limit: "
                f"the lowest latency achievable is {best_latency:.3f} ms"
            )
        if not math.isfinite(best_latency):
            raise PlanError("no plan can run this model: some layer has no setup that can run it")
        raise PlanError(f"no plan meets the limits ({limits.describe()}); "
                        f"the lowest latency achievable is {best_latency:.3f} ms")
    return found
