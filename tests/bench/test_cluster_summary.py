"""bench.cluster's arithmetic: medians and ranges per configuration, ratios, verdicts, capacity;
and its Redis instrument (a real redis-server: start, RESP replies, INFO counters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.cluster import _Redis, capacity, render_md, summarize


def window(config: str, mode: str, cpu_ms: float, *, cycles_per_s: float = 400.0,
           leader: float | None = None, edge: float | None = None, redis_cmds: float = 0.0,
           commits: float = 0.4, p99: float | None = None, final: int = 100,
           completed: int = 100) -> dict[str, Any]:
    w: dict[str, Any] = {
        "config": config, "mode": mode, "cycles_per_s": cycles_per_s,
        "server_cpu_ms_per_cycle": cpu_ms, "redis_cmds_per_cycle": redis_cmds,
        "redis_cpu_ms_per_cycle": redis_cmds * 0.01, "pg_commits_per_cycle": commits,
        "records": {"completed_cycles": completed, "final_records": final},
    }
    if leader is not None:
        w["leader_cpu_ms_per_cycle"] = leader
        w["edge_cpu_ms_per_cycle"] = edge
        w["leader_cpu_marginal_ms_per_cycle"] = leader - 0.25
        w["idle_leader_cpu_cores"] = 0.05
    if p99 is not None:
        w["relay_p50_ms"], w["relay_p99_ms"] = p99 / 4, p99
    return w


def three_rounds(cluster_cpu: tuple[float, float, float], p99: float) -> list[dict[str, Any]]:
    windows = []
    for single, cluster in zip((2.0, 1.8, 2.2), cluster_cpu, strict=True):
        windows.append(window("single", "cycles", single))
        windows.append(window("cluster", "cycles", cluster, leader=cluster / 2,
                              edge=cluster / 4, redis_cmds=20.0, commits=0.5))
        windows.append(window("edges", "cycles", cluster + 1.0, leader=1.0,
                              edge=(cluster - 0.5) / 2, redis_cmds=25.0, commits=0.5))
    for _ in range(3):
        windows.append(window("single", "paced", 2.5, p99=3.0))
        windows.append(window("edges", "paced", 7.0, p99=p99 + 2.0, leader=1.0, edge=3.0))
        windows.append(window("cluster", "paced", 6.0, p99=p99, leader=3.0, edge=1.5))
    return windows


def test_medians_ranges_ratio_and_latency_verdicts() -> None:
    summary = summarize(three_rounds((3.0, 4.0, 5.0), p99=8.0))
    single = summary["cycles"]["single"]["server_cpu_ms_per_cycle"]
    assert single == {"median": 2.0, "min": 1.8, "max": 2.2, "n": 3}
    assert summary["cycles"]["cluster"]["windows"] == 3
    assert summary["cycles"]["cluster"]["leader_cpu_ms_per_cycle"]["median"] == 2.0
    assert summary["cycles"]["single"]["leader_cpu_ms_per_cycle"]["n"] == 0  # no leader
    targets = summary["targets"]
    assert targets["cpu_ratio"]["value"] == pytest.approx(2.0)  # 4.0 / 2.0: met at the bound
    assert targets["cpu_ratio"]["met"]
    assert targets["relay_p99_ms"] == {"value": 8.0, "target": 10.0, "met": True}
    assert targets["cpu_ratio_edges"]["value"] == pytest.approx(2.5)  # 5.0 / 2.0
    assert not targets["cpu_ratio_edges"]["met"]
    assert targets["relay_p99_ms_edges"]["value"] == 10.0 and targets["relay_p99_ms_edges"]["met"]
    assert targets["records"]["met"]


def test_missed_targets_and_missing_records_are_reported() -> None:
    windows = three_rounds((4.1, 4.5, 6.0), p99=12.5)
    windows[1]["records"]["final_records"] = 99  # one cluster window lost a record
    targets = summarize(windows)["targets"]
    assert targets["cpu_ratio"]["value"] == pytest.approx(2.25) and not targets["cpu_ratio"]["met"]
    assert not targets["relay_p99_ms"]["met"]
    assert targets["records"] == {"met": False, "windows_with_missing_records": 1}


def test_capacity_is_bounded_by_the_leader_redis_and_postgresql() -> None:
    summary = summarize(three_rounds((3.0, 4.0, 5.0), p99=8.0))
    cap = capacity({**summary, "nodes": [3]}, redis_ops_per_s=50_000.0,
                   pg_commits_per_s=4_000.0)
    assert cap["single_node"] == pytest.approx(500.0)  # 1000 ms / 2 ms
    assert cap["single_pg_ceiling"] == pytest.approx(10_000.0)  # 4000 / 0.4
    assert cap["per_core_of_cluster_work"] == pytest.approx(250.0)  # 1000 / 4 ms
    assert cap["per_node_even_spread"] == pytest.approx(750.0)  # 1000 / (4 / 3)
    assert cap["leader_core_ceiling"] == pytest.approx(500.0)  # 1000 / 2 ms
    assert cap["redis_ceiling"] == pytest.approx(2_500.0)  # 50000 / 20 commands
    assert cap["pg_ceiling"] == pytest.approx(8_000.0)  # 4000 / 0.5
    assert cap["cluster_ceiling"] == pytest.approx(500.0)  # the leader's core binds
    # less its idle 5 % of a core, over the marginal 1.75 ms per cycle
    assert cap["leader_core_ceiling_marginal"] == pytest.approx(950.0 / 1.75)
    assert cap["nodes_to_ceiling"] == pytest.approx(2.0)  # 500/s x 4 ms
    assert cap["core_only_ceiling"] == pytest.approx(1000.0)  # 1000 / the core's 1 ms
    assert cap["edges_redis_ceiling"] == pytest.approx(2_000.0)  # 50000 / 25 commands
    assert cap["cluster_ceiling_leader_without_clients"] == pytest.approx(1000.0)
    redis_bound = capacity({**summary, "nodes": [3]}, 5_000.0, 4_000.0)
    assert redis_bound["cluster_ceiling"] == pytest.approx(250.0)  # 5000 / 20: Redis binds


def test_report_states_the_verdicts() -> None:
    windows = three_rounds((4.1, 4.5, 6.0), p99=8.0)
    summary = summarize(windows)
    results = {
        "summary": summary, "capacity": capacity({**summary, "nodes": [3]}, 50_000.0, 4_000.0),
        "rounds": 3, "nodes": 3, "pairs": 100, "paced_pairs": 50, "seconds": 10.0,
        "warmup": 2.0, "latency_seconds": 8.0, "paced_rate": 200.0,
        "redis_ceiling": {"ops_per_s": 50_000.0}, "pg_ceiling": {"commits_per_s": 4_000.0},
        "machine": {"commit": "abc", "date": "d", "cpu_model": "cpu", "cpus": 2,
                    "load_average_1m": 1.0},
        "calibration": {"ms_per_frame": 11.0, "min": 10.0, "max": 12.0, "passes": [1, 2, 3]},
    }
    text = render_md(results)
    assert "cluster / single CPU per cycle 2.25 (target <= 2): MISSED" in text
    assert "relay p99 across nodes 8.00 ms (target <= 10 ms): met" in text
    assert "| server CPU ms / cycle (all server processes) | 2.00 (1.80-2.20) | " \
           "4.50 (4.10-6.00) | 5.50 (5.10-7.00) | 2.25 | 2.75 |" in text
    assert "**cluster ceiling** | **444**" in text  # 1000 / the leader's median 2.25 ms
    # 444 / (1000 / 2.0 ms); at 444/s the cluster's 4.5 ms per cycle fill 2.0 cores
    assert "tops out at 444 cycles/s, bound by the leader's core: 0.89x one node's 500 " \
           "cycles/s" in text
    assert "fills 2.0 cores, so nodes beyond 2 add no capacity" in text
    assert "| metric | single | cluster | cluster, clients on edges only | cluster / single |" \
           in text
    assert "cluster with clients on edges only / single CPU per cycle 2.75 (target <= 2): " \
           "MISSED" in text


def test_redis_instrument_counts_commands(tmp_path: Path) -> None:
    redis = _Redis(tmp_path)
    try:
        conn = redis.conn
        assert conn.command("SET", "k", "v") == "OK"
        assert conn.command("GET", "k") == "v"
        assert conn.command("GET", "missing") is None
        assert conn.command("INCR", "n") == 1
        info = conn.command("INFO", "stats")
        before = int(info.split("total_commands_processed:", 1)[1].split()[0])
        for _ in range(5):
            conn.command("PING")
        info = conn.command("INFO", "stats")
        after = int(info.split("total_commands_processed:", 1)[1].split()[0])
        assert after - before == 6  # five PINGs and the first INFO
    finally:
        redis.stop()
    assert redis.proc.returncode is not None
