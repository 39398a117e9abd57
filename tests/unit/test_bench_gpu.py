"""The GPU benchmark script (benchmarks/gpu.py) runs on the CPU: what it measures and writes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import mlp_width

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [20_000, 1_000_000, 10_000_000])
def test_mlp_width_gives_a_digits_mlp_of_about_n_parameters(n: int) -> None:
    h = mlp_width(n)
    params = 65 * h + (h + 1) * h + (h + 1) * 10  # 64 inputs, two layers of h, 10 outputs
    assert abs(params - n) <= 2 * h + 80  # one width step either way


@pytest.mark.slow  # records 2 small runs and a 20k-parameter one, trains 7 steps (~30 s)
def test_the_gpu_benchmark_runs_on_the_cpu_and_writes_its_table(tmp_path: Path) -> None:
    # when the script runs with tiny sizes on the CPU, once as a CPU ("cpu") and once through the
    # accelerator branches (any other device name: torch prior, steps on the device, whole forecast)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--devices", "cpu", "cpu:0", "--sizes", "20000"]
        + ["--runs", "2", "--warmup", "2", "--steps", "5", "--prior-chunk", "8192"]
        + ["--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "gpu.csv").open()))
    # then one training row and one forecast row, with positive times and consistent ratios
    train, forecast = (next(r for r in rows if r["what"] == w) for w in ("train", "forecast"))
    assert train["device"] == "cpu" and float(train["per_second"]) > 0
    assert abs(int(forecast["params"]) - 20_000) < 500
    total = float(forecast["field_s"]) + float(forecast["prior_s_scaled"])
    assert float(forecast["seconds"]) == pytest.approx(total)
    assert float(forecast["ratio"]) == pytest.approx(float(forecast["remaining_train_s"]) / total)
    # and the accelerator rows carry the device's own training time and the whole forecast
    accel = next(r for r in rows if r["what"] == "forecast" and r["device"] == "cpu:0")
    assert float(accel["remaining_train_gpu_s"]) > 0 and float(accel["whole_s"]) > 0
    gpu_total = float(accel["field_s"]) + float(accel["prior_s_scaled"])
    assert float(accel["gpu_ratio"]) == pytest.approx(
        float(accel["remaining_train_gpu_s"]) / gpu_total
    )
    assert "remaining_train_gpu_s" not in forecast or not forecast["remaining_train_gpu_s"]
