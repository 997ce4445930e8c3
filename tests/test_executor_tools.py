"""The executor's tools run end to end: the transfer benchmark and a short soak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_transfer_bench_json_is_a_hop_table_the_planner_reads(tmp_path):
    result = tool("tools/transfer_bench.py", "--sizes", "4096,819200", "--iters", "40", "--no-queue", "--json")
    assert result.returncode in (0, 1), result.stderr  # 1 = over the limit on a very busy host
    doc = json.loads(result.stdout)
    assert [row["bytes"] for row in doc["rows"]] == [4096, 819200]
    assert all(row["hop_ms"] > 0 for row in doc["rows"])
    assert doc["target"]["bytes"] == 819200 and doc["target"]["ok"] == (result.returncode == 0)
    from pipeit.transfer import load_hop_model

    path = tmp_path / "hops.json"
    path.write_text(result.stdout)
    model = load_hop_model(path)
    assert model.ms_per_byte > 0


def test_transfer_bench_refuses_bad_sizes():
    result = tool("tools/transfer_bench.py", "--sizes", "four")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_short_soak_keeps_every_frame_and_output(zoo_models):
    model = zoo_models("squeezenet")
    result = tool("tools/soak.py", "--model", str(model), "--frames", "40", "--warmup", "10", "--json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["frames_done"] == 50 and doc["mismatches"] == 0
    assert len(doc["cuts"]) == 2  # three stages
    assert doc["rss_mb"]["end"] > 0
