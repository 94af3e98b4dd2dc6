"""The benchmarks still work: `python -m bench.run --smoke` end to end (tiny sizes).

Speed is not asserted here (benchmarks are not tests); only that every measurement ran
and produced figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.timeout(400)]
ROOT = Path(__file__).parent.parent


def test_benchmark_smoke_run_produces_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((ROOT / "bench" / "results" / "tmp" / "smoke.json").read_text())
    assert figures["publish"]["2000"]["courierflow"]["orders_per_s"]["median"] > 0
    assert set(figures["dispatch"]) == {"0ms", "30ms"}
    for variant in ("courierflow", "courierflow_warm"):
        assert figures["e2e"][variant]["runs"][0]["delivered"] == 200
        assert figures["e2e"][variant]["runs"][0]["lost"] == 0
    assert figures["ledger"]["claims_per_s"]["median"] > 0
    assert figures["lambda_service"]["environments"]["pss_mb"] > 0
    assert (ROOT / "bench" / "results" / "tmp" / "throughput.png").stat().st_size > 0
