"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` completes and writes valid
JSON with every scenario. No timing is asserted (the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["seq_send", "redis", "pipelined_send", "deliver", "get_token", "idle", "deep_mailbox", "scaling"]


def test_quick_run_writes_json_with_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    for name in SCENARIOS:
        assert name in doc["scenarios"], name
    for name in SCENARIOS:
        if name == "redis":
            continue
        entry = doc["scenarios"][name]
        assert set(entry) >= {"parrot", "floor", "ratio_to_floor"}, name
    assert len(doc["targets"]) == 10  # 8 + the memory scenario's 2 (issue 14), n/a unless it ran
    assert "memory" not in doc["scenarios"]  # opt-in: --only memory


def test_quick_memory_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "memory", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())["scenarios"]["memory"]["parrot"]
    for key in ("rss_mib_100B_0", "rss_per_msg_bytes_100B_1000", "startup_s_100B_1000", "rss_per_key_bytes",
                "deep_over_shallow"):
        assert figures[key]["median"] > 0, key
