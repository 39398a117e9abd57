"""The GFM forecaster: one shared surrogate network, a vector field per optimizer, save and load.

References:
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from gfm import saved
from gfm.config import GFMSettings, TrainSettings
from gfm.data.names import OPTIMIZERS
from gfm.data.schema import RunRecord
from gfm.features import n_context
from gfm.fields import FIELDS, FreeField, VectorField
from gfm.forecast import forecast
from gfm.forecaster import Prefix
from gfm.rows import shrink_row_means
from gfm.sampled import sampled_forecast
from gfm.surrogate import Surrogate

__all__ = ["GFM"]


class GFM:
    """Gradient Flow Matching forecaster (implements ``gfm.forecaster.Forecaster``).

    One ``Surrogate`` network is shared by all parameters of all runs (batched over parameters,
    so it serves any architecture and size). Variant ``"optimizer"``: each run is moved by the
    field of its own optimizer (``SGDField``, ``MomentumField``, ``RMSpropField``, ``AdamField``,
    ``AdamWField``) with the network as gradient surrogate; variant ``"free"``: ``FreeField``,
    the network is the velocity. With ``cfg.prior`` (the default) every forecast first fits the
    optimizer-simulating quadratic prior of ``gfm.prior`` to the prefix, and the field adds the
    prior's velocity weighed by a learned gate γ(ctx, t): dŵ/dt = γ · ṗ + field.

    Args:
        cfg: the field and solver settings (``gfm`` section of params.yaml).
        train: the training settings used by ``fit`` (``train`` section); its ``seed`` also
            seeds the network's initialisation.
    """

    name = "gfm"

    def __init__(self, cfg: GFMSettings | None = None, train: TrainSettings | None = None) -> None:
        self.cfg = cfg if cfg is not None else GFMSettings()
        self.train_cfg = train if train is not None else TrainSettings()
        with torch.random.fork_rng(devices=[]):  # initialisation seeded by train.seed
            torch.manual_seed(self.train_cfg.seed)
            self.net = Surrogate(
                n_context(self.cfg.history, self.cfg.prior),
                width=self.cfg.width,
                depth=self.cfg.depth,
                time_embedding=self.cfg.time_embedding,
                history=self.cfg.history,
                prior=self.cfg.prior,
            )
        if self.cfg.variant == "optimizer":
            self.fields: dict[str, VectorField] = {o: FIELDS[o](self.net) for o in OPTIMIZERS}
        else:
            free = FreeField(self.net)
            self.fields = dict.fromkeys(OPTIMIZERS, free)
        self.history: list[dict[str, float]] = []

    def field_for(self, optimizer: str) -> VectorField:
        """The field that moves runs of ``optimizer``.

        Raises:
            ValueError: unknown optimizer.
        """
        if optimizer not in self.fields:
            raise ValueError(f"`optimizer` must be one of {list(self.fields)}, got {optimizer!r}")
        return self.fields[optimizer]

    def fit(self, train: Sequence[RunRecord], val: Sequence[RunRecord] | None = None) -> GFM:
        """Train the network by flow matching on ``train`` (``gfm.training.fit``); returns self."""
        from gfm.training import fit  # training imports this module's type only for hints

        self.history = fit(self, train, val, self.train_cfg)
        return self

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        """Weights at times t (T,) in (t_k, 1] from the prefix -> (T, D) float32.

        Raises:
            ValueError: the prefix or t is invalid (see ``gfm.forecast.forecast``).
        """
        if prefix.optimizer not in self.fields:
            raise ValueError(
                f"`prefix.optimizer` must be one of {list(self.fields)}, got {prefix.optimizer!r}"
            )
        field = self.field_for(prefix.optimizer)
        times = torch.as_tensor(t, dtype=torch.float64)

        def field_forecast(index: torch.Tensor | None) -> torch.Tensor:
            return forecast(
                field,
                prefix,
                times,
                method=self.cfg.solver,
                solver_steps=self.cfg.solver_steps,
                rtol=self.cfg.rtol,
                atol=self.cfg.atol,
                chunk_size=self.cfg.chunk_size,
                index=index,
            )

        with torch.no_grad():
            if self.cfg.sample_params is None:
                out = field_forecast(None)
            else:
                out = sampled_forecast(field_forecast, prefix, self.cfg.sample_params)
        out = shrink_row_means(out, prefix.w[-1].to(out.dtype), prefix.params, self.cfg.row_mean)
        return out.float()

    def save(self, path: Path | str) -> None:
        """Write the forecaster folder ``path`` (``gfm.saved``): settings as JSON, weights as safetensors.

        The folder is built beside ``path`` and swapped in, so a crash never leaves a
        half-written model. Where the workflow writes models (``train.model_dir``, an absolute
        path on this machine) is not part of the model: it is left out, so the same model is
        the same bytes (and DVC hash) in any checkout.
        """
        config = {
            "gfm": self.cfg.model_dump(mode="json"),
            "train": self.train_cfg.model_dump(mode="json", exclude={"model_dir"}),
            "n_context": self.net.n_context,
        }
        saved.write(path, kind=self.name, config=config, tensors=self.net.state_dict(), cls=GFM)

    @classmethod
    def load(cls, path: Path | str) -> GFM:
        """Rebuild a saved GFM from its folder (``gfm.saved``; no pickle).

        Raises:
            FileNotFoundError: no saved forecaster in ``path``.
            ValueError: it holds another kind of forecaster, or invalid settings.
        """
        config, tensors = saved.read(path, kind=cls.name)
        try:
            gfm = {k: v for k, v in config["gfm"].items() if k != "adjoint"}  # gfm 0.1, unused
            gfm.setdefault("prior", False)  # folders from before the prior: fields without it
            model = cls(
                GFMSettings.model_validate(gfm),
                TrainSettings.model_validate(config["train"]),
            )
        except (KeyError, ValidationError) as err:
            raise ValueError(f"{Path(path)}: invalid GFM settings: {err}") from None
        model.net.load_state_dict(tensors)
        model.net.eval()
        return model
