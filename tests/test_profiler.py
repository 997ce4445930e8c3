"""Profiler and profile table: real models timed by the real runtime in real pinned workers."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cores.model import CoreSetup
from cores.platform import load_platform
from pipeit.cli import main
from pipeit.errors import ModelError, ProfileError
from pipeit.modelfile import op_name, read_model, serialize_model
from pipeit.profile_table import COLUMNS, ProfileRow, ProfileWriter, parse_profile_text, read_profile, read_rows
from pipeit.profiler import (
    SetupWorker, TimingSpec, WorkerPool, model_jobs, profile_models,
    time_model,
)
from pipeit.tflite_builder import ModelBuilder
from tests.model_helpers import dead_branch_builder

# min_util=0: every run counts as clean, so a busy shared host cannot turn the rows 'noisy'
QUICK = TimingSpec(warmup=1, min_repeats=3, max_repeats=5, batch=3, max_seconds=0.5, attempts=1,
                   quiet_wait_s=0.0, min_util=0.0)


def tiny_model(seed: int = 0, width: int = 8) -> bytes:
    """conv -> depthwise -> conv (same shape twice, to check deduplication) -> add."""
    b = ModelBuilder(seed=seed)
    x = b.input("input", (1, 16, 16, 4))
    y = b.conv2d(x, width, kernel=3, activation="RELU")
    z = b.depthwise_conv2d(y, 3)
    u = b.conv2d(z, width, kernel=1)
    v = b.conv2d(u, width, kernel=1)
    b.output(b.add(v, y))
    return b.to_bytes()


@pytest.fixture(scope="module")
def platform():
    return load_platform("auto")


@pytest.fixture(scope="module")
def one_core(platform):
    return CoreSetup(platform.fastest.name, 1)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, platform, one_core):
    """Two tiny models profiled on one setup, once for the module (the real pipeline)."""
    root = tmp_path_factory.mktemp("prof")
    paths = []
    for i, width in enumerate((8, 12)):
        p = root / f"tiny{i}.tflite"
        p.write_bytes(tiny_model(i, width))
        paths.append(p)
    out = root / "profile.csv"
    rows = profile_models(paths, platform, out, setups=[one_core], spec=QUICK, stages=2,
                          progress=False)
    return root, paths, out, rows


# ---- profile table -------------------------------------------------------------------------

class TestProfileTable:
    def test_rows_round_trip_through_csv(self, profiled):
        _, _, out, rows = profiled
        table = read_profile(out)
        assert [r.to_csv() for r in table.rows] == [r.to_csv() for r in rows]
        layer = table.layer_rows()[0]
        assert layer.descriptor is not None and layer.key == layer.descriptor.key_string()

    def test_two_processes_writing_one_new_profile_leave_every_row_readable(self, profiled, tmp_path):
        """Two `profile` runs (or two `bench` runs sharing their cache) on one new file each opened it for
        writing at offset 0: lines merged, and the file was unreadable for good ("expected 13 columns")."""
        import subprocess
        import sys

        _, _, source, rows = profiled
        out = tmp_path / "shared.csv"
        script = ("import sys; from pipeit.profile_table import ProfileWriter, read_rows\n"
                  "rows = read_rows(sys.argv[1]) * 40\n"
                  "with ProfileWriter(sys.argv[2]) as w:\n"
                  "    w.write_all(rows)\n")
        writers = [subprocess.Popen([sys.executable, "-c", script, str(source), str(out)]) for _ in range(3)]
        assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
        written = read_rows(out)
        assert len(written) == 3 * 40 * len(rows)
        assert out.read_text().count(",".join(COLUMNS)) == 1

    def test_header_is_required(self):
        with pytest.raises(ProfileError, match="not a pipeit profile"):
            parse_profile_text("a,b,c\n1,2,3\n")
        with pytest.raises(ProfileError, match="empty profile"):
            parse_profile_text("")

    def test_malformed_rows_name_their_line(self, profiled):
        _, _, out, _ = profiled
        lines = out.read_text().splitlines()
        broken = lines[1].replace(",ok,", ",ok,").split(",")
        broken[7] = "fast"  # median_ms
        with pytest.raises(ProfileError, match=r":2: malformed value"):
            parse_profile_text("\n".join([lines[0], ",".join(broken)] + lines[2:]))
        with pytest.raises(ProfileError, match=":2: expected 13 columns"):
            parse_profile_text(lines[0] + "\nlayer,x\n")
        with pytest.raises(ProfileError, match="unknown measurement kind"):
            parse_profile_text(lines[0] + "\n" + lines[1].replace("layer,", "blob,", 1))
        for start, end in (("3", "2"), ("1", "1"), ("-1", "0")):  # fit took these, as layers of no range
            cells = lines[1].split(",")
            cells[2], cells[3] = start, end
            with pytest.raises(ProfileError, match=r":2: layer range .* is not 0 <= start < end"):
                parse_profile_text("\n".join([lines[0], ",".join(cells)] + lines[2:]))
        for setup in ("cpu:+2", "cpu:1_0", "cpu:\u0663", "cpu:65537", "cpu:0"):
            cells = lines[1].split(",")
            cells[4] = setup
            with pytest.raises(ProfileError, match=":2: setup"):
                parse_profile_text("\n".join([lines[0], ",".join(cells)] + lines[2:]))

    def test_hand_edits_that_overflowed_the_fit_are_refused(self, profiled):
        """A time under a nanosecond and a MAC count past int64 fitted into numpy overflow warnings."""
        _, _, out, _ = profiled
        lines = out.read_text().splitlines()
        layer = next(l for l in lines if l.startswith("layer,"))
        cells = next(csv.reader([layer]))
        cells[7] = "1e-300"
        tiny_time = io.StringIO()
        csv.writer(tiny_time).writerow(cells)
        with pytest.raises(ProfileError, match=r"median_ms '1e-300' .* not a time in ms"):
            parse_profile_text(lines[0] + "\n" + tiny_time.getvalue())
        cells = next(csv.reader([layer]))
        cells[12] = json.dumps({**json.loads(cells[12]), "macs": 1.5e300})
        huge_macs = io.StringIO()
        csv.writer(huge_macs).writerow(cells)
        with pytest.raises(ProfileError, match=r"macs must be a whole number"):
            parse_profile_text(lines[0] + "\n" + huge_macs.getvalue())

    def test_a_model_row_of_thousands_of_layers_reads_back(self, profiled):
        """A model row lists every layer key in one field; 3000 layers overflowed csv's 128 KiB limit."""
        _, _, out, rows = profiled
        model_row = next(r for r in rows if r.kind == "model")
        long_row = replace(model_row, layer_keys=model_row.layer_keys * 3000)
        buffer = io.StringIO()
        csv.writer(buffer).writerow(long_row.to_csv())
        text = out.read_text().splitlines()[0] + "\n" + buffer.getvalue()
        assert len(text) > 200_000
        assert parse_profile_text(text)[0].layer_keys == long_row.layer_keys

    def test_other_platform_refused_unless_forced(self, profiled, tmp_path):
        _, _, out, _ = profiled
        with pytest.raises(ProfileError, match="another platform or runtime") as err:
            read_profile(out, fingerprint="0" * 16)
        assert str(err.value).startswith(f"{out} was measured")  # which file, when several are read
        assert len(read_profile(out, fingerprint="0" * 16, force=True)) > 0

    def test_mixed_fingerprints_refused_unless_forced(self, profiled, tmp_path):
        _, _, out, rows = profiled
        other = tmp_path / "other.csv"
        with ProfileWriter(other) as w:
            w.write(ProfileRow(**{**rows[0].__dict__, "fingerprint": "deadbeef"}))
        with pytest.raises(ProfileError, match="2 different platforms"):
            read_profile([out, other])
        assert len(read_profile([out, other], force=True)) == len(rows) + 1

    def test_a_profile_saved_by_a_spreadsheet_reads_back(self, profiled, tmp_path):
        """A spreadsheet writes a byte-order mark and CRLF line ends; neither is data."""
        _, _, out, rows = profiled
        resaved = tmp_path / "resaved.csv"
        resaved.write_bytes(b"\xef\xbb\xbf" + out.read_text().replace("\n", "\r\n").encode())
        assert [r.to_csv() for r in read_profile(resaved).rows] == [r.to_csv() for r in rows]

    def test_missing_file(self, tmp_path):
        with pytest.raises(ProfileError, match="no such profile"):
            read_profile(tmp_path / "nope.csv")
        with pytest.raises(ProfileError, match="is a folder, not a profile file"):
            read_profile(tmp_path)


# ---- timing and workers ----------------------------------------------------------------------

def test_time_model_times_a_real_model():
    t = time_model(tiny_model(), 1, QUICK)
    assert t.status == "ok" and t.median_ms > 0 and math.isfinite(t.spread)
    assert QUICK.min_repeats <= t.repeats <= QUICK.max_repeats


def test_max_repeats_is_a_maximum_not_rounded_up_to_a_batch():
    """``profile --repeats 2`` took a whole batch of 5 runs."""
    spec = TimingSpec(warmup=1, min_repeats=1, max_repeats=2, batch=5, attempts=1, min_clean=1, quiet_wait_s=0.0)
    for _ in range(3):
        assert time_model(tiny_model(), 1, spec).repeats <= 2


def _measure_beside_a_hog(worker, layer, spec, cpu: int):
    """``worker.measure(layer, spec)`` while a busy loop pinned to ``cpu`` takes that core."""
    hog = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {%d})\nwhile True: pass" % cpu])
    try:
        time.sleep(0.3)
        return worker.measure(layer, spec)
    finally:
        hog.kill()
        hog.wait()


def test_contention_filter_marks_runs_without_their_cores_noisy(platform, one_core):
    """A real competitor on the measured core makes every run wait for its CPU: flagged, not used.

    The layer runs for several ms, longer than a scheduler slice, so no run
    escapes the competitor (a 10 us model often fits between its slices, and
    such runs are rightly kept).
    """
    from pipeit.tflite_builder import single_layer_model

    layer = single_layer_model("conv", (1, 96, 96, 64), out_channels=64, kernel=3)

    cpu = platform.cluster(one_core.cluster).cpus[0]
    spec = TimingSpec(warmup=1, min_repeats=5, max_repeats=20, batch=5, attempts=1, quiet_wait_s=0.0)
    worker = SetupWorker(platform, one_core)
    try:
        quiet = worker.measure(layer, spec)
        assert quiet.status == "ok" and quiet.median_ms > 2.0, quiet
        contended = _measure_beside_a_hog(worker, layer, spec, cpu)
    finally:
        worker.close()
    assert contended.status.startswith("noisy:"), contended
    row = ProfileRow("layer", "m", 0, 1, one_core, "k", contended.median_ms, contended.spread, contended.repeats,
                     "fp", contended.status)
    assert not row.ok
    # Without the filter (a throttled, emulated cluster is descheduled on purpose) runs are used.
    assert time_model(tiny_model(), 1, spec, exclusive=False).status == "ok"


def test_a_worker_that_dies_is_named_with_how(platform, one_core):
    """The message ended in an empty ``str(EOFError())``: "profiling worker for cpu:1 died: "."""
    worker = SetupWorker(platform, one_core)
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.join(10)
        with pytest.raises(ProfileError, match=r"profiling worker for .* died \(killed by SIGKILL\)$"):
            worker.measure(tiny_model(), QUICK)
    finally:
        worker.close()


def test_worker_is_pinned_every_thread(platform, one_core):
    from cores.pinning import thread_affinities

    worker = SetupWorker(platform, one_core)
    try:
        timing = worker.measure(tiny_model(), QUICK)  # the runtime has started its threads now
        assert timing.status == "ok"
        cpus = platform.cluster(one_core.cluster).cpus[:1]
        affinities = thread_affinities(worker.pid)
        assert affinities and all(v == tuple(cpus) for v in affinities.values())
    finally:
        worker.close()
    assert not worker.process.is_alive()


def test_a_model_the_runtime_refuses_is_a_failed_row(platform, one_core):
    with WorkerPool(platform, [one_core]) as pool:
        timing = pool.measure(one_core, b"TFL3 this is not a model", QUICK)
        assert timing.status.startswith("failed:")
        assert pool.measure(one_core, tiny_model(), QUICK).status == "ok"  # the worker lived on


# ---- a real profiling run ---------------------------------------------------------------------

class TestProfileRun:
    def test_rows_cover_distinct_layers_stages_and_models(self, profiled, one_core):
        _, paths, _, rows = profiled
        jobs0 = model_jobs(paths[0], stages=2)
        n_layers = 5
        layer_jobs = [j for j in jobs0 if j.kind == "layer"]
        assert len(layer_jobs) == 4  # the two identical 1x1 convs are measured once
        assert {r.kind for r in rows} == {"layer", "stage", "model", "hop"}
        assert all(r.setup == one_core and r.ok for r in rows)
        models = [r for r in rows if r.kind == "model"]
        assert sorted(r.model for r in models) == ["tiny0", "tiny1"]
        assert all(len(r.layer_keys) == n_layers and (r.start, r.end) == (0, n_layers) for r in models)
        assert len({r.fingerprint for r in rows}) == 1

    def test_hops_are_timed_once_between_two_cpus_and_plans_read_them(self, profiled, platform, one_core):
        """The executor's hop is timed where the profile is, between two of the platform's CPUs, and the
        table's line is what plans from it charge (not the development host's default)."""
        from pipeit.executor.hop_timing import HOP_SIZES, hop_cpus

        _, _, out, rows = profiled
        hops = [r for r in rows if r.kind == "hop"]
        assert sorted(r.hop_bytes for r in hops) == sorted(HOP_SIZES)
        assert all(r.hop_cpus == hop_cpus(platform) and r.repeats >= 100 for r in hops)
        if len(os.sched_getaffinity(0)) > 1:
            assert hops[0].hop_cpus[0] != hops[0].hop_cpus[1]
        table = read_profile(out)
        line = table.hop_model()
        assert line is not None and line.source.startswith("timed by the profile on CPUs")
        # 4 MB is copied twice: it costs more than a few microseconds anywhere
        assert line.hop_ms(4 << 20) > 0.05
        assert [r.identity() for r in table.hop_rows()] == [r.identity() for r in hops]
        assert not any(r.kind == "hop" for r in table.multi_rows())
        assert table.setups() == [one_core]  # a hop's sender is no profiled setup

    def test_stage_and_model_keys_resolve_to_layer_rows(self, profiled):
        _, _, out, _ = profiled
        table = read_profile(out)
        catalog = table.catalog()
        for row in table.multi_rows():
            assert all(k in catalog for k in row.layer_keys)

    def test_rerun_resumes_without_new_rows(self, profiled, platform, one_core):
        _, paths, out, rows = profiled
        before = out.read_text()
        again = profile_models(paths, platform, out, setups=[one_core], spec=QUICK, stages=2,
                               progress=False)
        assert again == [] and out.read_text() == before

    def test_setup_the_platform_lacks_is_refused(self, profiled, platform):
        from cores.errors import PlatformError

        _, paths, out, _ = profiled
        with pytest.raises(PlatformError):
            profile_models(paths, platform, out, setups=["nosuch:1"], spec=QUICK, progress=False)


# ---- models the runtime refuses, and dead operators --------------------------------------------

def conv_version_99(path: Path) -> Path:
    model = read_model(tiny_model())
    for op in model.subgraphs[0].operators:
        if op_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D":
            model.operatorCodes[op.opcodeIndex].version = 99
    path.write_bytes(serialize_model(model))
    return path


class TestUnusualModels:
    def test_model_jobs_refuse_a_model_the_runtime_cannot_load_naming_the_file(self, tmp_path):
        path = conv_version_99(tmp_path / "v99.tflite")
        with pytest.raises(ModelError) as info:
            model_jobs(path)
        message = str(info.value)
        assert message.startswith(f"{path}: the runtime cannot load this model: ")
        assert "version '99'" in message and "model bytes" not in message

    def test_profile_refuses_it_before_measuring(self, one_core, tmp_path, capsys):
        path = conv_version_99(tmp_path / "v99.tflite")
        out = tmp_path / "p.csv"
        assert main(["profile", str(path), "-o", str(out), "--setup", str(one_core),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pipeit: error: {path}: the runtime cannot load") and err.count("\n") == 1
        assert not out.exists()

    def test_a_layer_the_runtime_refuses_is_a_failed_row_without_a_stand_in_name(self, platform, one_core):
        with WorkerPool(platform, [one_core]) as pool:
            timing = pool.measure(one_core, b"TFL3 this is not a model", QUICK)
        assert timing.status.startswith("failed: the runtime cannot load this model")

    def test_a_model_with_a_dead_branch_is_profiled(self, platform, one_core, tmp_path):
        path = tmp_path / "dead.tflite"
        path.write_bytes(dead_branch_builder().to_bytes())
        jobs = model_jobs(path, stages=2)
        assert [(j.start, j.end) for j in jobs if j.kind == "layer"] == [(i, i + 1) for i in range(5)]
        rows = profile_models([path], platform, tmp_path / "p.csv", setups=[one_core], spec=QUICK,
                              stages=2, progress=False)
        assert rows and not [r.status for r in rows if r.status.startswith("failed")]


# ---- command line ----------------------------------------------------------------------------

class TestCommandLine:
    def test_fit_predict_eval(self, profiled, one_core, tmp_path, capsys):
        root, paths, out, _ = profiled
        pred = tmp_path / "p.json"
        assert main(["fit", str(out), "-o", str(pred), "--kind", "mech"]) == 0
        capsys.readouterr()
        assert main(["predict", str(paths[0]), "--predictor", str(pred), "--setup", str(one_core),
                     "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [l["index"] for l in doc["layers"]] == list(range(5))
        assert doc["total_ms"] == pytest.approx(sum(l["ms"] for l in doc["layers"]))
        assert main(["eval", str(out), "--json", "--min-ms", "0"]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert set(ev["predictors"]) == {"flops", "pipe-it", "mech"}
        assert {m["model"] for m in ev["models"]} == {"tiny0", "tiny1"}

    def test_fit_cut_short_by_a_full_disk_keeps_the_old_predictor(self, profiled, tmp_path):
        _, _, out, _ = profiled
        pred = tmp_path / "p.json"
        pred.write_text("the old predictor\n")

        def small_files():  # past 256 bytes a write fails with EFBIG, as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

        result = subprocess.run([sys.executable, "-m", "pipeit", "fit", str(out), "-o", str(pred), "--kind", "mech"],
                                capture_output=True, text=True, timeout=300, preexec_fn=small_files)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"pipeit: error: {pred}: cannot write the predictor") and \
            result.stderr.count("\n") == 1, result.stderr
        assert pred.read_text() == "the old predictor\n"  # not a truncated half of the new one
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]

    def test_force_into_another_platforms_profile_measures_this_one(self, profiled, platform, one_core, tmp_path):
        """With --force, rows of another platform whose setup names matched counted as measured already:
        "0 measurements", and plan then used the other platform's times."""
        _, paths, out, rows = profiled
        theirs = tmp_path / "theirs.csv"
        lines = out.read_text().splitlines(keepends=True)
        fingerprint = COLUMNS.index("fingerprint")
        edited = [lines[0]]
        for line in lines[1:]:
            cells = next(csv.reader([line]))
            cells[fingerprint] = "0" * 16
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(cells)
            edited.append(buffer.getvalue())
        theirs.write_text("".join(edited))
        again = profile_models(paths[:1], platform, theirs, setups=[one_core], spec=QUICK, stages=2,
                               progress=False, force=True)
        assert again and {r.fingerprint for r in again} == {rows[0].fingerprint}
        assert len(read_profile(theirs, force=True).rows) == len(lines) - 1 + len(again)

    def test_a_resumed_profile_with_nothing_left_draws_no_progress_bar(self, profiled, one_core, tmp_path, capsys):
        """bench and the demo printed "profiling: 0meas [00:00, ?meas/s]" for a cached profile."""
        _, paths, out, _ = profiled
        copy = tmp_path / "p.csv"
        copy.write_bytes(out.read_bytes())
        assert main(["profile", str(paths[0]), "-o", str(copy), "--setup", str(one_core), "--stages", "2"]) == 0
        assert "profiling:" not in capsys.readouterr().err

    def test_progress_into_a_file_is_whole_lines(self, profiled, one_core, tmp_path, capsys):
        """Shell scripts and the daemon send stderr to a file: tqdm's redraws made one line of every update."""
        _, paths, _, _ = profiled
        out = tmp_path / "fresh.csv"
        assert main(["profile", str(paths[0]), "-o", str(out), "--setup", str(one_core), "--stages", "2"]) == 0
        err = capsys.readouterr().err
        measured = sum(1 for r in read_profile(out).rows if r.kind != "hop")
        assert "\r" not in err and f"profiling: {measured}/{measured} meas (100%)" in err, err
        assert "[profile] timing the executor's hop from CPU" in err
        quiet = tmp_path / "quiet.csv"
        assert main(["profile", str(paths[0]), "-o", str(quiet), "--setup", str(one_core), "--stages", "2",
                     "--quiet"]) == 0
        assert "profiling:" not in capsys.readouterr().err and read_profile(quiet).rows

    def test_eval_of_a_one_model_profile_says_what_is_missing(self, profiled, tmp_path, capsys):
        _, _, out, _ = profiled
        lines = out.read_text().splitlines(keepends=True)
        one = tmp_path / "one.csv"
        one.write_text(lines[0] + "".join(l for l in lines[1:] if l.split(",")[1] == "tiny0"))
        assert main(["eval", str(one)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pipeit: error: holding out tiny0 leaves no layer rows to fit on") and \
            err.count("\n") == 1, err
        assert "pipeit profile" in err

    def test_bad_inputs_exit_2_with_one_line(self, profiled, one_core, tmp_path, capsys):
        root, paths, out, _ = profiled
        pred = tmp_path / "p.json"
        assert main(["fit", str(out), "-o", str(pred)]) == 0
        capsys.readouterr()
        cases = [
            ["predict", str(paths[0]), "--predictor", str(pred), "--setup", "nosuch:1"],
            ["predict", str(paths[0]), "--predictor", str(pred), "--setup", f"{one_core.cluster}:99"],
            ["predict", str(paths[0]), "--predictor", str(out), "--setup", str(one_core)],
            ["fit", str(root / "missing.csv"), "-o", str(tmp_path / "x.json")],
            ["profile", str(paths[0]), "-o", str(out), "--setup", "nosuch:1", "--no-progress"],
            ["eval", str(out), "--holdout", "resnet"],
            ["eval", str(out), "--setup", f"{one_core.cluster}:7"],  # was a table of nan, exit 0
        ]
        for argv in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("pipeit: error: ") and err.count("\n") == 1, err
        doc = json.loads(pred.read_text())
        doc["fingerprint"] = "someotherboard"
        pred.write_text(json.dumps(doc))
        argv = ["predict", str(paths[0]), "--predictor", str(pred), "--setup", str(one_core)]
        assert main(argv) == 2
        assert "another platform" in capsys.readouterr().err
        assert main(argv + ["--force"]) == 0

    @pytest.mark.parametrize("extra, message", [
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--stages", "-1"], "--stages must be >= 0, got -1"),
        (["--repeats", "3", "--min-repeats", "5"], "--min-repeats (5) must not exceed --repeats (3)"),
    ])
    def test_bad_counts_are_refused_before_profiling(self, profiled, one_core, tmp_path, capsys, extra, message):
        _, paths, _, _ = profiled
        out = tmp_path / "new.csv"
        argv = ["profile", str(paths[0]), "-o", str(out), "--setup", str(one_core), "--no-progress", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"pipeit: error: {message}\n"
        assert not out.exists()

    def test_repeats_alone_below_the_default_minimum_is_taken(self, profiled, one_core, tmp_path, capsys):
        _, paths, _, _ = profiled
        out = tmp_path / "few.csv"
        argv = ["profile", str(paths[0]), "-o", str(out), "--setup", str(one_core), "--no-progress",
                "--repeats", "3", "--stages", "0", "--json"]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["failed"] == 0

    def test_profile_file_from_another_platform_refused(self, profiled, one_core, tmp_path, capsys):
        _, paths, out, _ = profiled
        foreign = tmp_path / "foreign.csv"
        foreign.write_text(out.read_text().replace(read_profile(out).fingerprint, "f" * 16))
        argv = ["profile", str(paths[0]), "-o", str(foreign), "--setup", str(one_core), "--no-progress",
                "--repeats", "3", "--min-repeats", "3"]
        assert main(argv) == 2
        assert "another platform" in capsys.readouterr().err

    def test_a_run_stopped_before_its_first_row_leaves_nothing_that_blocks_the_next(self, profiled, one_core,
                                                                                   tmp_path, capsys):
        """The header was written on open: a run stopped in its first second left a header-only file
        that every later run (and bench's cache) refused as "the profile has no rows"."""
        _, paths, _, _ = profiled
        out = tmp_path / "stopped.csv"
        with ProfileWriter(out):
            pass  # stopped before any measurement
        assert out.read_text() == ""
        out.write_text(",".join(COLUMNS) + "\n")  # what an older pipeit left
        argv = ["profile", str(paths[0]), "-o", str(out), "--setup", str(one_core), "--no-progress",
                "--repeats", "3", "--min-repeats", "3", "--stages", "0", "--json"]
        assert main(argv) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["failed"] == 0
        assert out.read_text().count(",".join(COLUMNS)) == 1 and read_profile(out).models() == ["tiny0"]

    def test_two_models_of_one_name_are_refused(self, profiled, one_core, tmp_path, capsys):
        """Rows name a model by its file stem: another tiny0.tflite had its stage and model rows skipped as
        measured, and eval over two files kept one model's rows under the name."""
        _, paths, out, _ = profiled
        other = tmp_path / "elsewhere" / "tiny0.tflite"
        other.parent.mkdir()
        other.write_bytes(paths[1].read_bytes())  # tiny1's layers, named tiny0
        common = ["--setup", str(one_core), "--no-progress", "--repeats", "3", "--min-repeats", "3"]
        copy = tmp_path / "copy.csv"
        copy.write_text(out.read_text())
        for argv in (["profile", str(other), "-o", str(copy), *common],
                     ["profile", str(paths[0]), str(other), "-o", str(tmp_path / "new.csv"), *common]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "two different models named 'tiny0'" in err and err.count("\n") == 1, err
        assert copy.read_text() == out.read_text() and not (tmp_path / "new.csv").exists()
        renamed = tmp_path / "renamed.csv"
        with ProfileWriter(renamed) as writer:
            writer.write_all(dataclasses.replace(r, model="tiny0") for r in read_profile(out).rows
                             if r.model == "tiny1")
        assert main(["eval", str(out), str(renamed)]) == 2
        assert "two different models are named 'tiny0'" in capsys.readouterr().err

    def test_a_board_that_is_not_this_machine_is_not_profiled(self, profiled, tmp_path, capsys):
        """A board's CPUs this host lacks: its rows would carry the board's fingerprint, so refuse, even for a
        setup whose own CPUs exist here (little:1 of an Odroid XU4 is CPU 0)."""
        _, paths, _, _ = profiled
        out = tmp_path / "xu4.csv"
        argv = ["profile", str(paths[0]), "-o", str(out), "--platform", "board:odroid-xu4", "--setup", "little:1",
                "--no-progress", "--repeats", "3", "--min-repeats", "3"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "profiling measures this machine" in err and err.count("\n") == 1
        assert not out.exists() or not out.read_text().strip()


# ---- k-thread setups: sustained windows ---------------------------------------------------------

class TestPoolWindows:
    """k > 1 threads are timed by windows of back-to-back invokes (see profiler._time_pool)."""

    SPEC = TimingSpec(pool_min_run=0.8)

    def test_a_window_is_clean_only_when_every_pool_thread_ran_through_it(self):
        from pipeit.profiler import pool_window_clean

        wall = 2_000_000
        # both pool threads on a CPU all window (a third, idle thread does not matter)
        assert pool_window_clean([1_990_000, 1_700_000, 0], 0, wall, 2, self.SPEC)
        # the worker never woke (its core was taken): the one-core time, not a 2-core one
        assert not pool_window_clean([2_000_000, 10_000, 0], 0, wall, 2, self.SPEC)
        # the two threads shared one core
        assert not pool_window_clean([1_000_000, 1_000_000], 0, wall, 2, self.SPEC)
        assert not pool_window_clean([2_000_000], 0, wall, 2, self.SPEC)  # fewer threads than asked
        # without thread clocks the process CPU time decides
        assert pool_window_clean(None, 3_400_000, wall, 2, self.SPEC)
        assert not pool_window_clean(None, 2_100_000, wall, 2, self.SPEC)

    def test_a_competitor_on_one_core_makes_a_two_core_timing_noisy(self, platform):
        """A hog on the second core: single invokes measured with the old filter came out
        ``ok`` at the one-core time (the worker never ran); windows see the lost run time.

        Windows of 20 ms: longer than a scheduler slice, so no window escapes the hog.
        """
        from pipeit.tflite_builder import single_layer_model

        cluster = max(platform.cpu_clusters, key=lambda c: len(c.cpus))
        if len(cluster.cpus) < 2:
            pytest.skip("needs a cluster with 2 cores")
        setup = CoreSetup(cluster.name, 2)
        layer = single_layer_model("conv", (1, 28, 28, 64), out_channels=64, kernel=3)
        spec = TimingSpec(warmup=2, min_repeats=5, max_repeats=15, batch=5, max_seconds=2.0, attempts=1,
                          quiet_wait_s=0.0, pool_window_ms=20.0)
        worker = SetupWorker(platform, setup)
        try:
            contended = _measure_beside_a_hog(worker, layer, spec, cluster.cpus[1])
        finally:
            worker.close()
        assert contended.status.startswith("noisy:") and "windows" in contended.status, contended
        assert contended.repeats >= spec.min_repeats  # invokes, several per window


class TestSupersede:
    """A re-timed row in a later file replaces the old one (docs/PREDICTORS.md, re-time lists)."""

    def _row(self, ms, status="ok", fingerprint="fp0", kind="layer", key="K"):
        return ProfileRow(kind, "m", 0, 1, CoreSetup("cpu", 2), key if kind == "layer" else "", ms, 0.01, 10,
                          fingerprint, status=status)

    def test_the_last_ok_row_of_a_measurement_wins_and_a_failed_one_never_replaces_it(self):
        from pipeit.profile_table import supersede

        old, new, noisy = self._row(0.9), self._row(0.5), self._row(0.7, status="noisy: 2 of 9")
        assert supersede([old, new]) == [new]
        assert supersede([old, new, noisy]) == [new]
        assert supersede([noisy, old]) == [old]
        other = self._row(0.8, key="K2")
        assert supersede([old, other, new]) == [other, new]
        # another platform's row is another measurement (read only with --force)
        foreign = self._row(0.4, fingerprint="fp1")
        assert supersede([old, foreign]) == [old, foreign]

    def test_read_profile_lets_a_later_file_supersede(self, tmp_path):
        from pipeit.profile_table import ProfileRow as PR

        tiny = tiny_model(0)
        from pipeit.graph import load_graph

        d = load_graph(tiny).layers[0].descriptor
        rows = [PR("layer", "m", 0, 1, CoreSetup("cpu", 2), d.key_string(), ms, 0.01, 10, "fp0", descriptor=d)
                for ms in (0.9, 0.5)]
        a, b = tmp_path / "a.csv", tmp_path / "b.csv"
        with ProfileWriter(a) as w:
            w.write(rows[0])
        with ProfileWriter(b) as w:
            w.write(rows[1])
        assert [r.median_ms for r in read_profile([a, b]).layer_rows()] == [0.5]
        assert [r.median_ms for r in read_profile([b, a]).layer_rows()] == [0.9]


class TestRetimeList:
    """Suspect k-core rows become a re-time list; the list's rows rebuild from the model files."""

    def test_suspect_rows_to_list_and_back_to_jobs(self, tmp_path):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
        from eval_breakdown import write_retime_list
        from retime_sweep import list_jobs, read_retime_list

        from pipeit.graph import load_graph

        data = tiny_model(0)
        model = tmp_path / "tiny0.tflite"
        model.write_bytes(data)
        layers = load_graph(data).layers
        keys = [layer.descriptor.key_string() for layer in layers]
        c1, c2 = CoreSetup("cpu", 1), CoreSetup("cpu", 2)
        rows = []
        for i, layer in enumerate(layers[:2]):
            # layer 0 scales 2x on two cores; layer 1's two-core row took the one-core time
            for s, ms in ((c1, 0.2), (c2, 0.1 if i == 0 else 0.19)):
                rows.append(ProfileRow("layer", "tiny0", i, i + 1, s, keys[i], ms, 0.01, 10, "fp0",
                                       descriptor=layer.descriptor))
        for s, ms in ((c1, 1.0), (c2, 0.9)):  # a stage row no faster on two cores
            rows.append(ProfileRow("stage", "tiny0", 0, 2, s, "", ms, 0.01, 10, "fp0", layer_keys=tuple(keys[:2])))
        from pipeit.profile_table import ProfileTable

        path = tmp_path / "list.csv"
        assert write_retime_list(ProfileTable(rows), str(path), min_ms=0.05) == 2
        entries = read_retime_list(path)
        assert [(e[0], e[2], e[3], e[4]) for e in entries] == [("layer", 1, 2, "cpu:2"), ("stage", 0, 2, "cpu:2")]
        jobs = list_jobs(entries, [model])
        assert [(j.kind, j.key if j.kind == "layer" else (j.start, j.end), s) for j, s in jobs] == [
            ("layer", keys[1], "cpu:2"), ("stage", (0, 2), "cpu:2")]
        # bad input: one clear ProfileError each
        with pytest.raises(ProfileError, match="not among --models"):
            list_jobs(entries, [])
        with pytest.raises(ProfileError, match="outside"):
            list_jobs([("stage", "tiny0", 0, 30, "cpu:2", "")], [model])
        with pytest.raises(ProfileError, match="not found"):
            list_jobs([("layer", "tiny0", 0, 1, "cpu:2", "no-such-key")], [model])
        bad = tmp_path / "bad.csv"
        bad.write_text("kind,model\nlayer,x\n")
        with pytest.raises(ProfileError, match="not a re-time list"):
            read_retime_list(bad)
