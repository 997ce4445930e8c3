"""cores.filewrite: a file is replaced whole or left as it was."""

import os
import stat
import subprocess
import sys
import threading

from cores.filewrite import write_file


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_new_file_gets_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o027)
    try:
        write_file(tmp_path / "new.json", "{}\n")
    finally:
        os.umask(umask)
    path = tmp_path / "new.json"
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == []


def test_an_existing_file_is_replaced_and_keeps_its_mode(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("old")
    path.chmod(0o600)
    write_file(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlink_is_kept_and_its_target_written(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_file(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_dev_null_and_a_fifo_are_written_not_replaced(tmp_path):
    write_file("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_file(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_write_cut_short_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    """Past the file-size limit the write fails midway (EFBIG), as on a full disk."""
    path = tmp_path / "predictor.json"
    path.write_text("the old predictor\n")
    script = (
        "import resource, signal, sys\n"
        "from cores.filewrite import write_file\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    write_file({str(path)!r}, 'x' * 100000)\n"
        "except OSError as err:\n"
        "    print(err.errno)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 3, result.stderr
    assert path.read_text() == "the old predictor\n"
    assert leftovers(tmp_path) == []


def test_dev_stdout_into_a_pipe_is_written_through():
    """/dev/stdout on a pipe resolves to no file that can be renamed over: the bytes go down the pipe."""
    script = "from cores.filewrite import write_file\nwrite_file('/dev/stdout', b'down the pipe')\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and result.stdout == b"down the pipe", result.stderr


def test_the_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write cannot remove its temporary (a 100 MB model's stayed beside it for good)."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    path = tmp_path / "r50.tflite"
    stale = tmp_path / f".r50.tflite.{dead}-abc123.tmp"
    stale.write_bytes(b"half a model")
    alive = tmp_path / f".r50.tflite.{os.getppid()}-def456.tmp"  # a writer that may still be at it
    alive.write_bytes(b"in progress")
    other = tmp_path / f".other.tflite.{dead}-abc123.tmp"  # another file's: its own next write removes it
    other.write_bytes(b"x")
    write_file(path, b"model")
    assert path.read_bytes() == b"model"
    assert leftovers(tmp_path) == sorted([alive.name, other.name])
