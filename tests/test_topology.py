"""Topology detection on fixture sysfs trees, board files, platform specs and `pipeit topology`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cores.boards import list_boards, load_board
from cores.cputypes import CORE_PARTS, parse_cpuinfo
from cores.errors import PlatformError
from cores.platform import load_platform, parse_emulate_spec
from cores.sysfs import format_cpu_list, parse_cpu_list
from cores.topology import detect_topology

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"

# fixture -> [(cluster name, core type, cpus, max kHz, capacity)], fastest
EXPECTED = {
    "odroid-xu4": ([("little", "Cortex-A7", (0, 1, 2, 3), 1400000, 377),
                    ("big", "Cortex-A15", (4, 5, 6, 7), 2000000, 1024)], "big"),
    "odroid-n2plus": ([("little", "Cortex-A53", (0, 1), 1908000, 511),
                       ("big", "Cortex-A73", (2, 3, 4, 5), 2208000, 1024)], "big"),
    "rk3399": ([("little", "Cortex-A53", (0, 1, 2, 3), 1416000, 381),
                ("big", "Cortex-A72", (4, 5), 1800000, 1024)], "big"),
    "rk3399-cpu5-offline": ([("little", "Cortex-A53", (0, 1, 2, 3), 1416000, 381),
                             ("big", "Cortex-A72", (4,), 1800000, 1024)], "big"),
    "rk3588": ([("little", "Cortex-A55", (0, 1, 2, 3), 1800000, 397),
                ("big0", "Cortex-A76", (4, 5), 2400000, 1024),
                ("big1", "Cortex-A76", (6, 7), 2400000, 1024)], "big0"),
    "rpi4": ([("cpu", "Cortex-A72", (0, 1, 2, 3), 1500000, 1024)], "cpu"),
    "rpi5": ([("cpu", "Cortex-A76", (0, 1, 2, 3), 2400000, 1024)], "cpu"),
    "intel-i7-1260p": ([("little", "12th Gen Intel(R) Core(TM) i7-1260P E-core", tuple(range(8, 16)), 3400000, None),
                        ("big", "12th Gen Intel(R) Core(TM) i7-1260P P-core", tuple(range(0, 8)), 4700000, None)], "big"),
    "x86-vm-smt": ([("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", (0, 1, 2, 3), None, None)], "cpu"),
}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeit", *args],
                          capture_output=True, text=True, timeout=60)


class TestCpuLists:
    def test_round_trip(self):
        assert parse_cpu_list("0-3,6,8-9") == (0, 1, 2, 3, 6, 8, 9)
        assert format_cpu_list((0, 1, 2, 3, 6, 8, 9)) == "0-3,6,8-9"
        assert parse_cpu_list("") == ()

    @pytest.mark.parametrize("bad", ["a", "3-1", "1,,2", "-1"])
    def test_malformed(self, bad):
        with pytest.raises(PlatformError):
            parse_cpu_list(bad)


class TestCpuinfo:
    def test_part_table_covers_required_cores(self):
        names = set(CORE_PARTS.values())
        for core in ["A7", "A9", "A15", "A17", "A53", "A55", "A57", "A72", "A73", "A75", "A76",
                     "A77", "A78", "X1", "A510", "A710", "A715", "X3"]:
            assert f"Cortex-{core}" in names

    def test_32bit_arm_layout(self):
        text = (FIXTURES / "odroid-xu4" / "proc" / "cpuinfo").read_text()
        info = parse_cpuinfo(text)
        assert sorted(info) == list(range(8))
        assert info[0].core_type == "Cortex-A7" and info[7].core_type == "Cortex-A15"
        assert info[3].hardware == "ODROID-XU4"

    def test_unknown_part_is_named_not_dropped(self):
        info = parse_cpuinfo("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n")
        assert info[0].core_type == "ARM 0x41:0xfff"


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_fixture_clusters(board):
    topo = detect_topology(FIXTURES / board)
    clusters, fastest = EXPECTED[board]
    got = [(c.name, c.core_type, c.cpus, c.max_freq_khz, c.capacity) for c in topo.platform.clusters]
    assert got == clusters
    assert topo.platform.fastest.name == fastest


def test_fixture_every_tree_has_readme():
    for tree in FIXTURES.iterdir():
        assert (tree / "README.md").is_file(), tree


def test_offline_smt_and_arch():
    off = detect_topology(FIXTURES / "rk3399-cpu5-offline")
    assert off.offline == (5,) and off.arch == "arm"
    intel = detect_topology(FIXTURES / "intel-i7-1260p")
    assert intel.smt and intel.arch == "x86"
    assert intel.threads_per_core(intel.platform.cluster("big")) == 2
    assert intel.threads_per_core(intel.platform.cluster("little")) == 1
    vm = detect_topology(FIXTURES / "x86-vm-smt")
    assert all(r.cluster_id is None for r in vm.cpus)  # 65535 means unknown
    assert all(r.freq_domain is None for r in vm.cpus)  # no cpufreq


def test_this_host():
    topo = detect_topology()
    import os

    assert set(os.sched_getaffinity(0)) <= set(topo.platform.cpus)
    assert topo.platform.fastest.name in {c.name for c in topo.platform.clusters}
    assert all(c.core_type != "unknown" for c in topo.platform.clusters)


@pytest.mark.parametrize("board", ["odroid-xu4", "odroid-n2plus", "rk3399", "rk3588", "rpi4", "rpi5",
                                   "intel-i7-1260p"])
def test_board_file_matches_fixture(board):
    """A plan made for board:NAME elsewhere must name what the board itself detects."""
    detected = detect_topology(FIXTURES / board).platform
    known = load_board(board)
    assert [(c.name, c.core_type, c.cpus, c.max_freq_khz, c.capacity) for c in known.clusters] == [
        (c.name, c.core_type, c.cpus, c.max_freq_khz, c.capacity) for c in detected.clusters]
    assert known.source == f"board:{board}"


def test_boards_listed():
    assert {"odroid-xu4", "odroid-n2plus", "rk3399", "rk3588", "rpi4", "rpi5", "khadas-vim3",
            "hikey970"} <= set(list_boards())
    for name in list_boards():
        platform = load_board(name)
        assert platform.fastest.capacity == 1024 or platform.fastest.capacity is None


class TestSpecs:
    def test_emulate(self):
        p = load_platform("emulate:big=0@1.0,little=1@0.4")
        assert [(c.name, c.cpus, c.speed) for c in p.clusters] == [("big", (0,), 1.0), ("little", (1,), 0.4)]
        assert p.fastest.name == "big"

    def test_emulate_cpu_lists(self):
        assert parse_emulate_spec("big=0-1,3@1.0,little=2@0.5") == [
            ("big", (0, 1, 3), 1.0), ("little", (2,), 0.5)]
        assert parse_emulate_spec("a=0,2;b=1") == [("a", (0, 2), 1.0), ("b", (1,), 1.0)]

    @pytest.mark.parametrize("spec, words", [
        ("emulate:big=0@1.0,little=0@0.4", "appears twice"),
        ("emulate:big=0@0", "outside (0, 1]"),
        ("emulate:big=0@1.5", "outside (0, 1]"),
        ("emulate:big=99@1.0", "does not have online"),
        ("emulate:big=0@x", "not a number"),
        ("emulate:=0", "NAME=CPUS@FACTOR"),
        ("board:nosuch", "known boards: "),
        ("nonsense", "unknown platform spec"),
        ("missing/platform.json", "does not exist"),
    ])
    def test_bad_specs(self, spec, words):
        with pytest.raises(PlatformError, match=".*") as info:
            load_platform(spec)
        assert words in str(info.value)

    def test_file_round_trip(self, tmp_path):
        p = load_platform("emulate:big=0@1.0,little=1@0.4")
        path = tmp_path / "p.json"
        path.write_text(json.dumps(p.to_json()))
        q = load_platform(str(path))
        assert q.clusters == p.clusters

    def test_bad_file(self, tmp_path):
        path = tmp_path / "bad.json"
        path.write_text("{not json")
        with pytest.raises(PlatformError, match="not a JSON platform file"):
            load_platform(str(path))

    def test_unreadable_root(self, tmp_path):
        with pytest.raises(PlatformError, match="not a sysfs tree"):
            detect_topology(tmp_path)


class TestCli:
    def test_json_on_fixture(self):
        result = run_cli("topology", "--sysfs", str(FIXTURES / "rk3588"), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["fastest"] == "big0"
        assert [c["name"] for c in doc["clusters"]] == ["little", "big0", "big1"]
        assert doc["clusters"][0]["cpus"] == [0, 1, 2, 3]
        for key in ("name", "core_type", "cpus", "max_freq_khz", "capacity"):
            assert key in doc["clusters"][0]

    def test_table_on_host(self):
        result = run_cli("topology")
        assert result.returncode == 0, result.stderr
        assert "cluster" in result.stdout and "*" in result.stdout

    def test_board_table(self):
        result = run_cli("topology", "--platform", "board:odroid-xu4")
        assert result.returncode == 0
        assert "Cortex-A15" in result.stdout and "4-7" in result.stdout

    @pytest.mark.parametrize("args, words", [
        (("--platform", "emulate:big=0@1.0,little=0@0.4"), "appears twice"),
        (("--platform", "emulate:big=0@1.0,little=64@0.4"), "does not have online"),
        (("--platform", "emulate:big=0@1.0,little=1@1.4"), "outside (0, 1]"),
        (("--platform", "emulate:big=0@1.0,little=1@0"), "outside (0, 1]"),
        (("--platform", "board:nosuch"), "known boards: "),
        (("--sysfs", "/nonexistent/root"), "not a readable folder"),
    ])
    def test_bad_input_exits_2(self, args, words):
        result = run_cli("topology", *args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert words in result.stderr
