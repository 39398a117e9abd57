"""The ``gfm`` command line: a thin shell that loads settings, calls the library and prints with rich.

Every command takes ``--params`` (default ``params.yaml``) and repeatable ``--set key=value``
overrides; bad settings print ``params.yaml: <key>: <problem>`` and exit with status 2.
The app is assembled from one module per command group (``data``, ``workflow``, ``models``,
``bench``, ``stack``); ``render`` holds everything that prints.
"""

# isort: off
# before any tensor op: every command computes with machine-independent kernels, so a dataset
# generated here is bit-identical to one generated on another machine (gfm._torch.kernel_env)
from gfm._torch import pin_kernels

pin_kernels()

# each module registers its commands on `app`; `gfm --help` lists them in this order
from gfm.cli import data, workflow, models, bench, stack  # noqa: F401, E402

# isort: on
from gfm.cli._app import app  # noqa: E402

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    """Run the ``gfm`` command line."""
