"""Time a profile's generated sweep layers on more core setups (e.g. cpu:2 for a cpu:1 sweep).

``pipeit profile --sweep`` is adaptive (each round follows the current fit),
so a second sweep on another setup would not sample the same layers. This
tool rebuilds every ``sweep`` layer row of the given profiles from its
descriptor (:class:`pipeit.profiling.sweep.LayerConfig`; a layer whose
rebuilt descriptor key differs is skipped and counted) and times it on the
setups asked for, appending ``sweep`` rows to ``-o`` (resumable, the same
fingerprint checks as ``pipeit profile``).

Usage::

    .venv/bin/python tools/retime_sweep.py SWEEP.csv... --platform auto --setup cpu:2 -o OUT.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["config_of", "sweep_jobs", "main"]

_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "fc",
        "MAX_POOL_2D": "max_pool", "AVERAGE_POOL_2D": "avg_pool", "ADD": "add"}


def config_of(d) -> Optional[object]:
    """The generator's config for a sweep layer's descriptor (None for ops the sweep does not make)."""
    from pipeit.profiling.sweep import LayerConfig

    op = _OPS.get(d.op)
    if op is None:
        return None
    shape = d.input_shape
    if op == "fc":
        return LayerConfig("fc", 1, int(shape[-1]), int(d.out_channels))
    size, cin = int(shape[1]), int(shape[3])
    kernel = (d.kernel or (1, 1))[0]
    stride = (d.stride or (1, 1))[0]
    if op == "conv":
        return LayerConfig("conv", size, cin, int(d.out_channels), kernel, stride)
    if op == "add":
        return LayerConfig("add", size, cin, 0, 1, 1)
    return LayerConfig(op, size, cin, 0, kernel, stride)


def sweep_jobs(paths, force: bool = False) -> Tuple[List, int]:
    """(jobs, skipped): one job per distinct sweep layer whose rebuilt key matches."""
    from pipeit.profile_table import read_profile
    from pipeit.profiling.sweep import config_job

    table = read_profile(paths, force=force)
    jobs, seen, skipped = [], set(), 0
    for row in table.layer_rows():
        if row.model != "sweep" or row.key in seen:
            continue
        seen.add(row.key)
        cfg = config_of(row.descriptor)
        job = config_job(cfg) if cfg is not None else None
        if job is None or job.key != row.key:
            skipped += 1
            continue
        jobs.append(job)
    return jobs, skipped


def main(argv=None) -> int:
    from cores.errors import CoresError
    from cores.platform import load_platform
    from pipeit.errors import PipeitError
    from pipeit.profile_table import ProfileWriter
    from pipeit.profiler import (TimingSpec, WorkerPool, existing_rows, platform_fingerprint_for,
                                 resolve_setups, run_jobs)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--platform", default="auto")
    ap.add_argument("--setup", action="append", metavar="CLUSTER:K", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        platform = load_platform(args.platform)
        setups = resolve_setups(platform, args.setup)
        fingerprint = platform_fingerprint_for(platform)
        out = Path(args.output)
        done = existing_rows(out, fingerprint, args.force)
        jobs, skipped = sweep_jobs(args.profiles, args.force)
        with WorkerPool(platform, setups) as pool, ProfileWriter(out) as writer:
            rows = run_jobs(jobs, pool, setups, writer, fingerprint, TimingSpec(), done)
    except (PipeitError, CoresError) as err:
        print(f"retime_sweep: {err}", file=sys.stderr)
        return 2
    ok = sum(r.ok for r in rows)
    print(f"{len(jobs)} sweep layers ({skipped} not rebuilt), {len(rows)} rows measured, {ok} ok -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
