"""Benchmarks that print numbers and ratios against a baseline measured in the same run."""

from __future__ import annotations

__all__ = ["BENCHES"]

BENCHES: list[str] = [
    "bench.encoder_presets",
    "bench.server_load",
    "bench.render",
    "bench.stack",
    "bench.constrained",
    "bench.audio_processing",
    "bench.login_churn",
    "bench.sfu",
    "bench.relay",
    "bench.overload",
    "bench.cluster",
]
"""Modules run by ``python -m bench``; each has ``main(argv)`` returning an exit status."""
