"""cores.power: the per-board power files, their validation, and average power over a run."""

import json
import math

import pytest

from cores.boards import list_boards, load_board
from cores.errors import CoresError
from cores.model import Cluster, Platform
from cores.platform import load_platform
from cores.power import (
    GENERIC_CORE,
    GENERIC_GPU,
    POWER_DIR,
    SPEED_EXPONENT,
    PowerError,
    average_power_w,
    board_power,
    list_power_boards,
    load_power_file,
    parse_power_document,
    power_for_platform,
)


def good_doc():
    return {
        "version": 1, "board": "test", "description": "a test board",
        "cores": {"Cortex-A15": {"active_w": 1.3, "idle_w": 0.25, "freq_khz": 2000000,
                                 "source": "a paper", "estimate": True},
                  "Cortex-A7": {"active_w": 0.35, "idle_w": 0.07, "source": "a paper", "estimate": True}},
        "gpu": {"name": "Mali", "active_w": 2.0, "idle_w": 0.1, "source": "a review", "estimate": True},
    }


class TestShippedFiles:
    def test_every_board_has_a_power_file_and_every_file_a_board(self):
        assert list_power_boards() == list_boards()

    @pytest.mark.parametrize("name", list_boards())
    def test_each_file_loads_and_covers_its_boards_core_types(self, name):
        power = board_power(name)
        assert power.board == name
        types = {c.core_type for c in load_board(name).cpu_clusters}
        assert types <= {t for t, _ in power.cores}
        for _, unit in power.cores:
            assert 0 < unit.idle_w < unit.active_w < 10 and unit.estimate and unit.source
        assert power.gpu is None or power.gpu.estimate  # every shipped figure is an estimate
        # a board:NAME platform uses the file's own figures, no placeholder
        chosen = power_for_platform(load_board(name))
        assert chosen.board == name and not chosen.placeholder

    def test_big_cores_draw_more_than_little_ones(self):
        for name in list_boards():
            platform = load_board(name)
            if len(platform.cpu_clusters) < 2:
                continue
            power = power_for_platform(platform)
            by_capacity = sorted(platform.cpu_clusters, key=lambda c: (c.capacity or 0, c.max_freq_khz or 0))
            assert power.of(by_capacity[0].name).active_w < power.of(by_capacity[-1].name).active_w, name

    def test_the_files_are_what_the_loader_reads(self):
        for path in sorted(POWER_DIR.glob("*.json")):
            assert load_power_file(path) == board_power(path.stem)


class TestMalformedFilesAreRefused:
    @pytest.mark.parametrize("edit, message", [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.pop("board"), "'board'"),
        (lambda d: d.update(cores={}), "'cores'"),
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d["cores"]["Cortex-A7"].pop("source"), "source"),
        (lambda d: d["cores"]["Cortex-A7"].update(source="  "), "source"),
        (lambda d: d["cores"]["Cortex-A7"].update(estimate="yes"), "estimate"),
        (lambda d: d["cores"]["Cortex-A7"].update(estimate=1), "estimate"),
        (lambda d: d["cores"]["Cortex-A7"].pop("estimate"), "estimate"),
        (lambda d: d["cores"]["Cortex-A7"].update(idle_w=0.5), "idle_w <= active_w"),
        (lambda d: d["cores"]["Cortex-A7"].update(active_w=0), "active_w > 0"),
        (lambda d: d["cores"]["Cortex-A7"].update(idle_w=-0.1), "idle_w"),
        (lambda d: d["cores"]["Cortex-A7"].update(active_w="1.0"), "finite number"),
        (lambda d: d["cores"]["Cortex-A7"].update(active_w=True), "finite number"),
        (lambda d: d["cores"]["Cortex-A7"].update(active_w=float("nan")), "finite number"),
        (lambda d: d["cores"]["Cortex-A7"].update(active_w=float("inf")), "finite number"),
        (lambda d: d["cores"]["Cortex-A7"].update(freq_khz=-5), "freq_khz"),
        (lambda d: d["cores"]["Cortex-A7"].update(watts=1), "unknown key 'watts'"),
        (lambda d: d["cores"]["Cortex-A7"].update(name="x"), "unknown key 'name'"),
        (lambda d: d.update(gpu=[1, 2]), "gpu"),
        (lambda d: d["gpu"].update(idle_w=3.0), "gpu"),
    ])
    def test_one_clear_line(self, tmp_path, edit, message):
        doc = good_doc()
        edit(doc)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(doc))  # NaN/inf are written as JSON's NaN/Infinity, which Python reads back
        with pytest.raises(PowerError) as err:
            load_power_file(path)
        text = str(err.value)
        assert message in text and "\n" not in text and str(path) in text
        assert isinstance(err.value, CoresError)  # the CLI turns it into one line and exit 2

    def test_the_good_document_loads(self):
        power = parse_power_document(good_doc())
        assert power.core("Cortex-A7").active_w == 0.35 and power.gpu.active_w == 2.0 and power.gpu_name == "Mali"
        assert power.core("Cortex-A53") is None

    @pytest.mark.parametrize("text, message", [("", "not JSON"), ("{", "not JSON"), ("[]", "JSON object")])
    def test_not_a_power_document(self, tmp_path, text, message):
        path = tmp_path / "p.json"
        path.write_text(text)
        with pytest.raises(PowerError, match=message):
            load_power_file(path)

    def test_missing_file_and_unknown_board(self, tmp_path):
        with pytest.raises(PowerError, match="cannot read"):
            load_power_file(tmp_path / "none.json")
        with pytest.raises(PowerError, match="boards with one: .*odroid-xu4"):
            board_power("nope")
        with pytest.raises(PowerError):
            board_power("../boards/rpi4")


class TestPlatformsWithoutAFile:
    def test_emulated_clusters_get_the_scaled_placeholder(self):
        platform = load_platform("emulate:big=0@1.0,little=1@0.4")
        power = power_for_platform(platform)
        assert power.board is None and power.placeholder
        big, little = power.of("big"), power.of("little")
        assert big.active_w == GENERIC_CORE.active_w and big.idle_w == GENERIC_CORE.idle_w
        assert little.active_w == pytest.approx(GENERIC_CORE.active_w * 0.4 ** SPEED_EXPONENT)
        assert little.idle_w == pytest.approx(GENERIC_CORE.idle_w * 0.4 ** SPEED_EXPONENT)
        assert "placeholder" in little.source and "0.4" in little.source

    def test_a_detected_platform_with_a_known_layout_uses_that_board(self):
        xu4 = load_board("odroid-xu4")
        detected = Platform(clusters=xu4.clusters, source="auto")
        assert power_for_platform(detected).board == "odroid-xu4"

    def test_a_gpu_cluster_takes_the_boards_gpu_or_the_placeholder(self):
        xu4 = load_board("odroid-xu4")
        gpu = Cluster("gpu", "Mali-T628", (0,), kind="gpu")
        with_gpu = Platform(clusters=xu4.clusters + (gpu,), source="board:odroid-xu4")
        assert power_for_platform(with_gpu).of("gpu").active_w == board_power("odroid-xu4").gpu.active_w
        emulated = Platform(clusters=(Cluster("big", "x", (0,)), gpu), source="emulate:big=0@1.0,gpu=0")
        assert power_for_platform(emulated).of("gpu") == GENERIC_GPU

    def test_a_users_file_overrides(self, tmp_path):
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(good_doc()))
        xu4 = load_board("odroid-xu4")
        power = power_for_platform(xu4, table=load_power_file(path))
        assert power.board == "test" and power.of("big").active_w == 1.3
        assert power.estimated and power.to_json()["estimate"] is True

    def test_a_measured_file_says_so(self, tmp_path):
        doc = good_doc()
        for unit in [*doc["cores"].values(), doc["gpu"]]:
            unit["estimate"] = False  # the user measured these on their board
        path = tmp_path / "measured.json"
        path.write_text(json.dumps(doc))
        power = power_for_platform(load_board("odroid-xu4"), table=load_power_file(path))
        assert not power.placeholder and not power.estimated and power.to_json()["estimate"] is False
        assert not power.of("little").estimate
        # one figure left as an estimate makes the whole an estimate
        doc["cores"]["Cortex-A7"]["estimate"] = True
        path.write_text(json.dumps(doc))
        assert power_for_platform(load_board("odroid-xu4"), table=load_power_file(path)).estimated


class TestAveragePower:
    def test_idle_busy_and_clipping(self):
        platform = load_board("odroid-xu4")
        power = power_for_platform(platform)
        big, little = power.of("big"), power.of("little")
        idle = 4 * big.idle_w + 4 * little.idle_w
        assert average_power_w(power, platform, {}) == pytest.approx(idle)
        one_big = average_power_w(power, platform, {4: 1.0})
        assert one_big == pytest.approx(idle + big.active_w - big.idle_w)
        assert average_power_w(power, platform, {4: 3.0}) == pytest.approx(one_big)  # a core is busy at most 100 %
        half = average_power_w(power, platform, {4: 0.5, 0: 0.5})
        assert half == pytest.approx(idle + 0.5 * (big.active_w - big.idle_w) + 0.5 * (little.active_w - little.idle_w))
        everything = average_power_w(power, platform, {c: 1.0 for c in platform.cpus})
        assert everything == pytest.approx(4 * big.active_w + 4 * little.active_w)

    def test_the_gpu_counts_idle_unless_busy(self):
        xu4 = load_board("odroid-xu4")
        platform = Platform(clusters=xu4.clusters + (Cluster("gpu", "Mali", (0,), kind="gpu"),), source="board:odroid-xu4")
        power = power_for_platform(platform)
        cpu_idle = average_power_w(power_for_platform(xu4), xu4, {})
        gpu = power.of("gpu")
        assert average_power_w(power, platform, {}) == pytest.approx(cpu_idle + gpu.idle_w)
        assert average_power_w(power, platform, {}, {"gpu": 0.25}) == pytest.approx(
            cpu_idle + gpu.idle_w + 0.25 * (gpu.active_w - gpu.idle_w))
        assert math.isfinite(average_power_w(power, platform, {0: 1.0}, {"gpu": 1.0}))
