"""Progress on long work: a bar on a terminal, whole lines in a file or a log."""

from __future__ import annotations

import io
import sys

from pipeit.progress import ProgressLines, progress_for, say


class Clock:
    """A clock the test moves: progress lines are rate-limited by time, and a test must not sleep."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_tenths_no_closer_than_the_interval_and_once_at_the_end():
    clock, lines = Clock(), []
    bar = ProgressLines(200, "profiling", "meas", say=lines.append, min_interval_s=10.0, clock=clock)
    bar.set_postfix_str("m:layer[0:1] cpu:1")
    for _ in range(200):
        clock.now += 0.5  # 100 s in all: a line may come every 20 measurements
        bar.update(1)
    bar.close()
    bar.close()  # the end is said once
    assert [line.split(" ")[1] for line in lines] == [f"{n}/200" for n in range(20, 201, 20)]
    assert lines[0] == "profiling: 20/200 meas (10%), 10 s elapsed, about 1 min 30 s left (m:layer[0:1] cpu:1)"
    assert lines[-1].startswith("profiling: 200/200 meas (100%), 1 min 40 s elapsed") and "left" not in lines[-1]


def test_fast_work_says_little_and_slow_work_says_no_more_than_every_interval():
    clock, lines = Clock(), []
    bar = ProgressLines(1000, "profiling", "meas", say=lines.append, min_interval_s=10.0, clock=clock)
    for _ in range(1000):
        clock.now += 0.001  # a second in all
        bar.update(1)
    bar.close()
    assert [line.split(" ")[1] for line in lines] == ["100/1000", "1000/1000"]

    clock, lines = Clock(), []
    bar = ProgressLines(None, "tuning", "trials", say=lines.append, min_interval_s=10.0, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        bar.update(1)
    bar.close()
    assert [line.split(" ")[1] for line in lines] == ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert lines[-1] == "tuning: 100 trials, 1 min 40 s elapsed"


def test_work_cut_short_says_where_it_stopped():
    clock, lines = Clock(), []
    with ProgressLines(50, "profiling", "meas", say=lines.append, clock=clock) as bar:
        clock.now += 3.0
        bar.update(3)
    assert lines == ["profiling: 3/50 meas (6%), 3.0 s elapsed, about 47 s left"]


def test_a_file_gets_lines_a_function_gets_lines_and_false_gets_nothing(monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    bar = progress_for(True, 3, "profiling", "meas")
    assert isinstance(bar, ProgressLines)
    for _ in range(3):
        bar.update(1)
    bar.close()
    say(True, "[profile] one more line")
    say(False, "nothing")
    told = []
    logged = progress_for(told.append, 2, "profiling", "meas")
    logged.update(2)
    logged.close()
    quiet = progress_for(False, 5, "profiling", "meas")
    quiet.update(5)
    quiet.close()
    text = captured.getvalue()
    assert "\r" not in text and text.splitlines()[0].startswith("profiling: 1/3 meas (33%)")
    assert text.splitlines()[-2].startswith("profiling: 3/3 meas (100%)")
    assert text.splitlines()[-1] == "[profile] one more line" and "nothing" not in text
    assert len(told) == 1 and told[0].startswith("profiling: 2/2 meas (100%)")  # said at 100 %, not again
