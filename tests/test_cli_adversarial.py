"""Hostile command lines through the real CLI: odd paths, outputs that are inputs, FIFOs,
non-numbers and out-of-range numbers. Each must end in one ``pipeit: error:`` line on stderr
and exit 2 -- no traceback, no hang, no input destroyed, nothing left in /dev/shm.

Commands that could hang or start workers run as subprocesses with a timeout; the rest run
in-process through :func:`pipeit.cli.main`. (Permission tests are left out: the suite may run
as root, who reads a ``chmod 000`` file anyway.)
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from cores.platform import load_platform
from pipeit.cli import main
from pipeit.graph import load_graph
from pipeit.layer_times import LayerTimes
from pipeit.profile_table import ProfileWriter
from tests.host_helpers import sigint_as_default
from tests.test_bad_models import good_model
from tests.test_predictors import S1, S2, make_rows, model_row, training_descs

SPEC = "emulate:big=0@1.0,little=1@1.0"  # two clusters, no throttling: no cgroups needed


# ---- helpers ---------------------------------------------------------------------------------

def cli(*args, timeout=120, cwd=None, stdout=subprocess.PIPE):
    """Run ``python -m pipeit ARGS``; a run past ``timeout`` is a hang: interrupted, then failed."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeit", *map(str, args)], stdout=stdout,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=cwd,
                            start_new_session=True, preexec_fn=sigint_as_default)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        pytest.fail(f"pipeit {' '.join(map(str, args))} hung (> {timeout} s)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refused(result, *words):
    """One ``pipeit: error:`` line naming ``words``, exit 2, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pipeit: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def refused_in_process(capsys, argv, *words):
    """:func:`refused` for ``main(argv)`` run in this process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return refused(subprocess.CompletedProcess(argv, code, captured.out, captured.err), *words)


def pipeit_shm():
    """pipeit's shared-memory segments whose process is gone: the refused command's would be among them
    (it has exited), while another pipeit running on the host meanwhile keeps its own alive."""
    if not os.path.isdir("/dev/shm"):
        return set()
    names = [n for n in os.listdir("/dev/shm") if n.startswith("pipeit_")]
    return {n for n in names if not n.split("_")[1].isdigit() or not psutil.pid_exists(int(n.split("_")[1]))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small valid model, a layer-times table for it and a plan made from them."""
    folder = tmp_path_factory.mktemp("adversarial")
    model = folder / "tiny.tflite"
    model.write_bytes(good_model())
    graph = load_graph(model)
    platform = load_platform(SPEC)
    times = LayerTimes.from_graph(graph, platform.setups(), lambda i, s: 0.05 + 0.01 * i)
    times_path = folder / "times.json"
    times.save(times_path)
    plan = folder / "plan.json"
    assert main(["plan", str(model), "--platform", SPEC, "--times", str(times_path), "-o", str(plan)]) == 0
    return {"model": model, "times": times_path, "plan": plan, "folder": folder}


@pytest.fixture(scope="module")
def profile_csv(tmp_path_factory):
    """A small profile table that ``pipeit fit`` and ``pipeit eval`` accept."""
    path = tmp_path_factory.mktemp("profile") / "profile.csv"
    descs = training_descs()
    with ProfileWriter(path) as writer:
        writer.write_all(make_rows(descs))
        for setup in (S1, S2):
            writer.write(model_row(descs, setup, "m"))
    return path


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# ---- paths in names and messages ----------------------------------------------------------------

def test_model_whose_file_name_is_not_utf8_loads(tmp_path, capsys):
    path = Path(os.fsdecode(bytes(tmp_path) + b"/model\xff.tflite"))
    path.write_bytes(good_model())
    assert main(["inspect", str(path)]) == 0  # the runtime took only UTF-8 names: a TypeError
    assert "CONV_2D" in capsys.readouterr().out


def test_a_newline_in_a_file_name_stays_on_the_error_line(tmp_path, capsys):
    line = refused_in_process(capsys, ["inspect", tmp_path / "two\nlines.tflite"], "no such model file")
    assert "two\\nlines.tflite" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        result = cli("zoo", "--list", stdout=full)
    refused(result, "standard output", "No space left")


# ---- an output that is an input, or cannot be written -------------------------------------------

def test_plan_never_overwrites_its_model_or_its_times(tiny, tmp_path, capsys):
    model, times = tmp_path / "m.tflite", tmp_path / "t.json"
    model.write_bytes(tiny["model"].read_bytes())
    times.write_bytes(tiny["times"].read_bytes())
    before = model.read_bytes(), times.read_bytes()
    base = ["plan", model, "--platform", SPEC, "--times", times]
    refused_in_process(capsys, [*base, "-o", model], "is also the input")
    refused_in_process(capsys, [*base, "-o", times], "is also the input")
    refused_in_process(capsys, [*base, "-o", tmp_path / "p.json", "--save-times", model], "is also the input")
    assert (model.read_bytes(), times.read_bytes()) == before


def test_fit_never_overwrites_its_profile(profile_csv, tmp_path, capsys):
    profile = tmp_path / "p.csv"
    profile.write_bytes(profile_csv.read_bytes())
    refused_in_process(capsys, ["fit", profile, "-o", profile], "is also the input")
    assert profile.read_bytes() == profile_csv.read_bytes()


def test_gpu_accuracy_never_overwrites_its_model(tiny, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny["model"].read_bytes())
    refused(cli("gpu", "accuracy", model, "--range", "0:1", "-o", model), "is also the input")
    assert model.read_bytes() == tiny["model"].read_bytes()


def test_split_never_overwrites_a_model_named_like_its_stage_files(tiny, tmp_path):
    model = tmp_path / "stage_4.tflite"  # not listed by a 2-stage split: it would be removed as stale
    model.write_bytes(tiny["model"].read_bytes())
    refused(cli("split", model, "--at", "3", "-o", tmp_path), "under a name the split writes or removes")
    assert model.read_bytes() == tiny["model"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage_4.tflite"]


def test_split_with_an_empty_output_writes_nothing_here(tiny, tmp_path):
    refused(cli("split", tiny["model"], "--at", "3", "-o", "", cwd=tmp_path), "-o needs a folder name")
    assert list(tmp_path.iterdir()) == []


def test_infer_never_overwrites_its_input(tmp_path, capsys):
    frames = tmp_path / "x.npz"
    np.savez(frames, input=np.zeros((1, 4), np.float32))
    refused_in_process(capsys, ["infer", "--socket", tmp_path / "no.sock", "--input", frames, "-o", frames],
                       "is also the input")


@pytest.mark.parametrize("command", [
    ["zoo", "squeezenet", "-o", "{fifo}"],
    ["plan", "{model}", "--platform", SPEC, "--times", "{times}", "-o", "{fifo}"],
    ["plan", "{model}", "--platform", SPEC, "--times", "{times}", "-o", "{tmp}/p.json", "--save-times", "{fifo}"],
    ["infer", "--socket", "{tmp}/no.sock", "--input", "{fifo}"],
])
def test_a_fifo_nobody_reads_or_writes_is_refused_not_waited_on(tiny, fifo, tmp_path, command):
    names = {"fifo": fifo, "model": tiny["model"], "times": tiny["times"], "tmp": tmp_path}
    refused(cli(*[part.format(**names) for part in command], timeout=60), str(fifo))


def test_outputs_in_a_folder_that_is_a_file(tiny, profile_csv, tmp_path, capsys):
    bad = tmp_path / "file"
    bad.write_text("x")
    refused_in_process(capsys, ["fit", profile_csv, "-o", bad / "p.json"], "is not a folder")
    refused_in_process(capsys, ["plan", tiny["model"], "--platform", SPEC, "--times", tiny["times"],
                                "-o", tmp_path / "p.json", "--save-times", bad / "t.json"], "is not a folder")
    refused_in_process(capsys, ["bench", tiny["model"], "--cache-dir", bad], "is not a folder")
    refused(cli("profile", tiny["model"], "-o", bad / "p.csv", "--no-progress"), "is not a folder")


def test_outputs_that_are_folders(tiny, profile_csv, tmp_path, capsys):
    refused_in_process(capsys, ["fit", profile_csv, "-o", tmp_path], "is a folder")
    refused_in_process(capsys, ["plan", tiny["model"], "--platform", SPEC, "--times", tiny["times"],
                                "-o", tmp_path / "p.json", "--save-times", tmp_path], "is a folder")


def test_profile_to_dev_null_measures_and_exits_0(tiny):
    # fsync of /dev/null fails with EINVAL: that is no reason to stop
    result = cli("profile", tiny["model"], "-o", "/dev/null", "--setup", _one_setup(),
                 "--repeats", "1", "--min-repeats", "1", "--stages", "0", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def _one_setup() -> str:
    cluster = load_platform("auto").fastest
    return f"{cluster.name}:1"


@pytest.mark.parametrize("suffix", ["x.csv", "x.unknownext"])
def test_plot_files_matplotlib_cannot_write(tiny, profile_csv, tmp_path, capsys, suffix):
    pytest.importorskip("matplotlib")
    plot = tmp_path / suffix
    refused_in_process(capsys, ["plan", tiny["model"], "--platform", SPEC, "--times", tiny["times"],
                                "-o", tmp_path / "p.json", "--plot", plot], "matplotlib cannot write")
    refused_in_process(capsys, ["eval", profile_csv, "--plot", plot], "matplotlib cannot write")
    # refused before any profiling or streaming, not after the whole benchmark
    refused(cli("bench", tiny["model"], "--cache-dir", tmp_path / "cache", "--frames", "1", "--rounds", "1",
                "--plot", plot, timeout=300), "matplotlib cannot write")


# ---- numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e308"])
def test_infer_and_status_timeouts(tmp_path, capsys, value):
    frames = tmp_path / "x.npy"
    np.save(frames, np.zeros((1, 4), np.float32))
    refused_in_process(capsys, ["status", "--socket", tmp_path / "s", "--timeout", value], "--timeout")
    refused_in_process(capsys, ["infer", "--socket", tmp_path / "s", "--input", frames, "--timeout", value],
                       "--timeout")


def test_negative_seeds(tiny, tmp_path, capsys):
    refused_in_process(capsys, ["zoo", "squeezenet", "-o", tmp_path / "z.tflite", "--seed", "-1"], "--seed")
    refused_in_process(capsys, ["gpu", "tune", tiny["model"], "-o", tmp_path / "t.json", "--seed", "-1"],
                       "--seed")


def test_gpu_numbers_and_layers(tiny, tmp_path, capsys):
    model = tiny["model"]
    refused_in_process(capsys, ["gpu", "check", model, "--tolerance", "nan"], "--tolerance")
    refused_in_process(capsys, ["gpu", "check", model, "--tolerance", "-1"], "--tolerance")
    refused_in_process(capsys, ["gpu", "tune", model, "-o", tmp_path / "t.json", "--layers", "999"],
                       "layer 999 is outside")
    refused_in_process(capsys, ["gpu", "accuracy", model, "--range", "0:1", "--tolerances", "inf",
                                "-o", tmp_path / "t.json"], "--tolerances")


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_eval_min_ms(profile_csv, capsys, value):
    refused_in_process(capsys, ["eval", profile_csv, "--min-ms", value], "--min-ms")


def test_run_slots_beyond_any_use_start_no_worker(tiny):
    before = pipeit_shm()
    refused(cli("run", tiny["plan"], "--model", tiny["model"], "--slots", str(10 ** 30)), "--slots")
    assert pipeit_shm() <= before


def test_run_with_a_huge_frame_count_streams_without_building_lists(tiny):
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([sys.executable, "-m", "pipeit", "run", str(tiny["plan"]), "--model", str(tiny["model"]),
                             "--frames", str(10 ** 30), "--warmup", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_as_default)
    try:
        time.sleep(3)  # a list of 10**30 frames fails at once (MemoryError/OverflowError), or grows past 1 GiB
        assert proc.poll() is None, proc.communicate()[1]
        rss = psutil.Process(proc.pid).memory_info().rss
        assert rss < 1 << 30, f"run holds {rss >> 20} MiB after 3 s"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


# ---- limits of the process: descriptors, file size, memory, closed stderr -------------------------


def _limited(which, value):
    """A ``preexec_fn`` that sets a soft resource limit in the child (the hard one stays)."""
    import resource

    def apply():
        sigint_as_default()
        resource.setrlimit(which, (value, resource.getrlimit(which)[1]))
    return apply


def _run_under(tiny, preexec_fn, stderr=subprocess.PIPE):
    proc = subprocess.run([sys.executable, "-m", "pipeit", "run", str(tiny["plan"]), "--model", str(tiny["model"]),
                           "--frames", "20", "--warmup", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True,
                          stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec_fn, timeout=120)
    return proc


@pytest.mark.parametrize("limit", [8, 12, 16])
def test_run_out_of_descriptors_is_one_line_and_leaves_no_segment(tiny, limit):
    """At 8 a ring's segment was created and left in /dev/shm for good (the standard library starts its
    resource tracker after creating it); at 12-16 a worker's pipe failed with a 30-line traceback."""
    import resource

    before = pipeit_shm()
    refused(_run_under(tiny, _limited(resource.RLIMIT_NOFILE, limit)), "open files")
    assert pipeit_shm() <= before


def test_run_under_a_file_size_limit_is_refused_before_any_segment(tiny):
    """The segment could not be sized (EFBIG), and the resource tracker printed a KeyError traceback of
    its own after pipeit's error line."""
    import resource

    before = pipeit_shm()
    refused(_run_under(tiny, _limited(resource.RLIMIT_FSIZE, 1024)), "ulimit -f")
    assert pipeit_shm() <= before


def test_run_with_stderr_closed_runs(tiny):
    """It crashed at its first message (sys.stderr is None), exit 1 and not a word on stdout either."""
    result = _run_under(tiny, lambda: (sigint_as_default(), os.close(2)), stderr=None)
    assert result.returncode == 0
    assert "20 frames" in result.stdout


def test_reading_a_small_json_file_does_not_set_aside_its_bound(tmp_path):
    """``read(limit)`` reserved 64 MiB for a 1 kB plan: a MemoryError under ``ulimit -v 200000``."""
    import tracemalloc

    from cores.jsonfile import read_json

    path = tmp_path / "small.json"
    path.write_text('{"a": [1, 2, 3]}')
    tracemalloc.start()
    try:
        assert read_json(path, "test") == {"a": [1, 2, 3]}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


# ---- pipeit serve: refused before any planning or worker --------------------------------------

def serve(tiny, tmp_path, *extra):
    return cli("serve", "--model", tiny["model"], "--platform", SPEC, "--plan", tiny["plan"],
               "--socket", tmp_path / "d.sock", *extra, timeout=60)


@pytest.mark.parametrize("extra, word", [
    (["--window-s", "inf"], "--window-s"),
    (["--window-s", "1e308"], "--window-s"),
    (["--reject-rate", "nan"], "--reject-rate"),
    (["--slots", str(10 ** 30)], "--slots"),
    (["--cooldown", "65"], "--cooldown"),
    (["--switch-margin", "0.6"], "--switch-margin"),
])
def test_serve_numbers(tiny, tmp_path, extra, word):
    before = pipeit_shm()
    refused(serve(tiny, tmp_path, *extra), word)
    assert pipeit_shm() <= before
    assert not (tmp_path / "d.sock").exists()


def test_serve_socket_path_that_is_a_file_is_refused_before_starting(tiny, tmp_path):
    taken = tmp_path / "d.sock"
    taken.write_text("not a socket")
    refused(serve(tiny, tmp_path), "exists and is not a socket")  # one line: no planning log before it
    assert taken.read_text() == "not a socket"


def test_client_names_a_path_that_is_not_a_socket(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.write_text("x")
    refused_in_process(capsys, ["status", "--socket", plain], "is not a socket")
    dead = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(dead))
    listener.close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(dead.lstat().st_mode)
    refused_in_process(capsys, ["status", "--socket", dead], "no daemon listens on")


# ---- input files ---------------------------------------------------------------------------------

def _npy_header(shape, descr="<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npz_declaring_more_memory_than_there_is(tmp_path, capsys):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input.npy", _npy_header((10 ** 7, 224, 224, 3)) + b"\0" * 64)
    refused_in_process(capsys, ["infer", "--socket", tmp_path / "s", "--input", bomb], "memory")


def test_npy_with_a_huge_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "big.npy"
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), " + b" " * 200_000 + b"}"
    header += b" " * ((64 - (12 + len(header) + 1) % 64) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + b"\0" * 16)
    refused_in_process(capsys, ["infer", "--socket", tmp_path / "s", "--input", path], "big.npy")


@pytest.mark.parametrize("header", [
    b"{garbage: (((( }",  # numpy's tokenizer: tokenize.TokenError
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (1180591620717411303424,), }",  # OverflowError
])
def test_npy_whose_header_numpy_cannot_parse_is_one_line(tmp_path, capsys, header):
    """Both were tracebacks: the header parser raises more than ValueError on bytes that are not its own."""
    path = tmp_path / "odd.npy"
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16)
    refused_in_process(capsys, ["infer", "--socket", tmp_path / "s", "--input", path], "not a readable .npy")


def test_a_pickle_is_called_what_it_is_and_never_loaded(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    line = refused_in_process(capsys, ["infer", "--socket", tmp_path / "s", "--input", path], "not a .npy")
    assert "allow_pickle" not in line
    assert not marker.exists()


@pytest.mark.parametrize("time", ["nan", "1e308"])  # 1e308 ms fitted into a predictor of nonsense
def test_profile_row_with_status_ok_and_a_time_that_is_no_time_names_the_row(profile_csv, tmp_path, capsys,
                                                                             time):
    with open(profile_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][7] == "median_ms" and rows[1][10] == "ok"
    rows[1][7] = time
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    refused_in_process(capsys, ["fit", bad, "-o", tmp_path / "p.json"], "bad.csv:2", "median_ms")


def test_profile_row_whose_descriptor_nests_too_deep_names_the_row(profile_csv, tmp_path, capsys):
    """The descriptor cell is JSON: 100 000 brackets were a RecursionError traceback."""
    with open(profile_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("descriptor")
    rows[1][column] = "[" * 100_000
    bad = tmp_path / "deep.csv"
    with open(bad, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    refused_in_process(capsys, ["fit", bad, "-o", tmp_path / "p.json"], "deep.csv:2", "nested too deeply")
