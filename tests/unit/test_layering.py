"""The dependency direction of the package, enforced on the import statements themselves."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION = {"prefect", "mlflow", "typer", "flows", "optuna", "prefect_dask", "dvc"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _core_files() -> list[Path]:
    edge = {"cli.py", "versioning.py", "tune.py"}
    return [
        p
        for p in sorted((ROOT / "gfm").rglob("*.py"))
        if p.name not in edge and "tracking" not in p.relative_to(ROOT / "gfm").parts
    ]


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_orchestration(path):
    assert not (_imports(path) & ORCHESTRATION), f"{path} imports {_imports(path) & ORCHESTRATION}"


def test_optuna_only_in_tune():
    for path in (ROOT / "gfm").rglob("*.py"):
        if path.name != "tune.py" and "tracking" not in path.parts:
            assert "optuna" not in _imports(path), path


def test_tracking_never_imports_prefect_or_typer():
    for path in (ROOT / "gfm" / "tracking").rglob("*.py"):
        assert not (_imports(path) & {"prefect", "typer", "flows"}), path
