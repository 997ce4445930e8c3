"""``pipeit topology``: the clusters of this machine, a board, an emulated platform or a file."""

from __future__ import annotations

import argparse

from cores.platform import load_platform
from cores.sysfs import format_cpu_list
from cores.topology import detect_topology
from pipeit.cli.output import emit_json, format_table

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "topology",
        help="show clusters, core types, CPUs and frequencies",
        description="Show the platform's clusters (detected, a known board, emulated, or a file).",
    )
    parser.add_argument("--platform", default="auto", metavar="SPEC",
                        help="auto | board:NAME | emulate:big=0@1.0,little=1@0.4[,gpu=0[@cpuN]] | FILE.json "
                        "(default auto; auto adds an OpenCL GPU when there is one)")
    parser.add_argument("--sysfs", default=None, metavar="ROOT",
                        help="read ROOT/sys and ROOT/proc instead of this machine's (for fixtures; with "
                        "--platform auto or emulate:...)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def _document(args: argparse.Namespace) -> dict:
    spec = (args.platform or "auto").strip()
    if args.sysfs is not None and not (spec == "auto" or spec.startswith("emulate:")):
        from pipeit.errors import InputError

        raise InputError(f"--sysfs is read for --platform auto or emulate:..., not {spec} (a board or a file "
                         "describes its own clusters)")
    platform = load_platform(args.platform, sysfs_root=args.sysfs)
    # the facts of a detection (arch, offline CPUs, SMT) belong to a detected platform only: by what was
    # asked for, not by the source it reports ("sysfs:ROOT" with --sysfs; a saved `--json` says "auto")
    detected = (args.platform or "auto").strip() == "auto"
    topo = detect_topology(args.sysfs) if detected else None
    clusters = []
    for cluster in platform.clusters:
        entry = cluster.to_json()
        if topo is not None:
            entry["threads_per_core"] = topo.threads_per_core(cluster)
        clusters.append(entry)
    doc = {"source": platform.source, "clusters": clusters, "fastest": platform.fastest.name}
    notes = dict(platform.extra)
    if "gpu" in notes:
        doc["gpu_note"] = notes["gpu"]
    if "outside_affinity" in notes:  # CPUs taskset or a cpuset keeps this process off: not planned for
        doc["outside_affinity"] = notes["outside_affinity"]
    if topo is not None:
        doc["arch"] = topo.arch
        doc["offline"] = list(topo.offline)
        doc["smt"] = topo.smt
    return doc


def run(args: argparse.Namespace) -> int:
    doc = _document(args)
    if args.json:
        emit_json(doc)
        return 0
    rows = []
    for c in doc["clusters"]:
        freq = "-" if c["max_freq_khz"] is None else f"{c['max_freq_khz'] / 1000:.0f}"
        gpu = c.get("kind") == "gpu"
        rows.append([
            c["name"] + (" *" if c["name"] == doc["fastest"] else ""),
            c.get("kind", "cpu"),
            c["core_type"],
            format_cpu_list(c["cpus"]) + (" (host)" if gpu else ""),
            freq,
            "-" if c["capacity"] is None else c["capacity"],
            f"{c['speed']:g}",
            f"opencl {c.get('device')}" if gpu else "-",
        ])
    print(f"platform: {doc['source']}")
    print(format_table(["cluster", "kind", "core type", "cpus", "max MHz", "capacity", "speed", "device"], rows))
    notes = ["* fastest cluster"]
    if doc.get("offline"):
        notes.append(f"offline CPUs: {format_cpu_list(doc['offline'])}")
    if doc.get("smt"):
        notes.append("SMT: sibling threads share a core")
    if doc.get("outside_affinity"):
        notes.append(f"left out (this process may not run there): CPUs {doc['outside_affinity']}")
    print("; ".join(notes))
    if doc.get("gpu_note"):
        print(doc["gpu_note"])
    return 0
