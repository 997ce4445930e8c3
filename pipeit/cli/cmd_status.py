"""``pipeit status --socket S [--json]``: what a running daemon is doing."""

from __future__ import annotations

import argparse

from pipeit.cli.output import emit_json, format_table

__all__ = ["register", "run", "format_status"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="frame rate, latency, stages, clusters and re-plans of a running daemon",
        description="Ask a running `pipeit serve` daemon for its status.",
    )
    parser.add_argument("--socket", required=True, metavar="S", help="the daemon's socket")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply (default 30)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def _num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def format_status(doc: dict) -> str:
    """The status document as a few lines and tables for a person."""
    lat = doc.get("latency_ms") or {}
    req = doc.get("requests") or {}
    lines = [
        f"pid {doc.get('pid')}, up {_num(doc.get('uptime_s'), '{:.0f}')} s, model {doc.get('model')}, "
        f"platform {doc.get('platform')}, pipeline {doc.get('generation')} ({doc.get('plan_source')})",
        f"{_num(doc.get('fps'), '{:.1f}')} fps; latency p50 {_num(lat.get('p50'))} ms, p95 {_num(lat.get('p95'))} ms, "
        f"p99 {_num(lat.get('p99'))} ms; served {req.get('served', 0)}, failed {req.get('failed', 0)}, "
        f"rejected {req.get('rejected', 0)}, in flight {req.get('inflight', 0)}, clients {req.get('clients', 0)}",
        "",
    ]
    rows = [[s["index"], f"[{s['layers'][0]},{s['layers'][1]})", " ".join(s["workers"]), _num(s["measured_ms"]),
             _num(s["expected_ms"]), _num(s["busy"]), "-" if s["queue_depth"] is None else s["queue_depth"],
             s["restarts"]] for s in doc.get("stages", [])]
    lines.append(format_table(["stage", "layers", "workers", "ms", "plan ms", "busy", "queue", "restarts"], rows))
    lines.append("")
    rows = [[c["name"], ",".join(map(str, c["cpus"])), _num(c["cur_freq_khz"], "{:.0f}"),
             c["governor"] or "-", _num(c["temp_c"], "{:.1f}"), _num(c["factor"])] for c in doc.get("clusters", [])]
    lines.append(format_table(["cluster", "cpus", "kHz", "governor", "temp C", "factor"], rows))
    events = doc.get("events") or []
    lines.append("")
    margin = doc.get("switch_margin")
    replanning = doc.get("replanning", "on")
    if replanning != "on":
        lines.append(f"re-plans: {doc.get('replans', 0)} (re-planning {replanning})")
    else:
        lines.append(f"re-plans: {doc.get('replans', 0)} (next switch in >= {doc.get('switch_cooldown_windows', 0)} "
                     f"window(s), needs +{_num(None if margin is None else 100 * margin, '{:.0f}')} %)")
    for e in events[-10:]:
        lines.append(f"  {e['at_s']:.1f} s {e['kind']}: {e['reason']} (fps {_num(e['fps_before'], '{:.1f}')} -> "
                     f"{_num(e['fps_after'], '{:.1f}')})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeit.client import Client, check_timeout

    check_timeout(args.timeout, "--timeout")
    with Client(args.socket, timeout=args.timeout) as client:
        doc = client.status()
    if args.json:
        emit_json(doc)
    else:
        print(format_status(doc))
    return 0
