"""The benchmarks still work: `python -m bench.run --smoke` end to end (tiny sizes).

Speed is not asserted here (benchmarks are not tests); only that every measurement ran
and produced figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.timeout(520)]
ROOT = Path(__file__).parent.parent


def test_benchmark_smoke_run_produces_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((ROOT / "bench" / "results" / "tmp" / "smoke.json").read_text())
    assert figures["publish"]["2000"]["courierflow"]["orders_per_s"]["median"] > 0
    assert set(figures["dispatch"]) == {"0ms", "30ms"}
    for variant in ("courierflow", "courierflow_warm"):
        assert figures["e2e"][variant]["runs"][0]["delivered"] == 200
        assert figures["e2e"][variant]["runs"][0]["lost"] == 0
    short = figures["short"]
    assert short["courierflow"]["runs"][0]["delivered"] == 300
    assert short["courierflow"]["runs"][0]["lost"] == 0
    for role in ("publisher", "broker", "manager", "lambda_service", "environments"):
        assert short["courierflow"]["cpu_ms_per_order"][role]["median"] > 0
    assert short["celery"]["deliveries_per_s"]["median"] > 0
    assert figures["ledger"]["claims_per_s"]["median"] > 0
    assert figures["lambda_service"]["environments"]["pss_mb"] > 0
    assert (ROOT / "bench" / "results" / "tmp" / "throughput.png").stat().st_size > 0


def test_million_regime_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "million.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.million", "300", "--fleet", "8", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["complete"] and figures["delivered"] == 300 and figures["lost"] == 0
    assert figures["duplicate_invokes"] >= 0
    for role in ("publisher", "broker", "manager", "lambda_service", "environments"):
        assert figures["processes"][role]["rss_mb"] > 0
