"""GFM on a GPU and on the CPU: training throughput, and forecast time at 1M and 10M parameters.

The script to run when a GPU is lent (the `device` tool), and on the CPU anywhere:

* **Training**: the GFM of `params.yaml` fitted on `--runs` recorded `mnist_cnn` runs (Adam),
  on each device, timed over `--steps` steps after `--warmup` (prior fits and the first batches
  outside the timing); throughput in parameter paths per second (a step's loss covers
  `batch_runs × batch_params` parameter paths over every interval of their runs).
* **Forecast**: per `--sizes` D, a recorded digits MLP run of about D parameters (two hidden
  layers of equal width; Adam at lr 1e-3, the task's 200 steps, recorded every 4), observed to
  `--fraction`, forecast to t = 1 on each device by the field alone (`gfm.prior: false`, the same
  network otherwise), after one warm-up forecast. The optimizer-simulating prior's fit is linear
  in D: on the CPU it runs in NumPy and is timed on one chunk of `gfm.chunk_size` parameters, on
  CUDA in torch on one chunk of `--prior-chunk`, each scaled to D (`prior_s_scaled`). On CUDA the
  whole default forecast (prior and field, `gfm.chunk_size` = `--prior-chunk`) is also timed
  end to end when the parts add up to under `--whole-max` seconds (`whole_s`). Remaining
  training: the recorded run's seconds × (M − k)/M, on one CPU thread like every generated run;
  on CUDA also the same (M − k)·r Adam steps of the same network on the GPU, unrecorded
  (`remaining_train_gpu_s`, a lower bound of training there).

Writes `benchmarks/results/gpu.csv` (one row per measurement: device, what, params, seconds,
throughput, the remaining training's seconds and the ratio) after every row, and prints each.

    python -m benchmarks.gpu                            # cuda when present, and cpu; 1M and 10M
    python -m benchmarks.gpu --sizes 20000 --runs 2 --warmup 2 --steps 5 --out /tmp/gpu  # smoke
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import recorded_run
from gfm.config import Settings, load_settings
from gfm.data.schema import RunRecord
from gfm.data.tasks import make_task
from gfm.forecaster import Prefix, observed_index
from gfm.model import GFM
from gfm.prior import quadfit
from gfm.training import prefit_priors

RESULTS = Path(__file__).parent / "results"


def mlp_width(n_params: int, n_in: int = 64, n_out: int = 10) -> int:
    """Width h of a two-hidden-layer MLP with about ``n_params`` parameters.

    D(h) = (n_in + 1) h + (h + 1) h + (h + 1) n_out  =  h² + (n_in + n_out + 2) h + n_out
    """
    b = n_in + n_out + 2
    return max(1, round((-b + math.sqrt(b * b + 4 * (n_params - n_out))) / 2))


def _devices(asked: list[str]) -> list[str]:
    if asked != ["auto"]:
        return asked
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_rows(settings: Settings, runs: list[RunRecord], devices: list[str], args) -> list:
    """Steps per second and parameter paths per second of GFM training on each device."""
    rows = []
    for device in devices:
        cfg = settings.train.model_copy(
            update={
                "device": device.split(":")[0],  # train.device names a kind: cpu, cuda
                "steps": args.warmup + args.steps,
                "eval_every": args.warmup,
                "prior_cache": args.cache,
            }
        )
        if settings.gfm.prior:  # every prior fitted before the clock starts
            prefit_priors(runs, None, cfg, workers=os.cpu_count() or 1)
        model = GFM(settings.gfm, cfg)
        history = model.fit(runs).history
        seconds = history[-1]["seconds"] - history[0]["seconds"]
        paths = args.steps * cfg.batch_runs * cfg.batch_params
        rows.append(
            {
                "device": device,
                "what": "train",
                "params": max(r.weights.shape[1] for r in runs),
                "seconds": seconds,
                "per_second": paths / seconds,
                "unit": "parameter paths",
                "steps": args.steps,
            }
        )
        print(rows[-1], flush=True)
    return rows


def forecast_rows(settings: Settings, size: int, devices: list[str], args) -> list:
    """Field-only forecast time per device, and the prior's fit scaled to D, for ~``size`` params."""
    h = mlp_width(size)
    record, train_s = recorded_run(settings, "digits_mlp", (h, h))
    M = record.weights.shape[0] - 1
    k = observed_index(M, args.fraction)
    prefix = Prefix.from_record(record, k)
    remaining_s = train_s * (M - k) / M
    D = prefix.D
    field = settings.gfm.model_copy(update={"prior": False})
    t = torch.tensor([1.0], dtype=torch.float64)
    rows = []
    for device in devices:
        gpu = device != "cpu"
        prior_s = prior_seconds(
            prefix, args.prior_chunk if gpu else settings.gfm.chunk_size, device
        )
        model = GFM(field, settings.train)
        model.net.to(device).eval()
        model.forecast(prefix, t)  # warm-up: kernels, allocator, caches
        _sync(device)
        start = time.perf_counter()
        model.forecast(prefix, t)
        _sync(device)
        field_s = time.perf_counter() - start
        row = {
            "device": device,
            "what": "forecast",
            "params": D,
            "seconds": field_s + prior_s,
            "field_s": field_s,
            "prior_s_scaled": prior_s,
            "remaining_train_s": remaining_s,
            "ratio": remaining_s / (field_s + prior_s),
            "field_ratio": remaining_s / field_s,
            "per_second": D / field_s,
            "unit": "parameters (field)",
        }
        if gpu:
            steps = (M - k) * prefix.record_every
            row["remaining_train_gpu_s"] = gpu_training_seconds(settings, (h, h), steps, device)
            row["gpu_ratio"] = row["remaining_train_gpu_s"] / (field_s + prior_s)
            if field_s + prior_s < args.whole_max:
                whole = settings.gfm.model_copy(update={"chunk_size": args.prior_chunk})
                model = GFM(whole, settings.train)
                model.net.to(device).eval()
                _sync(device)
                start = time.perf_counter()
                model.forecast(prefix, t)
                _sync(device)
                row["whole_s"] = time.perf_counter() - start
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def prior_seconds(prefix: Prefix, chunk: int, device: str) -> float:
    """Seconds of the prior's fit and simulation for all D parameters, from one timed chunk."""
    on = None if device == "cpu" else device
    if on is not None:  # warm-up: CUDA context, kernels, allocator
        quadfit(prefix, index=torch.arange(min(prefix.D, 4096)), device=on)
    index = torch.arange(min(prefix.D, chunk))
    _sync(device)
    start = time.perf_counter()
    quadfit(prefix, index=index, device=on)
    _sync(device)
    return (time.perf_counter() - start) * prefix.D / len(index)


def gpu_training_seconds(
    settings: Settings, hidden: tuple[int, ...], steps: int, device: str
) -> float:
    """Seconds of ``steps`` Adam steps (lr 1e-3) of the digits MLP on ``device``, unrecorded."""
    cfg = settings.data.tasks["digits_mlp"]
    task = make_task("digits_mlp", cfg, 1234)
    model = task.build(hidden, 1234).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = (a.to(device) for a in task.train)
    gen = torch.Generator().manual_seed(0)
    batches = torch.randint(len(X), (steps + 5, cfg.batch_sizes[0]), generator=gen).to(device)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        task.loss(model(X[batches[i]]), y[batches[i]]).backward()
        opt.step()

    for i in range(5):  # warm-up
        step(steps + i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--devices", nargs="+", default=["auto"], help="auto: cuda if present, cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=8, help="recorded mnist_cnn runs to train on")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--prior-chunk", type=int, default=1 << 20, help="parameters per GPU fit")
    parser.add_argument("--whole-max", type=float, default=60.0, help="seconds; see the docstring")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # speed, not bits: the recorded runs need not match another machine's (gfm._torch.pin_kernels)
    warnings.filterwarnings("ignore", message="train_run: this process's torch/MKL kernels")
    settings = load_settings(args.params)
    devices = _devices(args.devices)
    runs = [recorded_run(settings, "mnist_cnn", (16, 32, 32), seed)[0] for seed in range(args.runs)]
    path = args.out / "gpu.csv"
    with tempfile.TemporaryDirectory(prefix="gfm-gpu-priors-") as cache:
        args.cache = Path(cache)
        rows = training_rows(settings, runs, devices, args)
    write(rows, path)
    for size in args.sizes:
        rows += forecast_rows(settings, size, devices, args)
        write(rows, path)  # what was measured survives a run stopped at its limit
    print(f"wrote {path}")


def write(rows: list[dict], path: Path) -> None:
    """The rows, with the machine's torch, GPU and threads, as CSV at ``path`` (atomically)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    for row in rows:
        row.update({"torch": torch.__version__, "gpu": name, "threads": torch.get_num_threads()})
    fields = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


if __name__ == "__main__":
    main()
