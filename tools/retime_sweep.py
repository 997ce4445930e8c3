"""Time a profile's generated sweep layers on more core setups (e.g. cpu:2 for a cpu:1 sweep).

``pipeit profile --sweep`` is adaptive (each round follows the current fit),
so a second sweep on another setup would not sample the same layers. This
tool rebuilds every ``sweep`` layer row of the given profiles from its
descriptor (:class:`pipeit.profiling.sweep.LayerConfig`; a layer whose
rebuilt descriptor key differs is skipped and counted) and times it on the
setups asked for, appending ``sweep`` rows to ``-o`` (resumable, the same
fingerprint checks as ``pipeit profile``).

It also re-times chosen rows of model profiles (``--list``): a re-time list
is a CSV ``kind,model,start,end,setup,key,reason`` naming suspect layer rows
(by descriptor key) and stage/model rows (by layer range); each is rebuilt
from the model file given with ``--models`` (``pipeit.profiler.model_jobs``,
the profiler's own sub-models) and timed again on its setup, keeping its
model name and key, so that ``read_profile`` lets the new row supersede the
old one when OUT is listed after the old profile (docs/PREDICTORS.md).

Usage::

    .venv/bin/python tools/retime_sweep.py SWEEP.csv... --platform auto --setup cpu:2 -o OUT.csv
    .venv/bin/python tools/retime_sweep.py --list LIST.csv --models build/bench/zoo/*.tflite \
        --platform auto -o OUT.csv [SWEEP.csv...]   # the list's sweep rows: from these profiles
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["config_of", "sweep_jobs", "read_retime_list", "list_jobs", "main"]

LIST_COLUMNS = ("kind", "model", "start", "end", "setup", "key", "reason")

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


def read_retime_list(path) -> List[Tuple[str, str, int, int, str, str]]:
    """``(kind, model, start, end, setup, key)`` entries of a re-time list CSV."""
    import csv

    from pipeit.errors import ProfileError

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) != LIST_COLUMNS:
                raise ProfileError(f"{path}: not a re-time list (header must be {','.join(LIST_COLUMNS)})")
            out = []
            for n, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                if len(cells) != len(LIST_COLUMNS) or cells[0] not in ("layer", "stage", "model"):
                    raise ProfileError(f"{path}:{n}: bad re-time entry {cells!r}")
                out.append((cells[0], cells[1], int(cells[2]), int(cells[3]), cells[4], cells[5]))
    except OSError as err:
        raise ProfileError(f"{path}: cannot read re-time list: {err}") from err
    except ValueError as err:
        raise ProfileError(f"{path}: bad layer range in re-time list: {err}") from err
    return out


def list_jobs(entries, model_paths, catalog=None) -> List[Tuple[object, str]]:
    """``(job, setup)`` for every re-time entry, rebuilt from its model file (by file stem);
    ``sweep`` layers from their descriptor in ``catalog`` (key -> descriptor of the profiles given)."""
    from pipeit.errors import ProfileError
    from pipeit.profiler import model_jobs
    from pipeit.profiling.sweep import config_job

    by_name = {Path(p).stem: p for p in model_paths}
    cache: dict = {}
    out = []
    for kind, model, start, end, setup, key in entries:
        if model == "sweep" and kind == "layer":
            d = (catalog or {}).get(key)
            cfg = config_of(d) if d is not None else None
            job = config_job(cfg) if cfg is not None else None
            if job is None or job.key != key:
                raise ProfileError(f"re-time entry: sweep layer {key[:60]}... cannot be rebuilt "
                                   f"(give the sweep profile it came from)")
            out.append((job, setup))
            continue
        if model not in by_name:
            raise ProfileError(f"re-time list names model {model!r}, not among --models")
        if model not in cache:
            cache[model] = model_jobs(by_name[model])
        match = [j for j in cache[model] if j.kind == kind and (
            j.key == key if kind == "layer" else (j.start, j.end) == (start, end))]
        if not match and kind == "stage":
            match = [_stage_job(by_name[model], model, start, end)]
        if not match:
            raise ProfileError(f"re-time entry {kind} {model}[{start},{end}) not found in {by_name[model]}")
        out.append((match[0], setup))
    return out


def _stage_job(path, name: str, start: int, end: int):
    """A stage job for any layer range (``model_jobs`` makes only its own 3 ranges)."""
    from pipeit.errors import ProfileError
    from pipeit.graph import load_graph
    from pipeit.modelfile import read_model, read_model_bytes
    from pipeit.profiler import Job
    from pipeit.split import extract_layers

    data = read_model_bytes(path)
    graph = load_graph(data)
    if not 0 <= start < end <= len(graph.layers):
        raise ProfileError(f"re-time entry stage {name}[{start},{end}) is outside its {len(graph.layers)} layers")
    keys = tuple(layer.descriptor.key_string() for layer in graph.layers[start:end])
    sub = extract_layers(read_model(data), start, end)
    return Job("stage", name, start, end, "", None, keys, sub.model_bytes)


def _run_list(args, platform, fingerprint, out) -> Tuple[int, List]:
    from pipeit.profile_table import ProfileWriter
    from pipeit.profiler import TimingSpec, WorkerPool, existing_rows, resolve_setups, run_jobs

    from pipeit.profile_table import read_profile

    catalog = read_profile(args.profiles, force=args.force).catalog() if args.profiles else {}
    pairs = list_jobs(read_retime_list(args.list), args.models or [], catalog)
    setups = resolve_setups(platform, sorted({s for _, s in pairs}))
    done = existing_rows(out, fingerprint, args.force)
    rows = []
    with WorkerPool(platform, setups) as pool, ProfileWriter(out) as writer:
        for setup in setups:
            jobs = [j for j, s in pairs if s == str(setup)]
            rows += run_jobs(jobs, pool, [setup], writer, fingerprint, TimingSpec(), done)
    return len(pairs), rows


def main(argv=None) -> int:
    from cores.errors import CoresError
    from cores.platform import load_platform
    from pipeit.errors import PipeitError
    from pipeit.profile_table import ProfileWriter
    from pipeit.profiler import (TimingSpec, WorkerPool, existing_rows, platform_fingerprint_for,
                                 resolve_setups, run_jobs)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="*")
    ap.add_argument("--platform", default="auto")
    ap.add_argument("--setup", action="append", metavar="CLUSTER:K")
    ap.add_argument("--list", metavar="LIST.csv", help="re-time the rows of this list instead of sweep layers")
    ap.add_argument("--models", nargs="+", metavar="MODEL.tflite", help="model files the list's rows come from")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.list is None and not (args.profiles and args.setup):
        ap.error("give SWEEP.csv... with --setup, or --list LIST.csv --models MODEL...")
    try:
        platform = load_platform(args.platform)
        if args.list is not None:
            fingerprint = platform_fingerprint_for(platform)
            n, rows = _run_list(args, platform, fingerprint, Path(args.output))
            print(f"{n} listed rows, {len(rows)} measured, {sum(r.ok for r in rows)} ok -> {args.output}")
            return 0
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
