"""Forecast-based pruning against Optuna's pruners: optimizer steps until a near-best trial.

For each task (digits_mlp, mnist_cnn) and study seed, one Optuna study per pruner tunes the
task network over optimizer, learning rate, width and weight decay (``gfm.bench.pruning``:
the space, the trial loop, the measures), with the same seeded TPE sampler and the same
number of trials:

    none         no pruning (``NopPruner``); its trials' checkpoints are kept for the replay
    median       ``MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)``
    hyperband    ``HyperbandPruner(min_resource=report_every, max_resource=steps, reduction_factor=3)``
    gfm          ``ForecastPruner`` with GFM (the project's defaults, fitted on the default
                 dataset's train part, or ``--gfm DIR|models:/gfm@champion``)
    persistence  ``ForecastPruner`` with persistence (the network at its current weights)
    lstm         ``ForecastPruner`` with the LSTM, the best sequence baseline of the forecast
                 benchmark (fitted like GFM, or ``--lstm DIR``)

Every pruner is also replayed on the trial sequence of the study without pruning (same trials,
reported values and checkpoints), which says whether it would have pruned that study's best
trial; and every forecaster forecasts that study's trials from each observed fraction, which
gives the Spearman ρ between forecast and true final validation loss. Writes, under
``--output-dir`` (default ``benchmarks/results/``):

  pruning.csv            one row per task × pruner × seed (``gfm.bench.pruning.summarize``)
  pruning_trials.csv     every trial: params, inside the forecasters' training distribution or why
                         not, state, steps, validation loss, test accuracy
  pruning_forecasts.csv  forecast final validation loss per trial × forecaster × fraction
  pruning.md             means over seeds, ratios to MedianPruner and HyperbandPruner
  pruning.png            best test accuracy found vs optimizer steps; Spearman ρ vs fraction
  pruning_parts/         one JSON per finished study / replay: an interrupted run resumes there

    python -m benchmarks.pruning [--quick] [--tasks digits_mlp mnist_cnn] [--seeds 3]
        [--trials 40] [--pruners none median ...] [--gfm DIR|URI] [--lstm DIR] [--fit-steps N]
        [--overrides benchmarks/pruning_data.yaml]

``--overrides FILE`` applies a YAML mapping of dotted settings on top of ``--params``; when its
``data.root`` holds no dataset yet, that dataset is generated first (``gfm.data.generate``, the
implementation ``gfm generate`` runs), so the forecasters are fitted on it and the trials'
"inside the training distribution" column is judged against it. ``pruning_data.yaml`` is a
dataset that covers the digits search space.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import torch
import yaml

from gfm import baselines, saved
from gfm.bench.pruning import (
    LR,
    TASKS,
    WD,
    WIDTHS,
    Config,
    TrialNet,
    anytime,
    forecast_rows,
    in_distribution,
    summarize,
)
from gfm.config import Settings, load_settings
from gfm.data.atomic import atomic_path, write_json
from gfm.data.generate import generate
from gfm.data.names import MANIFEST_FILE, OPTIMIZERS
from gfm.data.trajectories import Trajectories
from gfm.evaluation import to_markdown
from gfm.forecaster import Forecaster
from gfm.jumps import load_weights
from gfm.model import GFM
from gfm.ops import ForecastPruner, load_forecaster
from gfm.ops.layout import dataset_version
from gfm.stopping import FileStore, Recorder

log = logging.getLogger("benchmarks.pruning")
PRUNERS = ("none", "median", "hyperband", "gfm", "persistence", "lstm")
FORECASTERS = ("gfm", "persistence", "lstm")  # the forecast pruners, by their forecaster
CACHE = Path("~/.cache/gfm/pruning").expanduser()


@dataclass(frozen=True)
class Plan:
    """What one benchmark run does."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    trials: int
    pruners: tuple[str, ...]
    report_every: int = 20
    warmup: int = 20
    n_best: int = 3
    min_trials: int = 5
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    fit_steps: int | None = None  # None: train.steps (GFM) and the LSTM's default


def _part(out: Path, name: str) -> Path:
    return out / "pruning_parts" / f"{name}.json"


def _save_part(path: Path, doc: Any) -> None:
    write_json(path, doc)


# ----------------------------------------------------------------------------- forecasters


def _fit(name: str, settings: Settings, steps: int | None) -> Forecaster:
    data = Trajectories(settings.data.root)
    train, val, _ = data.parts(settings.train.split)
    t0 = time.perf_counter()
    if name == "gfm":
        cfg = (
            settings.train if steps is None else settings.train.model_copy(update={"steps": steps})
        )
        model: Forecaster = GFM(settings.gfm, cfg).fit(train, val)
    else:
        config = {"seed": settings.train.seed, **({"steps": steps} if steps else {})}
        model = baselines.make(name, config).fit(train, val)
    log.info("%s: fitted on %d runs in %.0f s", name, len(train), time.perf_counter() - t0)
    return model


def forecasters(settings: Settings, plan: Plan, args: argparse.Namespace) -> dict[str, Forecaster]:
    """GFM and the LSTM loaded (``--gfm``/``--lstm``), from the cache, or fitted and cached.

    Only those whose pruner is asked for (``--pruners``): a run without ``lstm`` spent 425 of
    its 461 s fitting an LSTM it never used.
    """
    version = dataset_version(Path(settings.data.root))[:12]
    out: dict[str, Forecaster] = {"persistence": baselines.make("persistence")}
    for name, given in (("gfm", args.gfm), ("lstm", args.lstm)):
        if name not in plan.pruners:
            continue
        if given:
            out[name] = load_forecaster(given, settings)
            continue
        folder = CACHE / "forecasters" / f"{name}-{version}-{plan.fit_steps or 'default'}"
        if (folder / saved.FILE).is_file():
            out[name] = saved.load(folder)
        else:
            out[name] = _fit(name, settings, plan.fit_steps)
            saved.save(out[name], folder)
    return out


# ----------------------------------------------------------------------------- one study


def _pruner(name: str, plan: Plan, steps: int, fc: dict[str, Forecaster], score) -> Any:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=plan.warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=plan.report_every, max_resource=steps, reduction_factor=3
        )
    return ForecastPruner(
        score,
        forecaster=fc[name],
        n_best=plan.n_best,
        warmup_steps=plan.warmup,
        min_trials=plan.min_trials,
        metric="validation loss",
    )


class _Score:
    """The forecast pruners' score: validation loss on the running trial's network."""

    net: TrialNet | None = None

    def __call__(self, model: torch.nn.Module) -> float:
        assert self.net is not None
        return self.net.val_loss(model)


def _suggest(trial: optuna.Trial, task: str) -> Config:
    return Config(
        task=task,
        optimizer=trial.suggest_categorical("optimizer", list(OPTIMIZERS)),
        lr=trial.suggest_float("lr", *LR, log=True),
        width=trial.suggest_categorical("width", list(WIDTHS[task])),
        weight_decay=trial.suggest_float("weight_decay", *WD, log=True),
    )


def _net(cfg: Config, settings: Settings, seed: int, number: int) -> TrialNet:
    t = settings.data.tasks[cfg.task]
    order = 100_000 * (seed + 1) + number  # the same trial number runs the same way in every study
    return TrialNet(
        cfg, settings.data, seed=order, init_seed=order, steps=t.steps, batch=t.batch_sizes[0] or 64
    )


def _objective(  # noqa: PLR0913 - one study's parts
    task: str,
    seed: int,
    settings: Settings,
    plan: Plan,
    pruner: Any,
    score: _Score,
    store: FileStore | None,
    rows: list[dict],
) -> Callable[[optuna.Trial], float]:
    t_cfg = settings.data.tasks[task]
    S, r = t_cfg.steps, t_cfg.record_every

    def objective(trial: optuna.Trial) -> float:
        cfg = _suggest(trial, task)
        net = _net(cfg, settings, seed, trial.number)
        score.net = net
        rec: Recorder | None = None
        if isinstance(pruner, ForecastPruner):
            rec = pruner.recorder(
                trial, net.model, net.opt, total_steps=S, record_every=r, schedule=net.lr[::r]
            )
        elif store is not None:
            key = f"{task}-s{seed}/trial-{trial.number:05d}"
            rec = Recorder(
                net.model, net.opt, total_steps=S, record_every=r, schedule=net.lr[::r],
                store=store, key=key,
            )  # fmt: skip
        inside, why = in_distribution(cfg, settings.data)
        row = {"number": trial.number, **cfg.params(), "in_distribution": inside, "why": why}
        reports: list[float] = []
        t0, state, steps = time.perf_counter(), "COMPLETE", S
        try:
            for s in range(S):
                net.step(s)
                if rec is not None:
                    rec.step()
                if (s + 1) % plan.report_every == 0 and s + 1 < S:
                    loss = math.nan if net.diverged else net.evaluate("val")[0]
                    reports.append(loss)
                    trial.report(loss, s + 1)
                    if trial.should_prune():
                        state, steps = "PRUNED", s + 1
                        raise optuna.TrialPruned()
        finally:
            val_loss, val_acc = net.evaluate("val")
            _, test_acc = net.evaluate("test")
            row.update(
                state=state,
                steps=steps,
                wall_s=time.perf_counter() - t0,
                val_loss=val_loss,
                val_acc=val_acc,
                test_acc=test_acc,
                reports=reports,
                forecast_error=trial.user_attrs.get("gfm.forecast_error", ""),
            )
            rows.append(row)
        return val_loss

    return objective


def run_study(
    task: str, seed: int, name: str, settings: Settings, plan: Plan, fc: dict, work: Path
) -> list[dict]:
    """One study: ``plan.trials`` trials with pruner ``name``; its trials' rows."""
    steps = settings.data.tasks[task].steps
    score = _Score()
    pruner = _pruner(name, plan, steps, fc, score)
    store = FileStore(work / "checkpoints") if name == "none" else None
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner
    )
    rows: list[dict] = []
    t0 = time.perf_counter()
    study.optimize(_objective(task, seed, settings, plan, pruner, score, store, rows), plan.trials)
    log.info(
        "%s seed %d %s: %d trials, %d pruned, %d steps, %.0f s",
        task,
        seed,
        name,
        len(rows),
        sum(r["state"] == "PRUNED" for r in rows),
        sum(r["steps"] for r in rows),
        time.perf_counter() - t0,
    )
    return [{"task": task, "pruner": name, "seed": seed, **r} for r in rows]


# ----------------------------------------------------------------------------- the replay


def replay(  # noqa: PLR0913 - one replay's parts
    task: str,
    seed: int,
    name: str,
    settings: Settings,
    plan: Plan,
    fc: dict,
    none: list[dict],
    work: Path,
) -> list[dict]:
    """Pruner ``name`` judging the trials of the study without pruning, in order: pruned or not."""
    t_cfg = settings.data.tasks[task]
    S, r = t_cfg.steps, t_cfg.record_every
    score = _Score()
    pruner = _pruner(name, plan, S, fc, score)
    store = FileStore(work / "checkpoints")
    study = optuna.create_study(direction="minimize", pruner=pruner)
    out: list[dict] = []
    t0 = time.perf_counter()
    for row in sorted(none, key=lambda x: x["number"]):
        trial = study.ask()
        cfg = Config(task, row["optimizer"], row["lr"], row["width"], row["weight_decay"])
        net = _net(cfg, settings, seed, row["number"])
        score.net = net
        w, _ = store.read(f"{task}-s{seed}/trial-{row['number']:05d}")
        rec = None
        if isinstance(pruner, ForecastPruner):
            rec = pruner.recorder(
                trial, net.model, net.opt, total_steps=S, record_every=r, schedule=net.lr[::r]
            )
        pruned_at = None
        for j, value in enumerate(row["reports"]):
            step = (j + 1) * plan.report_every
            while rec is not None and rec.steps < step:  # the checkpoints up to here, as recorded
                after = rec.steps + 1
                if after % r == 0 and after // r < len(w):
                    load_weights(rec.params, w[after // r])
                rec.step()
            trial.report(value, step)
            if trial.should_prune():
                pruned_at = step
                break
        if pruned_at is None:
            study.tell(trial, row["val_loss"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        out.append(
            {"task": task, "pruner": name, "seed": seed, "number": row["number"],
             "pruned": pruned_at is not None, "pruned_at": pruned_at}
        )  # fmt: skip
    log.info(
        "%s seed %d %s replayed: %d of %d pruned, %.0f s",
        task, seed, name, sum(r["pruned"] for r in out), len(out), time.perf_counter() - t0,
    )  # fmt: skip
    return out


def forecast_table(
    task: str, seed: int, settings: Settings, plan: Plan, fc: dict, none: list[dict], work: Path
) -> list[dict]:
    """Every forecaster's forecast final validation loss of every trial without pruning."""
    store = FileStore(work / "checkpoints")
    out = []
    t0 = time.perf_counter()
    for row in none:
        cfg = Config(task, row["optimizer"], row["lr"], row["width"], row["weight_decay"])
        net = _net(cfg, settings, seed, row["number"])
        w, meta = store.read(f"{task}-s{seed}/trial-{row['number']:05d}")
        load_weights(list(net.model.parameters()), w[-1])
        names = {k: fc[k] for k in FORECASTERS if k in fc}
        for f in forecast_rows(net, w, meta, names, plan.fractions):
            out.append({"task": task, "seed": seed, "number": row["number"], **f})
    log.info(
        "%s seed %d: forecasts of %d trials, %.0f s",
        task,
        seed,
        len(none),
        time.perf_counter() - t0,
    )
    return out


# ----------------------------------------------------------------------------- the run


def _cached(path: Path, make: Callable[[], list[dict]]) -> list[dict]:
    if path.is_file():
        return json.loads(path.read_text())
    rows = make()
    _save_part(path, rows)
    return rows


def run(settings: Settings, plan: Plan, fc: dict, out: Path, work: Path) -> dict[str, list]:
    """Every study, replay and forecast table of ``plan``, resumed from ``out/pruning_parts``."""
    trials: list[dict] = []
    replays: list[dict] = []
    table: list[dict] = []
    for task in plan.tasks:
        for seed in plan.seeds:
            tag = f"{task}-s{seed}"
            none = _cached(
                _part(out, f"study-{tag}-none"),
                lambda task=task, seed=seed: run_study(
                    task, seed, "none", settings, plan, fc, work
                ),
            )
            trials += none
            for name in plan.pruners:
                if name == "none":
                    continue
                trials += _cached(
                    _part(out, f"study-{tag}-{name}"),
                    lambda task=task, seed=seed, name=name: run_study(
                        task, seed, name, settings, plan, fc, work
                    ),
                )
                replays += _cached(
                    _part(out, f"replay-{tag}-{name}"),
                    lambda task=task, seed=seed, name=name, none=none: replay(
                        task, seed, name, settings, plan, fc, none, work
                    ),
                )
            table += _cached(
                _part(out, f"forecasts-{tag}"),
                lambda task=task, seed=seed, none=none: forecast_table(
                    task, seed, settings, plan, fc, none, work
                ),
            )
    return {"trials": trials, "replay": replays, "forecasts": table}


def _headline(summary: pl.DataFrame) -> pl.DataFrame:
    """Means over seeds per task × pruner, and steps to a near-best trial relative to median/hyperband."""
    cols = [c for c in summary.columns if c not in ("task", "pruner", "seed")]
    mean = summary.group_by(["task", "pruner"], maintain_order=True).agg(
        [pl.col(c).cast(pl.Float64).mean() for c in cols] + [pl.len().alias("seeds")]
    )
    ref = mean.filter(pl.col("pruner").is_in(["median", "hyperband"])).select(
        "task", "pruner", "steps_to_near"
    )
    for other in ("median", "hyperband"):
        r = ref.filter(pl.col("pruner") == other).select(
            "task", pl.col("steps_to_near").alias(f"_{other}")
        )
        mean = (
            mean.join(r, on="task", how="left")
            .with_columns(
                (pl.col("steps_to_near") / pl.col(f"_{other}")).alias(f"steps_vs_{other}")
            )
            .drop(f"_{other}")
        )
    return mean


def _plot(curves: pl.DataFrame, summary: pl.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    tasks = curves["task"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(5.5 * len(tasks), 7), layout="constrained")
    axes = fig.subplots(2, len(tasks), squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        for pruner in curves["pruner"].unique(maintain_order=True):
            c = curves.filter((pl.col("task") == task) & (pl.col("pruner") == pruner))
            for k, seed in enumerate(c["seed"].unique(maintain_order=True)):
                s = c.filter(pl.col("seed") == seed)
                line = ax.step(s["steps"], s["best"], where="post", alpha=0.7,
                               label=pruner if k == 0 else None)  # fmt: skip
                if k == 0:
                    color = line[0].get_color()
                else:
                    line[0].set_color(color)
        ax.set_title(f"{task}: best test accuracy found")
        ax.set_xlabel("optimizer steps spent")
        ax.legend(fontsize=8)
        ax = axes[1][j]
        s = summary.filter(pl.col("task") == task)
        fr = sorted(
            float(c.removeprefix("spearman_")) for c in s.columns if c.startswith("spearman_")
        )
        for pruner, label in (("persistence", "persistence"), ("gfm", "gfm"), ("lstm", "lstm")):
            p = s.filter(pl.col("pruner") == pruner)
            if len(p):
                ax.plot(fr, [p[f"spearman_{f:g}"].mean() for f in fr], marker="o", label=label)
        ax.set_title(f"{task}: Spearman ρ, forecast vs final val loss")
        ax.set_xlabel("observed fraction")
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write(results: dict[str, list], out: Path) -> dict[str, Path]:
    """pruning.csv, pruning_trials.csv, pruning_forecasts.csv, pruning.md and pruning.png."""
    trials = pl.DataFrame(results["trials"]).drop("reports")
    forecasts = pl.DataFrame(results["forecasts"]) if results["forecasts"] else pl.DataFrame()
    replay_schema = {"task": pl.String, "pruner": pl.String, "seed": pl.Int64, "number": pl.Int64,
                     "pruned": pl.Boolean, "pruned_at": pl.Int64}  # fmt: skip
    replay = pl.DataFrame(results["replay"], schema=replay_schema)
    summary = summarize(trials, forecasts, replay, {k: k for k in FORECASTERS})
    paths = {name: out / f"pruning{suffix}" for name, suffix in (
        ("summary", ".csv"), ("trials", "_trials.csv"), ("forecasts", "_forecasts.csv"),
        ("md", ".md"), ("png", ".png"))}  # fmt: skip
    for key, frame in (("summary", summary), ("trials", trials), ("forecasts", forecasts)):
        with atomic_path(paths[key]) as tmp:
            frame.write_csv(tmp)
    head = _headline(summary)
    ood = (
        trials.filter(pl.col("pruner") == "none")
        .group_by("task")
        .agg(pl.len().alias("trials"), (~pl.col("in_distribution")).sum().alias("outside"))
    )
    text = "# Pruning benchmark\n\nMeans over study seeds:\n\n" + to_markdown(head, precision=3)
    text += "\n\nTrials of the studies without pruning outside the forecasters' training runs:\n\n"
    text += to_markdown(ood, precision=0) + "\n"
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(text)
    _plot(anytime(trials), summary, paths["png"])
    return paths


def read_overrides(path: Path | None) -> dict[str, Any]:
    """The dotted settings of an overrides file (``{}`` without one)."""
    if path is None:
        return {}
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise SystemExit(f"{path}: must be a mapping of dotted settings (data.root: ...)")
    return doc


def main() -> None:
    """Parse the options, run (or resume) every study, write the tables and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, 1 seed")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--trials", type=int, default=None, help="default 40 (--quick: 8)")
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=PRUNERS)
    parser.add_argument("--gfm", default=None, help="GFM folder or models:/gfm@champion")
    parser.add_argument("--lstm", default=None, help="a fitted LSTM's folder")
    parser.add_argument("--fit-steps", type=int, default=None, help="default: the defaults")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--fit-only", action="store_true", help="fit and cache the forecasters")
    parser.add_argument("--overrides", type=Path, default=None, help="YAML of dotted settings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    logging.getLogger("gfm").setLevel(logging.INFO)
    logging.getLogger("gfm.pruning").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # the machine is shared; every pruner gets the same single core

    plan = Plan(
        tasks=tuple(args.tasks),
        seeds=tuple(range(args.seeds or (1 if args.quick else 3))),
        trials=args.trials or (8 if args.quick else 40),
        pruners=tuple(args.pruners),
        min_trials=3 if args.quick else 5,
        fit_steps=args.fit_steps or (60 if args.quick else None),
    )
    if "none" not in plan.pruners:
        parser.error("--pruners must include none: the others are measured against it")
    out = args.output_dir or (CACHE / "quick" if args.quick else Path("benchmarks/results"))
    work = CACHE / ("quick" if args.quick else "full")
    settings = load_settings(args.params, read_overrides(args.overrides))
    t0 = time.perf_counter()
    if args.overrides is not None and not (settings.data.root / MANIFEST_FILE).is_file():
        report = generate(settings.data)
        log.info(
            "generated %s: %d runs in %.0f s", settings.data.root, report.trained, report.seconds
        )
    fc = forecasters(settings, plan, args)
    if args.fit_only:
        return
    results = run(settings, plan, fc, out, work)
    paths = write(results, out)
    print(paths["md"].read_text())
    print("\n".join(str(p) for p in paths.values()))
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
