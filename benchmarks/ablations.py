"""The GFM ablation ledger: variants fitted on the seed split, scored per run on val and test.

    python -m benchmarks.ablations VARIANT [VARIANT ...] [--seeds 0 1 2]   # fit and score
    python -m benchmarks.ablations --ledger                                # the markdown table
    python -m benchmarks.ablations VARIANT --data ROOT --parts 0,1 2 3,4,5,6,7 --out DIR
        # parts by seed index in another dataset (e.g. generated with data.seeds=8)

A variant is a method (``gfm``, ``gfm_<variant>`` or a baseline) with settings overrides, a
baseline config, a fraction of the train runs (a learning curve), ``members`` (an ensemble of
training seeds) or a ``mix`` of other variants (their mean forecast); they are listed with what
they change in ``benchmarks/ablations.yaml``. A variant's ``row_variants`` ({name: β}) are scored
from the same fit with each row's mean displacement scaled by β (``RowShrunk``), and a GFM
variant's ``gfm_variants`` ({name: {setting: value}}) with other forecast-time ``gfm`` settings
(``reconfigured``). Each (variant, seed) writes
``results/ablations/<variant>__s<seed>.parquet`` (one row per run × observed fraction × part) and
is skipped when present, so the ledger resumes. Per run it records the final-weight MSE, the
displacement ratio λ = ⟨ŵ − w_k, w_M − w_k⟩ / |w_M − w_k|², the error off that direction
|ŵ − w_k − λ(w_M − w_k)|² / |w_M − w_k|², and on the classification tasks the held-out accuracy
and loss of the network at the forecast weights, at the last observed and at the true final
weights. ``--ledger`` averages per (variant, seed) over tasks × fractions, then over seeds, and
writes ``results/ablations.md``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

from gfm import baselines
from gfm.bench.forecast import build, score_for
from gfm.config import load_settings
from gfm.data.atomic import atomic_path
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index
from gfm.rows import shrink_row_means

HERE = Path(__file__).parent
OUT = HERE / "results" / "ablations"
FRACTIONS = (0.1, 0.25, 0.5)
CLASSIFICATION = ("digits_mlp", "mnist_cnn")


def variants() -> dict[str, dict]:
    """The variants of ``ablations.yaml``: name -> {method, overrides, baseline, train_frac, ...}."""
    return yaml.safe_load((HERE / "ablations.yaml").read_text())["variants"]


def final_forecast(forecaster, record, k: int) -> tuple[np.ndarray, float]:
    """The forecast final weights (D,) from checkpoint k, and the seconds the forecast took."""
    start = time.perf_counter()
    pred = forecaster.forecast(Prefix.from_record(record, k), torch.tensor([1.0]))
    seconds = time.perf_counter() - start
    return np.asarray(pred.detach().cpu() if torch.is_tensor(pred) else pred)[-1], seconds


class RowShrunk:
    """A fitted forecaster whose forecasts get ``gfm.rows.shrink_row_means`` with factor β.

    GFM applies it itself (``gfm.row_mean``); this lets the ledger score a baseline's forecasts
    with the same post-processing, from the same fit.
    """

    def __init__(self, forecaster, factor: float) -> None:
        self.forecaster, self.factor = forecaster, float(factor)

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        """The wrapped forecast with each row's mean displacement scaled by β."""
        pred = torch.as_tensor(self.forecaster.forecast(prefix, t))
        return shrink_row_means(pred, prefix.w[-1].to(pred.dtype), prefix.params, self.factor)


def reconfigured(model, updates: dict):
    """The same fitted GFM forecasting with other ``gfm`` settings (``{"sample_params": 256}``).

    Only settings read at forecast time make sense here (sample_params, row_mean, chunk_size):
    the network and its weights are shared with ``model``.
    """
    other = copy.copy(model)
    other.cfg = model.cfg.model_copy(update=updates)
    return other


def score_run(forecaster, record, score) -> list[dict]:
    """One row per observed fraction: errors, λ, off-direction error, downstream scores."""
    M = record.weights.shape[0] - 1
    rows = []
    for f in FRACTIONS:
        k = observed_index(M, f)
        rows.append(score_forecast(record, f, k, *final_forecast(forecaster, record, k), score))
    return rows


def score_members(members: list, record, score) -> tuple[list[dict], list[list[dict]]]:
    """``score_run`` of the members' mean forecast, and of each member, from one forecast each.

    ŵ_mean = (1/K) Σ_i ŵ_i
    """
    M = record.weights.shape[0] - 1
    mean_rows, member_rows = [], [[] for _ in members]
    for f in FRACTIONS:
        k = observed_index(M, f)
        preds = [final_forecast(m, record, k) for m in members]
        for rows, (pred, seconds) in zip(member_rows, preds, strict=True):
            rows.append(score_forecast(record, f, k, pred, seconds, score))
        mean = np.mean([p.astype(np.float64) for p, _ in preds], axis=0)
        seconds = sum(s for _, s in preds)
        mean_rows.append(score_forecast(record, f, k, mean, seconds, score))
    return mean_rows, member_rows


def score_forecast(  # noqa: PLR0913 - one forecast and what it is scored against
    record, f: float, k: int, pred: np.ndarray, seconds: float, score
) -> dict:
    """One fraction's row: errors, λ, off-direction error and, for classifiers, the network's."""
    W = record.weights
    M = W.shape[0] - 1
    w_M = W[M].astype(np.float64)
    w_k = W[k].astype(np.float64)
    d_true, d_pred = w_M - w_k, pred.astype(np.float64) - w_k
    nt = max(float(d_true @ d_true), 1e-30)
    lam = float(d_pred @ d_true) / nt
    off = d_pred - lam * d_true
    row = {
        "task": record.spec.task,
        "optimizer": record.spec.optimizer,
        "run_id": record.spec.run_id,
        "fraction": f,
        "mse": float(np.mean((pred - w_M) ** 2)),
        "mse_persistence": float(np.mean(d_true**2)),
        "lam": lam,
        "off": float(off @ off) / nt,
        "seconds": seconds,
    }
    if record.spec.task in CLASSIFICATION:
        row["loss"], row["acc"] = score(record, pred.astype(np.float32))
        row["last_loss"], row["last_acc"] = score(record, W[k])
        row["true_loss"], row["true_acc"] = score(record, W[M])
    return row


def run(
    name: str, seed: int, spec: dict, out: Path, parts: tuple[list[int], ...] | None = None
) -> None:
    """Fit ``name`` with ``seed`` on the seed split's train part; score val and test.

    ``parts`` (train, val, test seed indices) selects the parts by the runs' seed index
    instead, in the dataset of ``--data``: one generated with more seeds per group than the
    default (``gfm generate --set data.seeds=8``) keeps the default's runs for seeds 0-3 and
    adds unseen ones, so the same fit is scored on a test part of several seeds.
    """
    names = [name, *spec.get("row_variants", {}), *spec.get("gfm_variants", {})]
    if all((out / f"{n}__s{seed}.parquet").exists() for n in names):
        print(f"{name} s{seed}: done already")
        return
    settings = load_settings(HERE.parent / "params.yaml", spec.get("overrides", {}))
    ds = Trajectories(settings.data.root)
    if parts is None:
        train, val, test = (ds.select("seed", part) for part in ("train", "val", "test"))
    else:
        train, val, test = (ds.filter(pl.col("seed").is_in(seeds)) for seeds in parts)
    if "train_frac" in spec:  # learning curve: a seeded subset of the train runs
        rng = np.random.default_rng(1000 + seed)
        keep = rng.choice(len(train), max(1, round(spec["train_frac"] * len(train))), False)
        train = train.filter(pl.col("run_id").is_in([train.run_ids[i] for i in sorted(keep)]))
    seeds, members = _members(spec, settings, seed)
    member_names = spec.get("mix") or [spec.get("member_variant")] * len(members)
    fit_seconds = []
    for member in members:
        start = time.perf_counter()
        member.fit(train, val)
        fit_seconds.append(time.perf_counter() - start)
    score = score_for(settings)
    if "members" not in spec and "mix" not in spec:
        # the variant itself, then its `row_variants` {name: β}: the same fit, rows shrunk
        scored = [(name, members[0])]
        scored += [(n, RowShrunk(members[0], b)) for n, b in spec.get("row_variants", {}).items()]
        scored += [
            (n, reconfigured(members[0], u)) for n, u in spec.get("gfm_variants", {}).items()
        ]
        for variant, forecaster in scored:
            rows = [
                {**row, "part": part}
                for part, runs in (("val", val), ("test", test))
                for i in range(len(runs))
                for row in score_run(forecaster, runs[i], score)
            ]
            _write(out, variant, seed, rows, fit_seconds[0])
        return
    # the mean and, as rows of the member variant (each a training seed of it), every member
    mean_rows: list[dict] = []
    member_rows: list[list[dict]] = [[] for _ in members]
    for part, runs in (("val", val), ("test", test)):
        for i in range(len(runs)):
            mean, each = score_members(members, runs[i], score)
            mean_rows += [{**row, "part": part} for row in mean]
            for acc, rows in zip(member_rows, each, strict=True):
                acc += [{**row, "part": part} for row in rows]
    for s, member, rows, secs in zip(seeds, member_names, member_rows, fit_seconds, strict=True):
        if not (out / f"{member}__s{s}.parquet").exists():
            _write(out, member, s, rows, secs)
    _write(out, name, seed, mean_rows, sum(fit_seconds))


def _members(spec: dict, settings, seed: int) -> tuple[list[int], list]:
    """The training seeds and unfitted forecasters of a variant: one, or K ensemble members.

    An ensemble's members have training seeds seed·K .. seed·K + K − 1; a ``mix`` of other
    variants (``[row_half, lstm]``) fits each of them, with its own settings, on ``seed``.
    """
    if "mix" in spec:
        specs = variants()
        fitted = []
        for name in spec["mix"]:
            own = load_settings(HERE.parent / "params.yaml", specs[name].get("overrides", {}))
            fitted += _members(specs[name], own, seed)[1]
        return [seed] * len(fitted), fitted
    method = spec.get("method", "gfm")
    if "members" in spec:
        K = int(spec["members"])
        seeds = [seed * K + i for i in range(K)]
        return seeds, [build(method, settings, seed=s) for s in seeds]
    if "baseline" in spec:
        return [seed], [baselines.make(method, {**spec["baseline"], "seed": seed})]
    return [seed], [build(method, settings, seed=seed)]


def _write(out: Path, name: str, seed: int, rows: list[dict], fit_seconds: float) -> None:
    """One (variant, seed)'s table, written atomically to ``out/<variant>__s<seed>.parquet``."""
    path = out / f"{name}__s{seed}.parquet"
    table = pl.DataFrame(rows).with_columns(
        variant=pl.lit(name), seed=pl.lit(seed), fit_seconds=pl.lit(fit_seconds)
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.write_parquet(tmp)
    print(f"{name} s{seed}: fit {fit_seconds:.0f} s, wrote {path}")


def ledger(out: Path) -> str:
    """The markdown ledger over every saved (variant, seed), in ``ablations.yaml`` order."""
    specs = variants()
    df = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))], how="diagonal")

    def cells(part: str) -> pl.DataFrame:  # mean over task × fraction cells, per variant × seed
        return (
            df.filter(pl.col("part") == part)
            .group_by("variant", "seed", "task", "fraction")
            .agg(pl.col("mse").mean())
            .group_by("variant", "seed")
            .agg(pl.col("mse").mean().alias(part))
        )

    acc = (
        df.filter((pl.col("part") == "test") & pl.col("task").is_in(CLASSIFICATION))
        .group_by("variant", "seed")
        .agg(((pl.col("acc") - pl.col("last_acc")).mean() * 100).alias("acc_vs_last"))
    )
    per_seed = (
        cells("val")
        .join(cells("test"), on=["variant", "seed"])
        .join(acc, on=["variant", "seed"], how="left")
        .join(
            df.group_by("variant", "seed").agg(pl.col("fit_seconds").first()),
            on=["variant", "seed"],
        )
    )
    g = per_seed.group_by("variant").agg(
        pl.col("val", "acc_vs_last", "fit_seconds").mean(),
        pl.col("test").mean(),
        pl.col("test").std().alias("test_sd"),
        pl.col("seed").sort().alias("seeds"),
    )
    ref = g.filter(pl.col("variant") == "lstm")["test"]
    lines = [
        "| variant | change | seeds | val MSE | test MSE | test / LSTM | acc − last (pts) | fit s | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in specs.items():
        hit = g.filter(pl.col("variant") == name)
        if not hit.height:
            continue
        r = hit.row(0, named=True)
        sd = f" ± {r['test_sd']:.5f}" if len(r["seeds"]) > 1 else ""
        rel = f"{r['test'] / ref[0]:.2f}" if len(ref) else ""
        acc_pts = "" if r["acc_vs_last"] is None else f"{r['acc_vs_last']:+.1f}"
        seeds = ",".join(map(str, r["seeds"]))
        lines.append(
            f"| `{name}` | {spec['change']} | {seeds} | {r['val']:.5f} | {r['test']:.5f}{sd} "
            f"| {rel} | {acc_pts} | {r['fit_seconds']:.0f} | {spec.get('verdict', '')} |"
        )
    return "\n".join(lines) + "\n"


def diagnosis(out: Path, names: list[str], part: str = "val") -> str:
    """Per task × optimizer × fraction: median λ and off-direction error, mean MSE and accuracy.

    The table issue 11 asks for before any change: how far each forecaster moves along the true
    displacement, how much it errs off it, and what its forecast network scores.
    """
    df = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))], how="diagonal")
    df = df.filter((pl.col("part") == part) & pl.col("variant").is_in(names))
    g = (
        df.group_by("variant", "task", "optimizer", "fraction")
        .agg(
            pl.col("lam").median(),
            pl.col("off").median(),
            pl.col("mse").mean(),
            ((pl.col("acc") - pl.col("last_acc")) * 100).mean().alias("acc_vs_last"),
            (pl.col("loss") - pl.col("last_loss")).mean().alias("loss_vs_last"),
        )
        .sort("task", "optimizer", "fraction", "variant")
    )
    lines = [
        "| task | optimizer | fraction | variant | λ (median) | off (median) | MSE | acc − last (pts) | loss − last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in g.iter_rows(named=True):
        acc = "" if r["acc_vs_last"] is None else f"{r['acc_vs_last']:+.1f}"
        loss = "" if r["loss_vs_last"] is None else f"{r['loss_vs_last']:+.3f}"
        lines.append(
            f"| {r['task']} | {r['optimizer']} | {r['fraction']} | `{r['variant']}` "
            f"| {r['lam']:.2f} | {r['off']:.3f} | {r['mse']:.2e} | {acc} | {loss} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--ledger", action="store_true", help="write <out>.md (results/ablations.md)"
    )
    parser.add_argument(
        "--diagnose", nargs="+", metavar="VARIANT", help="write <out>_diagnosis.md for these"
    )
    parser.add_argument("--data", type=Path, help="another dataset root (data.root)")
    parser.add_argument(
        "--parts",
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="seed indices of each part, comma-separated (0,1 2 3,4,5,6,7), instead of the split",
    )
    args = parser.parse_args()
    parts = (
        None if args.parts is None else tuple([int(x) for x in p.split(",")] for p in args.parts)
    )
    torch.set_num_threads(1)
    specs = variants()
    for name in args.variants:
        if name not in specs:
            raise SystemExit(f"ablations.yaml: unknown variant {name!r}; known: {sorted(specs)}")
        if specs[name].get("removed"):
            raise SystemExit(f"ablations.yaml: {name!r} lost and its code was removed; see its row")
        if "scored_with" in specs[name]:  # a row variant: scored by fitting its parent
            name = specs[name]["scored_with"]
        for seed in args.seeds:
            spec = specs[name]
            if args.data is not None:
                spec = {
                    **spec,
                    "overrides": {**spec.get("overrides", {}), "data.root": str(args.data)},
                }
            run(name, seed, spec, args.out, parts)
    if args.diagnose:
        target = args.out.with_name(args.out.name + "_diagnosis.md")
        with atomic_path(target) as tmp:
            tmp.write_text(diagnosis(args.out, args.diagnose))
        print(f"wrote {target}")
    if args.ledger:
        target = args.out.with_suffix(".md")
        with atomic_path(target) as tmp:
            tmp.write_text(ledger(args.out))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
