"""The cluster bench's instrument works: one quick window of each configuration, for real.

It runs ``bench.cluster --quick`` (its own Redis and PostgreSQL, one server, then three cluster
nodes with clients on every node, then on the two non-leaders only; a load generator; 3 s
windows) and checks that every window measured what the report
is made of (cycles, CPU of every server process, the leader's and the edges' CPU, Redis
commands in the cluster and none in the single node, PostgreSQL commits, relay latencies),
that every completed cycle left its final record, that the result is stamped and the report
states its verdicts. It asserts nothing about the targets (nor any wall-clock figure).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from bench import BENCHES, cluster


def test_cluster_bench_quick_measures_both_configurations(tmp_path: Path) -> None:
    assert "bench.cluster" in BENCHES
    before = {p.pid for p in psutil.Process().children()}
    assert cluster.main(["--quick", "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "cluster.json").read_text())
    assert results["machine"]["commit"] and results["calibration"]["ms_per_frame"] > 0
    windows = results["windows"]
    assert [(w["mode"], w["config"]) for w in windows] == [
        (mode, config) for mode in ("cycles", "paced") for config in ("single", "cluster", "edges")]
    for w in windows:
        assert w["cycles"] > 0 and w["server_cpu_ms_per_cycle"] > 0, w
        assert w["pg_commits_per_cycle"] > 0 and w["pg_write_xacts_per_cycle"] > 0, w
        assert w["records"]["completed_cycles"] > 0
        assert w["records"]["final_records"] == w["records"]["completed_cycles"], w
        assert w["exit_statuses"] == [0] * w["nodes"], w
        if w["config"] == "single":
            assert w["nodes"] == 1 and w["leader"] is None
            assert w["redis_cmds_per_cycle"] == 0  # a single node never talks to Redis
        else:
            assert w["nodes"] == 3 and w["leader"] in ("n1", "n2", "n3")
            assert w["redis_cmds_per_cycle"] > 0
            assert w["leader_cpu_ms_per_cycle"] > 0 and w["edge_cpu_ms_per_cycle"] > 0
            assert sorted(w["node_cpu_ms_per_cycle"]) == ["n1", "n2", "n3"]
        if w["mode"] == "paced":
            assert w["relay_samples"] > 0 and 0 < w["relay_p50_ms"] <= w["relay_p99_ms"]
    assert results["redis_ceiling"]["ops_per_s"] > 0
    assert results["pg_ceiling"]["commits_per_s"] > 0
    cap = results["capacity"]
    assert cap["cluster_ceiling"] == min(
        cap["leader_core_ceiling"], cap["redis_ceiling"], cap["pg_ceiling"])
    assert cap["core_only_ceiling"] > 0
    targets = results["summary"]["targets"]
    assert targets["records"]["met"]
    text = (tmp_path / "cluster.md").read_text()
    assert results["machine"]["commit"] in text and "calibration: VP8 720p encode" in text
    met = "met" if targets["cpu_ratio"]["met"] else "MISSED"
    assert f"(target <= 2): {met}" in text
    # Every process the bench started has ended (direct children: see the stack smoke test).
    after = {p.pid for p in psutil.Process().children()}
    assert after <= before, [psutil.Process(pid).cmdline() for pid in after - before]
