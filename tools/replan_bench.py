"""Re-plan recovery: an emulated cluster drops to half its speed under load; how long until the daemon's
frame rate is back within 10 % of the new best plan's predicted frame rate?

    .venv/bin/python tools/replan_bench.py --model mobilenet_v2 --platform emulate:big=0@1.0,little=1@0.8

The daemon (a real ``pipeit serve`` subprocess) profiles the model on start
(cached in ``--state-dir`` if given), serves it with ``--window-s 0.5
--sustain 2``, and ``--clients`` clients keep it busy. Once it has settled (no
re-plan event for ``--settle-s``, at most ``--before-s``), the slowed
cluster's cgroup quota is halved (``cpu.cfs_quota_us`` or ``cpu.max``, the
folder the daemon reports in ``status.emulation``): the board "heats up".
Frames answered are counted per 0.5 s; the re-plan events give the new
plan's predicted fps. Recovery is the first 0.5 s bin after the change from
which two bins in a row are within ``--tolerance`` of that prediction (or
above it).

Stages must be large enough that the executor's own time per frame does not
dominate (a zoo model of MobileNetV2's size or more: stages of several ms);
with ~1 ms stages fps stays below any prediction, which no re-plan can fix.
So the pre-change ratio of measured to predicted fps is printed too, and the
recovery against the prediction scaled by that ratio (the "calibrated"
target), next to the raw figure. Prints a Markdown summary (or ``--json``);
exits 1 if a request failed, 2 if the cluster cannot be slowed here.

Two paths can see the change. By default the daemon's monitor reads the
emulated cluster's speed from its quota (as a board's frequency cap is read)
and re-plans on the next window with the exact factor: the *platform
signal*. ``--hide-speed`` withholds that reading
(``PIPEIT_HIDE_EMULATED_SPEED=1``), so the daemon sees only the measured
stage times, as when another program takes cores: the *drift* path. The
summary says which path triggered the first re-plan, and gives the
timeline from the daemon's log: the change, the switch starting (decision
and planning), the new pipeline serving, the old one drained, fps back.
On the platform path the first switch is a guess from the reading's
factor; the daemon checks it against the new pipeline's first window and
may follow it with a switch "corrected by measurement" (``--log PATH``
keeps the daemon's log, which also says when the guess was verified).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_helpers import Daemon  # noqa: E402  (the same launcher the tests use)

BIN_S = 0.5


def _write_quota(folder: str, quota_us: int, period_us: int) -> None:
    v1 = os.path.join(folder, "cpu.cfs_quota_us")
    if os.path.exists(v1):
        with open(v1, "w") as f:
            f.write(str(quota_us))
    else:
        with open(os.path.join(folder, "cpu.max"), "w") as f:
            f.write(f"{quota_us} {period_us}")


def _read_quota(folder: str) -> int:
    v1 = os.path.join(folder, "cpu.cfs_quota_us")
    if os.path.exists(v1):
        return int(open(v1).read().strip())
    return int(open(os.path.join(folder, "cpu.max")).read().split()[0])


def _model(name: str, folder: Path) -> Path:
    if name.endswith(".tflite"):
        return Path(name)
    from pipeit.zoo import build

    path = folder / f"{name}.tflite"
    path.write_bytes(build(name))
    return path


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) pipeit\[\d+\] \w+ (.*)$")
_TIMELINE = (  # (what, a pattern of the daemon's log line that marks it)
    ("switch starts (change detected, new plan made)", re.compile(r"^switch: starting pipeline")),
    ("new pipeline serves", re.compile(r"^pipeline \d+ now serves")),
    ("old pipeline drained and closed", re.compile(r"^pipeline \d+ drained and closed")),
)


def _timeline(log: str, t_change_wall: float) -> List[Dict]:
    """The daemon's switch steps after the change, in seconds from it (its log is stamped in local time)."""
    out: List[Dict] = []
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t_change_wall
        if at < -0.5:
            continue
        for what, pattern in _TIMELINE:
            if pattern.search(m.group(2)):
                out.append({"t_s": round(at, 3), "step": what, "line": m.group(2)[:160]})
    return out


def _trigger(events: List[Dict]) -> str:
    """Which path made the first re-plan after the change: the platform signal or measured drift."""
    for e in events:
        if e["kind"] in ("switch", "recalibrate", "skipped", "failed"):
            if e["reason"].startswith("platform changed"):
                return "platform signal"
            if "drift" in e["reason"]:
                return "drift"
            return e["kind"]
    return "none"


def _settle(admin, quiet_s: float, limit_s: float) -> bool:
    """Wait until no re-plan event has come for ``quiet_s`` and no switch cooldown runs (start-up
    re-plans are not the change measured, and the figure is a recovery from a steady state); False if
    that did not happen within ``limit_s``."""
    start = time.monotonic()
    count, since = len(admin.status()["events"]), time.monotonic()
    while time.monotonic() - start < limit_s:
        time.sleep(BIN_S)
        doc = admin.status()
        n = len(doc["events"])
        if n != count:
            count, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s and not doc.get("switch_cooldown_windows"):
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a zoo name or a .tflite path")
    parser.add_argument("--platform", default="emulate:big=0@1.0,little=1@0.8")
    parser.add_argument("--cluster", default="little", help="the emulated cluster to slow to half")
    parser.add_argument("--strategy", default="pipe-it")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--window", type=int, default=4, help="frames each client keeps in flight")
    parser.add_argument("--before-s", type=float, default=20.0, help="longest wait for the daemon to settle")
    parser.add_argument("--settle-s", type=float, default=4.0, help="quiet time (no re-plan event) before the change")
    parser.add_argument("--after-s", type=float, default=12.0)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--state-dir", help="keep the daemon's profile here (re-runs skip profiling)")
    parser.add_argument("--hide-speed", action="store_true",
                        help="keep the emulated speed from the daemon's monitor: only drift can see the change")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", metavar="PATH", help="also write the daemon's log there (its windows and switches)")
    args = parser.parse_args()
    if min(args.clients, args.window) < 1 or min(args.before_s, args.after_s, args.tolerance) <= 0:
        parser.error("--clients and --window must be >= 1; times and --tolerance > 0")
    command = " ".join([".venv/bin/python tools/replan_bench.py"] + [shlex.quote(a) for a in sys.argv[1:]])

    from pipeit.client import Client
    from pipeit.runtime import make_interpreter

    folder = Path(tempfile.mkdtemp(prefix="pipeit-replan-"))
    os.chmod(folder, 0o700)
    model = _model(args.model, folder)
    detail = make_interpreter(model, num_threads=1).get_input_details()[0]
    name = detail["name"]
    frame = np.random.default_rng(0).standard_normal(detail["shape"]).astype(detail["dtype"])
    state = Path(args.state_dir) if args.state_dir else folder / "state"
    d = Daemon(["--model", str(model), "--platform", args.platform, "--strategy", args.strategy,
                "--window-s", str(BIN_S), "--sustain", "2"], folder / "replan.sock",
               env={"PIPEIT_STATE_DIR": str(state), **({"PIPEIT_HIDE_EMULATED_SPEED": "1"} if args.hide_speed else {})})
    done: List[float] = []
    errors: List[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        try:
            with Client(d.socket_path) as c:
                pending: List[int] = []
                while not stop.is_set():
                    pending.append(c.send("infer", {name: frame}))
                    if len(pending) >= args.window:
                        c.receive(pending.pop(0))
                        with lock:
                            done.append(time.monotonic())
                for rid in pending:
                    c.receive(rid)
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    with d.wait_ready(timeout=300):
        with Client(d.socket_path) as admin:
            doc = admin.status()
            emulation = (doc.get("emulation") or {}).get(args.cluster)
            if not emulation:
                print(f"cluster {args.cluster!r} is not an emulated slowed cluster of {args.platform}", file=sys.stderr)
                return 2
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            t_start = time.monotonic()
            for t in threads:
                t.start()
            settled = _settle(admin, args.settle_s, args.before_s)
            doc = admin.status()
            plan_before = doc["plan"]
            predicted_before = doc["plan"]["predicted"]["fps"]
            for e in doc["events"]:  # a recalibration before the change re-predicts the same plan
                if e.get("predicted_fps_after") and e["kind"] in ("recalibrate", "switch", "revert"):
                    predicted_before = e["predicted_fps_after"]
            quota = _read_quota(emulation["cgroup"])
            change_at_s = doc["uptime_s"]  # the daemon's clock: events carry at_s on it
            t_change = time.monotonic()
            t_change_wall = time.time()
            _write_quota(emulation["cgroup"], max(1000, quota // 2), emulation["period_us"])
            time.sleep(args.after_s)
            stop.set()
            for t in threads:
                t.join(60)
            final = admin.status()
    events = [e for e in final["events"] if e["at_s"] >= change_at_s]
    log = d.log()
    if args.log:
        Path(args.log).write_text(log)
    timeline = _timeline(log, t_change_wall)
    t_end = max(done) if done else t_change
    bins: List[Dict] = []
    edge = t_start
    while edge + BIN_S <= t_end:
        count = sum(1 for t in done if edge <= t < edge + BIN_S)
        bins.append({"t_s": round(edge - t_change, 2), "fps": count / BIN_S})
        edge += BIN_S
    reacted = [e for e in events if e["kind"] in ("switch", "revert", "recalibrate") and e.get("predicted_fps_after")]
    target = reacted[-1]["predicted_fps_after"] if reacted else None
    steady_before = [b["fps"] for b in bins if -args.settle_s <= b["t_s"] < 0]
    measured_before = float(np.median(steady_before)) if steady_before else None
    ratio = measured_before / predicted_before if measured_before and predicted_before else None
    recovery = _recovery(bins, target, args.tolerance)
    calibrated = target * ratio if target and ratio else None
    result = {
        "command": command, "model": str(model), "platform": args.platform, "cluster": args.cluster,
        "quota_us": [quota, max(1000, quota // 2)], "period_us": emulation["period_us"],
        "plan_before": [[s["layers"], [w["cluster"] for w in s["workers"]]] for s in plan_before["stages"]],
        "plan_after": [[s["layers"], [w["cluster"] for w in s["workers"]]] for s in final["plan"]["stages"]],
        "predicted_fps_before": predicted_before, "measured_fps_before": measured_before,
        "events": [{k: e[k] for k in ("at_s", "kind", "reason", "fps_before", "fps_after", "predicted_fps_after")}
                   for e in events],
        "settled_before_change": settled, "cooldown_at_change": doc.get("switch_cooldown_windows"),
        "target_fps": target, "recovery_s": recovery, "calibrated_target_fps": calibrated,
        "calibrated_recovery_s": _recovery(bins, calibrated, args.tolerance), "bins": bins,
        "trigger": _trigger(events), "hide_speed": args.hide_speed, "timeline": timeline,
        "change_at_s": change_at_s,
        "client_errors": errors[:5], "served": final["requests"]["served"],
        "failed": final["requests"]["failed"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_markdown(result, args.tolerance))
    return 0 if not errors and result["failed"] == 0 else 1


def _recovery(bins: List[Dict], target: Optional[float], tolerance: float) -> Optional[float]:
    """Seconds from the change to the end of the first of two bins in a row within ``tolerance`` of ``target``.

    "Within" counts from below only: a bin above the target has recovered too.
    """
    if not target:
        return None
    after = [b for b in bins if b["t_s"] >= 0]
    for i in range(len(after) - 1):
        if all(b["fps"] >= (1.0 - tolerance) * target for b in after[i:i + 2]):
            return after[i]["t_s"] + BIN_S
    return None


def _markdown(r: Dict, tolerance: float) -> str:
    def f(v: Optional[float], unit: str = "") -> str:
        return "n/a" if v is None else f"{v:.1f}{unit}"

    ratio = (r["measured_fps_before"] / r["predicted_fps_before"]
             if r["measured_fps_before"] and r["predicted_fps_before"] else None)
    lines = [
        "### Daemon: recovery after an emulated cluster slows to half speed",
        "",
        f"`{r['command']}`",
        "",
        f"Platform `{r['platform']}`; cluster `{r['cluster']}` quota {r['quota_us'][0]} -> {r['quota_us'][1]} us "
        f"per {r['period_us']} us at t = 0.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| plan before | {r['plan_before']} |",
        f"| daemon settled before the change (no re-plan for --settle-s, no cooldown) | "
        f"{'yes' if r['settled_before_change'] else 'NO (host too noisy?)'} |",
        f"| fps before (median of the last bins) / predicted | {f(r['measured_fps_before'])} / "
        f"{f(r['predicted_fps_before'])} (ratio {'n/a' if ratio is None else f'{ratio:.2f}'}) |",
        f"| plan after | {r['plan_after']} |",
        f"| new plan's predicted fps | {f(r['target_fps'])} |",
        f"| time from the change to fps within {tolerance:.0%} of it (2 bins of {BIN_S} s) | "
        f"{f(r['recovery_s'], ' s')} (target <= 5 s) |",
        f"| the same against the prediction x the measured/predicted ratio before ({f(r['calibrated_target_fps'])} fps)"
        f" | {f(r['calibrated_recovery_s'], ' s')} |",
        f"| requests served / failed | {r['served']} / {r['failed']} |",
        f"| re-plan triggered by | {r['trigger']}"
        f"{' (emulated speed hidden from the monitor)' if r['hide_speed'] else ''} |",
        "",
        "Timeline (s from the change; daemon log):",
        "",
        "* 0.000 quota cut",
    ]
    lines += [f"* {t['t_s']:.3f} {t['step']}" for t in r["timeline"]]
    lines += [
        f"* {'n/a' if r['recovery_s'] is None else format(r['recovery_s'], '.3f')} fps back within "
        f"{tolerance:.0%} of the new plan's prediction",
        "",
        "Re-plan events after the change:",
        "",
    ]
    lines += [f"* {e['at_s']:.1f} s (+{e['at_s'] - r['change_at_s']:.1f} after the change) {e['kind']}: {e['reason']} (fps before {f(e['fps_before'])}, after "
              f"{f(e['fps_after'])}, predicted {f(e['predicted_fps_after'])})" for e in r["events"]] or ["* none"]
    lines += ["", "fps per 0.5 s (t relative to the change): " +
              ", ".join(f"{b['t_s']:+.1f}:{b['fps']:.0f}" for b in r["bins"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
