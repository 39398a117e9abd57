"""The ``gfm`` command line: a thin shell that loads settings, calls the library and prints with rich.

Every command takes ``--params`` (default ``params.yaml``) and repeatable ``--set key=value``
overrides; bad settings print ``params.yaml: <key>: <problem>`` and exit with status 2.
The app is assembled from one module per command group (``data``, ``workflow``, ``models``,
``bench``, ``stack``); ``render`` holds everything that prints.
"""

# isort: off
# each module registers its commands on `app`; `gfm --help` lists them in this order
from gfm.cli import data, workflow, models, bench, stack  # noqa: F401

# isort: on
from gfm.cli._app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    """Run the ``gfm`` command line."""
