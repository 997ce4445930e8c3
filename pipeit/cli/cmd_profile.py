"""``pipeit profile MODEL... --platform SPEC -o PROFILE.csv``: time layers on every core setup."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeit.cli.output import check_output_file, emit_json
from pipeit.errors import ProfileError

__all__ = ["register", "run"]

#: fewest timed runs per measurement unless --min-repeats says otherwise (capped at --repeats)
DEFAULT_MIN_REPEATS = 9


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="time each distinct layer (and stages, whole models) on each core setup",
        description="Time every distinct layer of the models as a single-layer sub-model in a "
        "worker pinned to each core setup (num_threads = core count), plus a few stages and the "
        "whole model for calibration, and the executor's hop between two CPUs for 4 KB to 4 MB "
        "tensors (plans from the profile charge it). Rows are appended to the CSV as measured; re-running "
        "skips rows already there. --sweep N adds N generated layers sampled over the "
        "descriptor space, adaptively.",
    )
    parser.add_argument("models", metavar="MODEL", nargs="*", help=".tflite files")
    parser.add_argument("--platform", default="auto", help="platform spec (default: auto)")
    parser.add_argument("-o", "--output", required=True, metavar="PROFILE.csv")
    parser.add_argument("--setup", action="append", metavar="CLUSTER:K",
                        help="only this core setup (repeatable; default: every setup)")
    parser.add_argument("--sweep", type=int, default=0, metavar="N",
                        help="also measure N generated single layers")
    parser.add_argument("--stages", type=int, default=3,
                        help="multi-layer stages timed per model for calibration (default 3)")
    parser.add_argument("--repeats", type=int, default=60, help="most timed runs per measurement")
    parser.add_argument("--min-repeats", type=int, default=None,
                        help="fewest timed runs per measurement (default 9, or --repeats if fewer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and of the sweep")
    parser.add_argument("--tuning", metavar="FILE",
                        help="GPU tuning file for gpu:1 rows (default: $PIPEIT_STATE_DIR/tuning.json if present)")
    parser.add_argument("--force", action="store_true",
                        help="append to a profile from another platform/runtime")
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                        help="no progress on stderr (--quiet, as bench names it)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.platform import load_platform, platform_file
    from pipeit.profile_table import ProfileTable, ProfileWriter, read_profile
    from pipeit.profiler import (
        TimingSpec, WorkerPool, existing_rows, gpu_setups, model_jobs, platform_fingerprint_for,
        profile_gpu, profile_hops, resolve_setups, run_jobs,
    )

    if not args.models and args.sweep <= 0:
        raise ProfileError("nothing to profile: give MODEL files and/or --sweep N")
    if args.sweep < 0:
        raise ProfileError("--sweep N needs N >= 0")
    _check_counts(args)
    check_output_file(args.output, "-o", [*args.models, args.tuning, platform_file(args.platform)],
                      make_parents=True)
    min_repeats = min(DEFAULT_MIN_REPEATS, args.repeats) if args.min_repeats is None else args.min_repeats
    spec = TimingSpec(min_repeats=min_repeats, max_repeats=args.repeats, seed=args.seed)
    platform = load_platform(args.platform)
    setups = resolve_setups(platform, args.setup)
    on_gpu = gpu_setups(platform, args.setup)
    fingerprint = platform_fingerprint_for(platform)
    out = Path(args.output)
    jobs = []
    for path in args.models:
        jobs.extend(model_jobs(path, stages=args.stages))
    done = existing_rows(out, fingerprint, args.force, jobs)
    progress = not args.no_progress
    with WorkerPool(platform, setups) as pool, ProfileWriter(out) as writer:
        rows = run_jobs(jobs, pool, setups, writer, fingerprint, spec, done, progress)
        rows += profile_gpu(args.models, platform, on_gpu, writer, fingerprint, done, args.tuning, progress)
        if args.sweep:
            from pipeit.profiling.sweep import run_sweep

            base = read_profile(out, fingerprint=fingerprint, force=args.force).layer_rows()
            rows += run_sweep(args.sweep, pool, setups, writer, fingerprint, spec, done, base,
                              seed=args.seed, progress=progress)
        if setups:  # a run of GPU setups alone times GPU layers only
            rows += profile_hops(platform, writer, fingerprint, done, progress)
    from pipeit.profiler import NO_GPU_KERNEL

    hops = [r for r in rows if r.kind == "hop"]
    rows = [r for r in rows if r.kind != "hop"]
    # noisy rows were timed (on busy cores) and plans use them, held to clean ones; a later run re-measures them
    noisy = sum(1 for r in rows if r.noisy)
    failed = [r for r in rows if not r.ok and r.status != NO_GPU_KERNEL and not r.noisy]
    no_kernel = sum(1 for r in rows if r.status == NO_GPU_KERNEL)
    cpu_rows = [r for r in rows if r.setup in setups]
    hop_line = ProfileTable(hops, fingerprint).hop_model()  # the line of the hops timed now, if any
    summary = {
        "output": str(out),
        "fingerprint": fingerprint,
        "setups": [str(s) for s in list(setups) + list(on_gpu)],
        "measured": len(rows),
        "failed": len(failed),
        "noisy": noisy,
        "no_gpu_kernel": no_kernel,
        "skipped_existing": len(jobs) * len(setups) - sum(1 for r in cpu_rows if r.model != "sweep"),
        "hops": {"timed": sum(1 for r in hops if r.ok), "failed": sum(1 for r in hops if not r.ok),
                 "model": None if hop_line is None else hop_line.to_json()},
    }
    if args.json:
        emit_json(summary)
    else:
        extra = f", {no_kernel} layers without a GPU kernel" if no_kernel else ""
        if noisy:
            extra += f", {noisy} noisy: timed on busy cores, measured again by the next run"
        print(f"{len(rows)} measurements ({len(failed)} failed{extra}) on {', '.join(summary['setups'])} "
              f"-> {out}")
        if hop_line is not None:
            print(f"hop between stages: {hop_line.describe()}; plans from this profile charge it")
        for r in failed[:5]:
            print(f"  not measured: {r.model} {r.kind}[{r.start}:{r.end}] on {r.setup}: {r.status}",
                  file=sys.stderr)
    if rows and len(failed) == len(rows):  # nothing usable came of it: a script must not go on to plan
        print(f"pipeit: error: every measurement failed (first: {failed[0].status})", file=sys.stderr)
        return 1
    return 0


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse counts and seeds the profiler cannot use, before any worker starts.

    Past this point a bad value does not stop the run: each measurement
    fails on its own (a negative seed) or the value is quietly ignored (a
    negative --stages, a --min-repeats above --repeats), and the table that
    comes out is empty or not what was asked for.
    """
    if args.repeats < 1 or (args.min_repeats is not None and args.min_repeats < 1):
        raise ProfileError("--repeats and --min-repeats must be >= 1")
    if args.min_repeats is not None and args.min_repeats > args.repeats:
        raise ProfileError(f"--min-repeats ({args.min_repeats}) must not exceed --repeats ({args.repeats})")
    if args.stages < 0:
        raise ProfileError(f"--stages must be >= 0, got {args.stages}")
    if args.seed < 0:
        raise ProfileError(f"--seed must be >= 0, got {args.seed}")
