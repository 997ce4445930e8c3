"""``pipeit bench MODEL --platform SPEC``: every strategy planned and streamed side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeit.cli.output import check_plot_file, emit_json

__all__ = ["register", "run"]


def register(subparsers) -> None:
    from pipeit.strategies import STRATEGIES

    parser = subparsers.add_parser(
        "bench",
        help="compare all strategies on this machine in one interleaved run",
        description="Profile what is needed (or use a profile/predictor), plan every strategy "
        f"({', '.join(STRATEGIES)}), stream frames through each in interleaved rounds, and report "
        "fps, latency percentiles, memory and efficiency against the ideal (sum over cores of "
        "single-thread throughput).",
    )
    parser.add_argument("model", metavar="MODEL", help="a .tflite file")
    parser.add_argument("--platform", default="auto", help="platform spec (default: auto)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", metavar="PROFILE.csv", help="per-layer times measured before")
    source.add_argument("--predictor", metavar="P.json", help="a fitted predictor")
    parser.add_argument("--frames", type=int, default=200, metavar="N", help="frames per round (default 200)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="interleaved rounds (default 3)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--latency-ms", type=float, metavar="L", help="latency limit (p99) for pipeit's plan")
    limit.add_argument("--latency-x", type=float, metavar="F",
                       help="latency limit as F x the fastest cluster's single-thread frame time")
    parser.add_argument("--memory-mb", type=float, metavar="M", help="limit on weights held by all workers")
    parser.add_argument("--strategies", metavar="A,B", help="a subset of strategies (default: all)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where fresh profiles are kept (default: $PIPEIT_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/pipeit or ~/.cache/pipeit; a profiles/ folder inside)")
    task = parser.add_argument_group(
        "satisfaction", "score each strategy for a task: p99 latency against a deadline, accuracy against a "
        "tolerance, energy per frame from the board's power model (docs/SATISFACTION.md)")
    task.add_argument("--task", choices=("realtime", "interactive", "background"),
                      help="the task's defaults (default: interactive)")
    task.add_argument("--deadline-ms", type=float, metavar="D", help="override the task's deadline (p99 ms)")
    task.add_argument("--tolerance", metavar="REL[,TOP1]",
                      help="override the task's accuracy tolerance: max relative error[, min top-1 agreement]")
    task.add_argument("--energy-weight", type=float, metavar="W", help="override the task's energy weight in [0, 1]")
    task.add_argument("--power", metavar="POWER.json",
                      help="a power file (cores/power/*.json layout) instead of the board's own or the placeholder")
    parser.add_argument("--no-trial", action="store_true",
                        help="keep the DSE's pick for pipeit (default: a short measured trial among the pick, "
                             "its latency/throughput front and the other strategies' plans chooses)")
    parser.add_argument("--trial-seconds", type=float, metavar="S",
                        help="how long each trial candidate streams per round (default 1.5; shorter is a quicker "
                             "bench and a noisier choice)")
    parser.add_argument("--as-profiled", action="store_true",
                        help="plan with the layer times as profiled or predicted (default: each cluster's times "
                             "are rescaled to the whole-model time measured at the start of the run)")
    parser.add_argument("--plot", metavar="FILE.png", help="fps and latency per strategy (needs matplotlib)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (progress stays on stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.platform import load_platform, platform_file
    from pipeit.bench import STRATEGIES, format_report, run_bench
    from pipeit.dse.cost import Limits
    from pipeit.errors import ModelError, PlanError

    model = Path(args.model)
    if model.is_dir():
        raise ModelError(f"{model}: is a folder, not a model file")
    if not model.is_file():
        raise ModelError(f"{model}: no such model file")
    if args.latency_x is not None and not 0 < args.latency_x < float("inf"):
        # checked here, in the option's own words: bench turns it into --latency-ms after a measurement
        raise PlanError(f"--latency-x must be > 0 (a finite factor), got {args.latency_x:g}")
    # before any measuring: without the pipeit strategy nothing else would ever check them
    Limits(latency_ms=args.latency_ms, memory_mb=args.memory_mb)
    if args.plot:
        check_plot_file(args.plot, "--plot",
                        (args.model, args.profile, args.predictor, args.power, platform_file(args.platform)))
    if args.cache_dir is not None:
        _check_cache_dir(args.cache_dir)
    strategies = tuple(s.strip() for s in args.strategies.split(",")) if args.strategies is not None else STRATEGIES
    task = _task(args)
    platform = load_platform(args.platform)
    report = run_bench(
        model, platform, frames=args.frames, rounds=args.rounds, latency_ms=args.latency_ms,
        latency_factor=args.latency_x, memory_mb=args.memory_mb,
        profile=Path(args.profile) if args.profile else None,
        predictor=Path(args.predictor) if args.predictor else None,
        strategies=strategies, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=not args.quiet, task=task,
        power_file=Path(args.power) if args.power else None,
        trial=not args.no_trial, anchor=not args.as_profiled, trial_seconds=args.trial_seconds,
    )
    if args.plot:
        _plot(report, args.plot)
    if args.json:
        emit_json(report.to_json())
    else:
        print(format_report(report))
    return 0


def _task(args: argparse.Namespace):
    """The task to score for: None (the default task, stated in the report) unless an option was given."""
    from pipeit.satisfaction import make_task, parse_tolerance

    given = (args.task, args.deadline_ms, args.tolerance, args.energy_weight)
    if all(v is None for v in given):
        return None
    rel, top1 = parse_tolerance(args.tolerance) if args.tolerance is not None else (None, None)
    return make_task(args.task, deadline_ms=args.deadline_ms, tolerance=rel, min_top1=top1,
                     energy_weight=args.energy_weight)


def _plot(report, path: str) -> None:
    from pipeit.errors import PipeitError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PipeitError("--plot needs matplotlib (pip install 'pipeit[plot]')") from err
    names = [s.name for s in report.strategies]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(names, [s.fps for s in report.strategies], color="tab:blue", label="measured")
    ax1.scatter(names, [s.predicted_fps for s in report.strategies], color="tab:orange", zorder=3, label="predicted")
    ax1.axhline(report.ideal_fps, color="grey", linestyle="--", label="ideal")
    ax1.set_ylabel("frames/s")
    ax1.legend()
    ax1.tick_params(axis="x", rotation=30)
    for s in report.strategies:
        ax2.scatter(s.latency_p99_ms, s.fps, label=s.name)
    if report.latency_limit_ms:
        ax2.axvline(report.latency_limit_ms, color="red", linestyle=":", label="limit")
    ax2.set_xlabel("p99 latency (ms)")
    ax2.set_ylabel("frames/s")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{report.model} on {report.platform}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise PipeitError(f"{path}: cannot write the plot ({err.strerror or err})") from err
    finally:
        plt.close(fig)


def _check_cache_dir(text: str) -> None:
    """Refuse a --cache-dir that is empty, not a folder, or cannot be made, before any measuring."""
    from pipeit.errors import InputError

    if not text.strip():
        raise InputError("--cache-dir needs a folder name, got an empty one")
    folder = Path(text).absolute()
    existing = folder  # the folder, or the nearest of its parents that exists: bench makes the rest
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--cache-dir {text}: {existing} is not a folder")
    # tried now, as bench would make it after a minute of measuring (/proc, a read-only or immutable parent),
    # and taken away again: a command refused later (a bad model, say) leaves nothing behind
    made = []
    try:
        for missing in reversed([folder, *folder.parents][:len(folder.relative_to(existing).parts)]):
            missing.mkdir()
            made.append(missing)
    except OSError as err:
        raise InputError(f"--cache-dir {text}: cannot create {folder}: {err.strerror or err}") from None
    finally:
        for created in reversed(made):
            created.rmdir()
