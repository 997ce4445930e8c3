"""Fully connected layers around and beyond the last-level cache, profiled as sweep rows.

Why: a layer whose weights exceed the LLC streams them from DRAM on every
invoke even when timed alone (``mech``'s ``dram`` term, ms per weight MB).
In the zoo only AlexNet's FC6/FC7 (151 MB / 67 MB) are that big, so with
AlexNet held out nothing teaches the DRAM rate and the fallback (the
calibration's cold-weight rate) under-prices them by ~30 %. This tool times
a fixed set of FC shapes from well inside the cache to 4x beyond it -- none
of them AlexNet's -- on the setups asked for and appends them to a profile
as ``sweep`` rows (resumable, same format and fingerprint checks as
``pipeit profile``), so ``pipeit fit``/``pipeit eval`` learn the rate
without seeing AlexNet.

Usage::

    .venv/bin/python tools/fc_dram_sweep.py --platform auto -o build/figs4/fc-dram.csv [--setup cpu:1]...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["FC_SHAPES", "fc_jobs", "main"]

#: (inputs, outputs): weights 4 MB .. 134 MB in float32; AlexNet's 9216x4096,
#: 4096x4096 and 4096x1000 are left out on purpose (strict leave-one-out)
FC_SHAPES: Tuple[Tuple[int, int], ...] = (
    (1024, 1024), (2048, 2048), (1536, 4000), (2048, 3072), (3000, 3000),
    (3072, 4096), (4096, 3072), (2048, 6144), (12288, 1024), (4096, 6000),
    (6144, 4096), (5120, 5120), (8192, 4096), (4096, 8192),
)


def fc_jobs(shapes=FC_SHAPES) -> List:
    from pipeit.profiling.sweep import LayerConfig, config_job

    jobs = []
    for cin, cout in shapes:
        job = config_job(LayerConfig("fc", 1, int(cin), int(cout)))
        if job is not None:
            jobs.append(job)
    return jobs


def main(argv=None) -> int:
    from cores.errors import CoresError
    from cores.platform import load_platform
    from pipeit.errors import PipeitError
    from pipeit.profile_table import ProfileWriter
    from pipeit.profiler import (TimingSpec, WorkerPool, existing_rows, platform_fingerprint_for,
                                 resolve_setups, run_jobs)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--platform", default="auto")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--setup", action="append", metavar="CLUSTER:K")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        platform = load_platform(args.platform)
        setups = resolve_setups(platform, args.setup)
        fingerprint = platform_fingerprint_for(platform)
        out = Path(args.output)
        done = existing_rows(out, fingerprint, args.force)
        jobs = fc_jobs()
        # DRAM-bound layers take 5-40 ms: fewer, longer samples are enough
        spec = TimingSpec(min_repeats=7, max_repeats=40, max_seconds=3.0)
        with WorkerPool(platform, setups) as pool, ProfileWriter(out) as writer:
            rows = run_jobs(jobs, pool, setups, writer, fingerprint, spec, done)
    except (PipeitError, CoresError) as err:
        print(f"fc_dram_sweep: {err}", file=sys.stderr)
        return 2
    for r in rows:
        mb = r.descriptor.weight_bytes / 1e6
        print(f"{r.setup}  {r.key.split('|')[1]:>12s} -> {r.key.split('|')[2]:>12s}  {mb:7.1f} MB  "
              f"{r.median_ms:8.3f} ms  {r.status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
