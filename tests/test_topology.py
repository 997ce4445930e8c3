"""Topology detection on fixture sysfs trees, board files, platform specs and `pipeit topology`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cores.boards import list_boards, load_board
from cores.cputypes import CORE_PARTS, parse_cpuinfo, processor_from_midr
from cores.errors import PlatformError
from cores.model import Cluster, Platform
from cores.platform import allowed_cpus_only, load_platform, parse_emulate_spec
from cores.sysfs import format_cpu_list, parse_cpu_list
from cores.topology import detect_topology
from tests.fixtures import make_sysfs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"
CPU_DIR = "sys/devices/system/cpu"

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


def run_cli(*args, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "pipeit", *args],
                          capture_output=True, text=True, timeout=60, preexec_fn=preexec_fn)


class TestCpuLists:
    def test_round_trip(self):
        assert parse_cpu_list("0-3,6,8-9") == (0, 1, 2, 3, 6, 8, 9)
        assert format_cpu_list((0, 1, 2, 3, 6, 8, 9)) == "0-3,6,8-9"
        assert parse_cpu_list("") == ()

    @pytest.mark.parametrize("bad", ["a", "3-1", "1,,2", "-1", "0_1", "1_0", "0-1_0", "+1", "٣"])
    def test_malformed(self, bad):
        with pytest.raises(PlatformError):
            parse_cpu_list(bad)

    @pytest.mark.parametrize("bad", ["65536", "0-70000", "0-3,99999999"])
    def test_ids_beyond_the_limit_are_refused(self, bad):
        """``0-99999999`` once built a set of 10^8 ids (MemoryError); ids past 65535 are no CPU."""
        with pytest.raises(PlatformError, match="beyond the largest CPU id 65535"):
            parse_cpu_list(bad)
        assert parse_cpu_list("65534-65535") == (65534, 65535)


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

    def test_midr_el1_names_the_core(self):
        """sysfs ``midr_el1``: implementer in bits 31..24, part in 15..4, named by the cpuinfo table."""
        assert processor_from_midr(4, "0x00000000410fd080\n").core_type == "Cortex-A72"
        assert processor_from_midr(0, "0x00000000411fd050").core_type == "Cortex-A55"
        qualcomm = processor_from_midr(1, "0x00000000518f8050")
        assert (qualcomm.implementer, qualcomm.part) == (0x51, 0x805)
        assert processor_from_midr(2, "0x00000000480fd010").core_type == "ARM 0x48:0xd01"
        for junk in (None, "", "n/a", "0x0"):
            assert processor_from_midr(3, junk) is None


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


def _copy(tmp_path: Path, fixture: str) -> Path:
    root = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, root)
    return root


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _shape(root: Path):
    """(name, core type, cpus) per cluster, and the fastest cluster's name."""
    platform = detect_topology(root).platform
    return [(c.name, c.core_type, c.cpus) for c in platform.clusters], platform.fastest.name


def _keep_cpuinfo(root: Path, cpus) -> None:
    """Rewrite proc/cpuinfo with only the blocks of ``cpus`` (and the trailing Hardware block)."""
    path = root / "proc" / "cpuinfo"
    blocks = path.read_text().strip().split("\n\n")
    kept = [b for b in blocks if not b.startswith("processor") or int(b.split(":")[1].split()[0]) in cpus]
    path.write_text("\n\n".join(kept) + "\n")


def _set_max_freq(root: Path, cpus, khz: int) -> None:
    for cpu in cpus:
        _write(root / CPU_DIR / f"cpu{cpu}/cpufreq/cpuinfo_max_freq", str(khz))
        policy = root / CPU_DIR / f"cpufreq/policy{cpu}"
        if policy.is_dir():
            _write(policy / "cpuinfo_max_freq", str(khz))


def _drop_hybrid_devices(root: Path) -> None:
    """A kernel before 5.13: no /sys/devices/cpu_core and cpu_atom."""
    for kind in ("cpu_core", "cpu_atom"):
        shutil.rmtree(root / "sys" / "devices" / kind)


A55, A76 = "Cortex-A55", "Cortex-A76"
RK3588_SHAPE = [("little", A55, (0, 1, 2, 3)), ("big0", A76, (4, 5)), ("big1", A76, (6, 7))]


class TestWithoutCpuinfo:
    """Trees whose /proc/cpuinfo is missing or lists only some CPUs."""

    def test_midr_names_cores_and_arm_grouping_applies(self, tmp_path):
        """RK3588 with no cpuinfo, no cpufreq, no capacity: MIDR names the cores, cluster_id splits them."""
        root = _copy(tmp_path, "rk3588")
        (root / "proc" / "cpuinfo").unlink()
        shutil.rmtree(root / CPU_DIR / "cpufreq")
        for cpu in range(8):
            (root / CPU_DIR / f"cpu{cpu}/cpu_capacity").unlink()
            shutil.rmtree(root / CPU_DIR / f"cpu{cpu}/cpufreq")
            part = 0xD05 if cpu < 4 else 0xD0B
            _write(root / CPU_DIR / f"cpu{cpu}/regs/identification/midr_el1", f"0x00000000410f{part:03x}0")
        topo = detect_topology(root)
        assert topo.arch == "arm"
        assert _shape(root) == (RK3588_SHAPE, "big0")

    def test_shared_domains_split_an_unknown_arch(self, tmp_path):
        """No cpuinfo and no MIDR (arch unknown): the three cpufreq policies still make three clusters."""
        root = _copy(tmp_path, "rk3588")
        (root / "proc" / "cpuinfo").unlink()
        topo = detect_topology(root)
        assert topo.arch == "other"
        got = [(c.name, c.core_type, c.cpus, c.capacity) for c in topo.platform.clusters]
        assert got == [("little", "unknown", (0, 1, 2, 3), 397), ("big0", "unknown", (4, 5), 1024),
                       ("big1", "unknown", (6, 7), 1024)]
        assert topo.platform.fastest.name == "big0"

    def test_per_core_cluster_ids_of_an_unknown_arch_are_ignored(self, tmp_path):
        """An x86 tree without cpuinfo: per-core L2 ids must not make each P-core a cluster."""
        root = _copy(tmp_path, "intel-i7-1260p")
        (root / "proc" / "cpuinfo").unlink()
        _drop_hybrid_devices(root)
        topo = detect_topology(root)
        assert topo.arch == "other"
        assert _shape(root) == ([("little", "unknown", tuple(range(8, 16))),
                                 ("big", "unknown", tuple(range(0, 8)))], "big")

    def test_partial_arm_cpuinfo_is_not_borrowed(self, tmp_path):
        """cpuinfo lists only the XU4's A7s: the A15s are not A7s; their MIDR names them when present."""
        root = _copy(tmp_path, "odroid-xu4")
        _keep_cpuinfo(root, {0, 1, 2, 3})
        little = ("little", "Cortex-A7", (0, 1, 2, 3))
        assert _shape(root) == ([little, ("big", "unknown", (4, 5, 6, 7))], "big")
        for cpu in range(4, 8):
            _write(root / CPU_DIR / f"cpu{cpu}/regs/identification/midr_el1", "0x00000000412fc0f3")
        assert _shape(root) == ([little, ("big", "Cortex-A15", (4, 5, 6, 7))], "big")

    def test_partial_x86_cpuinfo_still_borrows_the_one_model(self, tmp_path):
        root = _copy(tmp_path, "x86-vm-smt")
        _keep_cpuinfo(root, {0, 1, 2})
        assert _shape(root) == ([("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", (0, 1, 2, 3))], "cpu")

    def test_vendor_id_makes_a_generic_model_name_x86(self, tmp_path):
        root = _copy(tmp_path, "x86-vm-smt")
        cpuinfo = root / "proc" / "cpuinfo"
        cpuinfo.write_text(cpuinfo.read_text().replace(
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "QEMU Virtual CPU version 2.5+"))
        assert detect_topology(root).arch == "x86"


def _x86_board(clusters, model):
    return dict(cpuinfo="x86", per_cpu_policy=True, model_name=model, capacity_file=False,
                clusters=clusters, thermal=[], readme="built by a test")


class TestClockGaps:
    """Cores the kernel names alike and does not put in separate domains split on a >15 % clock gap."""

    def test_amd_zen5_and_zen5c(self, tmp_path):
        """Strix Point: Zen5 5.1 GHz on 0-7 and Zen5c 3.3 GHz on 8-23, one model name, per-CPU policies."""
        model = "AMD Ryzen AI 9 HX 370 w/ Radeon 890M"
        board = _x86_board([make_sysfs.cl(range(0, 8), None, 5100000, None, threads=2),
                            make_sysfs.cl(range(8, 24), None, 3300000, None, cluster_id=1, threads=2)], model)
        root = make_sysfs.write_board("amd-strix", board, tmp_path)
        assert detect_topology(root).arch == "x86"
        assert _shape(root) == ([("little", model, tuple(range(8, 24))), ("big", model, tuple(range(0, 8)))], "big")

    def test_alder_lake_on_a_kernel_without_hybrid_devices(self, tmp_path):
        root = _copy(tmp_path, "intel-i7-1260p")
        _drop_hybrid_devices(root)
        model = "12th Gen Intel(R) Core(TM) i7-1260P"
        assert _shape(root) == ([("little", model, tuple(range(8, 16))), ("big", model, tuple(range(0, 8)))], "big")

    def test_favored_cores_stay_in_their_cluster(self, tmp_path):
        """Intel ITMT: two P-cores at 4.8 GHz, the rest at 4.7 (2 %), are one cluster."""
        root = _copy(tmp_path, "intel-i7-1260p")
        _drop_hybrid_devices(root)
        _set_max_freq(root, (0, 1), 4800000)
        clusters = detect_topology(root).platform.clusters
        assert [(c.cpus, c.max_freq_khz) for c in clusters] == [(tuple(range(8, 16)), 3400000),
                                                                  (tuple(range(0, 8)), 4800000)]

    def test_low_power_e_cores_split_from_e_cores(self, tmp_path):
        """Meteor Lake: LP E-cores at 2.5 GHz share cpu_atom with E-cores at 3.4 GHz."""
        root = _copy(tmp_path, "intel-i7-1260p")
        _set_max_freq(root, (14, 15), 2500000)
        model = "12th Gen Intel(R) Core(TM) i7-1260P"
        assert _shape(root) == ([("little", f"{model} E-core", (14, 15)),
                                 ("big0", f"{model} E-core", tuple(range(8, 14))),
                                 ("big1", f"{model} P-core", tuple(range(0, 8)))], "big1")

    def test_arm_one_core_type_two_clocks(self, tmp_path):
        """A53 x4 at 1.4 GHz + A53 x4 at 2.0 GHz, per-CPU policies, cluster_id -1 (unknown)."""
        board = dict(cpuinfo="arm64", per_cpu_policy=True, thermal=[], readme="built by a test",
                     clusters=[make_sysfs.cl(range(0, 4), 0xD03, 1400000, 716, cluster_id=-1),
                               make_sysfs.cl(range(4, 8), 0xD03, 2000000, 1024, cluster_id=-1)])
        root = make_sysfs.write_board("a53x8", board, tmp_path)
        assert _shape(root) == ([("little", "Cortex-A53", (0, 1, 2, 3)),
                                 ("big", "Cortex-A53", (4, 5, 6, 7))], "big")

    def test_old_kernel_per_cpu_related_cpus_is_a_domain(self, tmp_path):
        """Before Linux 4.3 there are no cpufreq/policy* folders, only cpuN/cpufreq/related_cpus."""
        root = _copy(tmp_path, "rk3588")
        shutil.rmtree(root / CPU_DIR / "cpufreq")
        for cpu in range(8):
            (root / CPU_DIR / f"cpu{cpu}/topology/cluster_id").unlink()
            related = "0-3" if cpu < 4 else ("4-5" if cpu < 6 else "6-7")
            _write(root / CPU_DIR / f"cpu{cpu}/cpufreq/related_cpus", related)
        assert _shape(root) == (RK3588_SHAPE, "big0")


class TestFastest:
    def test_core_type_decides_without_capacity_and_clock(self, tmp_path):
        """RK3399 without cpufreq and cpu_capacity: detection calls the A72s big, and so must fastest."""
        root = _copy(tmp_path, "rk3399")
        shutil.rmtree(root / CPU_DIR / "cpufreq")
        for cpu in range(6):
            (root / CPU_DIR / f"cpu{cpu}/cpu_capacity").unlink()
            shutil.rmtree(root / CPU_DIR / f"cpu{cpu}/cpufreq")
        assert _shape(root) == ([("little", "Cortex-A53", (0, 1, 2, 3)),
                                 ("big", "Cortex-A72", (4, 5))], "big")

    def test_core_type_ranks_after_capacity_and_clock(self):
        little = Cluster("little", "Cortex-A53", (0, 1, 2, 3))
        big = Cluster("big", "Cortex-A72", (4, 5))
        assert Platform((little, big)).fastest.name == "big"
        # a measured capacity, then a clock, still win over the table
        assert Platform((replace(little, capacity=1024), replace(big, capacity=800))).fastest.name == "little"
        assert Platform((replace(little, max_freq_khz=2000000), big)).fastest.name == "little"
        # an emulated speed factor comes first
        assert Platform((little, replace(big, speed=0.5))).fastest.name == "little"


class TestAffinity:
    def test_clusters_keep_only_allowed_cpus(self):
        platform = detect_topology(FIXTURES / "rk3588").platform
        narrowed = allowed_cpus_only(platform, {4, 5, 6})
        assert [(c.name, c.cpus) for c in narrowed.clusters] == [("big0", (4, 5)), ("big1", (6,))]
        assert ("outside_affinity", "0-3,7") in narrowed.extra
        assert allowed_cpus_only(platform, set(range(8))) is platform

    def test_nothing_allowed_is_one_clear_error(self):
        platform = detect_topology(FIXTURES / "rk3588").platform
        with pytest.raises(PlatformError, match="none of which is an online CPU here"):
            allowed_cpus_only(platform, {12, 13})

    def test_cli_under_a_narrowed_affinity(self):
        """`taskset -c N pipeit topology --json`: only CPU N is listed (a plan there must run there)."""
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            pytest.skip("needs two allowed CPUs to narrow the affinity")
        only = allowed[-1]
        result = run_cli("topology", "--json", preexec_fn=lambda: os.sched_setaffinity(0, {only}))
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        cpu_lists = [c["cpus"] for c in doc["clusters"] if c.get("kind", "cpu") == "cpu"]
        assert cpu_lists == [[only]]
        assert doc["fastest"] in {c["name"] for c in doc["clusters"]}
        left_out = sorted(set(parse_cpu_list(doc["outside_affinity"])))
        assert only not in left_out and set(left_out) <= set(allowed)
        text = run_cli("topology", preexec_fn=lambda: os.sched_setaffinity(0, {only}))
        assert text.returncode == 0 and "left out (this process may not run there): CPUs" in text.stdout


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
        ("emulate:big=0@0", "outside [0.01, 1]"),
        ("emulate:big=0@1.5", "outside [0.01, 1]"),
        ("emulate:big=0@5e-324", "outside [0.01, 1]"),  # a denormal once overflowed the padding timers
        ("emulate:big=\u0663", "malformed CPU list"),  # an Arabic-Indic 3: int() took it for CPU 3
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

    def test_many_missing_cpus_are_shown_as_ranges(self):
        """``emulate:big=0-9999`` once listed all ~10000 missing CPU numbers in one message."""
        with pytest.raises(PlatformError) as info:
            load_platform("emulate:big=0-9999")
        message = str(info.value)
        assert "does not have online" in message and "-9999" in message
        assert len(message) < 300

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

    def test_a_tree_shows_its_offline_cpus_and_smt(self):
        """The detection's own facts were shown for ``auto`` alone, never for a ``--sysfs`` tree."""
        text = run_cli("topology", "--sysfs", str(FIXTURES / "rk3399-cpu5-offline")).stdout
        assert "offline CPUs: 5" in text
        doc = json.loads(run_cli("topology", "--sysfs", str(FIXTURES / "intel-i7-1260p"), "--json").stdout)
        assert doc["smt"] is True and doc["arch"] == "x86" and doc["offline"] == []
        assert {c["name"]: c["threads_per_core"] for c in doc["clusters"]} == {"little": 1, "big": 2}

    def test_a_saved_document_gets_no_facts_of_another_tree(self, tmp_path):
        """``topology --json`` writes source "auto": read back, it was given this tree's offline CPUs."""
        saved = tmp_path / "board.json"
        saved.write_text(run_cli("topology", "--sysfs", str(FIXTURES / "rpi4"), "--json").stdout)
        doc = json.loads(run_cli("topology", "--platform", str(saved), "--json").stdout)
        assert [c["cpus"] for c in doc["clusters"]] == [[0, 1, 2, 3]]
        assert not {"offline", "smt", "arch"} & set(doc)
        # a tree beside a file or a board, which describe their own clusters, was ignored without a word
        for platform in (str(saved), "board:rk3588"):
            done = run_cli("topology", "--platform", platform, "--sysfs", str(FIXTURES / "rk3399-cpu5-offline"))
            assert done.returncode == 2 and "--sysfs is read for --platform auto or emulate" in done.stderr
            assert len(done.stderr.splitlines()) == 1

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
        (("--platform", "emulate:big=0@1.0,little=1@1.4"), "outside [0.01, 1]"),
        (("--platform", "emulate:big=0@1.0,little=1@0"), "outside [0.01, 1]"),
        (("--platform", "board:nosuch"), "known boards: "),
        (("--sysfs", "/nonexistent/root"), "not a readable folder"),
        (("--platform", "emulate:big=0-99999999"), "beyond the largest CPU id"),
        (("--platform", "emulate:big=0_1"), "malformed CPU list '0_1'"),  # was CPU 1 (int() takes "0_1")
        (("--platform", "emulate:big=0@\u0661"), "is not a number"),      # was 1.0 (float() takes "١")
        (("--platform", "emulate:big=0@.5_0"), "is not a number"),
        (("--platform", "emulate:big=0@nan"), "is not a number"),
    ])
    def test_bad_input_exits_2(self, args, words):
        result = run_cli("topology", *args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert words in result.stderr


class TestTreesThatLie:
    """A --sysfs tree is input like any file: special files, CPUs without folders, impossible values."""

    def test_a_fifo_or_dev_zero_in_the_tree_is_a_missing_value(self, tmp_path):
        root = _copy(tmp_path, "rk3588")
        capacity = root / CPU_DIR / "cpu0/cpu_capacity"
        capacity.unlink()
        os.mkfifo(capacity)  # a plain read would wait for a writer forever
        cpuinfo = root / "proc" / "cpuinfo"
        cpuinfo.unlink()
        cpuinfo.symlink_to("/dev/zero")  # a plain read would fill memory
        platform = detect_topology(root).platform
        assert platform.cpus == tuple(range(8))

    def test_a_cpu_listed_online_without_a_folder_makes_no_cluster(self, tmp_path):
        root = _copy(tmp_path, "rk3588")
        _write(root / CPU_DIR / "online", "0-7,12")
        shape, fastest = _shape(root)
        assert shape == RK3588_SHAPE and fastest == "big0"

    def test_capacities_and_clocks_no_cpu_has_are_unknown(self, tmp_path):
        root = _copy(tmp_path, "rk3588")
        _write(root / CPU_DIR / "cpu0/cpu_capacity", str(10 ** 30))
        _set_max_freq(root, [1], 10 ** 20)
        platform = detect_topology(root).platform
        little = platform.cluster("little")
        assert little.capacity is not None and little.capacity <= 1024
        Platform.from_json(platform.to_json())  # what topology --json writes loads back
