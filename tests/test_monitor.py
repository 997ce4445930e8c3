"""Monitoring: readings from fixture trees and this host; missing files give None, never raise."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cores.monitor import Monitor, snapshot
from cores.platform import load_platform

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"


def test_rk3588_readings():
    snap = snapshot(sysfs_root=FIXTURES / "rk3588")
    assert snap.online == tuple(range(8))
    assert [c.name for c in snap.clusters] == ["little", "big0", "big1"]
    little = snap.cluster("little")
    assert little.cur_freq_khz == 1350000 and little.governor == "schedutil"
    assert little.max_freq_khz == 1800000
    assert snap.cluster("big1").cur_freq_khz == 1800000
    assert [t.type for t in snap.thermal][:2] == ["soc-thermal", "bigcore0-thermal"]
    assert snap.max_temp_c == 45.0
    doc = snap.to_json()
    assert doc["clusters"][0]["governor"] == "schedutil"


def test_missing_files_give_none(tmp_path):
    root = tmp_path / "vm"
    shutil.copytree(FIXTURES / "x86-vm-smt", root)
    snap = snapshot(sysfs_root=root)  # no cpufreq, no thermal zones
    assert snap.clusters[0].cur_freq_khz is None and snap.clusters[0].governor is None
    assert snap.thermal == () and snap.max_temp_c is None
    # Files vanishing after the monitor was built (a CPU unplugged, a driver unloaded).
    rk = tmp_path / "rk"
    shutil.copytree(FIXTURES / "rk3399", rk)
    mon = Monitor(sysfs_root=rk)
    shutil.rmtree(rk / "sys")
    later = mon.snapshot()
    assert later.online is None
    assert all(c.cur_freq_khz is None for c in later.clusters)
    assert all(t.temp_c is None for t in later.thermal)


def test_unreadable_root_does_not_raise(tmp_path):
    snap = snapshot(sysfs_root=tmp_path / "nothing")
    assert snap.clusters == () and snap.online is None


def test_this_host_is_cheap():
    mon = Monitor(load_platform("auto"))
    snap = mon.snapshot()
    assert snap.online and set(snap.online) >= {0}
    start = time.perf_counter()
    for _ in range(200):
        mon.snapshot()
    per_call = (time.perf_counter() - start) / 200
    print(f"snapshot: {per_call * 1e6:.0f} us")
    assert per_call < 0.05  # generous: the contract is "well under a millisecond or two"


class _Speeds:
    """A speed source as the daemon hands one over (the emulation's Throttles answer the same call)."""

    def __init__(self, speeds):
        self.speeds = dict(speeds)

    def speed_now(self, cluster):
        if cluster == "broken":
            raise OSError("gone")
        return self.speeds.get(cluster)


def test_emulated_speeds_are_read_each_snapshot_and_real_boards_have_none():
    platform = load_platform("emulate:big=0@1.0,little=1@0.4")
    source = _Speeds({"little": 0.4})
    mon = Monitor(platform, speeds=source)
    assert mon.snapshot().cluster("little").speed == 0.4 and mon.snapshot().cluster("big").speed is None
    source.speeds["little"] = 0.2  # the quota was cut: the next reading says so
    snap = mon.snapshot()
    assert snap.cluster("little").speed == 0.2 and snap.to_json()["clusters"][1]["speed"] == 0.2
    # a real board's readings are unchanged: no speed, and no "speed" key in the JSON
    rk = snapshot(sysfs_root=FIXTURES / "rk3588")
    assert all(c.speed is None for c in rk.clusters) and "speed" not in rk.to_json()["clusters"][0]


def test_a_failing_speed_source_gives_none():
    platform = load_platform("emulate:broken=0@0.5")
    assert Monitor(platform, speeds=_Speeds({})).snapshot().cluster("broken").speed is None


def test_implausible_temperatures_are_no_reading(tmp_path):
    """A driver's failure sentinel (2147483647 millidegrees) must not become a 2147483 C maximum."""
    root = tmp_path / "rk"
    shutil.copytree(FIXTURES / "rk3399", root)
    zones = root / "sys" / "class" / "thermal"
    (zones / "thermal_zone0" / "temp").write_text("2147483647\n")
    (zones / "thermal_zone1" / "temp").write_text("-40000\n")  # cold, but a real reading
    snap = snapshot(sysfs_root=root)
    assert [t.temp_c for t in snap.thermal] == [None, -40.0]
    assert snap.max_temp_c == -40.0
    (zones / "thermal_zone1" / "temp").write_text("-273000\n")
    assert snapshot(sysfs_root=root).max_temp_c is None


def test_a_zone_reached_twice_is_read_once(tmp_path):
    root = tmp_path / "rk"
    shutil.copytree(FIXTURES / "rk3399", root)
    zones = root / "sys" / "class" / "thermal"
    (zones / "thermal_zone2").symlink_to("thermal_zone0")
    (zones / "thermal_zone3").symlink_to("thermal_zone3")  # a loop: kept, reads nothing
    snap = snapshot(sysfs_root=root)
    assert [t.zone for t in snap.thermal] == ["thermal_zone0", "thermal_zone1", "thermal_zone3"]
    assert [t.temp_c for t in snap.thermal] == [41.25, 40.625, None]
