#!/usr/bin/env python3
"""Predicted fps/latency of every strategy, for every zoo model, on known boards (a Markdown table).

Per-layer times come from a predictor fitted on THIS host (or a profile of
it), scaled per core type -- a clearly labelled stand-in until boards are
profiled:

* 1 core of type T at F MHz: ``t_host(i, 1) * host_speed / (per_mhz(T) * cross(T) * F)``
  (factors and their sources: ``tools/core_factors.json``);
* k cores: per layer, Amdahl's law with the parallel fraction the host's own
  1- and 2-thread times give: ``p = 2 * (1 - t2 / t1)`` clipped to [0, 1],
  ``t_k = t_1 * ((1 - p) + p / k)``.

``--platform SPEC`` (repeatable) adds rows for a platform of THIS host whose
layer times come straight from ``--profile`` (no scaling: the profile must
hold that platform's setups, e.g. one made with ``pipeit profile --platform
SPEC``); ``--boards ''`` leaves the scaled boards out. ``--save-times DIR``
writes each row's layer times as ``DIR/<model>@<board or platform>.json``, the
table ``pipeit plan MODEL --platform board:B --times FILE`` reads, so every
row can be planned (and plotted) with the real command.

Zoo models are built once and cached under ``build/zoo``. Prints the table
and checks ``pipeit >= pipe-it >= all-cores`` (fps) on every row.

    .venv/bin/python tools/plan_table.py --predictor /tmp/pred_mech.json [--json]
    .venv/bin/python tools/plan_table.py --profile zoo-emu.csv --boards '' --platform emulate:big=0@1.0,little=1@0.4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cores.model import Cluster, CoreSetup, Platform  # noqa: E402
from cores.platform import load_platform  # noqa: E402
from pipeit.dse import best_candidate  # noqa: E402
from pipeit.errors import PipeitError  # noqa: E402
from pipeit.graph import load_graph  # noqa: E402
from pipeit.layer_times import LayerTimes, layer_times_for  # noqa: E402

BOARDS = ("odroid-xu4", "rk3588", "odroid-n2plus")
ORDER = ("all-cores", "fastest-cluster", "replicas", "pipe-it", "pipeit")
HOST = Platform((Cluster("cpu", "host", (0, 1)),), source="host")


def zoo_file(name: str, cache: Path) -> Path:
    """The zoo model's .tflite, built once."""
    from pipeit.zoo import build

    path = cache / f"{name}.tflite"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build(name))
    return path


def core_speed(factors: dict, core_type: str, mhz: float) -> float:
    per_mhz = factors["per_mhz"][core_type]
    big = factors["little_of"].get(core_type, core_type)
    return per_mhz * factors["cross_soc"][big] * mhz


def host_speed(factors: dict) -> float:
    host = factors["host"]
    return host["times"] * core_speed(factors, host["equals"], host["mhz"])


def board_times(host: LayerTimes, platform: Platform, factors: dict) -> LayerTimes:
    """Scale the host's cpu:1/cpu:2 layer times to every setup of ``platform`` (module docstring)."""
    t1 = host.times[CoreSetup("cpu", 1)]
    t2 = host.times.get(CoreSetup("cpu", 2), t1)
    parallel = [min(1.0, max(0.0, 2.0 * (1.0 - b / a))) if a > 0 else 0.0 for a, b in zip(t1, t2)]
    ref = host_speed(factors)
    times: Dict[CoreSetup, Tuple[float, ...]] = {}
    for cluster in platform.cpu_clusters:
        scale = ref / core_speed(factors, cluster.core_type, cluster.max_freq_khz / 1000.0)
        for k in range(1, cluster.size + 1):
            times[CoreSetup(cluster.name, k)] = tuple(
                t * scale * ((1.0 - p) + p / k) for t, p in zip(t1, parallel)
            )
    return LayerTimes(host.num_layers, times, host.cut_bytes, host.weight_bytes,
                      source=f"scaled from host ({host.source})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictor", help="fitted predictor JSON (setups cpu:1, cpu:2 of this host)")
    source.add_argument("--profile", help="profile CSV of this host (layer rows for cpu:1 and cpu:2)")
    parser.add_argument("--factors", default=str(ROOT / "tools" / "core_factors.json"))
    parser.add_argument("--models", default=None, help="comma-separated zoo models (default: all)")
    parser.add_argument("--boards", default=",".join(BOARDS))
    parser.add_argument("--platform", action="append", default=[], dest="platforms",
                        help="a platform of this host planned with the profile's own times (repeatable; "
                             "needs --profile)")
    parser.add_argument("--cache", default=str(ROOT / "build" / "zoo"))
    parser.add_argument("--latency-x", type=float, default=2.0,
                        help="also plan pipeit under this multiple of fastest-cluster's latency (default 2; 0: skip)")
    parser.add_argument("--save-times", metavar="DIR",
                        help="write each row's layer times here (for pipeit plan --times)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from pipeit.zoo import list_models

    if args.platforms and not args.profile:
        parser.error("--platform needs --profile (times measured on that platform)")
    factors = json.loads(Path(args.factors).read_text())
    models = args.models.split(",") if args.models else list_models()
    boards = [b for b in args.boards.split(",") if b]
    rows: List[dict] = []
    failures: List[str] = []
    try:
        for model in models:
            graph = load_graph(str(zoo_file(model, Path(args.cache))))
            targets = []
            if boards:
                host = layer_times_for(graph, HOST, predictor=args.predictor, profile=args.profile)
                for board in boards:
                    platform = load_platform(f"board:{board}")
                    targets.append((board, platform, board_times(host, platform, factors)))
            for spec in args.platforms:
                platform = load_platform(spec)
                targets.append((spec, platform, layer_times_for(graph, platform, profile=args.profile)))
            for board, platform, times in targets:
                row = {"model": model, "board": board, "strategies": {}}
                if args.save_times:
                    Path(args.save_times).mkdir(parents=True, exist_ok=True)
                    times.save(Path(args.save_times) / f"{model}@{board.replace('/', '_')}.json")
                for name in ORDER:
                    c = best_candidate(times, platform, name)
                    row["strategies"][name] = {"fps": c.fps, "latency_ms": c.latency_ms, "plan": c.describe()}
                if args.latency_x > 0:
                    limit = args.latency_x * row["strategies"]["fastest-cluster"]["latency_ms"]
                    try:
                        c = best_candidate(times, platform, "pipeit", latency_ms=limit)
                        row["limited"] = {"limit_ms": limit, "fps": c.fps, "latency_ms": c.latency_ms,
                                          "plan": c.describe()}
                    except PipeitError as err:
                        row["limited"] = {"limit_ms": limit, "error": str(err)}
                fps = {k: v["fps"] for k, v in row["strategies"].items()}
                ok = fps["pipeit"] >= fps["pipe-it"] * (1 - 1e-9) and fps["pipe-it"] >= fps["all-cores"] * (1 - 1e-9)
                row["order_ok"] = ok
                if not ok:
                    failures.append(f"{model} on {board}: " + ", ".join(f"{k} {fps[k]:.2f}" for k in ORDER))
                rows.append(row)
    except PipeitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"rows": rows, "failures": failures, "factors": args.factors}, indent=2))
        return 0
    if boards:
        print("Predicted fps / latency ms (p99 model) per strategy; boards' per-layer times scaled from this "
              "host (tools/core_factors.json, a stand-in until board profiles exist).")
    if args.platforms:
        print("Platforms of this host (" + ", ".join(args.platforms) + "): per-layer times measured "
              f"({args.profile}).")
    print()
    lim = f"pipeit, latency <= {args.latency_x:g}x fastest-cluster"
    print("| model | board or platform | " + " | ".join(ORDER) + f" | {lim} | its plan |")
    print("| --- | --- | " + " | ".join("---:" for _ in ORDER) + " | ---: | --- |")
    for row in rows:
        cells = [f"{row['strategies'][k]['fps']:.1f} / {row['strategies'][k]['latency_ms']:.0f}" for k in ORDER]
        mark = "" if row["order_ok"] else " (!)"
        limited = row.get("limited") or {}
        if "fps" in limited:
            plan = limited["plan"].replace("|", "\\|")  # a stage separator inside a Markdown cell
            extra = f"{limited['fps']:.1f} / {limited['latency_ms']:.0f} | {plan}"
        else:
            extra = "- | " + limited.get("error", "-")
        print(f"| {row['model']} | {row['board']}{mark} | " + " | ".join(cells) + f" | {extra} |")
    print()
    print("order pipeit >= pipe-it >= all-cores: " + ("holds on every row" if not failures else "FAILS on:"))
    for line in failures:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
