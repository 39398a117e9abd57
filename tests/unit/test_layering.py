"""The dependency direction of the package, by folder, enforced on the import statements themselves.

    core      gfm/*.py, gfm/data/, gfm/baselines/, gfm/bench/   torch, numpy, polars, pydantic ...
    tracking  gfm/tracking/   + mlflow             (the only mlflow importer)
    ops       gfm/ops/        + optuna, dvc, gfm.tracking
    cli       gfm/cli/        + typer, rich, anything of gfm; flows and prefect only inside commands
    flows     flows/          + prefect, gfm, gfm.ops, gfm.tracking; no tensor math

Every rule covers third-party packages and gfm's own folders alike: a core module that reaches
``gfm.ops`` (which reaches mlflow) breaks the layering as surely as one importing mlflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GFM = ROOT / "gfm"

EDGE = ("gfm.ops", "gfm.tracking", "gfm.cli")
SERVICES = ("prefect", "prefect_dask", "flows", "typer", "mlflow", "optuna", "dvc")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (*SERVICES, "rich", *EDGE),
    "tracking": (
        "prefect",
        "prefect_dask",
        "flows",
        "typer",
        "optuna",
        "dvc",
        "gfm.ops",
        "gfm.cli",
    ),
    "ops": ("prefect", "prefect_dask", "flows", "typer", "mlflow", "gfm.cli"),
    "cli": ("mlflow", "optuna"),
    "flows": ("mlflow", "optuna", "torch", "typer", "dvc", "gfm.cli"),
}
# what the CLI may import only inside a command, so that `gfm forecast` starts without Prefect
CLI_LAZY = ("flows", "prefect", "torch", "gfm.ops", "gfm.tracking")


def layer_of(path: Path) -> str:
    """The layer a source file belongs to, by its folder."""
    rel = path.resolve().relative_to(ROOT)
    if rel.parts[0] == "flows":
        return "flows"
    if rel.parts[1] in ("tracking", "ops", "cli"):
        return rel.parts[1]
    return "core"


def module_of(path: Path) -> str:
    """``gfm/data/format.py`` -> ``gfm.data.format`` (a package's ``__init__`` -> the package)."""
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str = "", *, top_level_only: bool = False) -> set[str]:
    """Every module an import statement of ``source`` names, absolute and dotted.

    ``from gfm import ops`` names ``gfm`` and ``gfm.ops``; relative imports are resolved against
    ``module`` (the importing module's dotted name).
    """
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level] if module else []
                base = ".".join([*package, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(source: str, layer: str, module: str = "") -> list[str]:
    """The imports of ``source`` that ``layer`` must not make, sorted."""
    return sorted(n for n in imported(source, module) if _matches(n, FORBIDDEN[layer]))


def _sources() -> list[Path]:
    return sorted([*GFM.rglob("*.py"), *(ROOT / "flows").rglob("*.py")])


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_what_its_layer_may(path):
    bad = violations(path.read_text(), layer_of(path), module_of(path))
    assert not bad, f"{path.relative_to(ROOT)} ({layer_of(path)}) imports {bad}"


def test_the_checker_fails_a_core_module_that_reaches_the_edge(tmp_path):
    # given a core module that imports the registry "just for a type", and one reaching mlflow
    # through a relative import of gfm.tracking
    direct = "from gfm.tracking import load\n"
    relative = "def f():\n    from ..tracking import registry\n"
    # then both break the layering, and the checker says which import
    assert violations(direct, "core", "gfm.jumps") == ["gfm.tracking", "gfm.tracking.load"]
    assert "gfm.tracking.registry" in violations(relative, "core", "gfm.data.format")
    # ... also for a real file in the core folder
    fake = GFM / "_layering_probe.py"
    assert layer_of(fake) == "core"
    assert violations("import mlflow\nfrom gfm import ops\n", layer_of(fake)) == [
        "gfm.ops",
        "mlflow",
    ]


def test_the_checker_lets_each_layer_import_what_it_may():
    assert not violations("import mlflow\nfrom gfm.data.schema import RunRecord\n", "tracking")
    assert not violations("import optuna\nfrom gfm import tracking\n", "ops")
    assert not violations("import torch\nfrom gfm.forecaster import Prefix\n", "core")


def test_mlflow_only_in_tracking_and_optuna_only_in_the_study_and_the_pruner():
    # the study, its sampler, its shared side, and the forecast pruner (a BasePruner)
    study = {GFM / "ops" / name for name in ("study.py", "sampling.py", "claims.py", "pruning.py")}
    for path in _sources():
        names = imported(path.read_text(), module_of(path))
        if any(_matches(n, ("mlflow",)) for n in names):
            assert layer_of(path) == "tracking", path
        if any(_matches(n, ("optuna",)) for n in names):
            assert path in study, path


@pytest.mark.parametrize("path", sorted((GFM / "cli").rglob("*.py")), ids=lambda p: p.name)
def test_cli_imports_flows_prefect_and_the_edge_only_inside_commands(path):
    top = imported(path.read_text(), module_of(path), top_level_only=True)
    assert not [n for n in top if _matches(n, CLI_LAZY)], path
