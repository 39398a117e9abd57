"""The dependency direction of the package, enforced on the import statements themselves."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION = {"prefect", "mlflow", "typer", "flows", "optuna", "prefect_dask", "dvc"}
# The edge of gfm: the CLI, DVC, Optuna, the workflow's steps and the registry alias. They may
# use gfm.tracking (the only mlflow importer) but never prefect, typer or flows (except the CLI).
EDGE = {"cli.py", "versioning.py", "tune.py", "pipeline.py", "registry.py"}


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _core_files() -> list[Path]:
    return [
        p
        for p in sorted((ROOT / "gfm").rglob("*.py"))
        if p.relative_to(ROOT / "gfm").as_posix() not in EDGE
        and "tracking" not in p.relative_to(ROOT / "gfm").parts
    ]


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_orchestration(path):
    assert not (_imports(path) & ORCHESTRATION), f"{path} imports {_imports(path) & ORCHESTRATION}"


def test_optuna_only_in_tune():
    for path in (ROOT / "gfm").rglob("*.py"):
        if path.name != "tune.py" and "tracking" not in path.parts:
            assert "optuna" not in _imports(path), path


def test_mlflow_only_in_tracking():
    for path in (ROOT / "gfm").rglob("*.py"):
        if "tracking" not in path.parts:
            assert "mlflow" not in _imports(path), path


def test_tracking_never_imports_prefect_or_typer():
    for path in (ROOT / "gfm" / "tracking").rglob("*.py"):
        assert not (_imports(path) & {"prefect", "typer", "flows"}), path


@pytest.mark.parametrize("name", sorted(EDGE - {"cli.py"}))
def test_edge_modules_never_import_orchestration(name):
    assert not (_imports(ROOT / "gfm" / name) & {"prefect", "typer", "flows", "mlflow"})


def test_flows_stay_thin():
    # flows call gfm (and gfm.pipeline, gfm.tracking); they never reach past it
    for path in (ROOT / "flows").rglob("*.py"):
        assert not (_imports(path) & {"mlflow", "optuna", "torch", "typer", "dvc"}), path


def test_cli_imports_flows_and_prefect_only_inside_commands():
    # `gfm forecast` and `gfm compare` start without Prefect
    top = _imports(ROOT / "gfm" / "cli.py", top_level_only=True)
    assert not (top & {"flows", "prefect", "mlflow", "optuna", "torch"}), top
