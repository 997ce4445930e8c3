"""``pipeit serve --model M --platform SPEC [--plan P | --predictor P | --profile P] --socket PATH``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys

__all__ = ["register", "run"]

#: the longest re-planner window --window-s may ask for (a day; longer ones overflow timed waits)
MAX_WINDOW_S = 86400.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="the on-device daemon: serve a model's pipeline on a Unix socket",
        description="Plan (or load a plan), start the pipeline and keep it warm; answer infer, status "
        "and replan requests from many clients on a Unix socket; re-plan when measured stage times "
        "drift or the platform changes. With no --plan/--predictor/--profile/--times the model is "
        "profiled on first start and the result cached in $PIPEIT_STATE_DIR (~/.local/state/pipeit). "
        "SIGTERM drains and stops; SIGHUP reloads the model and plan.",
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="the .tflite model to serve")
    parser.add_argument("--platform", default="auto", help="platform spec (default: auto)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--plan", metavar="PLAN.json", help="serve this plan")
    source.add_argument("--predictor", metavar="P.json", help="plan with this fitted predictor")
    source.add_argument("--profile", metavar="PROFILE.csv", help="plan from this profile")
    source.add_argument("--times", metavar="TIMES.json", help="plan from a saved layer-times table")
    parser.add_argument("--strategy", default="pipeit", help="DSE strategy (default: pipeit)")
    parser.add_argument("--latency-ms", type=float, metavar="L", help="latency limit per frame")
    parser.add_argument("--memory-mb", type=float, metavar="M", help="limit on weights held by all workers")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="Unix socket path (its directory must not be world-writable)")
    parser.add_argument("--group", metavar="G", help="group owning the socket (mode 0660)")
    parser.add_argument("--per-client", type=int, default=4, metavar="N",
                        help="requests one client may have in flight (default 4)")
    parser.add_argument("--window-s", type=float, default=2.0, metavar="S",
                        help="measurement window of the re-planner (default 2 s)")
    parser.add_argument("--sustain", type=int, default=3, metavar="K",
                        help="windows a drift must last before re-planning (default 3)")
    parser.add_argument("--drift", type=float, default=0.15, metavar="F",
                        help="relative drift of a stage's time that counts (default 0.15)")
    parser.add_argument("--cooldown", type=int, default=4, metavar="K",
                        help="windows after a switch before another switch may happen; doubled by each "
                        "switch that did not pay off (default 4)")
    parser.add_argument("--switch-margin", type=float, default=0.05, metavar="F",
                        help="switch only when the new plan predicts this much more fps than the current "
                        "plan, predicted from the same times; raised by switches that gained less "
                        "(default 0.05)")
    parser.add_argument("--max-clients", type=int, default=64, metavar="N",
                        help="connections served at once (default 64; more are refused with 'unavailable')")
    parser.add_argument("--max-clients-per-peer", type=int, default=16, metavar="N",
                        help="connections one client process may hold (default 16)")
    parser.add_argument("--nice", type=int, metavar="N",
                        help="run the daemon and its workers at this nice value (-20..19); a negative one "
                        "(root or CAP_SYS_NICE; the systemd unit uses -5) puts inference ahead of the "
                        "client processes on shared cores")
    parser.add_argument("--no-replan", action="store_true", help="measure and report, never re-plan")
    parser.add_argument("--slots", type=int, default=4, metavar="N",
                        help="ring slots per pipeline edge, at least (default 4)")
    parser.add_argument("--reject-rate", type=float, default=10.0, metavar="R",
                        help="connections closed on a protocol error one client process may cause per second "
                        "once its burst is spent; its further connections wait (default 10; 0: no limit)")
    parser.add_argument("--reject-burst", type=int, default=20, metavar="N",
                        help="such connections a client process may cause at once (default 20)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--check", action="store_true",
                        help="check the model, the platform, the plan source and every option, say what would "
                        "be served, and exit: no socket, no workers, no profiling (tools/install-service.sh "
                        "runs it before it installs anything)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.platform import load_platform
    from pipeit.cli.cmd_run import check_slots_bound
    from pipeit.daemon.replan import SwitchPolicy
    from pipeit.daemon.server import Server, ServerConfig
    from pipeit.daemon.sockets import check_socket_path
    from pipeit.daemon.state import PlanSource
    from pipeit.errors import InputError
    from pipeit.signals import handled

    if min(args.per_client, args.slots, args.sustain, args.max_clients, args.max_clients_per_peer) < 1:
        raise InputError("--per-client, --slots, --sustain, --max-clients and --max-clients-per-peer must be >= 1")
    check_slots_bound(args.slots)
    if not 0 < args.window_s <= MAX_WINDOW_S or not 0 < args.drift < 10:
        raise InputError(f"--window-s must be in (0, {MAX_WINDOW_S:g}] seconds and --drift in (0, 10)")
    if args.reject_rate < 0 or args.reject_burst < 1:
        raise InputError("--reject-rate must be >= 0 and --reject-burst >= 1")
    if not math.isfinite(args.reject_rate):  # nan slips past every comparison
        raise InputError(f"--reject-rate must be a finite number of connections per second, got {args.reject_rate}")
    limits = SwitchPolicy.__init__.__kwdefaults__  # the policy's own ceilings for the two knobs
    if not 0 <= args.cooldown <= limits["max_cooldown"] or not 0 <= args.switch_margin <= limits["max_margin"]:
        raise InputError(f"--cooldown must be in 0..{limits['max_cooldown']} windows and --switch-margin "
                         f"in [0, {limits['max_margin']:g}]")
    if not args.socket.strip():
        raise InputError("--socket needs a path, got an empty one")
    # used only by later re-plans where a plan file is given: refused now, not at the first re-plan
    from pipeit.dse import Limits, strategy_named

    strategy_named(args.strategy)
    Limits(args.latency_ms, args.memory_mb)
    if args.check:
        return _check(args)
    check_socket_path(args.socket, args.group)  # a bad socket place is refused before planning and workers
    if args.nice is not None:
        set_nice(args.nice)
    logger = logging.getLogger("pipeit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s pipeit[%(process)d] %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(args.log_level.upper())
    platform = load_platform(args.platform)
    source = PlanSource(plan=args.plan, predictor=args.predictor, profile=args.profile, times=args.times,
                        strategy=args.strategy, latency_ms=args.latency_ms, memory_mb=args.memory_mb)
    config = ServerConfig(socket_path=args.socket, group=args.group, per_client=args.per_client,
                          window_s=args.window_s, sustain=args.sustain, threshold=args.drift,
                          replan=not args.no_replan, slots=args.slots, cooldown_windows=args.cooldown,
                          switch_margin=args.switch_margin, reject_rate=args.reject_rate,
                          reject_burst=args.reject_burst, max_clients=args.max_clients,
                          max_clients_per_peer=args.max_clients_per_peer)
    server = Server(config, args.model, platform, source)
    # `systemctl reload` may come while the daemon still plans or profiles (minutes on a first start): it
    # stopped the daemon there (exit 129). It is kept, and the model and plan are read again once serving.
    reloads: list = []
    with handled([signal.SIGHUP], lambda signum, _frame: reloads.append(signum)):
        server.start()
    if reloads:
        server.request_reload()
    return server.serve_forever()


def _check(args: argparse.Namespace) -> int:
    """``--check``: what the daemon would serve, found the way it finds it at start, short of profiling and
    of the socket (whose folder a service manager makes at start). One line; errors as any command's."""
    from cores.platform import load_platform
    from pipeit.daemon.state import PlanSource, preview_plan

    if args.nice is not None:
        check_nice(args.nice)  # not applied: nothing runs
    platform = load_platform(args.platform)
    source = PlanSource(plan=args.plan, predictor=args.predictor, profile=args.profile, times=args.times,
                        strategy=args.strategy, latency_ms=args.latency_ms, memory_mb=args.memory_mb)
    planned = preview_plan(args.model, platform, source)
    if planned is None:
        print(f"ok: {args.model} on {platform.source}; no plan source given: the first start profiles the model "
              "(unless its times are cached in the state directory) and plans from that")
    else:
        plan = planned.plan
        print(f"ok: {args.model} on {platform.source}; plan from {planned.source}: {len(plan.stages)} stage(s), "
              f"{plan.strategy}, predicted {plan.predicted_fps:.1f} fps")
    return 0


def set_nice(value: int) -> None:
    """Give this process -- and so every thread and worker it starts later -- the nice ``value``.

    On Linux a nice value belongs to a thread and is inherited by the
    threads and processes it creates: set here on every thread there is,
    before the daemon starts its own, it covers the readers, the dispatcher
    and every pinned worker. Why: on a board whose cores all run workers,
    the client processes (cameras, sensors) compete with them; measured on
    this project's 2-core host, the daemon's fps against the in-process
    pipeline went from 0.88-0.91 to 0.91-0.95 at -5 (docs/BENCHMARKS.md,
    fifteenth session).
    """
    from pipeit.errors import InputError

    check_nice(value)
    try:
        # every thread there is (this one and an imported library's idle pool); later ones inherit it
        for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, value)
            except ProcessLookupError:
                pass
    except PermissionError:
        raise InputError(f"cannot set nice {value}: permission denied (a negative value needs root or "
                         "CAP_SYS_NICE; the systemd unit sets Nice= itself)") from None


def check_nice(value: int) -> None:
    """Refuse a nice value outside -20..19 (one line, exit 2)."""
    from pipeit.errors import InputError

    if not -20 <= value <= 19:
        raise InputError(f"--nice must be in -20..19, got {value}")
